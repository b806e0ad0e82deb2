"""Three-way verdicts: PASS (shown within the margin), FAIL (shown worse than it), INCONCLUSIVE (neither).

A two-valued gate hides the third case: in ``evidence-of-harm`` mode a run too small to see anything
passes silently, in ``non-inferiority`` mode it fails without saying why. Every paired check reads its
verdict off the interval its decision used (each end a one-sided bound at the check's level), and the
gate mode only says what INCONCLUSIVE does to the test: evidence of harm passes it with a warning,
non-inferiority fails it. With the verdict comes the smallest change this run could have detected
(power 0.8), from the same arithmetic as ``qtests plan``.
"""

from __future__ import annotations

import math
from typing import Literal

from pytest_qtests.gate.stats import minimum_detectable_drop

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]


class InconclusiveWarning(UserWarning):
    """An evidence-of-harm check passed only because the run could not tell (pytest lists it under warnings)."""

MDE_POWER = 0.8


def verdict_of_interval(low: float, high: float, margin: float, worse: Literal["lower", "higher"]) -> Verdict:
    """Three-way verdict of one interval against the margin (in the same units)."""
    if worse == "lower":
        return "FAIL" if high < margin else "PASS" if low > margin else "INCONCLUSIVE"
    return "FAIL" if low > margin else "PASS" if high < margin else "INCONCLUSIVE"


def passes(verdict: Verdict, mode: str) -> bool:
    """Whether the test passes: evidence of harm fails only a FAIL, non-inferiority passes only a PASS."""
    return verdict != "FAIL" if mode == "evidence-of-harm" else verdict == "PASS"


def rate_mde(n_items: int, margin: float, difference_variance: float, level: float) -> float:
    """Smallest drop (rate, positive, beyond a margin of size ``margin``) detectable with power 0.8.

    The per-item variance of the difference is the run's, but never below ``d (1 - d)``: a true drop of
    ``d`` needs at least ``d`` discordant items, so a run that saw none cannot claim to see any drop.
    """
    drop = margin
    for _ in range(50):  # fixed point of d = margin + z sqrt(max(var, d(1-d)) / n); converges in a few steps
        variance = max(difference_variance, drop * (1.0 - drop))
        drop = min(1.0, minimum_detectable_drop(n_items, margin, variance, level, MDE_POWER))
    return drop


def share_mde(n_items: int, share_margin: float, share_variance: float, level: float) -> float:
    """Smallest rise of the bounded length share detectable with power 0.8 (capped just below 1)."""
    return min(minimum_detectable_drop(n_items, share_margin, share_variance, level, MDE_POWER), 1.0 - 1e-9)


def format_mde(mde: float | None, ratio: bool) -> str:
    if mde is None or not math.isfinite(mde):
        return "an unknown change"
    return f"x{mde:.2f}" if ratio else f"a {mde * 100:.1f} pp change"
