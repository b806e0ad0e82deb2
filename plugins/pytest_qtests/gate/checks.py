"""Paired checks: one verdict per check of a variant against its reference, item by item.

Decision rule (``mode="evidence-of-harm"``, the default): a check FAILS only when the data show, at
one-sided confidence ``1 - alpha``, that the variant is worse than the tolerated margin - the one-sided
test of "not worse than the margin" rejects, equivalently the whole ``1 - 2*alpha`` interval lies on
the bad side of the margin. Consequences, chosen on purpose:

- An identical model fails with probability at most ``alpha`` (less with a non-zero margin), so a gate
  never goes red on sampling noise alone.
- Too few items can never fail a check: no evidence, no failure. A variant that is really worse passes
  until there are enough items to show it; ``qtests plan`` tells how many that takes.

``mode="non-inferiority"`` is the strict reading: a check PASSES only when the data show the variant is
within the margin (the interval lies entirely on the good side). Small runs then fail. Within one
variant, every non-inferiority claim must hold at once (intersection-union), so no multiplicity
correction is needed there; evidence-of-harm checks are Holm-adjusted by
:func:`pytest_qtests.gate.multiplicity.apply_gatekeeping`.

Which test decides (see :mod:`pytest_qtests.gate.stats`): one 0/1 sample per item (or repeats that always
agree) - Tango's score test and the exact conditional binomial test must both reject (at a 0 margin
the latter is exact McNemar); sampled repeats - a sign-flip randomization test over per-item means;
lengths - a paired bootstrap over items with a fixed seed. The printed interval is two-sided at
``1 - 2*alpha`` ("90% CI" at alpha 0.05) because its ends are the one-sided ``1 - alpha`` bounds the
verdict uses, so verdict and interval always agree.

Every paired check has one shape: a pure function from per-sample arrays aligned by (item, sample),
their item ids, a :class:`~pytest_qtests.gate.tolerances.Tolerance` and ``alpha`` to a
:class:`CheckResult` (:func:`check_rate` for 0/1 outcomes, :func:`check_ratio` for lengths). The
``--fail-on`` grammar lives in :mod:`pytest_qtests.gate.tolerances`, the family of checks in
:mod:`pytest_qtests.gate.multiplicity`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from pytest_qtests.gate.stats import (
    PairedTest,
    discordant_counts,
    mcnemar_exact,
    paired_binary_test,
    paired_bootstrap_test,
    paired_sign_flip_test,
    per_item_means,
    quantile_ratio,
)
from pytest_qtests.gate.sequential import paired_differences, ratio_of_share, share_of_ratio
from pytest_qtests.gate.tolerances import CHECK_SPECS, CheckSpec, Tolerance, is_ratio, parse_gate_mode
from pytest_qtests.gate.verdict import format_mde, passes, rate_mde, share_mde, verdict_of_interval
from pytest_qtests.records import ItemOutcome, QtestsError


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict with everything a report, a JUnit property or a reader needs.

    ``estimate`` is variant minus reference for rates and variant over reference for ratios;
    ``margin`` is the bound it is judged against in the same units; the interval is two-sided at level
    ``confidence = 1 - 2*alpha`` (each end a one-sided ``1 - alpha`` bound). ``p_value`` belongs to the
    one-sided test that decides; ``adjusted_p_value`` is set by
    :func:`~pytest_qtests.gate.multiplicity.apply_gatekeeping`.
    """

    check: str
    mode: str
    reference_value: float | None
    variant_value: float
    estimate: float
    ci_low: float | None
    ci_high: float | None
    confidence: float | None
    margin: float
    p_value: float | None
    alpha: float
    passed: bool
    message: str
    method: str
    n_items: int
    adjusted_p_value: float | None = None
    summary: str = ""  # "accuracy 0.815 vs 0.870 reference (...)": the facts, without the verdict
    limit_text: str = ""  # the margin as written for readers
    evidence: str = ""  # the test and its counts, e.g. "31 items lost, 9 gained"
    details: Mapping[str, Any] = field(default_factory=dict)
    verdict: str = ""  # PASS, FAIL or INCONCLUSIVE (gate/verdict.py); "" for absolute checks
    decided_look: int | None = None  # --stop-early: the look whose confidence sequence decided it
    mde: float | None = None  # smallest change this run could detect at its level, power 0.8 (rate or ratio)

    def junit_properties(self) -> dict[str, Any]:
        """Flat ``name -> value`` pairs for pytest's ``record_property`` (JUnit XML)."""
        props: dict[str, Any] = {
            f"{self.check}.mode": self.mode,
            f"{self.check}.reference": self.reference_value,
            f"{self.check}.variant": self.variant_value,
            f"{self.check}.estimate": self.estimate,
            f"{self.check}.ci_low": self.ci_low,
            f"{self.check}.ci_high": self.ci_high,
            f"{self.check}.confidence": self.confidence,
            f"{self.check}.margin": self.margin,
            f"{self.check}.p_value": self.p_value,
            f"{self.check}.adjusted_p_value": self.adjusted_p_value,
            f"{self.check}.passed": self.passed,
            f"{self.check}.verdict": self.verdict or None,
            f"{self.check}.decided_look": self.decided_look,
            f"{self.check}.mde": self.mde,
            f"{self.check}.n_items": self.n_items,
        }
        # Paired 0/1 checks: the discordant counts and the exact McNemar p-value they give, so a reader
        # can redo the test by hand (``scipy.stats.binomtest(reference_only, discordant, 0.5)``).
        for key, name in (("down", "reference_only"), ("up", "variant_only"), ("mcnemar_exact_p", "mcnemar_exact_p"),
                          ("rtol", "rtol")):
            if key in self.details:
                props[f"{self.check}.{name}"] = self.details[key]
        # Plain Python values: xdist sends these between processes and cannot serialize numpy scalars.
        return {key: value.item() if isinstance(value, np.generic) else value
                for key, value in props.items() if value is not None}


