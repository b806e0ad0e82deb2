"""The anytime-valid sequential gate: decide each paired check as soon as the data allow, at every look.

Why: generation is the whole cost of a gate, and most of a fixed run is spent after the verdict was
clear. Peeking at a fixed-n test as results come in inflates its false alarms (30 looks at a z-test:
~29% at a nominal 5%), so the looks use *confidence sequences*: intervals that cover the true paired
difference at every item count at once (Waudby-Smith & Ramdas 2024, "Estimating means of bounded
random variables by betting"; Howard et al. 2021), so stopping at any look keeps the error promised.

Per check the sequence runs over the per-item paired differences, bounded in [-1, 1]:

- rates (accuracy, truncation, degenerate): variant minus reference of the item's mean outcome;
- lengths: the bounded transform ``(v - r) / (v + r)`` of the item's mean lengths (0 when both are 0).
  Its mean ``t`` is a typical per-item length ratio ``(1 + t) / (1 - t)``; the ratio margin ``x`` maps
  to ``(x - 1) / (x + 1)``. (``length_p95`` has no bounded-mean form: it is decided at the end only.)

The sequence is ``ville.BettingCS`` (hedged-capital betting CS, WSR Theorem 3; pure numpy, checked by
``tests/unit/test_sequential.py`` and ``benchmarks/power.py``), bets truncated at ``c = 3/4`` (WSR's
recommended range is 1/2 to 3/4; 3/4 halves the items an unchanged check needs to pass a 3 pp margin
against 1/2, see BENCHMARKS.md). Decisions per check, with ``lo, hi`` the sequence's current ends:

- FAIL when the whole sequence lies beyond the margin on the bad side (harm shown);
- PASS when it lies wholly on the good side (within the margin shown);
- otherwise undecided, and at the end of the items the fixed-n test decides.

When the run stops (:attr:`SequentialGate.settled`): as soon as the variant's verdict is settled, not
when every label is. That is at its first FAIL (in either gate mode the variant has failed; further
labels cannot change it), when every check is decided, or, in ``evidence-of-harm`` mode, when every
check still open is *out of reach of a FAIL*: its predictive probability of showing harm by the end of
the planned items (:func:`predictive_fail_probability`) is below :data:`FUTILITY` (asked from
:data:`FUTILITY_FROM` of the planned items on). Such a check would end
PASS or INCONCLUSIVE, and this mode passes both, so the items left cannot change the verdict unless the
variant turns worse from here on than it was so far. That futility stop is *non-binding* in the
trials sense: it only ever ends a run without a FAIL, so it cannot add a false alarm; what it costs is
power against a harm the first items hide, measured in ``benchmarks/power.py --sequential``
(BENCHMARKS.md section 5). Checks open at a stop before the end of the items stay on their sequences
(INCONCLUSIVE, valid at any stop); only at the end does the fixed-n test decide them.

Error budget: each check ``j`` has a level ``a_j`` from :mod:`pytest_qtests.gate.gatekeeping` (evidence
of harm: accuracy-first weighted Holm; non-inferiority: ``alpha`` each, as every claim must hold).
:data:`SEQUENCE_SHARE` of it goes to the sequence (each end one-sided at that level, matching the
fixed tests' ``1 - 2 alpha`` intervals) and the rest to the final fixed-n test, so the chance of a
wrong FAIL over all looks and the final test together is at most ``a_j`` (union bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Literal, Sequence

import numpy as np

from pytest_qtests.gate.gatekeeping import check_weights, weighted_holm
from pytest_qtests.gate.verdict import Verdict, verdict_of_interval
from pytest_qtests.lazy import LazyAttribute

BettingCS = LazyAttribute("ville", "BettingCS")  # imported on first use: the plugin loads on every pytest start

SEQUENCE_SHARE = 0.5  # of each check's level: the anytime-valid sequence; the rest: the final fixed-n test
BET_CAP = 0.75  # WSR's truncation c
GRID_POINTS = 4001  # candidate means on [-1, 1]: 0.0005 apart, far below any margin
LOOK_SHARE = 0.05  # a look every 5% of the items...
MIN_LOOK_ITEMS = 8  # ...but no fewer items than this per look
# Evidence of harm: an open check whose predictive probability of a FAIL by the end is below this no longer
# holds the run (a common futility bound on predictive probability; lower keeps more power, costs more items).
FUTILITY = 0.05
# ...and not before this share of the planned items: the prediction extrapolates the items seen, and a harm
# that touches 3% of items is absent from the first 66 of 1319 one run in seven (futility looks in trials
# start at a quarter to a half of the information for the same reason).
FUTILITY_FROM = 0.2


def look_ends(n_items: int, look_items: int | None = None) -> list[int]:
    """Cumulative item counts at which the gate looks: every ``look_items`` items and at the end."""
    if n_items < 1:
        raise ValueError("a sequential run needs at least one item")
    step = look_items or max(MIN_LOOK_ITEMS, math.ceil(n_items * LOOK_SHARE))
    return [*range(step, n_items, step), n_items]


def seeded_order(item_ids: Sequence[str], seed: int) -> list[str]:
    """The items in the run's random order: the same for every variant and the reference, fixed by ``seed``.

    Random, because a task file is often sorted (by difficulty, source, length) and a look over its
    first rows would describe those rows only.
    """
    unique = sorted(set(item_ids))
    permutation = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in permutation]


def share_of_ratio(ratio: float) -> float:
    """The bounded length transform's value for a length ratio ``ratio`` (variant / reference)."""
    return (ratio - 1.0) / (ratio + 1.0)


