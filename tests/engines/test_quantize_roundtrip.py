"""Every scheme x format ``qtests quantize`` offers, built from the zoo reference and put through the gate
on default settings (transformers, ``--dtype auto``), or refused before any model loads with one line.

The builds are RTN with four calibration samples (seconds each on an idle CPU); the gate is short
(``--limit 4``, 24 tokens): this checks that every checkpoint the tool makes is one an engine here can
judge, not how good it is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("auto_round")

from pytest_qtests.build.quantize import FORMATS, SCHEMES, QuantizeSettings, check_request, quantize, supported_schemes
from pytest_qtests.records import QtestsError

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
REFERENCE = str(ZOO / "tiny-qwen3next")
CALIBRATION = str(ZOO / "task" / "calibration.jsonl")
OFFERED = [(scheme, fmt) for fmt in FORMATS for scheme in SCHEMES if scheme in supported_schemes(fmt)]
REFUSED = [(scheme, fmt) for fmt in FORMATS for scheme in SCHEMES if scheme not in supported_schemes(fmt)]


def label(scheme: str, fmt: str) -> str:
    return f"{scheme}-{fmt}".lower().replace("_", "-")


@pytest.mark.parametrize(("scheme", "fmt"), REFUSED)
def test_a_combination_auto_round_cannot_export_is_refused_with_one_line(scheme, fmt):
    with pytest.raises(QtestsError, match=f"^auto-round cannot export {scheme} as {fmt}; that format takes ") as refused:
        check_request(QuantizeSettings(scheme, "default", fmt))
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Each offered combination, built with the CLI's defaults but for calibration size (``--seqlen``
    stays at its default 2048: clamped to the zoo's context of 512)."""
    root = tmp_path_factory.mktemp("roundtrip")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        for scheme, fmt in OFFERED:
            provenance = quantize(REFERENCE, root / label(scheme, fmt),
                                  QuantizeSettings(scheme, "default", fmt, nsamples=4), CALIBRATION)
            assert provenance["settings"]["seqlen"] == 512
    return {label(scheme, fmt): root / label(scheme, fmt) for scheme, fmt in OFFERED}


def test_every_offered_combination_goes_through_the_gate_on_default_settings(built, pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = [arg for name, path in built.items() for arg in ("--model", f"{name}={path}")]
    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "--reference", f"bf16={REFERENCE}", *models, "--tasks", "zoo", "--limit", "4",
        "--max-tokens", "24", "--canary", "0", "--no-cache", "-p", "no:cacheprovider", "--junitxml", "junit.xml",
        timeout=1800)
    cases = list(ET.parse(pytester.path / "junit.xml").iter("testcase"))
    errors = [f"{case.get('name')}: {error.get('message', '')[:200]}"
              for case in cases for error in case.iter("error")]
    assert errors == [], "\n".join(errors)  # a verdict (pass or fail) for each, never an engine error
    judged = {name for name in built if any(f"[{name}-" in case.get("name", "") for case in cases)}
    assert judged == set(built), result.stdout.str()[-3000:]