def decide(p_value: float, alpha: float, mode: str) -> bool:
    """``passed`` for a p-value of the mode's one-sided test: evidence of harm fails on rejection,
    non-inferiority passes on it."""
    if mode == "evidence-of-harm":
        return not p_value < alpha
    return p_value < alpha


def _format_p(p_value: float, resolution: float | None = None) -> str:
    if resolution is not None and p_value < resolution:
        return f"p<{resolution:.2g}"
    if p_value < 1e-4:
        return f"p={p_value:.1e}"
    return f"p={p_value:.2g}"


def verdict_message(result: CheckResult) -> str:
    """The one-line message: facts, verdict against the margin, p-value (raw and adjusted), evidence.

    Public because whoever changes a result's p-value or verdict (Holm, a sequential gate) must
    rewrite its message from the same facts.
    """
    resolution = result.details.get("p_resolution")
    p_text = _format_p(result.p_value, resolution) if result.p_value is not None else result.method
    if result.adjusted_p_value is not None:
        family = result.details.get("family_size", "?")
        p_text += (f", accuracy-first weighted Holm over {family} checks: tested at {result.alpha:.2g}, "
                   f"family-adjusted {_format_p(result.adjusted_p_value, resolution)}")
    limit = f"{result.limit_text} {'limit' if is_ratio(result.check) else 'margin'}"
    if result.decided_look is not None:
        p_text += f"; decided at look {result.decided_look}"
    if result.verdict == "PASS":
        return f"{result.summary}: PASS, shown within the {limit} ({p_text}; {result.evidence})"
    if result.verdict == "FAIL":
        return f"{result.summary}: FAIL, shown worse than the {limit} ({p_text}; {result.evidence})"
    consequence = ("passes with a warning (evidence-of-harm)" if result.mode == "evidence-of-harm"
                   else "fails (non-inferiority needs it shown within the margin)")
    return (f"{result.summary}: INCONCLUSIVE, neither shown within nor worse than the {limit}; this run "
            f"could detect {format_mde(result.mde, is_ratio(result.check))} with power 0.8 ({p_text}; "
            f"{result.evidence}); {consequence}; more items would tell, see `qtests plan`")


def _alternative(spec: CheckSpec, mode: str):
    """Which side the one-sided test looks at: the bad side for evidence of harm, the good side otherwise."""
    bad = "less" if spec.worse == "lower" else "greater"
    if mode == "evidence-of-harm":
        return bad
    return "greater" if bad == "less" else "less"


def _validate(check: str, kind: str, alpha: float, mode: str, tol: Tolerance) -> CheckSpec:
    """The spec of ``check`` once alpha, mode and tolerance are known to fit a ``kind`` check."""
    if not 0.0 < alpha < 0.5:
        raise QtestsError(f"alpha must lie between 0 and 0.5 (e.g. 0.05), got {alpha}")
    parse_gate_mode(mode)
    if tol.check != check:
        raise ValueError(f"tolerance for {tol.check!r} given to the {check!r} check")
    spec = CHECK_SPECS[check]
    if spec.kind != kind:
        raise ValueError(f"{check!r} is a {spec.kind} check, not a {kind} check")
    return spec


