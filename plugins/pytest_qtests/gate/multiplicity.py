"""The family of checks: one verdict per variant that stays at ``alpha`` however many checks it has.

A variant is judged by several checks on several tasks; were each tested at ``alpha``, an identical
model would fail *some* check far more often than ``alpha``. Holm's step-down adjustment
(:func:`pytest_qtests.gate.stats.holm_adjust`) keeps the family-wise error at ``alpha`` whatever the
dependence between the checks (they share items), and rejects everything Bonferroni would and more.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pytest_qtests.gate.checks import CheckResult, decide, verdict_message
from pytest_qtests.gate.stats import holm_adjust


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
            passed=decide(p_adj, result.alpha, result.mode),
            details={**result.details, "holm_family_size": len(family)},
        )
        out[index] = dataclasses.replace(updated, message=verdict_message(updated))
    return out
