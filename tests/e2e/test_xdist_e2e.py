"""pytest-xdist end to end on the zoo: workers evaluate, the controller alone reports.

Runs ``pytest -n 2`` in a subprocess with real transformers generation. The plugin
``tests/generation_log.py``, loaded into every process, logs each engine creation, each real
``generate`` call and each worker's ``CUDA_VISIBLE_DEVICES`` (it observes, the generation is real), so
the test can tell how often the reference was generated and which GPU slice each worker was pinned to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "fixtures" / "zoo"
LIMIT = 6
SMALL = ["--tasks", "zoo", "--limit", str(LIMIT), "--canary", "0", "--max-tokens", "96", "-p", "no:cacheprovider",
         "-p", "generation_log"]


@pytest.fixture
def run_xdist(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two workers on a few shared cores: no OpenMP oversubscription
    monkeypatch.setenv("QT_TEST_LOG", str(pytester.path / "log.jsonl"))
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("--pyargs", "qtests", *SMALL, *args, timeout=600)
    return run


def read_log(pytester: pytest.Pytester) -> list[dict]:
    path = pytester.path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_workers_one_reference_generation_and_one_verdict_table(run_xdist, pytester, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    result = run_xdist("-n", "2", "--gpus-per-worker", "1", "--cache-dir", "cache", "--qt-report", "report",
                       "--save-baseline", "--baseline-dir", "baselines",
                       "--reference", f"bf16={ZOO / 'tiny-qwen3next'}",
                       "--model", f"int4-keep={ZOO / 'int4-keep-fragile'}", "--model", f"int2={ZOO / 'int2-default'}")
    output = result.stdout.str()
    assert result.ret in (0, 1), output
    assert output.count("qtests verdicts") == 1
    table = output.split("qtests verdicts", 1)[1]
    for label in ("bf16", "int4-keep", "int2"):
        assert label in table
    assert "PASS" in table  # checks were computed on the controller, not only the raw numbers

    log = read_log(pytester)
    generated = {}
    for entry in log:
        if "generate" in entry:
            generated[entry["generate"]] = generated.get(entry["generate"], 0) + entry["n"]
    assert generated == {"bf16": LIMIT, "int4-keep": LIMIT, "int2": LIMIT}  # the reference once, not per worker
    engines = [entry["engine"] for entry in log if "engine" in entry]
    assert engines.count("int4-keep") == 1 and engines.count("int2") == 1  # one worker, one engine per variant
    assert 1 <= engines.count("bf16") <= 2  # at most once per worker
    pinned = {entry["worker"]: entry["cuda_visible_devices"] for entry in log if "cuda_visible_devices" in entry}
    assert pinned == {"controller": "5,7", "gw0": "5", "gw1": "7"}

    results = json.loads((pytester.path / "report" / "results.json").read_text())
    assert sorted(run["variant"] for run in results["runs"]) == ["bf16", "int2", "int4-keep"]
    served_by = {run["fingerprint"]["extra"]["cuda_visible_devices"] for run in results["runs"]}
    assert served_by <= {"5", "7"}  # each run names the GPU slice of the worker that made it
    served = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_records.py"), str(pytester.path / "cache")],
                            capture_output=True, text=True, check=True).stdout
    assert f"int2 on zoo: {LIMIT} records ({LIMIT} in the cache), served by gw" in served
    assert "bf16 on zoo" in served and "DIFFERENT" not in served
    assert output.count("baseline written:") == 3
    assert len(list((pytester.path / "baselines").rglob("*.json*"))) >= 3
    assert "Traceback" not in output


def test_too_few_gpus_and_no_cache_are_one_line_usage_errors(run_xdist, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    model = ["--model", f"int4={ZOO / 'int4-default'}"]
    result = run_xdist("-n", "2", "--gpus-per-worker", "2", *model)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpus-per-worker 2 with 2 xdist workers needs 4 GPUs but 3 are visible*"])
    result = run_xdist("-n", "2", "--no-cache", *model)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--no-cache cannot be combined with pytest-xdist -n*"])
