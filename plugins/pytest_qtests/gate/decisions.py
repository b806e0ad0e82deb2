"""A ``--stop-early`` run's checks as :class:`CheckResult` objects, like a fixed run's.

A check its confidence sequence decided keeps that sequence's interval and level (the interval the
decision used); a check still open at the end of the items goes to the fixed-n test with what is left
of its budget (:meth:`SequentialGate.finish`) and is reported at that level; one still open when the run
stopped before the end is reported INCONCLUSIVE on its sequence, with where and why the run stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pytest_qtests.gate.checks import CheckResult, verdict_message
from pytest_qtests.gate.sequential import CheckState, SequentialGate, ratio_of_share
from pytest_qtests.gate.tolerances import CHECK_SPECS
from pytest_qtests.gate.verdict import passes

# The fixed-n check ``name`` on the items the run evaluated, at a one-sided level.
Recompute = Callable[[str, float], CheckResult]


def sequential_results(gate: SequentialGate, recompute: Recompute) -> dict[str, CheckResult]:
    """Every check of one gate: decided ones from their sequence, open ones from the fixed-n fallback."""
    names = [state.check.name for state in gate.states]
    fallback = gate.finish(lambda j, level: recompute(names[j], level).verdict == "FAIL")
    results = {}
    for state, level in zip(gate.states, fallback):
        if state.interval is not None:
            results[state.check.name] = _from_sequence(recompute(state.check.name, state.level), state, gate)
        else:
            results[state.check.name] = recompute(state.check.name, level)
    return results


def _when(state: CheckState, gate: SequentialGate) -> str:
    """When the sequence decided, or where the run stopped with the check still open and why."""
    if state.verdict is not None:
        return f"decided after {state.decided_items} of {gate.items_planned or state.decided_items} items"
    chance = f", its predictive chance of a FAIL by the end {state.fail_chance:.1%}" if state.fail_chance is not None else ""
    return f"open when the run stopped after {gate.items} of {gate.items_planned} items: {gate.stop_reason}{chance}"


def _from_sequence(base: CheckResult, state: CheckState, gate: SequentialGate) -> CheckResult:
    """``base`` (the fixed-n facts at the sequence's level) with the sequence's interval and verdict."""
    assert state.interval is not None and state.level is not None and state.sequence is not None
    spec = CHECK_SPECS[base.check]
    low, high = state.interval
    confidence = f"{round((1 - 2 * state.level) * 1000) / 10:g}% confidence sequence"
    if spec.kind == "ratio":
        estimate = ratio_of_share(float(np.mean(state.sequence.differences())))
        low, high = ratio_of_share(low), ratio_of_share(high)
        shift = f"typical per-item x{estimate:.2f}, {confidence} [x{low:.2f}, x{high:.2f}]"
        values = f"{base.variant_value:.4g} vs {base.reference_value:.4g}"
    else:
        estimate = base.estimate
        shift = f"Δ {estimate * 100:+.1f} pp, {confidence} [{low * 100:+.1f}, {high * 100:+.1f}]"
        values = f"{base.variant_value:.3f} vs {base.reference_value:.3f}"
    verdict = state.verdict or "INCONCLUSIVE"
    result = dataclasses.replace(
        base, estimate=estimate, ci_low=low, ci_high=high, confidence=1 - 2 * state.level, verdict=verdict,
        passed=passes(verdict, base.mode), decided_look=state.decided_look, p_value=None,
        method="betting confidence sequence (ville BettingCS), anytime-valid",
        summary=f"{spec.description} {values} reference ({shift}, {_when(state, gate)})",
        evidence=base.evidence)
    return dataclasses.replace(result, message=verdict_message(result))
