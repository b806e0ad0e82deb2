"""End-to-end: ``examples/release-gate/``, a user's project, run on the zoo as its README says.

One pytest child, started in a copy of the project the way a model author starts it (``pytest . --model
... --reference ...``): their own tests (a structured-output check, past regressions, a paired check on
their in-house task) run on every model, beside the standard gate. The good variant passes all of them;
the broken one fails each with a message naming the variant and what broke.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "fixtures" / "zoo"
USER_TESTS = ("test_answers_keep_the_format_our_tool_parses", "test_past_regressions_still_pass",
              "test_ledger_is_not_worse_than_the_reference")


def test_the_release_gate_example_passes_the_good_variant_and_fails_the_broken_one(tmp_path):
    project = shutil.copytree(REPO / "examples" / "release-gate", tmp_path / "release-gate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", ".", "-p", "no:cacheprovider", "-v", "-rf", "--cache-dir", str(tmp_path / "cache"),
         "--reference", f"bf16={ZOO / 'tiny-qwen3next'}", "--model", f"int4={ZOO / 'int4-keep-fragile'}",
         "--model", f"nvfp4-broken={ZOO / 'nvfp4-broken'}",
         "--tasks", "zoo,ledger", "--limit", "12", "--canary", "4", "--max-tokens", "96"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    lines = done.stdout.splitlines()

    def outcome(test: str, label: str) -> str:
        line = next(line for line in lines if f"{test}[{label}]" in line and "::" in line and "%]" in line)
        return line.split()[1]

    for test in USER_TESTS:
        assert outcome(test, "int4") == "PASSED", output[-4000:]
        assert outcome(test, "nvfp4-broken") == "FAILED", output[-4000:]
    assert outcome("test_ledger_is_not_worse_than_the_reference", "bf16") == "SKIPPED"
    # the standard gate ran beside them, on the in-house task too, and stopped the broken variant at its canary
    assert any("test_gate.py::test_accuracy[int4-ledger] PASSED" in line for line in lines), output[-4000:]
    assert "nvfp4-broken on zoo: canary failed after 4 of 12 generations" in output, output[-4000:]
    failures = [line for line in lines if line.startswith("FAILED")]
    assert not [line for line in failures if "[int4" in line], failures
    messages = "\n".join(failures)
    assert "nvfp4-broken: 3 of 3 answers unparseable" in messages, messages
    assert "past regressions are back" in messages, messages
    assert "nvfp4-broken: ledger accuracy" in messages, messages
