"""The verdict: tolerances (``--fail-on``), paired checks of a variant against its reference, Holm.

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
correction is needed there; evidence-of-harm checks are Holm-adjusted with :func:`apply_holm`.

Which test decides (see :mod:`pytest_qtests.gate.stats`): one 0/1 sample per item (or repeats that always
agree) - Tango's score test and the exact conditional binomial test must both reject (at a 0 margin
the latter is exact McNemar); sampled repeats - a sign-flip randomization test over per-item means;
lengths - a paired bootstrap over items with a fixed seed. The printed interval is two-sided at
``1 - 2*alpha`` ("90% CI" at alpha 0.05) because its ends are the one-sided ``1 - alpha`` bounds the
verdict uses, so verdict and interval always agree.

``--fail-on`` grammar, in the spirit of pytest-benchmark's ``--benchmark-compare-fail``:
``accuracy:-2pp,truncation:+5pp,length:1.25x``. Rates take ``pp`` (percentage points), a bare fraction
(``-0.02``) or ``%`` (relative to the reference's value, like pytest-benchmark's ``min:5%`` and vLLM's
rtol: ``accuracy:-2%`` tolerates a drop of 2% *of the reference accuracy*). Length ratios take ``1.25x``
or ``+25%``. The sign may be omitted; when given it must point the worse way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from pytest_qtests.records import ItemOutcome, QtestsError
from pytest_qtests.gate.stats import (
    PairedTest,
    discordant_counts,
    holm_adjust,
    mcnemar_exact,
    paired_binary_test,
    paired_bootstrap_test,
    paired_sign_flip_test,
    per_item_means,
    quantile_ratio,
)

GateMode = Literal["evidence-of-harm", "non-inferiority"]
GATE_MODES: tuple[str, ...] = ("evidence-of-harm", "non-inferiority")
FAIL_ON_EXAMPLE = "accuracy:-2pp,truncation:+5pp,length:1.25x"


@dataclass(frozen=True)
class CheckSpec:
    """What a ``--fail-on`` key measures and which way is worse."""

    kind: Literal["rate", "ratio"]
    outcome_field: str  # ItemOutcome attribute the check reads
    worse: Literal["lower", "higher"]
    description: str
    down_word: str = ""  # rates: what an item that goes 1 -> 0 is called
    up_word: str = ""  # rates: what an item that goes 0 -> 1 is called
    quantile: float = 0.5  # ratios: which quantile of the per-item lengths


CHECKS: dict[str, CheckSpec] = {
    "accuracy": CheckSpec("rate", "correct", "lower", "accuracy", "lost", "gained"),
    "truncation": CheckSpec(
        "rate", "truncated", "higher", "truncation rate", "no longer truncated", "newly truncated"
    ),
    "degenerate": CheckSpec(
        "rate", "degenerate", "higher", "degenerate-output rate", "no longer degenerate", "newly degenerate"
    ),
    "length": CheckSpec("ratio", "output_tokens", "higher", "median output tokens", quantile=0.5),
    "length_p95": CheckSpec("ratio", "output_tokens", "higher", "p95 output tokens", quantile=0.95),
    "thinking_length": CheckSpec("ratio", "thinking_tokens", "higher", "median thinking tokens", quantile=0.5),
}


@dataclass(frozen=True)
class Tolerance:
    """One parsed tolerance. ``value`` is signed the worse way (accuracy ``-0.02``, truncation ``+0.05``).

    For rates ``relative`` means ``value`` is a share of the reference's own rate; for ratios ``value``
    is the largest tolerated variant/reference ratio.
    """

    check: str
    value: float
    relative: bool
    text: str

    def limit(self, reference_value: float) -> float:
        """The bound on the estimate (rate difference or ratio) this tolerance allows."""
        if self.relative:
            return self.value * reference_value
        return self.value

    def describe(self, reference_value: float) -> str:
        """The margin as a reader wants it, e.g. ``-2 pp`` or ``-2% (-1.7 pp)`` or ``x1.25``."""
        if CHECKS[self.check].kind == "ratio":
            return f"x{self.value:g}"
        if self.relative:
            return f"{self.value * 100:+g}% ({self.limit(reference_value) * 100:+.2g} pp)"
        return f"{self.value * 100:+g} pp"


_NUMBER = re.compile(r"^(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>pp|%|x)?$")


def _expected_form(check: str) -> str:
    spec = CHECKS[check]
    if spec.kind == "ratio":
        return f"a ratio such as {check}:1.25x or {check}:+25%"
    sign = "-" if spec.worse == "lower" else "+"
    what = "drop" if spec.worse == "lower" else "rise"
    return (
        f"a {what} such as {check}:{sign}2pp (points), {check}:{sign}0.02 (fraction) "
        f"or {check}:{sign}10% (relative to the reference)"
    )


def parse_tolerance(check: str, value: str | float | int, source: str = "--fail-on") -> Tolerance:
    """Parse one tolerance value for ``check`` (a string like ``-2pp`` or, from a suite file, a number)."""
    if check not in CHECKS:
        raise QtestsError(f"{source}: unknown check {check!r}; known checks: {', '.join(sorted(CHECKS))}")
    spec = CHECKS[check]
    shown = f"{check}:{value}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QtestsError(f"{source}: cannot read {shown!r}; expected {_expected_form(check)}")
    text = str(value).strip() if isinstance(value, str) else repr(value)
    match = _NUMBER.match(text.replace(" ", ""))
    if match is None:
        raise QtestsError(f"{source}: cannot read {shown!r}; expected {_expected_form(check)}")
    sign, unit = match["sign"], match["unit"]
    magnitude = float(match["number"])

    if spec.kind == "ratio":
        if unit == "pp":
            raise QtestsError(f"{source}: {shown!r} uses points, but {check} is a ratio; expected {_expected_form(check)}")
        if unit == "%":
            if sign == "-":
                raise QtestsError(
                    f"{source}: {shown!r} would fail a variant no longer than the reference; "
                    f"expected {_expected_form(check)}"
                )
            ratio = 1.0 + magnitude / 100.0
        else:
            if sign == "-":
                raise QtestsError(f"{source}: {shown!r} is negative; expected {_expected_form(check)}")
            ratio = magnitude
        if ratio < 1.0:
            raise QtestsError(
                f"{source}: {shown!r} would fail a variant no longer than the reference; "
                f"expected {_expected_form(check)}"
            )
        return Tolerance(check, ratio, False, text)

    if unit == "x":
        raise QtestsError(f"{source}: {shown!r} is a ratio, but {check} is a rate; expected {_expected_form(check)}")
    bad_sign = "+" if spec.worse == "lower" else "-"
    if sign == bad_sign and magnitude != 0:
        direction = "rise" if spec.worse == "lower" else "drop"
        raise QtestsError(
            f"{source}: {shown!r} tolerates a {direction}, but {check} gets worse the other way; "
            f"expected {_expected_form(check)}"
        )
    fraction = magnitude / 100.0 if unit in ("pp", "%") else magnitude
    if fraction > 1.0:
        raise QtestsError(f"{source}: {shown!r} exceeds 100%; expected {_expected_form(check)}")
    signed = -fraction if spec.worse == "lower" else fraction
    return Tolerance(check, signed, unit == "%", text)


def parse_fail_on(text: str, source: str = "--fail-on") -> dict[str, Tolerance]:
    """Parse ``accuracy:-2pp,truncation:+5pp,length:1.25x`` into one :class:`Tolerance` per check."""
    tolerances: dict[str, Tolerance] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise QtestsError(
                f"{source}: empty entry in {text!r}; expected KEY:VALUE entries separated by commas, "
                f"e.g. {FAIL_ON_EXAMPLE}"
            )
        key, colon, value = entry.partition(":")
        key = key.strip()
        if not colon or not value.strip():
            raise QtestsError(f"{source}: {entry!r} has no value; expected KEY:VALUE, e.g. {FAIL_ON_EXAMPLE}")
        if key in tolerances:
            raise QtestsError(f"{source}: {key!r} is given twice in {text!r}; keep one")
        tolerances[key] = parse_tolerance(key, value, source)
    return tolerances


def parse_fail_on_mapping(mapping: Mapping[str, Any], source: str = "suite file fail_on") -> dict[str, Tolerance]:
    """The suite-file form: ``{"accuracy": "-2pp", "length": 1.25}`` (numbers: fractions or ratios)."""
    if not isinstance(mapping, Mapping):
        raise QtestsError(f"{source}: expected a mapping of check to tolerance, e.g. {{accuracy: -2pp, length: 1.25x}}")
    return {str(key): parse_tolerance(str(key), value, source) for key, value in mapping.items()}


def parse_gate_mode(text: str) -> GateMode:
    if text not in GATE_MODES:
        raise QtestsError(f"--gate-mode: unknown mode {text!r}; choose one of {', '.join(GATE_MODES)}")
    return text  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict with everything a report, a JUnit property or a reader needs.

    ``estimate`` is variant minus reference for rates and variant over reference for ratios;
    ``margin`` is the bound it is judged against in the same units; the interval is two-sided at level
    ``confidence = 1 - 2*alpha`` (each end a one-sided ``1 - alpha`` bound). ``p_value`` belongs to the
    one-sided test that decides; ``adjusted_p_value`` is set by :func:`apply_holm`.
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
            f"{self.check}.n_items": self.n_items,
        }
        # Paired 0/1 checks: the discordant counts and the exact McNemar p-value they give, so a reader
        # can redo the test by hand (``scipy.stats.binomtest(reference_only, discordant, 0.5)``).
        for key, name in (("down", "reference_only"), ("up", "variant_only"), ("mcnemar_exact_p", "mcnemar_exact_p"),
                          ("rtol", "rtol")):
            if key in self.details:
                props[f"{self.check}.{name}"] = self.details[key]
        return {key: value for key, value in props.items() if value is not None}


def _decide(p_value: float, alpha: float, mode: str) -> bool:
    """``passed`` for a p-value of the mode's one-sided test."""
    if mode == "evidence-of-harm":
        return not p_value < alpha
    return p_value < alpha


