"""End-to-end: ``examples/release-gate/``, a user's project, run on the zoo the way its author runs it.

pytest is started in a copy of the project (``pytest . --model ... --reference ... --tasks ledger``): the
project's own tests (a structured-output check, past regressions, a paired check on the in-house task)
run on every model through ``qt_model``, beside the standard gate on the in-house task. The good variant
passes everything (exit 0); the broken one fails each check with a message naming itself and what broke
(exit 1). Both runs share one generation cache, so the second generates only the broken variant, and the
paired check reads the gate's own generations (same items, prompts and sampling) instead of making its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "fixtures" / "zoo"
USER_TESTS = ("test_answers_keep_the_format_our_tool_parses", "test_past_regressions_still_pass",
              "test_ledger_is_not_worse_than_the_reference")
GATE_TESTS = ("test_degenerate", "test_accuracy", "test_truncation", "test_length")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gate_example(tmp_path_factory: pytest.TempPathFactory):
    """Runs the example project on one variant; returns (exit code, ``-v`` output, outcome per test id)."""
    work = tmp_path_factory.mktemp("release-gate")
    project = shutil.copytree(REPO / "examples" / "release-gate", work / "release-gate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1",
           "COLUMNS": "400",  # the short summary's lines carry the whole failure message
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run(variant: str, label: str) -> tuple[int, str, dict[str, str]]:
        # --cache-dir=PATH, not two words: pytest takes an existing directory among the arguments as a
        # rootdir candidate, and the cache exists from the second run on
        done = subprocess.run(
            [sys.executable, "-m", "pytest", ".", "-p", "no:cacheprovider", "-v", "-rfs", f"--cache-dir={work / 'cache'}",
             "--reference", f"bf16={ZOO / 'tiny-qwen3next'}", "--model", f"{label}={ZOO / variant}",
             "--tasks", "ledger", "--limit", "8", "--canary", "4", "--max-tokens", "96"],
            cwd=project, env=env, capture_output=True, text=True, timeout=1500)
        output = done.stdout + done.stderr
        outcomes = dict(re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", done.stdout, re.MULTILINE))
        return done.returncode, output, outcomes

    return run


def test_the_good_variant_passes_the_projects_tests_and_the_gate(gate_example):
    code, output, outcomes = gate_example("int4-keep-fragile", "int4")
    assert code == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    for test in USER_TESTS:
        assert outcomes[f"test_release.py::{test}[int4]"] == "PASSED", output[-5000:]
    assert outcomes["test_release.py::test_answers_keep_the_format_our_tool_parses[bf16]"] == "PASSED"
    assert outcomes["test_release.py::test_ledger_is_not_worse_than_the_reference[bf16]"] == "SKIPPED"
    # the standard gate ran beside them on the in-house task, named as the qtests suite
    for test in GATE_TESTS:
        assert outcomes[f"qtests/test_gate.py::{test}[int4-ledger]"] == "PASSED", output[-5000:]
    assert "NOTSET" not in output  # no --policy: test_policy is deselected, not skipped


def test_the_broken_variant_fails_each_check_with_what_broke(gate_example):
    code, output, outcomes = gate_example("nvfp4-broken", "nvfp4-broken")
    assert code == 1, output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    for test in USER_TESTS:
        assert outcomes[f"test_release.py::{test}[nvfp4-broken]"] == "FAILED", output[-5000:]
    assert outcomes["qtests/test_gate.py::test_degenerate[nvfp4-broken-ledger]"] == "FAILED", output[-5000:]
    failures = "\n".join(line for line in output.splitlines() if line.startswith("FAILED"))
    assert "nvfp4-broken: 3 of 3 answers unparseable" in failures, failures
    assert "nvfp4-broken: 4 past regressions are back: 999+1=1000 got" in failures, failures
    assert "nvfp4-broken: ledger accuracy 0.000 vs 1.000 reference" in failures, failures
    assert "nvfp4-broken on ledger: canary failed after 4 of 8 generations" in output, output[-5000:]


def test_task_items_are_the_runs_items_with_the_limit_applied(tmp_path):
    """``qt_model.task_items`` gives a user's test the items the gate runs (``--limit`` applied, in order),
    for a built-in task and a ``NAME=FILE`` one; an unknown task is the registry's one line."""
    rows = [json.loads(line) for line in (ZOO / "task" / "test.jsonl").read_text().splitlines()[:3]]
    # one file as both the model's replayed outputs and a task file (id, question, answer)
    (tmp_path / "gold.jsonl").write_text("".join(json.dumps({**row, "output": row["answer"]}) + "\n" for row in rows))
    (tmp_path / "test_items.py").write_text(
        "import pytest\n"
        "from pytest_qtests import QtestsError\n\n"
        "def test_items(qt_model):\n"
        f"    assert [i.item_id for i in qt_model.task_items('zoo')] == {[r['id'] for r in rows[:2]]!r}\n"
        f"    assert [i.answer for i in qt_model.task_items('zoo=gold.jsonl')] == {[r['answer'] for r in rows[:2]]!r}\n"
        "    with pytest.raises(QtestsError, match=\"unknown task 'nope'\"):\n"
        "        qt_model.task_items('nope')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "test_items.py", "-p", "no:cacheprovider", "--no-gate",
                           "--backend", "replay", "--model", "gold=gold.jsonl", "--tasks", "zoo", "--limit", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
