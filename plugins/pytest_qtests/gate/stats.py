"""Pure statistics for comparing a variant with its reference on the same items.

Why paired: reference and variant answer the *same* items, so item difficulty cancels in the per-item
difference and only the items where the two disagree carry evidence. An unpaired test (or a stored
number with a relative tolerance) pays for item-to-item variation that pairing removes; see
``benchmarks/power.py`` for how much sensitivity that costs.

Conventions shared by every test in this module:

- ``estimate`` is variant minus reference for rates, variant over reference for lengths.
- Tests are one-sided. ``alternative="less"`` asks for evidence that the true value lies below
  ``bound``; ``"greater"`` above it. The p-value is for that alternative.
- Intervals are two-sided at level ``1 - 2*alpha``: each end is the one-sided ``1 - alpha`` confidence
  bound, so the one-sided test at ``alpha`` rejects exactly when ``bound`` lies outside the interval on
  the tested side. The verdict and the printed interval therefore never disagree.
- Items are the unit. With several samples per item (repeats) average per item first
  (:func:`per_item_means`); the sign-flip test and the bootstrap draw items, never samples, because
  samples of one item are not independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
from pytest_qtests.lazy import LazyAttribute

# scipy is imported on first use (see lazy.py): the plugin is imported by every pytest start.
brentq = LazyAttribute("scipy.optimize", "brentq")
expit, logit, roots_jacobi = (LazyAttribute("scipy.special", name) for name in ("expit", "logit", "roots_jacobi"))
beta_distribution = LazyAttribute("scipy.stats", "beta")
binom, binomtest, norm = (LazyAttribute("scipy.stats", name) for name in ("binom", "binomtest", "norm"))

Alternative = Literal["less", "greater"]

# A statistic for the paired bootstrap: maps resampled (reference, variant) arrays whose last axis is
# the items to one value per resample.
PairedStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PairedTest:
    """Outcome of one paired one-sided test: the estimate, its interval and the p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    n_items: int


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")


def _check_alternative(alternative: str) -> None:
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', got {alternative!r}")


# --------------------------------------------------------------------------------------------------
# One model


