"""``--stop-early``: generate a variant look by look in the run's seeded order, stop once its checks are decided.

The evaluator hands this module its two seams (each look's records through the cache, grade records),
so a look costs what the engine charges for that many requests and little more: an engine that streams
(a served one) keeps a rolling window of requests in the seeded order across the looks, a look and
its concurrency past what the gate has seen at most, so it never idles at a look's end; the others batch within a look (looks are
at least a batch on real suites, see ``look_ends``); cached records are read back, and every repeat of an
item sits in the item's look. The run's records are exactly those of the looks the gate saw.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from pytest_qtests.evaluate.canary_scoring import canary_requests
from pytest_qtests.gate.sequential import (
    FUTILITY,
    FUTILITY_FROM,
    SEQUENCE_SHARE,
    SequentialCheck,
    SequentialGate,
    look_ends,
    paired_differences,
    seeded_order,
    share_of_ratio,
)
from pytest_qtests.gate.tolerances import CHECK_SPECS, Tolerance
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome

# Checks without a bounded per-item mean: decided by the fixed-n test at the end of the items.
END_ONLY = frozenset({"length_p95"})


@dataclass
class SequentialRun:
    """What ``results.json`` reports about a run made with ``--stop-early``."""

    items_planned: int
    items_evaluated: int
    looks_planned: int
    looks_used: int
    gate: SequentialGate
    rule: str
    decided_looks: dict[str, int | None] = field(default_factory=dict)

    def not_judged(self, check: str) -> str | None:
        """Why ``check`` was never judged, when the run stopped at another check's FAIL with it still open.

        Like the checks after a failed canary, such a check is skipped rather than passed as inconclusive:
        the run stopped looking at it on purpose, it did not look and fail to tell.
        """
        state = next((s for s in self.gate.states if s.check.name == check), None)
        if state is None or state.verdict is not None or not (self.gate.failed and self.gate.stopped_early):
            return None
        return (f"{check} not judged: --stop-early stopped after {self.items_evaluated} of {self.items_planned} "
                f"items at the variant's first FAIL ({', '.join(self.gate.failed)}); run with --no-stop-early to "
                "judge every check")

    def to_dict(self) -> dict[str, Any]:
        return {"items_planned": self.items_planned, "items_evaluated": self.items_evaluated,
                "looks_planned": self.looks_planned, "looks_used": self.looks_used,
                "decided_looks": dict(self.decided_looks), "stopped": self.gate.stop_reason,
                "fail_chances": {s.check.name: s.fail_chance for s in self.gate.states if s.verdict is None},
                "stopping_rule": self.rule}


def stopping_rule(n_items: int, alpha: float, mode: str) -> str:
    """One line naming the rule, for reports and ``results.json``."""
    ends = look_ends(n_items)
    step = ends[0] if len(ends) > 1 else n_items
    return (f"{mode}: a look every {step} items ({len(ends)} looks) in seeded random order; per check a betting "
            f"confidence sequence (ville BettingCS) at {SEQUENCE_SHARE:g} of its level, the rest to the fixed-n "
            f"test at the end; stop at the first FAIL, when every check is decided"
            f"{f', or (from {FUTILITY_FROM:.0%} of the items) when every open check has a predictive FAIL chance below {FUTILITY:g}' if mode == 'evidence-of-harm' else ''}"
            f"; family alpha {alpha:g} "
            f"({'accuracy-first weighted Holm' if mode == 'evidence-of-harm' else 'each check at alpha'})")


def sequential_checks(tolerances: Mapping[str, Tolerance], reference_rates: Mapping[str, float]) -> list[SequentialCheck]:
    """The gate's view of the tolerated checks: margins in difference units (rates) or length shares (ratios)."""
    checks = []
    for name, tol in tolerances.items():
        spec = CHECK_SPECS[name]
        if spec.kind == "ratio":
            margin = share_of_ratio(tol.value)
        else:
            margin = tol.limit(reference_rates.get(name, 0.0))
        checks.append(SequentialCheck(name, spec.worse, margin, bounded=name not in END_ONLY))
    return checks


def _per_item(outcomes: Sequence[ItemOutcome], attribute: str, items: Sequence[str]) -> np.ndarray:
    values: dict[str, list[float]] = {}
    for outcome in outcomes:
        values.setdefault(outcome.item_id, []).append(float(getattr(outcome, attribute)))
    return np.array([np.mean(values[item]) for item in items])


