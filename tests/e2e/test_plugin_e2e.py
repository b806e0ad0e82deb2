"""End-to-end: the installed plugin and suite (`pytest --pyargs qtests`) on the real zoo models.

Each test runs pytest in a subprocess, the way a user does, with real transformers generation on
the CPU. A shared generation cache keeps the suite fast: the reference is generated once.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
REFERENCE = f"bf16={ZOO / 'tiny-qwen3next'}"
SMALL = ["--tasks", "zoo", "--limit", "24", "--canary", "8", "--max-tokens", "96", "-p", "no:cacheprovider"]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qtests-cache")


@pytest.fixture
def run_suite(pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("--pyargs", "qtests", "--cache-dir", str(shared_cache), *SMALL, *args,
                                             timeout=600)
    return run


def test_good_variant_passes_and_prints_the_verdict_table(run_suite, pytester):
    result = run_suite("--reference", REFERENCE, "--model", f"int4-keep={ZOO / 'int4-keep-fragile'}",
                       "--policy", "keep-shared-expert", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=5)
    output = result.stdout.str()
    assert "qtests verdicts" in output and "int4-keep" in output and "PASS" in output
    properties = {p.get("name") for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert {"accuracy.estimate", "accuracy.ci_low", "accuracy.p_value", "truncation.margin"} <= properties
    assert "record_property is incompatible" not in output  # pytest's xunit2 nag is filtered


def test_a_fully_cached_rerun_loads_no_model_and_reports_the_same(pytester, tmp_path, monkeypatch):
    """Generations, prompts, the chat template's hash and the canary's teacher-forced scores all come
    from the cache: the second run reads no weights (``tests/generation_log.py`` logs each model load)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parents[1]}:{os.environ.get('PYTHONPATH', '')}")
    runs = []
    for run in ("first", "again"):
        monkeypatch.setenv("QT_TEST_LOG", str(tmp_path / f"{run}.jsonl"))
        result = pytester.runpytest_subprocess(
            "--pyargs", "qtests", "--cache-dir", str(tmp_path / "cache"), *SMALL, "-p", "generation_log",
            "--reference", REFERENCE, "--model", f"int4-keep={ZOO / 'int4-keep-fragile'}", "--qt-report", run,
            timeout=600)
        result.assert_outcomes(passed=4, deselected=2)  # test_policy, test_parity: no --policy, no --parity
        lines = (tmp_path / f"{run}.jsonl").read_text().splitlines()
        runs.append(([json.loads(line)["load"] for line in lines if '"load"' in line],
                     json.loads((pytester.path / run / "results.json").read_text())))
    (first_loads, first), (again_loads, again) = runs
    assert sorted(first_loads) == ["bf16", "int4-keep"] and again_loads == []
    variant = lambda document: next(r for r in document["runs"] if r["variant"] == "int4-keep")  # noqa: E731
    assert variant(again)["checks"] == variant(first)["checks"]
    assert variant(again)["canary"] == variant(first)["canary"]  # its divergence too, from the cached scores


