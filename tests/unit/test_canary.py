"""The canary's verdict (canary.py): degenerate share against the reference, and teacher-forced divergence."""

from __future__ import annotations

import json

import pytest

from pytest_qtests.evaluate.canary import (
    DIVERGENCE_MAX_MEAN_ABS_DELTA,
    DIVERGENCE_MIN_TOP1,
    CanaryDivergence,
    judge_canary,
)
from pytest_qtests.evaluate.divergence import PooledDivergence


def outcome(index: int, degenerate: bool, reason: str = "loop: ...") -> "ItemOutcome":
    from pytest_qtests.records import ItemOutcome

    return ItemOutcome(str(index), 0, not degenerate, False, 20, 10, True, None, degenerate,
                       [reason] if degenerate else [])


def pooled(mean_abs: float, top1: float | None) -> PooledDivergence:
    return PooledDivergence(texts=16, positions=900, mean_abs_logprob_delta=mean_abs, mean_kl=None if top1 is None else 0.1,
                            top1_agreement=top1, texts_diverged=3, first_divergences=(None,) * 16)


REFERENCE_CLEAN = [outcome(i, False) for i in range(16)]


def test_many_degenerate_outputs_fail_and_the_message_gives_both_counts():
    result = judge_canary([outcome(i, i < 8) for i in range(16)], REFERENCE_CLEAN, None, 320)
    assert not result.passed and result.degenerate_failed
    assert result.message.startswith("canary failed after 16 of 320 generations (5.0%): 8/16 outputs degenerate "
                                     "vs 0/16 for the reference, Fisher p=")
    assert "e.g. item 0: loop" in result.message


def test_a_degenerate_share_the_reference_shares_passes():
    both_bad = [outcome(i, i < 8) for i in range(16)]
    result = judge_canary(both_bad, both_bad, None, 320)
    assert result.passed and result.p_value > 0.5


def test_few_degenerate_outputs_pass_even_against_a_clean_reference():
    result = judge_canary([outcome(i, i < 3) for i in range(16)], REFERENCE_CLEAN, None, 320)  # 19% < 25%
    assert result.passed


@pytest.mark.parametrize(("mean_abs", "top1", "fails"), [
    (0.63, 0.917, False),  # int2-default on the zoo: much worse, still the same model
    (DIVERGENCE_MAX_MEAN_ABS_DELTA + 0.01, 0.95, True),
    (0.5, DIVERGENCE_MIN_TOP1 - 0.01, True),
    (4.0, 0.55, True),  # nvfp4-broken on the zoo
    (float("inf"), None, True),  # NaN log-probs from broken weights
])
def test_divergence_alone_fails_a_canary_whose_outputs_look_fine(mean_abs, top1, fails):
    divergence = CanaryDivergence(pooled(mean_abs, top1))
    result = judge_canary([outcome(i, False) for i in range(16)], REFERENCE_CLEAN, divergence, 320)
    assert result.passed is not fails
    assert "teacher-forced on the reference's 16 canary texts (900 tokens): mean |Δ logprob|" in result.message
    assert json.loads(json.dumps(divergence.to_dict()))["failed"] is fails  # finite JSON even for inf


def test_unmeasured_divergence_says_why_and_does_not_fail():
    divergence = CanaryDivergence(None, "the replay backend cannot score tokens")
    result = judge_canary([outcome(i, False) for i in range(16)], REFERENCE_CLEAN, divergence, 320)
    assert result.passed and "not measured (the replay backend cannot score tokens)" in result.message
    assert divergence.to_dict() == {"measured": False, "note": "the replay backend cannot score tokens"}


def test_junit_properties_carry_the_canary_numbers():
    result = judge_canary([outcome(i, True) for i in range(16)], REFERENCE_CLEAN, CanaryDivergence(pooled(3.3, 0.6)), 320)
    assert result.junit_properties() == {
        "canary.degenerate": 16, "canary.items": 16, "canary.full_run_generations": 320,
        "canary.mean_abs_logprob_delta": 3.3, "canary.top1_agreement": 0.6}


def test_a_canary_survives_the_round_trip_through_a_worker_row():
    """xdist workers publish runs as ``asdict`` JSON (run_store.py); the controller rebuilds the canary."""
    from dataclasses import asdict

    result = judge_canary([outcome(i, True) for i in range(16)], REFERENCE_CLEAN, CanaryDivergence(pooled(3.3, 0.6)), 320)
    rebuilt = type(result).from_dict(json.loads(json.dumps(asdict(result))))
    assert rebuilt == result and rebuilt.message == result.message