def _per_item(reference, variant, item_ids) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-item means of two per-sample arrays aligned by (item, sample), and the samples per item.

    Items, not samples, are the unit of every paired test: repeats of one item are not independent.
    """
    reference = np.asarray(reference, dtype=float)
    variant = np.asarray(variant, dtype=float)
    item_ids = np.asarray(item_ids)
    if not (reference.shape == variant.shape == item_ids.shape) or reference.ndim != 1:
        raise QtestsError(
            f"reference ({reference.shape[0] if reference.ndim else 0}), variant "
            f"({variant.shape[0] if variant.ndim else 0}) and item ids ({item_ids.size}) must be aligned "
            f"per (item, sample); compare runs over the same items and repeats"
        )
    if reference.size == 0:
        raise QtestsError("no samples to compare; the task selected no items")
    _, ref_items = per_item_means(reference, item_ids)
    _, var_items = per_item_means(variant, item_ids)
    return ref_items, var_items, reference.size / ref_items.size


def _paired_result(
    check: str,
    tol: Tolerance,
    alpha: float,
    mode: str,
    reference_value: float,
    variant_value: float,
    test: PairedTest,
    evidence: str,
    details: Mapping[str, Any],
) -> CheckResult:
    """The verdict of a paired test, with the summary in the check's unit (points or a ratio)."""
    spec = CHECK_SPECS[check]
    level = f"{round((1 - 2 * alpha) * 100):g}% CI"
    if spec.kind == "ratio":
        values = f"{variant_value:.4g} vs {reference_value:.4g}"
        shift = f"x{test.estimate:.2f}, {level} [x{test.ci_low:.2f}, x{test.ci_high:.2f}]"
    else:
        values = f"{variant_value:.3f} vs {reference_value:.3f}"
        shift = f"Δ {test.estimate * 100:+.1f} pp, {level} [{test.ci_low * 100:+.1f}, {test.ci_high * 100:+.1f}]"
    result = CheckResult(
        check=check,
        mode=mode,
        reference_value=reference_value,
        variant_value=variant_value,
        estimate=test.estimate,
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        confidence=1 - 2 * alpha,
        margin=tol.limit(reference_value),
        p_value=test.p_value,
        alpha=alpha,
        passed=decide(test.p_value, alpha, mode),
        message="",
        method=test.method,
        n_items=test.n_items,
        summary=f"{spec.description} {values} reference ({shift}, {test.n_items} items)",
        limit_text=tol.describe(reference_value),
        evidence=evidence,
        details=details,
    )
    return with_verdict(result)


def with_verdict(result: CheckResult) -> CheckResult:
    """``result`` with its three-way verdict read off its interval, the pass/fail the mode gives it, the
    smallest change the run could detect at its level, and the message rewritten from those."""
    spec = CHECK_SPECS[result.check]
    assert result.ci_low is not None and result.ci_high is not None
    found = verdict_of_interval(result.ci_low, result.ci_high, result.margin, spec.worse)
    variance = float(result.details.get("difference_variance", 0.0))
    if spec.kind == "ratio":
        mde = ratio_of_share(share_mde(result.n_items, share_of_ratio(result.margin), variance, result.alpha))
    else:
        mde = rate_mde(result.n_items, abs(result.margin), variance, result.alpha)
    updated = dataclasses.replace(result, verdict=found, passed=passes(found, result.mode), mde=mde)
    return dataclasses.replace(updated, message=verdict_message(updated))


