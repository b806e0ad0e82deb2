"""The canary's verdict: a few generations plus a teacher-forced look, judged against the reference.

Two independent signals, either of which fails the canary:

* **Degenerate outputs.** The canary's share of degenerate outputs (detectors in ``degeneracy.py``,
  thresholds calibrated on the reference) must not be both high (``CANARY_MIN_RATE``) and, by
  Fisher's exact test, above the reference's share on the same items (``CANARY_P_VALUE``).
* **Teacher-forced divergence.** The reference's own canary outputs (prompt + text) are scored
  token by token under the reference and under the variant. Broken weights show here even when the
  variant's sampled text still looks fluent or stops early in a plausible way, and it costs one
  forward pass per text. Both numbers are relative to the reference by construction: ``|Δ logprob|``
  is how far the variant moved the log-probability the reference gave each of its own tokens, and
  top-1 agreement is how often both pick the same next token.

Divergence limits, measured on the zoo (the reference's 16 canary texts, 749 scored tokens,
transformers on the CPU; ``fixtures/README.md``): the INT4 variants move the reference's tokens by
0.18-0.23 nats with 0.985 top-1 agreement, the aggressive INT2 variant (-30 pp accuracy, a quality
loss the accuracy check is there to judge) by 0.63 nats at 0.917, NVFP4 with broken expert scales by
3.2-6.1 nats at 0.42-0.61 (random experts: each load differs). The limits sit between "much worse" and "not the same model any more":

* ``DIVERGENCE_MAX_MEAN_ABS_DELTA`` = 1.0 nat: on average every token's probability changed e-fold
  (the same per-position limit ``divergence.first_divergence`` uses);
* ``DIVERGENCE_MIN_TOP1`` = 0.8: the variant disagrees with the reference on the next token at one
  position in five even on the reference's own text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from pytest_qtests.evaluate.divergence import PooledDivergence
from pytest_qtests.records import ItemOutcome

CANARY_MIN_RATE = 0.25  # a canary fails only if at least this share of its outputs is degenerate ...
CANARY_P_VALUE = 0.01  # ... and Fisher's exact test says that is more than the reference's share
DIVERGENCE_MAX_MEAN_ABS_DELTA = 1.0  # nats per scored token, pooled over the canary texts
DIVERGENCE_MIN_TOP1 = 0.8  # share of positions where variant and reference pick the same next token


@dataclass(frozen=True)
class CanaryDivergence:
    """The teacher-forced half of the canary; ``pooled`` is None when it could not be measured."""

    pooled: PooledDivergence | None
    note: str = ""  # why it was not measured

    @property
    def failed(self) -> bool:
        return self.pooled is not None and bool(self.violations)

    @property
    def violations(self) -> list[str]:
        if self.pooled is None:
            return []
        found = []
        if self.pooled.mean_abs_logprob_delta > DIVERGENCE_MAX_MEAN_ABS_DELTA:
            found.append("mean |Δ logprob|")
        if self.pooled.top1_agreement is not None and self.pooled.top1_agreement < DIVERGENCE_MIN_TOP1:
            found.append("top-1 agreement")
        return found

    @property
    def message(self) -> str:
        if self.pooled is None:
            return f"teacher-forced divergence not measured ({self.note})"
        p = self.pooled
        top1 = "" if p.top1_agreement is None else f", top-1 agreement {p.top1_agreement:.3f} (min {DIVERGENCE_MIN_TOP1:.2f})"
        kl = "" if p.mean_kl is None else f", KL ≥ {p.mean_kl:.3f}"
        return (f"teacher-forced on the reference's {p.texts} canary texts ({p.positions} tokens): mean |Δ logprob| "
                f"{p.mean_abs_logprob_delta:.3f} nats (max {DIVERGENCE_MAX_MEAN_ABS_DELTA:.1f}){top1}{kl}")

    def to_dict(self) -> dict:
        if self.pooled is None:
            return {"measured": False, "note": self.note}
        p = self.pooled
        return {"measured": True, "texts": p.texts, "positions": p.positions,
                "mean_abs_logprob_delta": _finite(p.mean_abs_logprob_delta), "mean_kl": _finite(p.mean_kl),
                "top1_agreement": p.top1_agreement, "texts_diverged": p.texts_diverged,
                "max_mean_abs_logprob_delta": DIVERGENCE_MAX_MEAN_ABS_DELTA, "min_top1_agreement": DIVERGENCE_MIN_TOP1,
                "failed": self.failed}


def _finite(value: float | None) -> float | None:
    """JSON has no infinity; a NaN log-prob from broken weights makes the mean infinite (None in reports)."""
    return value if value is not None and math.isfinite(value) else None


@dataclass
class CanaryResult:
    """The cheap first look at a variant: a few items, judged against the reference on the same items."""

    n_items: int
    variant_degenerate: int
    reference_degenerate: int | None
    p_value: float | None
    passed: bool
    reasons: list[str] = field(default_factory=list)
    full_run_generations: int = 0
    divergence: CanaryDivergence | None = None

    @classmethod
    def from_dict(cls, data: dict) -> CanaryResult:
        """Rebuild from ``dataclasses.asdict`` (runs published by xdist workers, ``run_store.py``)."""
        values = dict(data)
        divergence = values.pop("divergence", None)
        if divergence is not None:
            pooled = divergence.get("pooled")
            if pooled is not None:
                pooled = PooledDivergence(**{**pooled, "first_divergences": tuple(pooled["first_divergences"])})
            divergence = CanaryDivergence(pooled, divergence.get("note", ""))
        return cls(**values, divergence=divergence)

    @property
    def degenerate_failed(self) -> bool:
        rate = self.variant_degenerate / self.n_items if self.n_items else 0.0
        return rate >= CANARY_MIN_RATE and (self.p_value is None or self.p_value < CANARY_P_VALUE)

    @property
    def spent(self) -> str:
        """E.g. "16 of 320 generations (5.0%)": what the canary cost against the full run."""
        share = f" ({self.n_items / self.full_run_generations:.1%})" if self.full_run_generations else ""
        return f"{self.n_items} of {self.full_run_generations} generations{share}"

    def junit_properties(self) -> dict[str, float | int]:
        properties: dict[str, float | int] = {"canary.degenerate": self.variant_degenerate, "canary.items": self.n_items,
                                              "canary.full_run_generations": self.full_run_generations}
        pooled = self.divergence.pooled if self.divergence is not None else None
        if pooled is not None:
            properties["canary.mean_abs_logprob_delta"] = pooled.mean_abs_logprob_delta
            if pooled.top1_agreement is not None:
                properties["canary.top1_agreement"] = pooled.top1_agreement
        return properties

    @property
    def message(self) -> str:
        ref = "" if self.reference_degenerate is None else f" vs {self.reference_degenerate}/{self.n_items} for the reference"
        p = "" if self.p_value is None else f", Fisher p={self.p_value:.2g}"
        verdict = "failed" if not self.passed else "passed"
        parts = [f"canary {verdict} after {self.spent}: {self.variant_degenerate}/{self.n_items} outputs degenerate{ref}{p}"]
        if self.divergence is not None:
            parts.append(self.divergence.message)
        message = "; ".join(parts)
        return message + (f"; e.g. {self.reasons[0]}" if self.reasons else "")


def judge_canary(
    outcomes: Sequence[ItemOutcome],
    reference_outcomes: Sequence[ItemOutcome] | None,
    divergence: CanaryDivergence | None,
    full_run_generations: int,
) -> CanaryResult:
    """Fail on many degenerate outputs (more than the reference's, by Fisher's exact test) or on divergence.

    ``reference_outcomes`` are the reference's outcomes on the same (item, sample) pairs (None without a
    live reference: the degenerate rate alone then decides).
    """
    bad = [o for o in outcomes if o.degenerate]
    n = len(outcomes)
    reference_bad = p_value = None
    if reference_outcomes is not None:
        from scipy.stats import fisher_exact

        wanted = {(o.item_id, o.sample_index) for o in outcomes}
        reference_bad = sum(o.degenerate for o in reference_outcomes if (o.item_id, o.sample_index) in wanted)
        p_value = float(fisher_exact([[len(bad), n - len(bad)], [reference_bad, n - reference_bad]],
                                     alternative="greater").pvalue)
    reasons = [f"item {o.item_id}: {o.degenerate_reasons[0]}" for o in bad if o.degenerate_reasons][:3]
    result = CanaryResult(n, len(bad), reference_bad, p_value, True, reasons, full_run_generations, divergence)
    result.passed = not (result.degenerate_failed or (divergence is not None and divergence.failed))
    return result