def mean_or_none(values: Iterable[float]) -> float | None:
    """The plain mean of ``values`` (booleans count as 0 and 1): the share of correct or truncated samples.

    ``None`` for no values, so a table shows "no data" instead of a rate of 0 or a division error.
    """
    values = [float(value) for value in values]
    return sum(values) / len(values) if values else None


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for one model's accuracy (scipy's implementation).

    Wilson rather than Wald because Wald collapses to zero width at 0% and 100% accuracy, which tiny
    suites and strong models hit often.
    """
    if n <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def per_item_means(values: Sequence[float] | np.ndarray, item_ids: Sequence[str] | np.ndarray):
    """Average the samples of each item: returns ``(sorted unique item ids, mean per item)``.

    With ``--repeats K`` the K samples of one item share its difficulty, so treating them as K
    independent observations would overstate the evidence K-fold. Items are the unit.
    """
    values = np.asarray(values, dtype=float)
    ids = np.asarray(item_ids)
    if values.ndim != 1 or values.shape != ids.shape:
        raise ValueError(f"values and item_ids must be 1-D and equally long, got {values.shape} and {ids.shape}")
    if values.size == 0:
        raise ValueError("per_item_means needs at least one sample")
    unique_ids, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return unique_ids, np.bincount(inverse, weights=values) / counts


# --------------------------------------------------------------------------------------------------
# Paired binary outcomes (one sample per item, or repeats that always agree)


def discordant_counts(reference: np.ndarray, variant: np.ndarray) -> tuple[int, int]:
    """``(down, up)``: items where reference is 1 and variant 0, and items where the reverse holds."""
    reference = np.asarray(reference, dtype=bool)
    variant = np.asarray(variant, dtype=bool)
    return int(np.sum(reference & ~variant)), int(np.sum(~reference & variant))


def mcnemar_exact(down: int, up: int, alternative: Literal["less", "greater", "two-sided"] = "less") -> float:
    """Exact McNemar p-value: a binomial test of the discordant items against a fair coin.

    ``alternative`` is about the variant-minus-reference difference: ``"less"`` means evidence that the
    variant's rate is lower (more items went down than up). Only discordant items enter, which is why
    the paired test is so much more sensitive than comparing two accuracies.
    """
    discordant = down + up
    if discordant == 0:
        return 1.0
    scipy_alternative = {"less": "greater", "greater": "less", "two-sided": "two-sided"}[alternative]
    return float(binomtest(down, discordant, 0.5, alternative=scipy_alternative).pvalue)


def tango_restricted_mle(down: int, up: int, n: int, delta0: float) -> float:
    """Maximum-likelihood P(down) under the constraint P(up) - P(down) = delta0 (Tango 1998).

    Closed form: the positive root of ``2n q^2 - (down + up - delta0 (2n + down - up)) q
    - down delta0 (1 - delta0) = 0``.
    """
    a = 2.0 * n
    b = -(down + up) + delta0 * (2.0 * n + down - up)
    c = -down * delta0 * (1.0 - delta0)
    q = (-b + math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    return min(max(q, max(0.0, -delta0)), (1.0 - delta0) / 2.0)


def tango_score_statistic(down: int, up: int, n: int, delta0: float) -> float:
    """Tango's score statistic for H0: (variant - reference) rate difference equals ``delta0``.

    The score test estimates the discordance rate under the null, so it stays honest when no or few
    discordant items were seen (an exact conditional test cannot: it treats their count as fixed).
    At ``delta0 = 0`` it equals the asymptotic McNemar statistic ``(up - down) / sqrt(up + down)``.
    """
    q = tango_restricted_mle(down, up, n, delta0)
    # Since q >= max(0, -delta0), the variance is at least n|delta0|(1 - |delta0|); using that floor
    # keeps rounding from turning a near-zero bound into a spuriously huge statistic.
    floor = n * abs(delta0) * (1.0 - abs(delta0))
    variance = max(n * (2.0 * q + delta0 - delta0 * delta0), floor)
    numerator = up - down - n * delta0
    if variance <= 0.0:
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def _score_p_value(down: int, up: int, n: int, bound: float, alternative: Alternative) -> float:
    z = tango_score_statistic(down, up, n, bound)
    return float(norm.cdf(z) if alternative == "less" else norm.sf(z))


def _conditional_p_value(down: int, up: int, n: int, bound: float, alternative: Alternative) -> float:
    """Exact binomial test on the discordant items, the difference bound mapped to P(down | discordant).

    Given ``d`` discordant items the difference is ``(d/n)(1 - 2 pi)`` with ``pi`` the share that went
    down, so ``bound`` corresponds to ``pi0 = (1 - bound n / d) / 2``. At ``bound = 0`` this is exactly
    the exact McNemar test.
    """
    discordant = down + up
    pi0 = 0.5 if discordant == 0 else (1.0 - bound * n / discordant) / 2.0
    if discordant == 0 or pi0 >= 1.0 or pi0 <= 0.0:
        # The observed difference is pinned to 0 (no discordant items) or the bound lies beyond what the
        # discordant items could reach; conditionally the answer is certain.
        estimate = (up - down) / n
        holds = estimate < bound if alternative == "less" else estimate > bound
        return 0.0 if holds else 1.0
    scipy_alternative = "greater" if alternative == "less" else "less"
    return float(binomtest(down, discordant, pi0, alternative=scipy_alternative).pvalue)


def _score_interval(down: int, up: int, n: int, alpha: float) -> tuple[float, float]:
    """Invert Tango's score test: the deltas it does not reject one-sided at ``alpha`` on either side."""
    z_crit = norm.isf(alpha)
    estimate = (up - down) / n
    eps = 1e-12

    def solve(target: float, lo: float, hi: float, fallback: float) -> float:
        f_lo = tango_score_statistic(down, up, n, lo) - target
        f_hi = tango_score_statistic(down, up, n, hi) - target
        if f_lo == 0.0:
            return lo
        if f_hi == 0.0:
            return hi
        if np.sign(f_lo) == np.sign(f_hi):
            return fallback
        return float(brentq(lambda d: tango_score_statistic(down, up, n, d) - target, lo, hi, xtol=1e-10))

    low = solve(z_crit, -1.0 + eps, estimate, -1.0) if estimate > -1.0 else -1.0
    high = solve(-z_crit, estimate, 1.0 - eps, 1.0) if estimate < 1.0 else 1.0
    return low, high


