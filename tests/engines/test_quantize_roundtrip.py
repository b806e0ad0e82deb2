"""Every scheme x format ``qtests quantize`` offers, built from the zoo reference and put through the gate
on default settings (transformers, ``--dtype auto``), or refused before anything is quantized with one line.

The builds are RTN with four calibration samples (seconds each on an idle CPU); the gate is short
(``--limit 4``, 24 tokens): this checks that every checkpoint the tool makes is one an engine here can
judge, not how good it is. The integer schemes are built in groups of 64: the zoo's routed experts are
64 wide, so the default groups of 128 are refused on it (asserted below).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

pytest.importorskip("auto_round")

from pytest_qtests.build.quantize import check_request, quantize, supported_schemes, unloadable_reason
from pytest_qtests.build.recipes import FORMATS, INTEGER_SCHEMES, RECIPES, SCHEMES, QuantizeSettings
from pytest_qtests.records import QtestsError

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
REFERENCE = str(ZOO / "tiny-qwen3next")
CALIBRATION = str(ZOO / "task" / "calibration.jsonl")
ZOO_GROUP = 64  # the zoo's narrowest quantized input (the routed experts' down_proj)
EXPORTABLE = [(scheme, fmt) for fmt in FORMATS for scheme in SCHEMES if scheme in supported_schemes(fmt)]
NOT_EXPORTABLE = [(scheme, fmt) for fmt in FORMATS for scheme in SCHEMES if scheme not in supported_schemes(fmt)]
UNLOADABLE = [(s, f) for s, f in EXPORTABLE if unloadable_reason(QuantizeSettings(s, "default", f), RECIPES["default"])]
# (scheme, format, recipe): the default recipe for each offered combination, plus the recipes the
# refusals and the issue name: MXFP4 with the recommended recipe, INT8 with the experts kept
OFFERED = [(s, f, "default") for s, f in EXPORTABLE if (s, f) not in UNLOADABLE] + [
    ("MXFP4", "llm_compressor", "recommended"), ("INT8", "llm_compressor", "keep-experts")]


def label(scheme: str, fmt: str, recipe: str) -> str:
    return f"{scheme}-{fmt}-{recipe}".lower().replace("_", "-")


def settings(scheme: str, fmt: str, recipe: str) -> QuantizeSettings:
    return QuantizeSettings(scheme, recipe, fmt, nsamples=4, group_size=ZOO_GROUP if scheme in INTEGER_SCHEMES else None)


@pytest.mark.parametrize(("scheme", "fmt"), NOT_EXPORTABLE)
def test_a_combination_auto_round_cannot_export_is_refused_with_one_line(scheme, fmt):
    with pytest.raises(QtestsError, match=f"^auto-round cannot export {scheme} as {fmt}; that format takes ") as refused:
        check_request(QuantizeSettings(scheme, "default", fmt))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("scheme", "fmt"), UNLOADABLE)
def test_a_combination_no_engine_here_loads_is_refused_with_one_line_naming_the_fix(scheme, fmt):
    with pytest.raises(QtestsError, match="; (use|pip install) ") as refused:
        check_request(QuantizeSettings(scheme, "default", fmt))
    assert "\n" not in str(refused.value)


def test_the_refusals_are_the_measured_ones():
    """INT8 with its routed experts quantized and FP8_BLOCK in either format fail to load on every engine here:
    refused wherever this runs; auto_gptq is refused only where optimum or gptqmodel is missing."""
    assert {("INT8", "llm_compressor"), ("FP8_BLOCK", "auto_round"), ("FP8_BLOCK", "llm_compressor")} <= set(UNLOADABLE)
    assert {("MXFP4", "llm_compressor"), ("NVFP4", "llm_compressor"), ("W4A16", "auto_round")}.isdisjoint(UNLOADABLE)


def test_groups_that_do_not_divide_a_layer_are_refused_before_quantizing(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(QtestsError) as refused:
            quantize(REFERENCE, tmp_path / "out", QuantizeSettings("W4A16", "default", "llm_compressor", nsamples=4),
                     CALIBRATION)
    assert str(refused.value) == ("W4A16's groups of 128 do not divide the input size 64 of model.layers.0.mlp.experts "
                                  "and 3 more; pass --group-size 64")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Each offered combination, built with the CLI's defaults but for calibration size and the zoo's group
    size (``--seqlen`` stays at its default 2048: clamped to the zoo's context of 512). Two builds at a time
    in fresh processes: auto-round's RTN is single-threaded for most of a build (~50 s each on this CPU)."""
    root = tmp_path_factory.mktemp("roundtrip")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # before the pool starts: the workers inherit it
        with ProcessPoolExecutor(2, get_context("spawn")) as pool:
            provenances = list(pool.map(quantize, [REFERENCE] * len(OFFERED), [root / label(*c) for c in OFFERED],
                                        [settings(*c) for c in OFFERED], [CALIBRATION] * len(OFFERED)))
    assert {provenance["settings"]["seqlen"] for provenance in provenances} == {512}
    return {label(*combination): root / label(*combination) for combination in OFFERED}


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