def ratio_of_share(share: float) -> float:
    """Inverse of :func:`share_of_ratio` (``inf`` at 1)."""
    return math.inf if share >= 1.0 else (1.0 + share) / (1.0 - share)


def paired_differences(kind: Literal["rate", "ratio"], reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """Per-item paired differences in [-1, 1]: ``variant - reference`` for rates, the length transform for ratios."""
    reference = np.asarray(reference, dtype=float)
    variant = np.asarray(variant, dtype=float)
    if kind == "rate":
        return variant - reference
    total = reference + variant
    return np.divide(variant - reference, total, out=np.zeros_like(total), where=total > 0)


def predictive_fail_probability(
    differences: np.ndarray, items_planned: int, margin: float, worse: Literal["lower", "higher"], level: float
) -> float:
    """Chance that the fixed-n test at ``items_planned`` items shows harm beyond ``margin``, predicted from the items so far.

    The Bayesian predictive probability (flat prior, normal approximation; Spiegelhalter, Freedman &
    Blackburn 1986) that the one-sided test at ``level`` on all planned items FAILs, given the ``n``
    paired differences seen: the remaining ``m`` items' sum is predicted as normal with mean ``m * mean``
    and variance ``m s^2 (1 + m / n)``, the second term carrying the uncertainty of the mean itself, so
    early looks are not over-trusted. ``s^2`` counts one extra unit of spread (``(SS + 1) / (n + 1)``):
    a check whose items all agreed so far (rates at zero in both models) still has a chance to move.
    """
    differences = np.asarray(differences, dtype=float)
    n = differences.size
    remaining = items_planned - n
    if n == 0 or remaining <= 0:
        raise ValueError(f"needs items seen and items left, got {n} of {items_planned}")
    mean = float(differences.mean())
    spread = math.sqrt((float(((differences - mean) ** 2).sum()) + 1.0) / (n + 1))
    beyond = (mean - margin) if worse == "higher" else (margin - mean)  # > 0: the trend is past the margin
    z = NormalDist().inv_cdf(1.0 - level)
    numerator = items_planned * beyond - z * spread * math.sqrt(items_planned)
    return NormalDist().cdf(numerator / (spread * math.sqrt(remaining * (1.0 + remaining / n))))


class ConfidenceSequence:
    """A betting confidence sequence for the mean of paired differences, fed look by look.

    ``lower`` and ``upper`` are each one-sided at ``level``: the true mean lies below ``lower`` (or above
    ``upper``) at *any* item count with probability at most ``level``. Ends are the running
    intersection, so once a bound has crossed a margin it stays crossed.
    """

    def __init__(self, level: float):
        self.level = level
        self._differences: list[np.ndarray] = []
        self._sequence = self._new(level)

    @staticmethod
    def _new(level: float):
        # ville's alpha is two-sided over the hedged bet (theta 1/2): alpha = 2 * level makes each end one-sided at level.
        return BettingCS(bounds=(-1.0, 1.0), alpha=2.0 * level, c=BET_CAP, grid=GRID_POINTS)

    @property
    def n(self) -> int:
        return int(sum(d.size for d in self._differences))

    def extend(self, differences: np.ndarray) -> None:
        differences = np.asarray(differences, dtype=float)
        if differences.size:
            self._differences.append(differences)
            self._sequence.update(differences)

    def relevel(self, level: float) -> None:
        """Recompute at another level over every difference so far (after a check's budget was handed on)."""
        if level != self.level:
            self.level = level
            self._sequence = self._new(level)
            if self._differences:
                self._sequence.update(np.concatenate(self._differences))

    def differences(self) -> np.ndarray:
        """Every difference seen so far, in order."""
        return np.concatenate(self._differences) if self._differences else np.zeros(0)

    def bounds(self) -> tuple[float, float]:
        if not self._differences:
            return -1.0, 1.0
        return self._sequence.interval()


@dataclass(frozen=True)
class SequentialCheck:
    """One check as the sequential gate sees it: its name, the bad direction and the margin in difference units.

    ``bounded``: whether the check has a bounded-mean form (``length_p95`` does not; it waits for the end).
    """

    name: str
    worse: Literal["lower", "higher"]
    margin: float
    bounded: bool = True


@dataclass
class CheckState:
    """Where one check stands: its sequence, and once decided the verdict, the look and the interval used."""

    check: SequentialCheck
    weight: float
    sequence: ConfidenceSequence | None
    verdict: Verdict | None = None
    decided_look: int | None = None
    decided_items: int | None = None
    interval: tuple[float, float] | None = None
    level: float | None = None
    fail_chance: float | None = None  # evidence of harm, while open: predictive probability of a FAIL by the end

    @property
    def out_of_reach(self) -> bool:
        """Open, and a FAIL by the end of the items has become too unlikely to hold the run for."""
        return self.verdict is None and self.fail_chance is not None and self.fail_chance < FUTILITY


@dataclass
class SequentialGate:
    """The decisions of one variant's checks, look by look.

    ``mode`` is the gate mode: ``"evidence-of-harm"`` shares ``alpha`` over the checks with accuracy-first
    weighted Holm (FAILs hand their budget on); ``"non-inferiority"`` gives every check ``alpha``.
    ``items_planned``: the items the run would evaluate in full (the futility stop needs it; without it
    only decisions stop the run).
    """

    checks: Sequence[SequentialCheck]
    alpha: float
    mode: str = "evidence-of-harm"
    items_planned: int | None = None
    states: list[CheckState] = field(init=False)
    looks: int = field(init=False, default=0)
    items: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.mode == "evidence-of-harm":
            weights = check_weights([c.name for c in self.checks])
        else:
            weights = tuple(1.0 for _ in self.checks)
        self.states = [
            CheckState(check, weight, ConfidenceSequence(SEQUENCE_SHARE * weight * self.alpha) if check.bounded else None)
            for check, weight in zip(self.checks, weights)
        ]

    @property
    def decided(self) -> bool:
        return all(state.verdict is not None for state in self.states)

    @property
    def failed(self) -> list[str]:
        """The checks whose sequence showed harm, in family order."""
        return [s.check.name for s in self.states if s.verdict == "FAIL"]

    @property
    def settled(self) -> bool:
        """Whether the variant's verdict is settled: a check FAILed, or every check is decided or out of reach of a FAIL."""
        return bool(self.failed) or all(s.verdict is not None or s.out_of_reach for s in self.states)

    @property
    def stopped_early(self) -> bool:
        """Whether the run ended before the planned items (always a settled run)."""
        return self.items_planned is not None and self.items < self.items_planned

    @property
    def stop_reason(self) -> str:
        """Why the run stopped (or would stop) here, for reports."""
        if self.failed:
            return "a check failed"
        if self.decided:
            return "every check decided"
        if self.settled:
            return "no FAIL within reach of the open checks"
        return "end of the items"

    def _sequence_verdict(self, state: CheckState, level: float) -> Verdict:
        assert state.sequence is not None
        state.sequence.relevel(SEQUENCE_SHARE * level)
        low, high = state.sequence.bounds()
        return verdict_of_interval(low, high, state.check.margin, state.check.worse)

    def observe(self, differences: Sequence[np.ndarray], margins: Sequence[float] | None = None) -> None:
        """One look: the new items' paired differences per check (in ``checks`` order)."""
        if len(differences) != len(self.states):
            raise ValueError(f"expected differences for {len(self.states)} checks, got {len(differences)}")
        sizes = {np.asarray(d).size for d in differences}
        if len(sizes) > 1:
            raise ValueError("every check must see the same items in a look")
        self.looks += 1
        self.items += sizes.pop() if sizes else 0
        for index, (state, new) in enumerate(zip(self.states, differences)):
            if margins is not None:
                state.check = SequentialCheck(state.check.name, state.check.worse, margins[index], state.check.bounded)
            if state.verdict is None and state.sequence is not None:
                state.sequence.extend(new)
        open_ = [s for s in self.states if s.verdict is None and s.sequence is not None]
        if self.mode == "evidence-of-harm":
            allocation = weighted_holm(
                lambda j, level: self._sequence_verdict(open_[j], level) == "FAIL",
                [s.weight for s in open_],
                self.alpha,
            )
            for state, rejected, level in zip(open_, allocation.rejected, allocation.levels):
                verdict = "FAIL" if rejected else self._sequence_verdict(state, level)
                self._settle(state, verdict, level)
        else:
            for state in open_:
                self._settle(state, self._sequence_verdict(state, self.alpha), self.alpha)
        self._predict()

    def _predict(self) -> None:
        """Evidence of harm: each open check's predictive probability of a FAIL by the end of the items (none at the end)."""
        predicting = (self.mode == "evidence-of-harm" and self.items_planned is not None
                      and FUTILITY_FROM * self.items_planned <= self.items < self.items_planned)
        share = 1.0 - SEQUENCE_SHARE
        for state in self.states:
            state.fail_chance = None
            if predicting and state.verdict is None and state.sequence is not None:
                assert self.items_planned is not None
                state.fail_chance = predictive_fail_probability(
                    state.sequence.differences(), self.items_planned, state.check.margin, state.check.worse,
                    share * state.weight * self.alpha)

    def _settle(self, state: CheckState, verdict: Verdict, level: float) -> None:
        if verdict == "INCONCLUSIVE":
            return
        assert state.sequence is not None
        state.sequence.relevel(SEQUENCE_SHARE * level)
        state.verdict, state.decided_look, state.decided_items = verdict, self.looks, self.items
        state.interval, state.level = state.sequence.bounds(), SEQUENCE_SHARE * level
        if verdict == "FAIL" and self.mode == "evidence-of-harm":
            self._hand_on(state)

    def _hand_on(self, failed: CheckState) -> None:
        """A FAIL's budget goes to the checks still open, in proportion to their weights (weighted Holm)."""
        receivers = [s for s in self.states if s.verdict is None]
        total = sum(s.weight for s in receivers)
        for state in receivers:
            state.weight += failed.weight * (state.weight / total if total > 0 else 0.0)
        failed.weight = 0.0

    def finish(self, fixed_rejects: Callable[[int, float], bool]) -> list[float | None]:
        """The run's end: the open checks go to the fixed-n test, with what is left of their budget.

        ``fixed_rejects(i, level)`` runs check ``i``'s fixed-n test (the gate mode's one-sided test) at
        ``level``. Returns, per check, the level its fixed-n test ran at (``None`` for checks decided by
        their sequence); the caller computes the verdicts and intervals at those levels.

        A run that stopped before the end of the items (:attr:`stopped_early`) keeps its open checks on
        their sequences instead (INCONCLUSIVE, with the sequence's current interval and level): a
        fixed-n test at a stop the data chose is not valid, the sequences are at any stop. Only checks
        with no sequence (``length_p95``, open only when a FAIL stopped the run) take the fixed-n test
        on the items seen.
        """
        for state in self.states:
            if self.stopped_early and state.verdict is None and state.sequence is not None:
                state.interval, state.level = state.sequence.bounds(), state.sequence.level
        open_idx = [i for i, s in enumerate(self.states) if s.verdict is None and s.interval is None]
        share = 1.0 - SEQUENCE_SHARE
        if self.mode == "evidence-of-harm":
            allocation = weighted_holm(
                lambda j, level: fixed_rejects(open_idx[j], share * level),
                [self.states[i].weight for i in open_idx],
                self.alpha,
            )
            final = {i: share * level for i, level in zip(open_idx, allocation.levels)}
        else:
            final = {i: share * self.alpha for i in open_idx}
        return [final.get(i) for i in range(len(self.states))]