def test_broken_variant_fails_its_degenerate_check_and_exits_1(run_suite):
    result = run_suite("--reference", REFERENCE, "--model", f"broken={ZOO / 'nvfp4-broken'}", "-rfs")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*FAILED*test_degenerate[[]broken-zoo[]]*"])
    output = result.stdout.str()
    assert "broken on zoo: canary failed after 8 of 24 generations (33.3%)" in output
    assert "teacher-forced on the reference's 8 canary texts" in output
    assert output.count("broken failed its canary on zoo after 8 of 24 generations (33.3%); full run not made") == 3
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(("variant", "exit_code"), [("int4-keep-fragile", 0), ("nvfp4-broken", 1)])
def test_pytest_with_qtests_options_anywhere_runs_the_gate(pytester, shared_cache, monkeypatch, variant, exit_code):
    """No test paths, no ``--pyargs``, an empty directory: the options alone run the standard gate suite."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not list(pytester.path.iterdir())
    result = pytester.runpytest_subprocess(f"--cache-dir={shared_cache}", *SMALL, "-rf", "--reference", REFERENCE,
                                           "--model", f"{variant}={ZOO / variant}", timeout=600)
    assert result.ret == exit_code, result.stdout.str()[-3000:]
    output = result.stdout.str()
    assert "qtests verdicts" in output
    if exit_code:
        assert f"{variant} on zoo: canary failed after 8 of 24 generations (33.3%)" in output
    else:
        result.assert_outcomes(passed=4, deselected=2)


def test_single_model_without_reference_is_evaluated_and_comparisons_skipped(run_suite):
    result = run_suite("--model", f"int4={ZOO / 'int4-default'}", "-rs")
    assert result.ret == 0
    result.assert_outcomes(skipped=4, deselected=2)  # 4 comparisons; test_policy, test_parity: no --policy, --parity
    assert "no --reference and no stored baseline" in result.stdout.str()
    assert "int4" in result.stdout.str()  # still reported in the verdict table


def test_unloadable_variant_errors_alone_and_others_still_run(run_suite, tmp_path):
    broken = tmp_path / "corrupt"
    shutil.copytree(ZOO / "int4-default", broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    result = run_suite("--reference", REFERENCE, "--model", f"corrupt={broken}",
                       "--model", f"int4-keep={ZOO / 'int4-keep-fragile'}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 4  # every check of the corrupt variant
    assert outcomes["passed"] == 4  # the other variant still ran
    assert f"corrupt safetensors header in {broken / 'model.safetensors'}" in result.stdout.str()


def test_reference_against_its_own_saved_baseline_passes(run_suite, pytester):
    saved = run_suite("--model", REFERENCE, "--save-baseline", "--baseline-dir", "store")
    assert saved.ret == 0
    stored = pytester.path / "store" / "bf16" / "zoo.json"
    assert json.loads(stored.read_text())["schema_version"] == 1
    compared = run_suite("--model", REFERENCE, "--baseline", "bf16", "--baseline-dir", "store")
    compared.assert_outcomes(passed=4, deselected=2)  # test_policy, test_parity: no --policy, no --parity


def test_baseline_with_other_settings_is_refused_with_the_fields(run_suite, pytester):
    run_suite("--model", REFERENCE, "--save-baseline", "--baseline-dir", "store")
    result = run_suite("--model", REFERENCE, "--baseline", "bf16", "--baseline-dir", "store", "--thinking", "off")
    assert result.ret == 1
    assert "fingerprint mismatch" in result.stdout.str() and "thinking" in result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--model", "a=/nonexistent/model"], "neither an existing directory nor a hub id"),
    (["--model", f"x={ZOO / 'int4-default'}", "--model", f"x={ZOO / 'int2-default'}"], "duplicate label 'x'"),
    (["--model", f"x={ZOO / 'int4-default'}", "--fail-on", "accuracy=2"], "--fail-on"),
    (["--model", f"x={ZOO / 'int4-default'}", "--limit", "0"], "--limit must be"),
    (["--model", f"x={ZOO / 'int4-default'}", "--engine-arg", "novalue"], "KEY=VALUE"),
])
def test_bad_command_lines_fail_in_one_line(run_suite, args, message):
    result = run_suite(*args)
    assert result.ret != 0
    text = result.stdout.str() + result.stderr.str()
    assert message in text
    assert "Traceback" not in text


def test_suite_file_errors_name_the_field(run_suite, pytester):
    pytester.path.joinpath("suite.toml").write_text('models = ["x=/tmp"]\nmax_tokens = "many"\n')
    result = run_suite("--qt-config", "suite.toml")
    assert result.ret != 0
    assert "suite.toml: max_tokens: 'many' is not of type 'integer'" in result.stderr.str()


def test_pytest_selection_flags_work_on_the_gate(pytester, shared_cache, monkeypatch):
    """-k, -x and --lf behave as pytest users expect: the gate's tests are ordinary pytest items."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = [arg for arg in SMALL if arg not in ("-p", "no:cacheprovider")]  # --lf needs pytest's cache
    base = ["--pyargs", "qtests", "--cache-dir", str(shared_cache), *small, "--reference", REFERENCE,
            "--model", f"keep={ZOO / 'int4-keep-fragile'}", "--model", f"broken={ZOO / 'nvfp4-broken'}"]

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*base, *args, timeout=600)

    only_keep = run("-k", "keep")
    selected = only_keep.parseoutcomes()
    assert selected["passed"] == 4 and "failed" not in selected and selected["deselected"] >= 4  # broken's 4 out

    first = run("-x")  # keep's 4 checks pass, broken's first failing check stops the run
    outcomes = first.parseoutcomes()
    assert outcomes["failed"] == 1 and outcomes["passed"] + outcomes.get("skipped", 0) < 8
    assert "stopping after 1 failures" in first.stdout.str()

    rerun = run("--lf")
    rerun_outcomes = rerun.parseoutcomes()
    assert rerun_outcomes["failed"] == 1 and "passed" not in rerun_outcomes  # only the last failure reran
    rerun.stdout.fnmatch_lines(["*FAILED*test_*[[]broken-zoo[]]*"])
