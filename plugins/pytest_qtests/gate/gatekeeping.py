"""How a variant's false-alarm budget ``alpha`` is shared among its checks: accuracy first.

Why not Holm (the previous rule): Holm splits ``alpha`` evenly, so with the default four checks the
accuracy test runs at ``alpha/4`` whenever truncation, length and degenerate output did not move
(p = 1), and needs about 1.5x the items to see the same drop. Accuracy is the check a release gate is
for; the other three catch breakage, which moves them by many points when it happens.

The rule here is the weighted Holm procedure in its graphical form (Bretz et al. 2009, "A graphical
approach to sequentially rejective multiple test procedures"): check ``j`` starts with weight ``w_j``
(accuracy checks share :data:`ACCURACY_SHARE` of ``alpha``, the others the rest) and is rejected at
level ``w_j * alpha``; a rejected check hands its weight on to the others in proportion to theirs, and
the rest are tested again. It is a shortcut of closed testing with weighted Bonferroni tests, so the
family-wise error stays at ``alpha`` under any dependence between the checks; on an identical model the
first rejection needs some ``p_j <= w_j alpha``, whose chance is at most ``sum_j w_j alpha = alpha``.

"Rejected" is the evidence-of-harm reading: a check's null is "not worse than its margin", and a
rejection is a FAIL. The procedure only needs to ask "is check ``j`` rejected at level ``a``?", so the
same code serves the fixed-n tests (``p_j <= a``) and the anytime-valid confidence sequences (the
sequence at level ``a`` lies beyond the margin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

ACCURACY_SHARE = 0.8  # accuracy runs at 0.04 of a 0.05 budget: ~9% more items than unadjusted, not ~54%


@dataclass(frozen=True)
class Allocation:
    """The outcome: which checks were rejected, and the level each was finally tested at.

    ``levels[j]`` is the level of the test whose interval is printed beside check ``j``: for a rejected
    check the level it was rejected at, otherwise the largest level it was given (its weight after every
    hand-on). The printed interval is the one at that level, so it always agrees with the verdict.
    """

    rejected: tuple[bool, ...]
    levels: tuple[float, ...]


def check_weights(checks: Sequence[str]) -> tuple[float, ...]:
    """Initial weights (summing to 1) for a family of checks named like ``--fail-on`` keys.

    Accuracy checks (one per task) share :data:`ACCURACY_SHARE`, the rest share what is left; a family
    with only accuracy checks or none at all shares evenly.
    """
    if not checks:
        return ()
    is_accuracy = [check == "accuracy" for check in checks]
    n_accuracy = sum(is_accuracy)
    if n_accuracy in (0, len(checks)):
        return tuple(1.0 / len(checks) for _ in checks)
    others = len(checks) - n_accuracy
    return tuple(
        ACCURACY_SHARE / n_accuracy if accuracy else (1.0 - ACCURACY_SHARE) / others for accuracy in is_accuracy
    )


def weighted_holm(rejects: Callable[[int, float], bool], weights: Sequence[float], alpha: float) -> Allocation:
    """Run the graphical weighted-Holm procedure; ``rejects(j, level)`` tests check ``j`` at ``level``.

    ``rejects`` must be monotone in the level (rejected at ``a`` implies rejected at any larger level),
    as a p-value comparison and a family of nested confidence sequences are. Weights may sum to less
    than 1 (what is left of a family after some of its checks were decided): that only spends less.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if any(w < 0 for w in weights) or sum(weights) > 1.0 + 1e-9:
        raise ValueError(f"weights must be non-negative and sum to at most 1, got {list(weights)}")
    current = list(weights)
    rejected = [False] * len(current)
    levels = [w * alpha for w in current]
    progress = True
    while progress:
        progress = False
        for j, weight in enumerate(current):
            if rejected[j] or weight <= 0.0 or not rejects(j, weight * alpha):
                continue
            rejected[j], levels[j] = True, weight * alpha
            remaining = sum(current[k] for k in range(len(current)) if not rejected[k])
            for k in range(len(current)):
                if not rejected[k]:
                    # Hand the weight on in proportion to the others' (all of it to one left alone).
                    current[k] += weight * (current[k] / remaining if remaining > 0 else 0.0)
            current[j] = 0.0
            progress = True
            break
    for j, weight in enumerate(current):
        if not rejected[j]:
            levels[j] = weight * alpha
    return Allocation(tuple(rejected), tuple(levels))
