"""The family of checks: one verdict per variant that stays at ``alpha`` however many checks it has.

A variant is judged by several checks on several tasks; were each tested at ``alpha``, an identical
model would fail *some* check far more often than ``alpha``. The evidence-of-harm checks of one variant
share ``alpha`` by the accuracy-first weighted Holm procedure of :mod:`pytest_qtests.gate.gatekeeping`
(family-wise error at ``alpha`` under any dependence, without spending accuracy's power on checks that
did not move). Each check is then recomputed at the level it was finally tested at, so the interval
printed beside its verdict is the one the decision used. Non-inferiority checks keep ``alpha`` each
(every claim must hold at once) and absolute checks have no p-value: both stay out of the family.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from pytest_qtests.gate.checks import CheckResult, verdict_message
from pytest_qtests.gate.gatekeeping import check_weights, weighted_holm

# Recompute family member ``index`` at ``level`` (a one-sided level, the interval at 1 - 2 level).
Recompute = Callable[[int, float], CheckResult]


def apply_gatekeeping(results: Sequence[CheckResult], recompute: Recompute) -> list[CheckResult]:
    """Share ``alpha`` over the evidence-of-harm checks of one family (e.g. all checks of one variant).

    ``results`` are the checks at the family's ``alpha`` (their p-values decide the allocation);
    ``recompute(i, level)`` re-runs check ``i`` at the level it was finally tested at, whose interval and
    verdict are kept. ``adjusted_p_value`` is ``p * alpha / level``: below ``alpha`` exactly when the
    check failed.
    """
    family = [i for i, r in enumerate(results) if r.mode == "evidence-of-harm" and r.p_value is not None]
    if not family:
        return list(results)
    alpha = results[family[0]].alpha
    p_values = [results[i].p_value for i in family]
    allocation = weighted_holm(lambda j, level: p_values[j] < level,  # type: ignore[operator]
                               check_weights([results[i].check for i in family]), alpha)
    out = list(results)
    for index, level in zip(family, allocation.levels):
        result = recompute(index, level)
        p = results[index].p_value
        updated = dataclasses.replace(
            result,
            adjusted_p_value=min(1.0, p * alpha / level),  # type: ignore[operator]
            details={**result.details, "family_size": len(family), "family_alpha": alpha},
        )
        out[index] = dataclasses.replace(updated, message=verdict_message(updated))
    return out