def clopper_pearson(successes: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact binomial interval with ``alpha`` in each tail, from beta quantiles.

    The same interval as scipy's ``binomtest(...).proportion_ci(1 - 2*alpha, method="exact")``, about
    twenty times faster, which matters when the simulations call it thousands of times.
    """
    low = 0.0 if successes == 0 else float(beta_distribution.ppf(alpha, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta_distribution.isf(alpha, successes + 1, n - successes))
    return low, high


def _conditional_interval(down: int, up: int, n: int, alpha: float) -> tuple[float, float]:
    """Clopper-Pearson interval for the share of discordant items that went down, mapped to the difference."""
    discordant = down + up
    if discordant == 0:
        return 0.0, 0.0
    share_low, share_high = clopper_pearson(down, discordant, alpha)
    scale = discordant / n
    return scale * (1.0 - 2.0 * share_high), scale * (1.0 - 2.0 * share_low)


def paired_binary_test(
    down: int, up: int, n: int, bound: float, alternative: Alternative, alpha: float = 0.05
) -> PairedTest:
    """One-sided test of the paired rate difference against ``bound`` (a non-inferiority margin or 0).

    Two standard tests must both reject: Tango's score test (accounts for uncertainty in how often the
    two models disagree) and the exact conditional binomial test on the discordant items (exact when
    only a handful of items disagree, where the score test's normal approximation is too bold). The
    p-value is the larger of the two and the interval the union of their intervals, so the verdict
    matches the interval. At ``bound = 0`` the conditional test *is* exact McNemar.
    """
    _check_alpha(alpha)
    _check_alternative(alternative)
    if n <= 0 or down < 0 or up < 0 or down + up > n:
        raise ValueError(f"need 0 <= down + up <= n and n > 0, got down={down}, up={up}, n={n}")
    p_value = max(
        _score_p_value(down, up, n, bound, alternative),
        _conditional_p_value(down, up, n, bound, alternative),
    )
    score_low, score_high = _score_interval(down, up, n, alpha)
    cond_low, cond_high = _conditional_interval(down, up, n, alpha)
    return PairedTest(
        estimate=(up - down) / n,
        ci_low=min(score_low, cond_low),
        ci_high=max(score_high, cond_high),
        p_value=p_value,
        method="paired score + exact conditional test",
        n_items=n,
    )


# --------------------------------------------------------------------------------------------------
# Paired sign-flip test (per-item mean rates with sampled repeats)


def _resampling_inputs(name: str, reference, variant, alpha: float, alternative: str, n_resamples: int):
    """Validated float arrays for a resampling test: equal-length, non-empty, enough resamples."""
    _check_alpha(alpha)
    _check_alternative(alternative)
    reference = np.asarray(reference, dtype=float)
    variant = np.asarray(variant, dtype=float)
    if reference.ndim != 1 or reference.shape != variant.shape or reference.size == 0:
        raise ValueError(f"{name} needs two non-empty 1-D arrays of equal length")
    if n_resamples < 100:
        raise ValueError(f"{name} needs at least 100 resamples")
    return reference, variant


def paired_sign_flip_test(
    reference: Sequence[float] | np.ndarray,
    variant: Sequence[float] | np.ndarray,
    bound: float,
    alternative: Alternative,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Randomization test of the mean per-item difference: swap reference and variant within items.

    ``reference[i]`` and ``variant[i]`` are the same item's mean of 0/1 outcomes. Under "the two models are
    the same" the two values of an item are exchangeable, so flipping the sign of the item's difference
    at random generates the null distribution exactly: an identical model fails with probability at
    most ``alpha``, with few items too (a percentile bootstrap is slightly bolder than nominal). With
    one 0/1 sample per item this is McNemar's test in randomization form. A non-zero ``bound`` shifts
    the differences first (valid as the items grow, like a t-test).

    The interval inverts the test with the same random flips: flipping the items in a set ``S`` moves
    the verdict at ``bound = mean of the differences over S``, so the interval ends are order
    statistics of those subset means and ``p < alpha`` exactly when ``bound`` is outside it.
    """
    reference, variant = _resampling_inputs("paired_sign_flip_test", reference, variant, alpha, alternative, n_resamples)
    differences = variant - reference
    n = differences.size
    rng = np.random.default_rng(seed)
    switch_points: list[np.ndarray] = []
    unflipped = 0  # draws that flip nothing reproduce the observed statistic at every bound
    batch = max(1, min(n_resamples, 2_000_000 // n))
    for start in range(0, n_resamples, batch):
        flipped = rng.random((min(batch, n_resamples - start), n)) < 0.5
        counts = flipped.sum(axis=1)
        unflipped += int(np.sum(counts == 0))
        some = counts > 0
        switch_points.append((flipped[some] @ differences) / counts[some])
    subset_means = np.sort(np.concatenate(switch_points))
    # p(bound) = (1 + unflipped + #{subset means on the alternative's far side of bound}) / (B + 1).
    # For "less": draws with subset mean >= bound count; p < alpha  <=>  fewer than `needed` of them.
    needed = math.ceil(alpha * (n_resamples + 1) - 1 - unflipped)
    if alternative == "less":
        p_value = (1 + unflipped + int(np.sum(subset_means >= bound))) / (n_resamples + 1)
    else:
        p_value = (1 + unflipped + int(np.sum(subset_means <= bound))) / (n_resamples + 1)
    if needed <= 0 or needed > subset_means.size:
        ci_low, ci_high = -math.inf, math.inf
    else:
        ci_low, ci_high = float(subset_means[needed - 1]), float(subset_means[-needed])
    estimate = float(differences.mean())
    return PairedTest(
        estimate=estimate,
        ci_low=max(ci_low, -1.0),  # rates: a difference of means of 0/1 outcomes lies in [-1, 1]
        ci_high=min(ci_high, 1.0),
        p_value=p_value,
        method=f"paired sign-flip test over items, {n_resamples} flips",
        n_items=n,
    )


# --------------------------------------------------------------------------------------------------
# Paired bootstrap (length statistics)


def quantile_ratio(q: float) -> PairedStatistic:
    """Statistic: variant's q-quantile over the reference's (``0.5`` gives the ratio of medians).

    A resample whose reference quantile is 0 gives +inf when the variant's is positive and 1 when both
    are 0: "from nothing to something" is unboundedly longer, "nothing to nothing" is unchanged.
    """

    def statistic(reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
        ref_q = np.quantile(reference, q, axis=-1)
        var_q = np.quantile(variant, q, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(ref_q > 0, var_q / np.where(ref_q > 0, ref_q, 1.0), np.where(var_q > 0, np.inf, 1.0))
        return ratio

    statistic.__name__ = f"quantile_ratio({q})"
    return statistic


def _bootstrap_replicates(
    reference: np.ndarray, variant: np.ndarray, statistic: PairedStatistic, n_resamples: int, seed: int
) -> np.ndarray:
    """Statistic on ``n_resamples`` paired resamples of items (same indices for both models)."""
    rng = np.random.default_rng(seed)
    n = reference.shape[0]
    batch = max(1, min(n_resamples, 2_000_000 // max(n, 1)))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, batch):
        size = min(batch, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        out[start : start + size] = statistic(reference[idx], variant[idx])
    return out


def paired_bootstrap_test(
    reference: Sequence[float] | np.ndarray,
    variant: Sequence[float] | np.ndarray,
    statistic: PairedStatistic,
    bound: float,
    alternative: Alternative,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Paired percentile bootstrap over items: interval and one-sided p-value from the same replicates.

    ``reference[i]`` and ``variant[i]`` must be the same item (per-item means with repeats). The
    p-value is the share of replicates on the null side of ``bound``; the interval ends are the
    ``alpha`` and ``1 - alpha`` quantiles taken so that ``p < alpha`` exactly when ``bound`` is outside
    the interval. A fixed ``seed`` makes every verdict reproducible run to run.
    """
    reference, variant = _resampling_inputs("paired_bootstrap_test", reference, variant, alpha, alternative, n_resamples)
    estimate = float(statistic(reference, variant))
    replicates = _bootstrap_replicates(reference, variant, statistic, n_resamples, seed)
    # inverted_cdf: low > bound  <=>  share(replicates <= bound) < alpha, and symmetrically for high.
    ci_low = float(np.quantile(replicates, alpha, method="inverted_cdf"))
    ci_high = float(-np.quantile(-replicates, alpha, method="inverted_cdf"))
    if alternative == "less":
        p_value = float(np.mean(replicates >= bound))
    else:
        p_value = float(np.mean(replicates <= bound))
    return PairedTest(
        estimate=estimate,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        method=f"paired bootstrap over items, {n_resamples} resamples",
        n_items=int(reference.size),
    )


# --------------------------------------------------------------------------------------------------
# Multiplicity


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order.

    Several checks (tasks x metrics) each at ``alpha`` would raise the chance that *some* check fails
    on noise well above ``alpha``; rejecting where the adjusted p is below ``alpha`` keeps the
    family-wise false-alarm rate at ``alpha`` under any dependence between checks.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError("holm_adjust needs a flat sequence of p-values")
    if np.any((p < 0) | (p > 1) | np.isnan(p)):
        raise ValueError("p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


# --------------------------------------------------------------------------------------------------
# Power and sample size (``qtests plan``)


@dataclass(frozen=True)
class DesignVariance:
    """Variance of one item's contribution to an estimated accuracy difference.

    ``between_items`` comes from items differing (repeats cannot reduce it); ``within_item`` is
    sampling noise of a single sample per item (K repeats divide it by K). Greedy decoding has no
    within-item part, which is why repeats only pay off when sampling.
    """

    between_items: float
    within_item: float

    def per_item(self, repeats: int = 1) -> float:
        if repeats < 1:
            raise ValueError("repeats must be at least 1")
        return self.between_items + self.within_item / repeats


def beta_expectation(func: Callable[[np.ndarray], np.ndarray], a: float, b: float, nodes: int = 96) -> float:
    """E[func(p)] for p ~ Beta(a, b) by Gauss-Jacobi quadrature (exact weight, also for a or b < 1)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # scipy divides by zero in a branch it then discards
        x, w = roots_jacobi(nodes, b - 1.0, a - 1.0)
    return float(np.sum(w * func((1.0 + x) / 2.0)) / np.sum(w))


def _clip_probability(p: np.ndarray) -> np.ndarray:
    return np.clip(p, 1e-12, 1.0 - 1e-12)


def degrade(p: np.ndarray, shift: float) -> np.ndarray:
    """Variant's per-item success probability: the reference's, shifted down on the logit scale.

    A logit shift hurts borderline items most and leaves items that are always (or never) solved
    almost untouched, as quantization does to real models.
    """
    return expit(logit(_clip_probability(np.asarray(p, dtype=float))) - shift)


def logit_shift_for_drop(mean_of: Callable[[Callable[[np.ndarray], np.ndarray]], float], drop: float) -> float:
    """The logit shift whose mean accuracy loss, as measured by ``mean_of(func)``, equals ``drop``."""
    base = mean_of(lambda p: p)
    if not 0.0 <= drop < base:
        raise ValueError(f"drop must lie in [0, {base:.3f}), got {drop}")
    if drop == 0.0:
        return 0.0
    return float(brentq(lambda t: base - mean_of(lambda p: degrade(p, t)) - drop, 0.0, 60.0, xtol=1e-12))


def difficulty_model_variances(
    base_accuracy: float, drop: float, concentration: float = 2.0
) -> tuple[DesignVariance, DesignVariance]:
    """``(paired, unpaired)`` per-item variances of the accuracy difference under an item-difficulty model.

    Model: item success probability ``p_i ~ Beta(mean=base_accuracy, a+b=concentration)`` (small
    concentration = items are mostly always or never solved, as on real benchmarks); the variant's is
    :func:`degrade` of it with the shift that loses ``drop`` on average; each sample is a Bernoulli draw.
    Paired: variance of ``q_i - p_i`` across items plus sampling noise ``p(1-p) + q(1-q)``.
    Unpaired: each model's own variance across items plus the same sampling noise.
    """
    if not 0.0 < base_accuracy < 1.0:
        raise ValueError("base accuracy must lie strictly between 0 and 1")
    if concentration <= 0:
        raise ValueError("concentration must be positive")
    a, b = base_accuracy * concentration, (1.0 - base_accuracy) * concentration

    def mean_of(func: Callable[[np.ndarray], np.ndarray]) -> float:
        return beta_expectation(func, a, b)

    shift = logit_shift_for_drop(mean_of, drop)
    variant_mean = base_accuracy - drop
    within = mean_of(lambda p: p * (1 - p) + degrade(p, shift) * (1 - degrade(p, shift)))
    paired_between = mean_of(lambda p: (degrade(p, shift) - p) ** 2) - drop**2
    unpaired_between = (mean_of(lambda p: p**2) - base_accuracy**2) + (
        mean_of(lambda p: degrade(p, shift) ** 2) - variant_mean**2
    )
    return DesignVariance(max(paired_between, 0.0), within), DesignVariance(max(unpaired_between, 0.0), within)


def discordance_rate(paired: DesignVariance, drop: float) -> float:
    """Share of items on which one sample of each model disagrees: Var(difference) + drop^2."""
    return paired.per_item(1) + drop**2


def with_discordance(paired: DesignVariance, drop: float, discordance: float) -> DesignVariance:
    """Rescale a paired variance to a measured discordance rate, keeping its within-item share."""
    if discordance < drop:
        raise ValueError(f"discordance {discordance} cannot be below the drop {drop}: every lost item is discordant")
    if discordance > 1.0:
        raise ValueError("discordance is a share of items and cannot exceed 1")
    total = discordance - drop**2
    current = paired.per_item(1)
    within_share = paired.within_item / current if current > 0 else 1.0
    return DesignVariance(total * (1.0 - within_share), total * within_share)


def required_items(drop: float, margin: float, variance_per_item: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items needed so a one-sided level-``alpha`` test detects a true ``drop`` beyond ``margin`` with ``power``.

    Normal approximation ``n = ((z_{1-alpha} + z_power) sigma / (drop - margin))^2`` with ``sigma^2``
    the per-item variance of the difference (paired) or the sum of both models' (unpaired).
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError("power must lie strictly between 0 and 1")
    if drop <= margin:
        raise ValueError(f"the drop to detect ({drop}) must exceed the margin ({margin})")
    z = norm.isf(alpha) + norm.ppf(power)
    return max(1, math.ceil((z * z * variance_per_item) / (drop - margin) ** 2))


def mcnemar_power(n_items: int, drop: float, margin: float, discordance: float, alpha: float = 0.05) -> float:
    """Exact power of the gate's test with one 0/1 sample per item (its exact conditional part).

    The number of discordant items is ``Binomial(n, discordance)``; given ``d`` of them, the share that
    went down is ``(1 + drop/discordance)/2`` and the test rejects when that count clears the binomial
    critical value at ``(1 + margin n/d)/2``. Exact McNemar is discrete and conservative, so the normal
    approximation promises about 2-3 points more power than it delivers; planning with this does not.
    """
    _check_alpha(alpha)
    if not 0.0 <= drop <= discordance <= 1.0:
        raise ValueError(f"need 0 <= drop ({drop}) <= discordance ({discordance}) <= 1")
    discordant = np.arange(1, n_items + 1)
    weight = binom.pmf(discordant, n_items, discordance)
    keep = weight > 1e-15
    discordant, weight = discordant[keep], weight[keep]
    true_share = (1.0 + drop / discordance) / 2.0
    null_share = (1.0 + margin * n_items / discordant) / 2.0
    testable = null_share < 1.0
    discordant, weight, null_share = discordant[testable], weight[testable], null_share[testable]
    # Reject when P(X >= observed | null) < alpha, i.e. observed - 1 >= k with sf(k) < alpha.
    critical = binom.isf(alpha, discordant, null_share)
    critical = np.where(binom.sf(critical, discordant, null_share) < alpha, critical, critical + 1)
    return float(np.sum(weight * binom.sf(critical, discordant, true_share)))


def mcnemar_required_items(drop: float, margin: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Smallest item count whose exact :func:`mcnemar_power` reaches ``power`` (scanning up from the
    normal approximation's answer, since exact power is not monotone in n)."""
    approx = required_items(drop, margin, discordance - drop**2, alpha, power)
    n = max(1, int(approx * 0.8))
    while mcnemar_power(n, drop, margin, discordance, alpha) < power:
        n += max(1, n // 2000)
    return n


def minimum_detectable_drop(n_items: int, margin: float, variance_per_item: float, alpha: float = 0.05,
                            power: float = 0.8) -> float:
    """The smallest true drop a level-``alpha`` test on ``n_items`` items detects with ``power``.

    The inverse of :func:`required_items` (same normal approximation, so ``qtests plan`` and the
    INCONCLUSIVE verdict's "could have seen a drop of ..." agree): ``margin + (z_{1-alpha} + z_power)
    sigma / sqrt(n)``. Drops and margins are positive magnitudes in the worse direction.
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError("power must lie strictly between 0 and 1")
    if n_items < 1 or variance_per_item < 0:
        raise ValueError(f"need n_items >= 1 and a non-negative variance, got {n_items} and {variance_per_item}")
    return margin + (norm.isf(alpha) + norm.ppf(power)) * math.sqrt(variance_per_item / n_items)