def _format_p(p_value: float, resolution: float | None = None) -> str:
    if resolution is not None and p_value < resolution:
        return f"p<{resolution:.2g}"
    if p_value < 1e-4:
        return f"p={p_value:.1e}"
    return f"p={p_value:.2g}"


def _verdict_text(result: CheckResult) -> str:
    """The one-line message: facts, verdict against the margin, p-value, evidence."""
    resolution = result.details.get("p_resolution")
    p_text = _format_p(result.p_value, resolution) if result.p_value is not None else ""
    if result.adjusted_p_value is not None:
        family = result.details.get("holm_family_size", "?")
        p_text += f", Holm-adjusted over {family} checks {_format_p(result.adjusted_p_value, resolution)}"
    limit = f"{result.limit_text} {'limit' if CHECKS.get(result.check, CHECKS['accuracy']).kind == 'ratio' else 'margin'}"
    if result.mode == "evidence-of-harm":
        if result.passed:
            return f"{result.summary}: no evidence it is worse than the {limit} ({p_text}; {result.evidence})"
        return f"{result.summary} is worse than the {limit}: {p_text} ({result.evidence})"
    if result.passed:
        return f"{result.summary} is shown within the {limit}: {p_text} ({result.evidence})"
    return (
        f"{result.summary} is not shown within the {limit}: {p_text} ({result.evidence}); "
        f"more items would tell, see `qtests plan`"
    )