def reference_head(requests: Sequence[GenerationRequest], canary: int, seed: int) -> list[GenerationRequest]:
    """The reference requests ``--stop-early`` generates before any variant: the items of the looks up to the
    first at which a variant may stop without a FAIL (:data:`FUTILITY_FROM` of the items, in the seeded
    order) and the canary's items, in request order. The rest is generated when a variant's look needs
    it (:func:`reference_extension`). Its degeneracy thresholds are calibrated on this head."""
    items = list(dict.fromkeys(request.item_id for request in requests))
    order = seeded_order(items, seed)
    first = next(end for end in look_ends(len(order)) if end >= FUTILITY_FROM * len(order))
    wanted = set(order[:first]) | {request.item_id for request in canary_requests(requests, canary)}
    return [request for request in requests if request.item_id in wanted]


def reference_extension(items: Sequence[str], seed: int, have: set[str], needed: Sequence[str]) -> list[str]:
    """The reference items to generate when a look needs ``needed`` and the reference has ``have``: the
    seeded order up to the last needed item, or up to twice the prefix already generated if that is
    further (each extension swaps the engine to the reference and back, so they double: at most
    ``log2(items / head)`` swaps per task)."""
    order = seeded_order(items, seed)
    prefix = next((i for i, item in enumerate(order) if item not in have), len(order))
    position = {item: i for i, item in enumerate(order)}
    target = min(len(order), max(max(position[item] for item in needed) + 1, 2 * prefix))
    return [item for item in order[:target] if item not in have]


def generate_in_looks(
    requests: Sequence[GenerationRequest],
    reference: Callable[[list[str]], Sequence[ItemOutcome]],
    tolerances: Mapping[str, Tolerance],
    alpha: float,
    mode: str,
    seed: int,
    generate_looks: Callable[[list[list[GenerationRequest]]], Iterator[list[GenerationRecord]]],
    grade: Callable[[list[GenerationRecord], list[GenerationRequest]], list[ItemOutcome]],
) -> tuple[list[GenerationRequest], list[GenerationRecord], list[ItemOutcome], SequentialRun]:
    """Generate and grade look by look until the variant's verdict is settled (:attr:`SequentialGate.settled`)
    or the items run out.

    ``reference(items)`` gives the reference's outcomes on a look's items (generating those it lacks);
    ``generate_looks(looks)`` yields each look's records in turn; it is closed when the gate settles, so
    whatever it has not yet generated never is.

    Returns the requests asked, their records and outcomes (in look order) and the run's account.
    Relative rate tolerances (``accuracy:-2%``) take the reference's rate on the items seen so far.
    """
    by_item: dict[str, list[GenerationRequest]] = {}
    for request in requests:
        by_item.setdefault(request.item_id, []).append(request)
    order = seeded_order(list(by_item), seed)
    ends = look_ends(len(order))
    reference_of: dict[str, list[ItemOutcome]] = {}
    names = list(tolerances)
    gate = SequentialGate(sequential_checks(tolerances, {}), alpha, mode, items_planned=len(order))
    asked: list[GenerationRequest] = []
    records: list[GenerationRecord] = []
    outcomes: list[ItemOutcome] = []
    item_looks = [order[start:end] for start, end in zip([0, *ends], ends)]
    looks = [[request for item in items for request in by_item[item]] for items in item_looks]
    start = 0
    with closing(generate_looks(looks)) as generated:
        for end, items, look, look_records in zip(ends, item_looks, looks, generated):
            for outcome in reference(items):
                reference_of.setdefault(outcome.item_id, []).append(outcome)
            look_outcomes = grade(look_records, look)
            asked += look
            records += look_records
            outcomes += look_outcomes
            seen = order[:end]
            ref_seen = [o for item in seen for o in reference_of.get(item, [])]
            rates = {name: float(np.mean([getattr(o, CHECK_SPECS[name].outcome_field) for o in ref_seen]))
                     for name in names if CHECK_SPECS[name].kind == "rate"}
            ref_look = [o for item in items for o in reference_of.get(item, [])]
            differences = [
                paired_differences(CHECK_SPECS[name].kind, _per_item(ref_look, CHECK_SPECS[name].outcome_field, items),
                                   _per_item(look_outcomes, CHECK_SPECS[name].outcome_field, items))
                for name in names
            ]
            gate.observe(differences, [check.margin for check in sequential_checks(tolerances, rates)])
            start = end
            if gate.settled:
                break
    run = SequentialRun(
        items_planned=len(order), items_evaluated=start, looks_planned=len(ends), looks_used=gate.looks, gate=gate,
        rule=stopping_rule(len(order), alpha, mode),
        decided_looks={state.check.name: state.decided_look for state in gate.states},
    )
    return asked, records, outcomes, run
