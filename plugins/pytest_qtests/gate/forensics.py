"""Truncation forensics: tell "thinks longer and is cut off" from "reasons worse", item by item.

A quantized reasoning model that thinks longer hits the output cap more often, and an output cut off
inside its thinking has no answer: its accuracy drops although it may reason as well as the reference.
Pairing every sample with the reference's sample of the same item splits the pairs four ways by who
was truncated. The accuracy change over all pairs is exactly the sum of each stratum's change weighted
by its share of pairs, so it splits into

- a *reasoning* part: the change on pairs both models completed (same room, both answered), and
- a *truncation* part: the change on pairs where at least one of them was cut off.

The reasoning part is measured on the pairs both completed, which are the easier ones (short chains);
``--extend-truncated`` answers the counterfactual directly by letting the truncated items finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pytest_qtests.evaluate.continuation import Extension
from pytest_qtests.gate.checks import align_outcomes
from pytest_qtests.records import ItemOutcome
from pytest_qtests.gate.stats import mean_or_none, paired_binary_test, paired_sign_flip_test, per_item_means

STRATA = ("both_completed", "variant_only_truncated", "reference_only_truncated", "both_truncated")
STRATUM_TITLES = {
    "both_completed": "both completed",
    "variant_only_truncated": "only variant truncated",
    "reference_only_truncated": "only reference truncated",
    "both_truncated": "both truncated",
}


@dataclass(frozen=True)
class Stratum:
    """The pairs of one truncation pattern: how many, and each model's accuracy on them."""

    name: str
    n: int
    reference_accuracy: float | None
    variant_accuracy: float | None
    contribution: float  # this stratum's share of the overall accuracy change (n/N x its change)

    @property
    def delta(self) -> float | None:
        if self.reference_accuracy is None or self.variant_accuracy is None:
            return None
        return self.variant_accuracy - self.reference_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "reference_accuracy": self.reference_accuracy, "variant_accuracy": self.variant_accuracy,
                "delta": self.delta, "contribution": self.contribution}


@dataclass(frozen=True)
class TruncationSplit:
    """One variant against its reference on one task, split by who was truncated.

    ``reasoning_delta`` is the paired accuracy change on pairs both completed, with its two-sided
    ``1 - 2*alpha`` interval (the gate's convention); ``truncation_part`` + ``reasoning_part`` equals
    ``overall_delta`` exactly.
    """

    n_pairs: int
    overall_delta: float
    strata: dict[str, Stratum]
    reasoning_delta: float | None
    reasoning_ci: tuple[float, float] | None
    confidence: float

    @property
    def reasoning_part(self) -> float:
        return self.strata["both_completed"].contribution

    @property
    def truncation_part(self) -> float:
        return self.overall_delta - self.reasoning_part

    @property
    def truncation_share(self) -> float | None:
        """Share of an accuracy *loss* that truncation accounts for (None when accuracy did not drop)."""
        if self.overall_delta >= 0:
            return None
        return self.truncation_part / self.overall_delta

    def explanation(self) -> str:
        """One clause for a verdict message, e.g. "truncation explains -10.0pp of the -15.0pp change (67%)"."""
        share = self.truncation_share
        share_text = f" ({share:.0%})" if share is not None else ""
        both = self.strata["both_completed"]
        reasoning = "n/a" if self.reasoning_delta is None else f"{100 * self.reasoning_delta:+.1f}pp"
        interval = ("" if self.reasoning_ci is None else
                    f" [{self.confidence:.0%} CI {100 * self.reasoning_ci[0]:+.1f}, {100 * self.reasoning_ci[1]:+.1f}]")
        return (f"truncation explains {100 * self.truncation_part:+.1f}pp of the {100 * self.overall_delta:+.1f}pp "
                f"accuracy change{share_text}; on the {both.n} pairs both completed accuracy changed {reasoning}"
                f"{interval}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_pairs": self.n_pairs, "overall_delta": self.overall_delta,
            "reasoning_delta": self.reasoning_delta,
            "reasoning_ci": None if self.reasoning_ci is None else list(self.reasoning_ci),
            "confidence": self.confidence,
            "reasoning_part": self.reasoning_part, "truncation_part": self.truncation_part,
            "truncation_share": self.truncation_share,
            "strata": {name: stratum.to_dict() for name, stratum in self.strata.items()},
        }


def stratum_of(reference: ItemOutcome, variant: ItemOutcome) -> str:
    if reference.truncated and variant.truncated:
        return "both_truncated"
    if variant.truncated:
        return "variant_only_truncated"
    if reference.truncated:
        return "reference_only_truncated"
    return "both_completed"


def paired_delta_interval(reference: Sequence[ItemOutcome], variant: Sequence[ItemOutcome],
                          alpha: float = 0.05) -> tuple[float, float] | None:
    """Two-sided ``1 - 2*alpha`` interval of the paired accuracy change, items as the unit.

    One sample per item: the gate's paired score + exact conditional interval. Repeats: the sign-flip
    interval over per-item means (samples of one item are not independent).
    """
    if not reference:
        return None
    ids = [o.item_id for o in reference]
    if len(set(ids)) == len(ids):
        down = sum(r.correct and not v.correct for r, v in zip(reference, variant))
        up = sum(v.correct and not r.correct for r, v in zip(reference, variant))
        test = paired_binary_test(down, up, len(ids), 0.0, "less", alpha)
    else:
        _, ref_means = per_item_means([float(o.correct) for o in reference], ids)
        _, var_means = per_item_means([float(o.correct) for o in variant], ids)
        test = paired_sign_flip_test(ref_means, var_means, 0.0, "less", alpha)
    return float(test.ci_low), float(test.ci_high)


