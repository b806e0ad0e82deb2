"""Users' own per-item scores judged like the gate's accuracy: paired, item by item, same test and message.

A release team's check ("our in-house eval must not get worse") gets the gate's statistics for free: the
scores become outcomes, and the accuracy check of :mod:`pytest_qtests.gate.checks` decides under the
run's ``--alpha`` and ``--gate-mode``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pytest_qtests.gate.checks import CheckResult, run_checks
from pytest_qtests.gate.tolerances import Tolerance, parse_fail_on
from pytest_qtests.records import ItemOutcome, QtestsError


def compare_scores(scores: Sequence[bool], reference_scores: Sequence[bool], *, ids: Sequence[str] | None = None,
                   tolerance: str | Tolerance = "-2pp", alpha: float = 0.05, mode: str = "evidence-of-harm",
                   seed: int = 0, name: str = "score") -> CheckResult:
    """The paired accuracy check of per-item pass/fail ``scores`` against the reference's for the same
    items (``ids`` name them in messages; default their positions). ``tolerance`` is written as for
    ``--fail-on accuracy:...`` (``-2pp``, ``-0.02``, ``-10%``) or parsed. The result's ``check`` is ``name``."""
    if len(scores) != len(reference_scores):
        raise QtestsError(f"{name}: {len(scores)} scores for the model but {len(reference_scores)} for the "
                          "reference; score the same items for both")
    if not scores:
        raise QtestsError(f"{name}: no scores to compare; score at least one item")
    ids = [str(i) for i in (ids if ids is not None else range(len(scores)))]
    if len(ids) != len(scores) or len(set(ids)) != len(ids):
        raise QtestsError(f"{name}: ids must name each scored item once ({len(ids)} ids for {len(scores)} scores)")
    bad = next((s for s in [*scores, *reference_scores] if not isinstance(s, (bool, int)) or s not in (0, 1)), None)
    if bad is not None:
        raise QtestsError(f"{name}: scores are per-item pass/fail (True/False or 1/0), got {bad!r}")
    if not isinstance(tolerance, Tolerance):
        tolerance = parse_fail_on(f"accuracy:{tolerance}")["accuracy"]
    tolerances = {"accuracy": tolerance}

    def outcomes(values: Sequence[bool]) -> list[ItemOutcome]:
        return [ItemOutcome(item_id, 0, bool(value), False, 0, 0, True) for item_id, value in zip(ids, values)]

    [result] = run_checks(outcomes(reference_scores), outcomes(scores), tolerances, alpha, mode, seed=seed)
    return dataclasses.replace(result, check=name, message=result.message.replace("accuracy", name, 1))