def _alternative(spec: CheckSpec, mode: str):
    """Which side the one-sided test looks at: the bad side for evidence of harm, the good side otherwise."""
    bad = "less" if spec.worse == "lower" else "greater"
    if mode == "evidence-of-harm":
        return bad
    return "greater" if bad == "less" else "less"


def _validate_common(check: str, alpha: float, mode: str, tol: Tolerance) -> CheckSpec:
    if not 0.0 < alpha < 0.5:
        raise QtestsError(f"alpha must lie between 0 and 0.5 (e.g. 0.05), got {alpha}")
    parse_gate_mode(mode)
    if tol.check != check:
        raise ValueError(f"tolerance for {tol.check!r} given to the {check!r} check")
    return CHECKS[check]


def _paired_arrays(reference, variant, item_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return reference, variant, item_ids


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
    spec = _validate_common(check, alpha, mode, tol)
    reference, variant, item_ids = _paired_arrays(reference, variant, item_ids)
    _, ref_items = per_item_means(reference, item_ids)
    _, var_items = per_item_means(variant, item_ids)
    n_items = ref_items.size
    samples_per_item = reference.size / n_items
    ref_rate, var_rate = float(ref_items.mean()), float(var_items.mean())
    bound = tol.limit(ref_rate)
    alternative = _alternative(spec, mode)

    details: dict[str, Any] = {"samples_per_item": samples_per_item}
    binary = bool(np.all((ref_items == 0) | (ref_items == 1)) and np.all((var_items == 0) | (var_items == 1)))
    test: PairedTest
    if binary:
        down, up = discordant_counts(ref_items, var_items)
        test = paired_binary_test(down, up, n_items, bound, alternative, alpha)
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

    summary = (
        f"{spec.description} {var_rate:.3f} vs {ref_rate:.3f} reference "
        f"(Δ {test.estimate * 100:+.1f} pp, {round((1 - 2 * alpha) * 100):g}% CI "
        f"[{test.ci_low * 100:+.1f}, {test.ci_high * 100:+.1f}], {n_items} items)"
    )
    result = CheckResult(
        check=check,
        mode=mode,
        reference_value=ref_rate,
        variant_value=var_rate,
        estimate=test.estimate,
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        confidence=1 - 2 * alpha,
        margin=bound,
        p_value=test.p_value,
        alpha=alpha,
        passed=_decide(test.p_value, alpha, mode),
        message="",
        method=test.method,
        n_items=n_items,
        summary=summary,
        limit_text=tol.describe(ref_rate),
        evidence=evidence,
        details=details,
    )
    return dataclasses.replace(result, message=_verdict_text(result))


def check_accuracy(ref_correct, var_correct, item_ids, tol: Tolerance, alpha: float = 0.05, **options) -> CheckResult:
    """Accuracy check: fails on evidence of a drop beyond ``tol`` (see :func:`check_rate`)."""
    return check_rate("accuracy", ref_correct, var_correct, item_ids, tol, alpha, **options)


def check_truncation(ref_truncated, var_truncated, item_ids, tol: Tolerance, alpha: float = 0.05, **options) -> CheckResult:
    """Truncation-rate check: fails on evidence of a rise beyond ``tol`` (see :func:`check_rate`)."""
    return check_rate("truncation", ref_truncated, var_truncated, item_ids, tol, alpha, **options)


def check_length(
    ref_tokens: Sequence[float] | np.ndarray,
    var_tokens: Sequence[float] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    tol: Tolerance,
    alpha: float = 0.05,
    mode: str = "evidence-of-harm",
    n_resamples: int = 2000,
    seed: int = 0,
    check: str = "length",
) -> CheckResult:
    """Output-length check: ratio of a quantile (median or p95) of per-item mean lengths, variant/reference.

    Fails on evidence that the ratio exceeds ``tol`` (e.g. 1.25). Quantized reasoning models think
    longer and hit the output cap; a ratio of medians catches the typical inflation and the p95 the
    long tail that turns into truncation. Paired bootstrap over items, fixed seed.
    """
    spec = _validate_common(check, alpha, mode, tol)
    if spec.kind != "ratio":
        raise ValueError(f"{check!r} is not a length check")
    reference, variant, item_ids = _paired_arrays(ref_tokens, var_tokens, item_ids)
    _, ref_items = per_item_means(reference, item_ids)
    _, var_items = per_item_means(variant, item_ids)
    statistic = quantile_ratio(spec.quantile)
    ref_value = float(np.quantile(ref_items, spec.quantile))
    var_value = float(np.quantile(var_items, spec.quantile))
    if ref_value <= 0:
        raise QtestsError(
            f"{check}: the reference's {spec.description} is 0, so a length ratio is undefined; "
            f"drop {check} from --fail-on for this task"
        )
    test = paired_bootstrap_test(
        ref_items, var_items, statistic, tol.limit(ref_value), _alternative(spec, mode), alpha, n_resamples, seed
    )
    summary = (
        f"{spec.description} {var_value:.4g} vs {ref_value:.4g} reference "
        f"(x{test.estimate:.2f}, {round((1 - 2 * alpha) * 100):g}% CI [x{test.ci_low:.2f}, x{test.ci_high:.2f}], "
        f"{ref_items.size} items)"
    )
    result = CheckResult(
        check=check,
        mode=mode,
        reference_value=ref_value,
        variant_value=var_value,
        estimate=test.estimate,
        ci_low=test.ci_low,
        ci_high=test.ci_high,
        confidence=1 - 2 * alpha,
        margin=tol.limit(ref_value),
        p_value=test.p_value,
        alpha=alpha,
        passed=_decide(test.p_value, alpha, mode),
        message="",
        method=test.method,
        n_items=test.n_items,
        summary=summary,
        limit_text=tol.describe(ref_value),
        evidence=test.method,
        details={"p_resolution": 1.0 / n_resamples, "samples_per_item": reference.size / ref_items.size},
    )
    return dataclasses.replace(result, message=_verdict_text(result))


def check_absolute(
    check: str,
    value: float,
    expected: float,
    rtol: float,
    direction: Literal["higher", "lower"] | None = None,
    n_items: int = 0,
) -> CheckResult:
    """Stored-expectation mode (as vLLM CI does): compare one number with an expected one, no statistics.

    ``direction`` says which way is better (default: from :data:`CHECKS`, e.g. higher accuracy, lower
    truncation). ``"higher"``: passes when ``value >= (1 - rtol) * expected`` (vLLM's one-sided rtol);
    ``"lower"``: passes when ``value <= (1 + rtol) * expected``. Estimate and margin are measured from the
    expectation the way paired checks measure from the reference (difference for rates, ratio for
    lengths), so tables and ``results.json`` read the same. Offered for users who keep hand-set numbers;
    it cannot tell noise from harm, so it needs wide tolerances.
    """
    if rtol < 0:
        raise QtestsError(f"{check}: rtol must be non-negative, got {rtol}")
    if direction is None:
        direction = "higher" if check in CHECKS and CHECKS[check].worse == "lower" else "lower"
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
    is_ratio = check in CHECKS and CHECKS[check].kind == "ratio"
    relative = is_ratio and expected > 0
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


def apply_holm(results: Sequence[CheckResult]) -> list[CheckResult]:
    """Holm-adjust the evidence-of-harm checks of one family (e.g. all checks of one variant).

    The family-wise chance that an identical model fails *any* of its checks stays at ``alpha``.
    Non-inferiority checks are left alone (they must all pass, which needs no correction) and so are
    absolute checks (no p-value). Verdicts and messages are recomputed from the adjusted p-values.
    """
    family = [i for i, r in enumerate(results) if r.mode == "evidence-of-harm" and r.p_value is not None]
    adjusted = holm_adjust([results[i].p_value for i in family])  # type: ignore[misc]
    out = list(results)
    for index, p_adj in zip(family, adjusted):
        result = out[index]
        updated = dataclasses.replace(
            result,
            adjusted_p_value=p_adj,
            passed=_decide(p_adj, result.alpha, result.mode),
            details={**result.details, "holm_family_size": len(family)},
        )
        out[index] = dataclasses.replace(updated, message=_verdict_text(updated))
    return out


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

    Collect the results of all tasks of a variant, then call :func:`apply_holm` once on the lot, so
    the family covers everything that could fail that variant.
    """
    ref, var = align_outcomes(reference, variant)
    item_ids = np.array([o.item_id for o in ref])
    results = []
    for check, tol in tolerances.items():
        spec = CHECKS[check]
        ref_values = np.array([float(getattr(o, spec.outcome_field)) for o in ref])
        var_values = np.array([float(getattr(o, spec.outcome_field)) for o in var])
        options = {"mode": mode, "n_resamples": n_resamples, "seed": seed}
        if spec.kind == "rate":
            results.append(check_rate(check, ref_values, var_values, item_ids, tol, alpha, **options))
        else:
            results.append(check_length(ref_values, var_values, item_ids, tol, alpha, check=check, **options))
    return results