def check_rate(
    check: str,
    reference: Sequence[float] | np.ndarray,
    variant: Sequence[float] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    tol: Tolerance,
    alpha: float = 0.05,
    mode: str = "evidence-of-harm",
    n_resamples: int = 2000,
    seed: int = 0,
) -> CheckResult:
    """Paired check of a per-sample 0/1 outcome (accuracy, truncation, degenerate) against a tolerance.

    Arrays are aligned by (item_id, sample_index): ``reference[i]`` and ``variant[i]`` are the same
    item and sample. Samples are averaged per item first. When every item's mean is 0 or 1 (one sample
    per item, or repeats that always agree) the exact paired-binary test decides; otherwise (sampled
    repeats) the paired sign-flip test over items does (exact for an identical model).
    """
    spec = _validate(check, "rate", alpha, mode, tol)
    ref_items, var_items, samples_per_item = _per_item(reference, variant, item_ids)
    ref_rate, var_rate = float(ref_items.mean()), float(var_items.mean())
    bound = tol.limit(ref_rate)
    alternative = _alternative(spec, mode)

    details: dict[str, Any] = {"samples_per_item": samples_per_item,
                               "difference_variance": float(np.var(var_items - ref_items))}
    binary = bool(np.all((ref_items == 0) | (ref_items == 1)) and np.all((var_items == 0) | (var_items == 1)))
    test: PairedTest
    if binary:
        down, up = discordant_counts(ref_items, var_items)
        test = paired_binary_test(down, up, ref_items.size, bound, alternative, alpha)
        mcnemar_p = mcnemar_exact(down, up, "less" if spec.worse == "lower" else "greater")
        details.update(down=down, up=up, mcnemar_exact_p=mcnemar_p)
        evidence = (
            f"{down} items {spec.down_word}, {up} {spec.up_word}; "
            f"McNemar exact {_format_p(mcnemar_p)}"
        )
    else:
        test = paired_sign_flip_test(ref_items, var_items, bound, alternative, alpha, n_resamples, seed)
        details.update(p_resolution=1.0 / (n_resamples + 1))
        evidence = f"{test.method}, {samples_per_item:g} samples per item"
    return _paired_result(check, tol, alpha, mode, ref_rate, var_rate, test, evidence, details)


def check_ratio(
    check: str,
    reference: Sequence[float] | np.ndarray,
    variant: Sequence[float] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    tol: Tolerance,
    alpha: float = 0.05,
    mode: str = "evidence-of-harm",
    n_resamples: int = 2000,
    seed: int = 0,
) -> CheckResult:
    """Paired check of a length ratio: a quantile (median or p95) of per-item mean lengths, variant/reference.

    Fails on evidence that the ratio exceeds ``tol`` (e.g. 1.25). Quantized reasoning models think
    longer and hit the output cap; a ratio of medians catches the typical inflation and the p95 the
    long tail that turns into truncation. Paired bootstrap over items, fixed seed.
    """
    spec = _validate(check, "ratio", alpha, mode, tol)
    ref_items, var_items, samples_per_item = _per_item(reference, variant, item_ids)
    ref_value = float(np.quantile(ref_items, spec.quantile))
    var_value = float(np.quantile(var_items, spec.quantile))
    if ref_value <= 0:
        raise QtestsError(
            f"{check}: the reference's {spec.description} is 0, so a length ratio is undefined; "
            f"drop {check} from --fail-on for this task"
        )
    test = paired_bootstrap_test(
        ref_items, var_items, quantile_ratio(spec.quantile), tol.limit(ref_value), _alternative(spec, mode),
        alpha, n_resamples, seed,
    )
    details = {"p_resolution": 1.0 / n_resamples, "samples_per_item": samples_per_item,
               "difference_variance": float(np.var(paired_differences("ratio", ref_items, var_items)))}
    return _paired_result(check, tol, alpha, mode, ref_value, var_value, test, test.method, details)


def check_accuracy(ref_correct, var_correct, item_ids, tol: Tolerance, alpha: float = 0.05, **options) -> CheckResult:
    """Accuracy check: fails on evidence of a drop beyond ``tol`` (see :func:`check_rate`)."""
    return check_rate("accuracy", ref_correct, var_correct, item_ids, tol, alpha, **options)


def check_truncation(ref_truncated, var_truncated, item_ids, tol: Tolerance, alpha: float = 0.05, **options) -> CheckResult:
    """Truncation-rate check: fails on evidence of a rise beyond ``tol`` (see :func:`check_rate`)."""
    return check_rate("truncation", ref_truncated, var_truncated, item_ids, tol, alpha, **options)


def check_length(
    ref_tokens, var_tokens, item_ids, tol: Tolerance, alpha: float = 0.05, *, check: str = "length", **options
) -> CheckResult:
    """Output-length check (``length``, or ``length_p95``/``thinking_length`` via ``check``); see :func:`check_ratio`."""
    return check_ratio(check, ref_tokens, var_tokens, item_ids, tol, alpha, **options)


