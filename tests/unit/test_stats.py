"""Property tests of the pure statistics, checked against scipy and brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from scipy.optimize import minimize_scalar

from pytest_qtests.gate import stats

SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def paired_counts(draw, max_n: int = 400):
    n = draw(st.integers(1, max_n))
    down = draw(st.integers(0, n))
    up = draw(st.integers(0, n - down))
    return down, up, n


# -------------------------------------------------------------------------------------------------
# Mean


def test_mean_or_none_is_the_share_of_true_values_and_none_without_data():
    assert stats.mean_or_none(iter([True, False, True, True])) == 0.75
    assert stats.mean_or_none([2, 3.5]) == 2.75
    assert stats.mean_or_none([]) is None


# -------------------------------------------------------------------------------------------------
# Wilson


@SETTINGS
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_bounds_lie_in_unit_interval_and_contain_the_estimate(counts, confidence):
    k, n = counts
    low, high = stats.wilson_interval(k, n, confidence)
    assert 0.0 <= low <= k / n + 1e-12
    assert k / n - 1e-12 <= high <= 1.0


@SETTINGS
@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_matches_the_textbook_formula(counts):
    k, n = counts
    z = scipy_stats.norm.isf(0.025)
    p_hat = k / n
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    low, high = stats.wilson_interval(k, n, 0.95)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)
    with pytest.raises(ValueError):
        stats.wilson_interval(0, 0)


# -------------------------------------------------------------------------------------------------
# Per-item averaging


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(list("abcdefg")), st.floats(0, 1000)), min_size=1, max_size=60))
def test_per_item_means_equal_a_group_by_and_ignore_sample_order(samples):
    ids = [item for item, _ in samples]
    values = [value for _, value in samples]
    unique, means = stats.per_item_means(values, ids)
    groups: dict[str, list[float]] = {}
    for item, value in samples:
        groups.setdefault(item, []).append(value)
    assert list(unique) == sorted(groups)
    for item, mean in zip(unique, means):
        assert mean == pytest.approx(sum(groups[item]) / len(groups[item]), rel=1e-12, abs=1e-9)
    order = np.random.default_rng(0).permutation(len(samples))
    unique2, means2 = stats.per_item_means(np.array(values)[order], np.array(ids)[order])
    assert list(unique2) == list(unique)
    np.testing.assert_allclose(means2, means, rtol=1e-12, atol=1e-9)


def test_per_item_means_weight_items_not_samples():
    # Item "a" has 3 correct samples, item "b" 1 wrong one: sample accuracy 3/4, item accuracy 1/2.
    unique, means = stats.per_item_means([1, 1, 1, 0], ["a", "a", "a", "b"])
    assert list(unique) == ["a", "b"]
    assert means.tolist() == [1.0, 0.0]
    assert means.mean() == 0.5


def test_per_item_means_rejects_misaligned_input():
    with pytest.raises(ValueError):
        stats.per_item_means([1, 0], ["a"])


# -------------------------------------------------------------------------------------------------
# McNemar and the paired binary test


@SETTINGS
@given(st.integers(0, 300), st.integers(0, 300))
def test_mcnemar_exact_equals_scipy_binomtest_on_discordant_counts(down, up):
    assume(down + up > 0)
    assert stats.mcnemar_exact(down, up, "less") == scipy_stats.binomtest(down, down + up, 0.5, alternative="greater").pvalue
    assert stats.mcnemar_exact(down, up, "greater") == scipy_stats.binomtest(down, down + up, 0.5, alternative="less").pvalue
    assert stats.mcnemar_exact(down, up, "two-sided") == scipy_stats.binomtest(down, down + up, 0.5).pvalue


def test_mcnemar_without_discordant_items_has_no_evidence():
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_discordant_counts_count_each_direction():
    reference = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    variant = np.array([1, 0, 1, 0, 0, 0], dtype=bool)
    assert stats.discordant_counts(reference, variant) == (2, 1)


@SETTINGS
@given(paired_counts(200), st.floats(-0.9, 0.9))
def test_tango_restricted_mle_maximises_the_constrained_likelihood(counts, delta0):
    down, up, n = counts
    low, high = max(0.0, -delta0), (1.0 - delta0) / 2.0
    assume(high - low > 1e-6)

    def negative_log_likelihood(q: float) -> float:
        probs = (q, q + delta0, 1.0 - 2.0 * q - delta0)
        return -sum(c * math.log(max(p, 1e-300)) for c, p in zip((down, up, n - down - up), probs) if c)

    brute = minimize_scalar(negative_log_likelihood, bounds=(low, high), method="bounded", options={"xatol": 1e-13})
    closed_form = stats.tango_restricted_mle(down, up, n, delta0)
    assert negative_log_likelihood(closed_form) <= brute.fun + 1e-7


@SETTINGS
@given(paired_counts())
def test_tango_statistic_at_zero_is_the_asymptotic_mcnemar_statistic(counts):
    down, up, n = counts
    assume(down + up > 0)
    assert stats.tango_score_statistic(down, up, n, 0.0) == pytest.approx((up - down) / math.sqrt(up + down), rel=1e-9)


@SETTINGS
@given(paired_counts(), st.floats(-0.3, 0.3), st.sampled_from(["less", "greater"]), st.sampled_from([0.01, 0.05, 0.1]))
def test_paired_binary_verdict_matches_its_interval(counts, bound, alternative, alpha):
    down, up, n = counts
    result = stats.paired_binary_test(down, up, n, bound, alternative, alpha)
    assert result.ci_low - 1e-12 <= result.estimate <= result.ci_high + 1e-12
    assert -1.0 <= result.ci_low <= result.ci_high <= 1.0
    outside = result.ci_high < bound if alternative == "less" else result.ci_low > bound
    # Root finding is exact to ~1e-10: only assert away from that razor's edge.
    margin = min(abs(result.ci_high - bound), abs(result.ci_low - bound))
    assume(margin > 1e-7)
    assert (result.p_value < alpha) == outside


@SETTINGS
@given(paired_counts())
def test_paired_binary_test_at_zero_is_never_bolder_than_exact_mcnemar(counts):
    down, up, n = counts
    result = stats.paired_binary_test(down, up, n, 0.0, "less")
    assert result.p_value >= stats.mcnemar_exact(down, up, "less")


@SETTINGS
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.sampled_from([0.01, 0.05, 0.1]))
def test_clopper_pearson_equals_scipy_exact_interval(counts, alpha):
    k, n = counts
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    low, high = stats.clopper_pearson(k, n, alpha)
    assert low == pytest.approx(ci.low, abs=1e-9)
    assert high == pytest.approx(ci.high, abs=1e-9)


def test_no_discordant_items_cannot_show_harm_but_many_agreeing_items_show_non_inferiority():
    # 0 of 10 items disagree: too few to prove anything either way.
    assert stats.paired_binary_test(0, 0, 10, -0.02, "less").p_value == 1.0
    assert stats.paired_binary_test(0, 0, 10, -0.02, "greater").p_value > 0.05
    # 0 of 1000 items disagree: strong evidence the variant is not 2 pp worse.
    assert stats.paired_binary_test(0, 0, 1000, -0.02, "greater").p_value < 0.001


# -------------------------------------------------------------------------------------------------
# Paired bootstrap


@st.composite
def paired_samples(draw):
    n = draw(st.integers(5, 80))
    reference = draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=n, max_size=n))
    shifts = draw(st.lists(st.floats(-200, 200, allow_nan=False), min_size=n, max_size=n))
    variant = [max(0.0, r + s) for r, s in zip(reference, shifts)]
    return np.array(reference), np.array(variant)


def mean_difference(reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    return np.mean(variant, axis=-1) - np.mean(reference, axis=-1)


@settings(max_examples=60, deadline=None)
@given(paired_samples(), st.floats(-100, 100), st.sampled_from(["less", "greater"]))
def test_bootstrap_interval_contains_the_mean_difference_and_matches_the_verdict(samples, bound, alternative):
    reference, variant = samples
    result = stats.paired_bootstrap_test(reference, variant, mean_difference, bound, alternative, 0.05, 500, seed=1)
    assert result.ci_low - 1e-9 <= result.estimate <= result.ci_high + 1e-9
    outside = result.ci_high < bound if alternative == "less" else result.ci_low > bound
    assert (result.p_value < 0.05) == outside


@settings(max_examples=40, deadline=None)
@given(paired_samples(), st.floats(0.5, 2.0))
def test_bootstrap_ratio_of_medians_verdict_matches_interval(samples, bound):
    reference, variant = samples
    assume(np.median(reference) > 0)
    result = stats.paired_bootstrap_test(reference, variant, stats.quantile_ratio(0.5), bound, "greater", 0.05, 500, seed=3)
    assert result.ci_low <= result.ci_high
    assert (result.p_value < 0.05) == (result.ci_low > bound)
    assert result.estimate == pytest.approx(np.median(variant) / np.median(reference))


def test_bootstrap_is_reproducible_with_a_seed_and_varies_without():
    rng = np.random.default_rng(5)
    reference = rng.gamma(4, 100, 300)
    variant = reference * rng.lognormal(0.1, 0.3, 300)
    one = stats.paired_bootstrap_test(reference, variant, stats.quantile_ratio(0.5), 1.0, "greater", seed=7)
    two = stats.paired_bootstrap_test(reference, variant, stats.quantile_ratio(0.5), 1.0, "greater", seed=7)
    other = stats.paired_bootstrap_test(reference, variant, stats.quantile_ratio(0.5), 1.0, "greater", seed=8)
    assert one == two
    assert (one.ci_low, one.ci_high) != (other.ci_low, other.ci_high)


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(11)
    reference = rng.gamma(3, 120, 400)
    variant = reference * rng.lognormal(0.15, 0.25, 400)
    ours = stats.paired_bootstrap_test(reference, variant, stats.quantile_ratio(0.5), 1.0, "greater", 0.05, 4000, seed=2)

    def ratio_of_medians(r, v, axis=-1):
        return np.median(v, axis=axis) / np.median(r, axis=axis)

    theirs = scipy_stats.bootstrap(
        (reference, variant), ratio_of_medians, paired=True, vectorized=True, n_resamples=4000,
        confidence_level=0.90, method="percentile", rng=np.random.default_rng(3),
    ).confidence_interval
    assert ours.ci_low == pytest.approx(theirs.low, abs=0.02)
    assert ours.ci_high == pytest.approx(theirs.high, abs=0.02)


def test_quantile_ratio_handles_zero_reference_resamples():
    statistic = stats.quantile_ratio(0.5)
    ratios = statistic(np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]), np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]]))
    assert ratios.tolist() == [1.0, 1.5]
    assert statistic(np.array([0.0, 0.0]), np.array([5.0, 5.0])) == np.inf


# -------------------------------------------------------------------------------------------------
# Paired sign-flip test


@st.composite
def per_item_rates(draw):
    n = draw(st.integers(2, 80))
    repeats = draw(st.integers(1, 5))
    reference = draw(st.lists(st.integers(0, repeats), min_size=n, max_size=n))
    variant = draw(st.lists(st.integers(0, repeats), min_size=n, max_size=n))
    return np.array(reference) / repeats, np.array(variant) / repeats


@settings(max_examples=80, deadline=None)
@given(per_item_rates(), st.floats(-0.5, 0.5), st.sampled_from(["less", "greater"]), st.sampled_from([0.05, 0.1]))
def test_sign_flip_verdict_matches_its_interval(rates, bound, alternative, alpha):
    reference, variant = rates
    result = stats.paired_sign_flip_test(reference, variant, bound, alternative, alpha, 500, seed=4)
    assert -1.0 <= result.ci_low <= result.ci_high <= 1.0
    outside = result.ci_high < bound if alternative == "less" else result.ci_low > bound
    assert (result.p_value < alpha) == outside


@settings(max_examples=40, deadline=None)
@given(per_item_rates())
def test_sign_flip_interval_contains_the_estimate_with_enough_items(rates):
    reference, variant = rates
    assume(reference.size >= 20)
    result = stats.paired_sign_flip_test(reference, variant, 0.0, "less", 0.05, 1000, seed=5)
    assert result.ci_low <= result.estimate <= result.ci_high


def test_sign_flip_p_value_agrees_with_scipy_permutation_test():
    rng = np.random.default_rng(8)
    p = rng.beta(0.8, 0.2, 150)
    reference = (rng.random((150, 4)) < p[:, None]).mean(1)
    variant = (rng.random((150, 4)) < np.clip(p - 0.04, 0, 1)[:, None]).mean(1)
    ours = stats.paired_sign_flip_test(reference, variant, 0.0, "less", n_resamples=20000, seed=1)
    theirs = scipy_stats.permutation_test(
        (reference, variant), lambda r, v, axis=-1: np.mean(v - r, axis=axis), permutation_type="samples",
        alternative="less", n_resamples=20000, vectorized=True, rng=np.random.default_rng(2),
    )
    assert ours.p_value == pytest.approx(theirs.pvalue, abs=0.006)


def test_sign_flip_false_alarm_rate_is_at_most_alpha_for_identical_models():
    # Exact under exchangeability: over many data sets *and* flip seeds the rate stays at alpha.
    rng = np.random.default_rng(12)
    p = rng.beta(0.8, 0.2, 60)
    alarms = 0
    for run in range(1000):
        reference = (rng.random((60, 3)) < p[:, None]).mean(1)
        variant = (rng.random((60, 3)) < p[:, None]).mean(1)
        alarms += stats.paired_sign_flip_test(reference, variant, 0.0, "less", 0.05, 200, seed=run).p_value < 0.05
    assert alarms / 1000 <= 0.05 + 1.96 * math.sqrt(0.05 * 0.95 / 1000)


# -------------------------------------------------------------------------------------------------
# Holm


def holm_by_closed_testing(p_values: list[float]) -> list[float]:
    """Reference: Holm is closed testing with Bonferroni tests of every intersection hypothesis."""
    m = len(p_values)
    adjusted = []
    for i in range(m):
        worst = 0.0
        for size in range(1, m + 1):
            for subset in itertools.combinations(range(m), size):
                if i in subset:
                    worst = max(worst, min(1.0, size * min(p_values[j] for j in subset)))
        adjusted.append(worst)
    return adjusted


@SETTINGS
@given(st.lists(st.floats(0, 1), min_size=1, max_size=7))
def test_holm_equals_closed_testing_reference(p_values):
    assert stats.holm_adjust(p_values) == pytest.approx(holm_by_closed_testing(p_values), abs=1e-12)


@SETTINGS
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_is_monotone_and_never_below_raw_p(p_values):
    adjusted = stats.holm_adjust(p_values)
    for raw, adj in zip(p_values, adjusted):
        assert raw <= adj <= 1.0
    for (raw_a, adj_a), (raw_b, adj_b) in itertools.combinations(zip(p_values, adjusted), 2):
        if raw_a <= raw_b:
            assert adj_a <= adj_b
        else:
            assert adj_b <= adj_a


def test_holm_rejects_invalid_p_values():
    with pytest.raises(ValueError):
        stats.holm_adjust([0.2, 1.5])


# -------------------------------------------------------------------------------------------------
# Power and sample size


@pytest.mark.parametrize("a, b", [(0.4, 0.1), (0.8, 0.2), (1.6, 0.4), (3.0, 2.0)])
def test_beta_expectation_matches_scipy_moments(a, b):
    assert stats.beta_expectation(lambda p: p, a, b) == pytest.approx(scipy_stats.beta.mean(a, b), rel=1e-9)
    second = stats.beta_expectation(lambda p: p * p, a, b)
    assert second - scipy_stats.beta.mean(a, b) ** 2 == pytest.approx(scipy_stats.beta.var(a, b), rel=1e-7)


@pytest.mark.parametrize("base, drop, concentration", [(0.8, 0.05, 1.0), (0.6, 0.1, 2.0), (0.9, 0.03, 0.5)])
def test_difficulty_model_variances_agree_with_monte_carlo(base, drop, concentration):
    paired, unpaired = stats.difficulty_model_variances(base, drop, concentration)
    rng = np.random.default_rng(0)
    p = rng.beta(base * concentration, (1 - base) * concentration, 400_000)
    shift = stats.logit_shift_for_drop(
        lambda f: stats.beta_expectation(f, base * concentration, (1 - base) * concentration), drop
    )
    q = stats.degrade(p, shift)
    assert q.mean() == pytest.approx(base - drop, abs=0.002)
    reference = rng.random(p.size) < p
    variant = rng.random(p.size) < q
    difference = variant.astype(float) - reference
    assert paired.per_item(1) == pytest.approx(difference.var(), rel=0.02)
    assert stats.discordance_rate(paired, drop) == pytest.approx(np.mean(reference != variant), rel=0.02)
    # Unpaired with one sample: the two binomial variances.
    assert unpaired.per_item(1) == pytest.approx(base * (1 - base) + (base - drop) * (1 - base + drop), rel=1e-6)
    # Four repeats: variance of the per-item mean difference.
    four = (rng.random((p.size, 4)) < q[:, None]).mean(1) - (rng.random((p.size, 4)) < p[:, None]).mean(1)
    assert paired.per_item(4) == pytest.approx(four.var(), rel=0.03)


@SETTINGS
@given(st.floats(0.01, 0.2), st.floats(0.0, 0.02), st.floats(0.02, 0.5), st.sampled_from([0.01, 0.05]), st.floats(0.5, 0.95))
def test_required_items_is_the_smallest_n_reaching_the_power(drop, margin, variance, alpha, power):
    assume(drop - margin > 0.005)
    def normal_power(n: int) -> float:
        return scipy_stats.norm.cdf((drop - margin) * math.sqrt(n / variance) - scipy_stats.norm.isf(alpha))

    n = stats.required_items(drop, margin, variance, alpha, power)
    assert normal_power(n) >= power - 1e-9
    if n > 1:
        assert normal_power(n - 1) < power


def test_with_discordance_keeps_the_within_item_share():
    paired, _ = stats.difficulty_model_variances(0.8, 0.05, 1.0)
    rescaled = stats.with_discordance(paired, 0.05, 0.10)
    assert stats.discordance_rate(rescaled, 0.05) == pytest.approx(0.10)
    assert rescaled.within_item / rescaled.per_item(1) == pytest.approx(paired.within_item / paired.per_item(1))
    with pytest.raises(ValueError):
        stats.with_discordance(paired, 0.05, 0.03)


@pytest.mark.parametrize("n, drop, margin, discordance", [(30, 0.1, 0.0, 0.3), (40, 0.05, 0.02, 0.2), (25, 0.2, 0.05, 0.25)])
def test_mcnemar_power_equals_enumerating_every_outcome(n, drop, margin, discordance):
    p_down, p_up = (discordance + drop) / 2, (discordance - drop) / 2
    exact = 0.0
    for down in range(n + 1):
        for up in range(n - down + 1):
            probability = scipy_stats.multinomial.pmf([down, up, n - down - up], n, [p_down, p_up, 1 - discordance])
            if stats._conditional_p_value(down, up, n, -margin, "less") < 0.05:
                exact += probability
    assert stats.mcnemar_power(n, drop, margin, discordance, 0.05) == pytest.approx(exact, abs=1e-9)


def test_mcnemar_required_items_reaches_the_power_and_needs_more_than_the_normal_approximation():
    n = stats.mcnemar_required_items(0.05, 0.0, 0.17, 0.05, 0.8)
    assert stats.mcnemar_power(n, 0.05, 0.0, 0.17) >= 0.8
    assert stats.mcnemar_power(n - 5, 0.05, 0.0, 0.17) < 0.8
    assert n > stats.required_items(0.05, 0.0, 0.17 - 0.05**2)
