"""The sequential gate's statistics: accuracy-first weighted Holm, confidence sequences, decisions, MDE."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qtests.gate import gatekeeping, sequential, stats, verdict

SETTINGS = settings(max_examples=120, deadline=None)
p_values = st.floats(0.0, 1.0, allow_nan=False)


# -------------------------------------------------------------------------------------------------
# Accuracy-first weighted Holm


def test_weights_put_accuracy_first_and_sum_to_one():
    weights = gatekeeping.check_weights(["accuracy", "truncation", "length", "degenerate"])
    assert weights[0] == pytest.approx(gatekeeping.ACCURACY_SHARE)
    assert weights[1:] == pytest.approx([(1 - gatekeeping.ACCURACY_SHARE) / 3] * 3)
    assert sum(gatekeeping.check_weights(["accuracy", "accuracy", "length"])) == pytest.approx(1.0)
    assert gatekeeping.check_weights(["truncation", "length"]) == (0.5, 0.5)
    assert gatekeeping.check_weights(["accuracy"]) == (1.0,)


def _closed_testing(p: list[float], weights: list[float], alpha: float) -> list[bool]:
    """Reference: closed testing with weighted Bonferroni tests, weights renormalised within each intersection."""
    m = len(p)
    rejected = []
    for j in range(m):
        ok = True
        for size in range(1, m + 1):
            for subset in itertools.combinations(range(m), size):
                if j not in subset:
                    continue
                total = sum(weights[k] for k in subset)
                if not any(total > 0 and p[k] <= alpha * weights[k] / total for k in subset):
                    ok = False
        rejected.append(ok)
    return rejected


@SETTINGS
@given(st.lists(p_values, min_size=1, max_size=5), st.sampled_from([0.05, 0.1]))
def test_weighted_holm_is_the_closed_test_of_weighted_bonferroni(p, alpha):
    checks = ["accuracy"] + ["truncation"] * (len(p) - 1)
    weights = list(gatekeeping.check_weights(checks))
    allocation = gatekeeping.weighted_holm(lambda j, level: p[j] <= level, weights, alpha)
    assert list(allocation.rejected) == _closed_testing(p, weights, alpha)
    # The level beside each check agrees with its verdict (what the printed interval is computed at).
    for j, (rejected, level) in enumerate(zip(allocation.rejected, allocation.levels)):
        assert (p[j] <= level) == rejected


@SETTINGS
@given(st.lists(p_values, min_size=1, max_size=5))
def test_weighted_holm_never_rejects_when_no_p_value_clears_its_initial_level(p):
    """The first rejection needs p_j <= w_j alpha: on an identical model its chance is at most sum w_j alpha = alpha."""
    weights = [1.0 / len(p)] * len(p)
    allocation = gatekeeping.weighted_holm(lambda j, level: p[j] <= level, weights, 0.05)
    if all(pj > wj * 0.05 for pj, wj in zip(p, weights)):
        assert not any(allocation.rejected)


def test_the_int2_default_case_fails_with_an_interval_beyond_the_margin():
    """Issue 18's case: 160 items, 9 lost, 0 gained, margin -2 pp. Holm over four checks (three with p = 1)
    passed it with a 90% interval wholly beyond the margin; accuracy-first weights fail it, and the
    interval at the level used lies beyond the margin too."""
    accuracy = stats.paired_binary_test(9, 0, 160, -0.02, "less", 0.05)
    p = [accuracy.p_value, 1.0, 1.0, 1.0]
    assert stats.holm_adjust(p)[0] > 0.05  # the old rule's "no evidence"
    weights = gatekeeping.check_weights(["accuracy", "truncation", "length", "degenerate"])
    allocation = gatekeeping.weighted_holm(lambda j, level: p[j] <= level, weights, 0.05)
    assert allocation.rejected == (True, False, False, False)
    used = stats.paired_binary_test(9, 0, 160, -0.02, "less", allocation.levels[0])
    assert used.ci_high < -0.02
    assert verdict.verdict_of_interval(used.ci_low, used.ci_high, -0.02, "lower") == "FAIL"


def test_weighted_holm_refuses_weights_over_one():
    with pytest.raises(ValueError, match="sum to at most 1"):
        gatekeeping.weighted_holm(lambda j, level: False, [0.8, 0.8], 0.05)


# -------------------------------------------------------------------------------------------------
# Pieces of the sequential gate


@SETTINGS
@given(st.integers(1, 5000), st.one_of(st.none(), st.integers(1, 400)))
def test_looks_are_increasing_and_end_at_the_last_item(n, step):
    ends = sequential.look_ends(n, step)
    assert ends[-1] == n and all(b > a for a, b in zip(ends, ends[1:]))
    assert len(ends) <= math.ceil(n / (step or sequential.MIN_LOOK_ITEMS))


@SETTINGS
@given(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=50), st.integers(0, 2**32 - 1))
def test_seeded_order_is_a_reproducible_permutation_of_the_items(ids, seed):
    order = sequential.seeded_order(ids, seed)
    assert sorted(order) == sorted(set(ids)) and order == sequential.seeded_order(list(reversed(ids)), seed)


@SETTINGS
@given(st.floats(1.0, 50.0))
def test_the_length_transform_maps_ratios_and_back(ratio):
    share = sequential.share_of_ratio(ratio)
    assert 0.0 <= share < 1.0 and sequential.ratio_of_share(share) == pytest.approx(ratio)
    # A constant per-item ratio gives that share for every item.
    reference = np.array([10.0, 200.0, 3.0])
    differences = sequential.paired_differences("ratio", reference, reference * ratio)
    assert differences == pytest.approx([share] * 3)


def test_paired_differences_stay_in_minus_one_to_one_and_zero_lengths_count_as_unchanged():
    assert sequential.paired_differences("rate", np.array([1, 0, 0.5]), np.array([0, 1, 0.5])).tolist() == [-1, 1, 0]
    assert sequential.paired_differences("ratio", np.array([0.0, 0.0, 5.0]), np.array([0.0, 4.0, 0.0])).tolist() == [0, 1, -1]


@SETTINGS
@given(st.floats(-1, 1), st.floats(0, 1), st.floats(-1, 1), st.sampled_from(["lower", "higher"]))
def test_three_way_verdict_of_an_interval(low, width, margin, worse):
    high = min(1.0, low + width)
    found = verdict.verdict_of_interval(low, high, margin, worse)
    beyond = high < margin if worse == "lower" else low > margin
    within = low > margin if worse == "lower" else high < margin
    assert found == ("FAIL" if beyond else "PASS" if within else "INCONCLUSIVE")
    assert verdict.passes(found, "evidence-of-harm") == (found != "FAIL")
    assert verdict.passes(found, "non-inferiority") == (found == "PASS")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 0.0, 0.0, 0.0, 1.0]), min_size=20, max_size=120), st.integers(10, 50))
def test_the_sequence_only_narrows_and_covers_its_own_estimate(values, step):
    sequence = sequential.ConfidenceSequence(0.025)
    differences = np.array(values)
    previous = (-1.0, 1.0)
    for start in range(0, differences.size, step):
        sequence.extend(differences[start:start + step])
        low, high = sequence.bounds()
        assert previous[0] <= low <= high <= previous[1]
        previous = (low, high)
    assert sequence.n == differences.size


def test_a_sequence_at_a_larger_level_is_narrower():
    differences = np.random.default_rng(0).choice([-1.0, 0.0, 0.0, 1.0], size=300)
    narrow, wide = sequential.ConfidenceSequence(0.05), sequential.ConfidenceSequence(0.005)
    narrow.extend(differences), wide.extend(differences)
    relevelled = sequential.ConfidenceSequence(0.005)
    relevelled.extend(differences[:100]), relevelled.extend(differences[100:])
    relevelled.relevel(0.05)
    assert wide.bounds()[0] < narrow.bounds()[0] and narrow.bounds()[1] < wide.bounds()[1]
    assert relevelled.bounds() == narrow.bounds()


def test_sequence_covers_the_true_difference_at_every_look_in_simulation():
    """Identical models at a 0 margin, checked at every item: a wrong FAIL in at most ~alpha of the runs."""
    rng = np.random.default_rng(7)
    level, runs, n = 0.05, 80, 150
    wrong = 0
    for _ in range(runs):
        sequence = sequential.ConfidenceSequence(level)
        sequence.extend(rng.choice([-1.0, 0.0, 0.0, 0.0, 0.0, 1.0], size=n))
        wrong += sequence.bounds()[1] < 0  # running intersection: crossed at any item <=> crossed at the end
    assert wrong / runs <= level + 0.03


# -------------------------------------------------------------------------------------------------
# The gate over a variant's checks


def _family(margins=(-0.02, 0.05, sequential.share_of_ratio(1.25), 0.02)):
    names = ("accuracy", "truncation", "length", "degenerate")
    worse = ("lower", "higher", "higher", "higher")
    return [sequential.SequentialCheck(n, w, m) for n, w, m in zip(names, worse, margins)]


def _run(gate, differences, n, settled=False):
    """Feed ``differences`` look by look until every check is decided (or, with ``settled``, the verdict is)."""
    start = 0
    for end in sequential.look_ends(n):
        gate.observe([d[start:end] for d in differences])
        start = end
        if gate.settled if settled else gate.decided:
            break
    return gate


def test_a_large_drop_fails_early_and_hands_its_budget_on():
    rng = np.random.default_rng(1)
    n = 1000
    accuracy = rng.choice([-1.0] * 4 + [0.0] * 16, size=n)  # a 20 pp drop, every discordant item lost
    unchanged = np.zeros(n)
    length = rng.normal(0, 0.05, n)
    gate = _run(sequential.SequentialGate(_family(), 0.05), [accuracy, unchanged, length, unchanged], n)
    states = {s.check.name: s for s in gate.states}
    assert states["accuracy"].verdict == "FAIL" and states["accuracy"].decided_items <= 0.1 * n
    assert states["accuracy"].interval[1] < -0.02  # the printed interval is the one that decided
    assert gate.decided and all(states[c].verdict == "PASS" for c in ("truncation", "length", "degenerate"))
    # Accuracy's budget went to the other three in proportion (equal here): decided later, truncation was
    # decided at a third of alpha's sequence share instead of a fifteenth.
    assert states["truncation"].decided_items > states["accuracy"].decided_items
    assert states["truncation"].level == pytest.approx(0.05 * sequential.SEQUENCE_SHARE / 3)


def test_an_unchanged_check_at_a_zero_margin_stays_open_and_goes_to_the_fixed_test():
    n = 200
    zeros = np.zeros(n)
    gate = _run(sequential.SequentialGate(_family(margins=(0.0, 0.0, 0.0, 0.0)), 0.05), [zeros] * 4, n)
    assert not gate.decided and gate.items == n
    levels = gate.finish(lambda j, level: False)
    weights = gatekeeping.check_weights([c.name for c in _family()])
    assert levels == pytest.approx([(1 - sequential.SEQUENCE_SHARE) * w * 0.05 for w in weights])


def test_non_inferiority_gives_every_check_the_whole_alpha():
    gate = sequential.SequentialGate(_family(), 0.05, mode="non-inferiority")
    assert [s.sequence.level for s in gate.states] == [sequential.SEQUENCE_SHARE * 0.05] * 4


def test_checks_without_a_bounded_form_wait_for_the_end():
    checks = [sequential.SequentialCheck("accuracy", "lower", -0.02),
              sequential.SequentialCheck("length_p95", "higher", 0.1, bounded=False)]
    gate = _run(sequential.SequentialGate(checks, 0.05), [np.full(100, -1.0), np.zeros(100)], 100)
    assert gate.states[0].verdict == "FAIL" and gate.states[1].verdict is None and gate.items == 100
    # The FAIL handed all of accuracy's budget to the open check.
    assert gate.finish(lambda j, level: False)[1] == pytest.approx((1 - sequential.SEQUENCE_SHARE) * 0.05)


def test_an_unchanged_variant_stops_once_no_fail_is_within_reach():
    """Evidence of harm: rates at zero in both models can never be shown within +2 pp at 320 items, but a
    FAIL is out of reach long before the end, so the run stops there and every check stays open."""
    n = 320
    zeros = np.zeros(n)
    gate = sequential.SequentialGate(_family(margins=(-0.03, 0.03, sequential.share_of_ratio(1.1), 0.02)), 0.05,
                                     items_planned=n)
    _run(gate, [zeros] * 4, n, settled=True)
    assert gate.settled and not gate.decided and gate.items <= 0.3 * n
    assert gate.stop_reason == "no FAIL within reach of the open checks"
    assert all(s.out_of_reach and s.fail_chance < sequential.FUTILITY for s in gate.states)


def test_without_a_planned_end_or_in_non_inferiority_only_decisions_stop_the_run():
    n = 320
    zeros = np.zeros(n)
    for gate in (sequential.SequentialGate(_family(), 0.05),
                 sequential.SequentialGate(_family(), 0.05, mode="non-inferiority", items_planned=n)):
        _run(gate, [zeros] * 4, n, settled=True)
        assert all(s.fail_chance is None for s in gate.states) and gate.stop_reason != "no FAIL within reach of the open checks"


def test_the_first_fail_settles_the_variant_with_the_other_checks_still_open():
    rng = np.random.default_rng(3)
    n = 1000
    accuracy = rng.choice([-1.0] * 4 + [0.0] * 16, size=n)
    truncation = rng.choice([1.0] + [0.0] * 9, size=n)  # +10 pp against a +5 pp margin: would fail, later
    gate = _run(sequential.SequentialGate(_family(), 0.05, items_planned=n),
                [accuracy, truncation, np.zeros(n), np.zeros(n)], n, settled=True)
    states = {s.check.name: s for s in gate.states}
    assert states["accuracy"].verdict == "FAIL" and gate.items == states["accuracy"].decided_items <= 0.1 * n
    assert gate.stop_reason == "a check failed" and states["truncation"].verdict is None


@SETTINGS
@given(st.integers(10, 400), st.integers(1, 600), st.floats(-0.2, 0.2), st.sampled_from(["lower", "higher"]))
def test_the_predicted_fail_chance_grows_as_the_trend_turns_worse(n, left, shift, worse):
    rng = np.random.default_rng(n)
    base = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=n)
    toward_harm = -1.0 if worse == "lower" else 1.0
    chances = [sequential.predictive_fail_probability(np.clip(base + toward_harm * step, -1, 1), n + left, 0.02 * toward_harm,
                                                      worse, 0.01) for step in (0.0, abs(shift), 2 * abs(shift))]
    assert all(0.0 <= c <= 1.0 for c in chances)
    assert chances[0] <= chances[1] + 1e-12 <= chances[2] + 2e-12


def test_the_predicted_fail_chance_is_near_one_far_beyond_the_margin_and_near_zero_well_inside():
    beyond = np.concatenate([np.full(20, -1.0), np.zeros(80)])  # -20 pp against -3 pp, 100 of 320 items seen
    inside = np.zeros(100)
    assert sequential.predictive_fail_probability(beyond, 320, -0.03, "lower", 0.02) > 0.99
    assert sequential.predictive_fail_probability(inside, 320, -0.03, "lower", 0.02) < 0.01
    with pytest.raises(ValueError, match="items left"):
        sequential.predictive_fail_probability(inside, 100, -0.03, "lower", 0.02)


def test_observe_refuses_looks_of_unequal_size():
    gate = sequential.SequentialGate(_family(), 0.05)
    with pytest.raises(ValueError, match="same items"):
        gate.observe([np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3)])


# -------------------------------------------------------------------------------------------------
# Minimum detectable effect: the inverse of the plan's item count


@SETTINGS
@given(st.integers(10, 5000), st.floats(0.0, 0.05), st.floats(0.01, 0.5), st.sampled_from([0.01, 0.04, 0.05]))
def test_minimum_detectable_drop_inverts_required_items(n, margin, variance, alpha):
    drop = stats.minimum_detectable_drop(n, margin, variance, alpha)
    assert drop > margin
    assert stats.required_items(drop, margin, variance, alpha) == pytest.approx(n, abs=1)