def check_absolute(
    check: str,
    value: float,
    expected: float,
    rtol: float,
    direction: Literal["higher", "lower"] | None = None,
    n_items: int = 0,
) -> CheckResult:
    """Stored-expectation mode (as vLLM CI does): compare one number with an expected one, no statistics.

    ``direction`` says which way is better (default: from :data:`~pytest_qtests.gate.tolerances.CHECK_SPECS`,
    e.g. higher accuracy, lower truncation). ``"higher"``: passes when ``value >= (1 - rtol) * expected``
    (vLLM's one-sided rtol); ``"lower"``: passes when ``value <= (1 + rtol) * expected``. Estimate and
    margin are measured from the expectation the way paired checks measure from the reference
    (difference for rates, ratio for lengths), so tables and ``results.json`` read the same. Offered for
    users who keep hand-set numbers; it cannot tell noise from harm, so it needs wide tolerances.
    """
    if rtol < 0:
        raise QtestsError(f"{check}: rtol must be non-negative, got {rtol}")
    if direction is None:
        direction = "higher" if check in CHECK_SPECS and CHECK_SPECS[check].worse == "lower" else "lower"
    if direction not in ("higher", "lower"):
        raise QtestsError(f"{check}: direction must be 'higher' or 'lower', got {direction!r}")
    if direction == "higher":
        threshold = (1.0 - rtol) * expected
        passed = value >= threshold
        relation = "at or above" if passed else "below"
    else:
        threshold = (1.0 + rtol) * expected
        passed = value <= threshold
        relation = "at or below" if passed else "above"
    relative = is_ratio(check) and expected > 0
    estimate = value / expected if relative else value - expected
    margin = threshold / expected if relative else threshold - expected
    sign = "-" if direction == "higher" else "+"
    limit_text = f"{expected:.4g} {sign} {rtol:.0%} = {threshold:.4g}"
    message = (
        f"{check} {value:.4g} is {relation} the expected {limit_text}: "
        f"{'passes' if passed else 'fails'} (absolute expectation, no confidence interval)"
    )
    return CheckResult(
        check=check,
        mode="absolute",
        reference_value=expected,
        variant_value=value,
        estimate=estimate,
        ci_low=None,
        ci_high=None,
        confidence=None,
        margin=margin,
        p_value=None,
        alpha=math.nan,
        passed=passed,
        message=message,
        method="absolute expectation",
        n_items=n_items,
        summary=f"{check} {value:.4g}",
        limit_text=limit_text,
        details={"rtol": rtol},
    )


# --------------------------------------------------------------------------------------------------
# From graded outcomes to verdicts


def align_outcomes(
    reference: Sequence[ItemOutcome], variant: Sequence[ItemOutcome]
) -> tuple[list[ItemOutcome], list[ItemOutcome]]:
    """Pair outcomes by (item_id, sample_index); both runs must cover exactly the same samples."""
    ref_by_key = {(o.item_id, o.sample_index): o for o in reference}
    var_by_key = {(o.item_id, o.sample_index): o for o in variant}
    if len(ref_by_key) != len(reference) or len(var_by_key) != len(variant):
        raise QtestsError("duplicate (item_id, sample_index) in the outcomes; each sample must appear once")
    missing = sorted(set(ref_by_key) - set(var_by_key))
    extra = sorted(set(var_by_key) - set(ref_by_key))
    if missing or extra:
        example = (missing or extra)[0]
        raise QtestsError(
            f"reference and variant cover different samples ({len(missing)} only in the reference, "
            f"{len(extra)} only in the variant, e.g. item {example[0]!r} sample {example[1]}); "
            f"compare runs over the same items and --repeats"
        )
    keys = sorted(ref_by_key)
    return [ref_by_key[k] for k in keys], [var_by_key[k] for k in keys]


# The paired check for each kind of check spec; all share one signature (see the module docstring).
PAIRED_CHECK_BY_KIND = {"rate": check_rate, "ratio": check_ratio}


def run_checks(
    reference: Sequence[ItemOutcome],
    variant: Sequence[ItemOutcome],
    tolerances: Mapping[str, Tolerance],
    alpha: float = 0.05,
    mode: str = "evidence-of-harm",
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[CheckResult]:
    """Every tolerated check of one variant on one task, *not yet* Holm-adjusted.

    Collect the results of all tasks of a variant, then call
    :func:`~pytest_qtests.gate.multiplicity.apply_gatekeeping` once on the lot, so the family covers
    everything that could fail that variant.
    """
    ref, var = align_outcomes(reference, variant)
    item_ids = np.array([o.item_id for o in ref])
    results = []
    for check, tol in tolerances.items():
        spec = CHECK_SPECS[check]
        ref_values = np.array([float(getattr(o, spec.outcome_field)) for o in ref])
        var_values = np.array([float(getattr(o, spec.outcome_field)) for o in var])
        paired_check = PAIRED_CHECK_BY_KIND[spec.kind]
        results.append(paired_check(check, ref_values, var_values, item_ids, tol, alpha, mode, n_resamples, seed))
    return results