def truncation_split(reference: Sequence[ItemOutcome], variant: Sequence[ItemOutcome],
                     alpha: float = 0.05) -> TruncationSplit:
    """Split the paired accuracy change of ``variant`` against ``reference`` by truncation pattern.

    Pairs are (item, sample); errored samples count as they do in the gate (wrong, not truncated).
    """
    ref, var = align_outcomes(reference, variant)
    total = len(ref)
    groups: dict[str, list[tuple[ItemOutcome, ItemOutcome]]] = {name: [] for name in STRATA}
    for r, v in zip(ref, var):
        groups[stratum_of(r, v)].append((r, v))
    strata = {}
    for name, pairs in groups.items():
        ref_acc = mean_or_none([r.correct for r, _ in pairs])
        var_acc = mean_or_none([v.correct for _, v in pairs])
        contribution = (len(pairs) / total) * (var_acc - ref_acc) if pairs and total else 0.0
        strata[name] = Stratum(name, len(pairs), ref_acc, var_acc, contribution)
    overall = (sum(v.correct for v in var) - sum(r.correct for r in ref)) / total if total else 0.0
    both = groups["both_completed"]
    interval = paired_delta_interval([r for r, _ in both], [v for _, v in both], alpha) if both else None
    return TruncationSplit(total, overall, strata, strata["both_completed"].delta, interval, 1 - 2 * alpha)


@dataclass(frozen=True)
class CapComparison:
    """Variant against reference at one output cap: the rates, their paired changes and the split."""

    max_tokens: int
    reference_accuracy: float
    variant_accuracy: float
    reference_truncation: float
    variant_truncation: float
    split: TruncationSplit

    @property
    def accuracy_delta(self) -> float:
        return self.variant_accuracy - self.reference_accuracy

    @property
    def truncation_delta(self) -> float:
        return self.variant_truncation - self.reference_truncation

    def describe(self) -> str:
        return (f"at cap {self.max_tokens}: accuracy {self.variant_accuracy:.3f} vs {self.reference_accuracy:.3f} "
                f"({100 * self.accuracy_delta:+.1f}pp), truncation {self.variant_truncation:.3f} vs "
                f"{self.reference_truncation:.3f} ({100 * self.truncation_delta:+.1f}pp)")

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "reference_accuracy": self.reference_accuracy,
                "variant_accuracy": self.variant_accuracy, "accuracy_delta": self.accuracy_delta,
                "reference_truncation": self.reference_truncation, "variant_truncation": self.variant_truncation,
                "truncation_delta": self.truncation_delta, "split": self.split.to_dict()}


def compare_at_cap(reference: Sequence[ItemOutcome], variant: Sequence[ItemOutcome], max_tokens: int,
                   alpha: float = 0.05) -> CapComparison:
    """Rates of both models over their paired samples, and the truncation split, at ``max_tokens``."""
    ref, var = align_outcomes(reference, variant)
    return CapComparison(
        max_tokens,
        float(np.mean([o.correct for o in ref])), float(np.mean([o.correct for o in var])),
        float(np.mean([o.truncated for o in ref])), float(np.mean([o.truncated for o in var])),
        truncation_split(ref, var, alpha),
    )


@dataclass(frozen=True)
class Forensics:
    """Everything the reports say about truncation for one variant x task.

    ``extended`` compares the two runs at the larger cap of ``--extend-truncated``; it needs both sides
    continued, so it is None against a stored baseline (whose outputs cannot be continued here).
    """

    at_cap: CapComparison
    extended: CapComparison | None = None
    variant_extension: Extension | None = None
    reference_extension: Extension | None = None

    def verdict_clause(self) -> str:
        clause = self.at_cap.split.explanation()
        if self.extended is not None:
            clause += f"; with --extend-truncated {self.extended_factor:g}, {self.extended.describe()}"
        return clause

    @property
    def extended_factor(self) -> float | None:
        return None if self.variant_extension is None else self.variant_extension.factor

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_cap": self.at_cap.to_dict(),
            "extended": None if self.extended is None else self.extended.to_dict(),
            "variant_extension": None if self.variant_extension is None else self.variant_extension.to_dict(),
            "reference_extension": None if self.reference_extension is None else self.reference_extension.to_dict(),
        }


def build_forensics(reference: Sequence[ItemOutcome], variant: Sequence[ItemOutcome], max_tokens: int,
                    alpha: float = 0.05, reference_extension: Extension | None = None,
                    variant_extension: Extension | None = None) -> Forensics:
    """The split at the run's cap and, when both sides were continued, the comparison at the larger cap."""
    extended = None
    if reference_extension is not None and variant_extension is not None:
        extended = compare_at_cap(reference_extension.outcomes, variant_extension.outcomes,
                                  variant_extension.max_tokens, alpha)
    return Forensics(compare_at_cap(reference, variant, max_tokens, alpha), extended, variant_extension,
                     reference_extension)
