"""What the reports show about each variant x task, gathered once from a gate session as plain data.

Every report (JSON, Markdown, HTML, terminal) reads :class:`RunEvidence` objects, never the session,
so each writer is a pure function that tests can feed with constructed outcomes. The functions here
derive the evidence a reader needs to see *why* a verdict came out as it did: the items that flipped
between reference and variant (with both outputs), the degeneracy reasons with an example each, and
the thinking-length distribution (quantized reasoning models think longer before they truncate).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from pytest_qtests.gate.checks import CheckResult
from pytest_qtests.records import GenerationRecord, ItemOutcome, QtestsError, TaskItem
from pytest_qtests.gate.stats import wilson_interval

EXCERPT_CHARS = 60  # characters kept from each end of an output in examples (results.json, HTML)
LINE_EXCERPT_CHARS = 12  # the same in terminal and Markdown lines, which must stay short
Direction = Literal["lost", "gained"]


@dataclass
class RunEvidence:
    """One variant on one task with its reference, as the reports need it.

    ``row`` is the session's summary row (metrics and ``<check>_result`` entries). The reference's
    outcomes come from the live reference or a stored baseline (``reference_source`` says which);
    its records (texts) exist only for a live reference. ``items`` maps item ids to the task's items
    so a flip can show the expected answer.
    """

    variant: str
    task: str
    role: str  # "reference" or "variant"
    row: dict[str, Any]
    outcomes: list[ItemOutcome]
    records: list[GenerationRecord]
    fingerprint: dict[str, Any]
    canary: Any = None  # runner.CanaryResult or None
    complete: bool = True
    reference_source: str | None = None
    reference_outcomes: list[ItemOutcome] | None = None
    reference_records: list[GenerationRecord] | None = None
    items: dict[str, TaskItem] = field(default_factory=dict)
    forensics: Any = None  # forensics.Forensics of a compared variant, else None
    diagnosis: Any = None  # evaluate.diagnosis.Diagnosis of a variant whose degenerate check failed, else None
    sequential: Any = None  # evaluate.looks.SequentialRun of a --stop-early run, else None

    @property
    def checks(self) -> dict[str, CheckResult]:
        return {key[: -len("_result")]: value for key, value in self.row.items() if key.endswith("_result")}


# ---------------------------------------------------------------------------------------------------
# Gathering from a session


def gather(gate: Any) -> list[RunEvidence]:
    """One :class:`RunEvidence` per evaluated (variant, task) of a :class:`~pytest_qtests.session.GateSession`.

    Only public session methods are used; a reference that cannot be loaded any more (a baseline
    refused for its fingerprint) leaves the entry without a reference instead of failing the report.
    """
    runs = gate.evaluator.completed_runs()
    reference_label = gate.config.reference.label if gate.config.reference is not None else None
    entries = []
    for row in gate.summary_rows():
        run = runs[(row["variant"], row["task"])]
        entry = RunEvidence(
            variant=row["variant"], task=row["task"], role=row["role"], row=row, outcomes=list(run.outcomes),
            records=list(run.records), fingerprint=run.fingerprint.to_dict(), canary=run.canary,
            complete=run.complete, items=_task_items(gate, row["task"]),
            diagnosis=gate.diagnoses.get((row["variant"], row["task"])), sequential=run.sequential,
        )
        if row["role"] != "reference":
            try:
                found = gate.reference_for(run.variant, row["task"])
            except QtestsError:
                found = None
            if found is not None and not isinstance(found, str):
                entry.forensics = gate.forensics(run.variant, row["task"])
                entry.reference_source = found.source
                entry.reference_outcomes = list(found.outcomes)
                live = runs.get((reference_label, row["task"])) if reference_label else None
                if live is not None:
                    entry.reference_records = list(live.records)
        entries.append(entry)
    return entries


def _task_items(gate: Any, task: str) -> dict[str, TaskItem]:
    try:
        return {item.item_id: item for item in gate.evaluator.task_data(task).items}
    except QtestsError:
        return {}


# ---------------------------------------------------------------------------------------------------
# Pure functions over outcomes


def excerpt(text: str, width: int = EXCERPT_CHARS) -> str:
    """A quoted one-line rendering of an output: whole when short, else its start and its end."""
    if len(text) <= 2 * width:
        return json.dumps(text, ensure_ascii=False)
    return json.dumps(text[:width], ensure_ascii=False) + " … " + json.dumps(text[-width:], ensure_ascii=False)


@dataclass(frozen=True)
class RateInterval:
    """A rate with its Wilson interval. With repeats the unit is the item (samples averaged first)."""

    value: float
    low: float
    high: float
    n: int


def rate_interval(outcomes: Sequence[ItemOutcome], attribute: str, confidence: float = 0.95) -> RateInterval | None:
    """Wilson interval of the share of outcomes whose ``attribute`` is true, over items.

    Samples of one item are not independent, so with ``--repeats`` each item contributes its mean and
    the interval is computed over items (successes rounded), as the gate's statistics do.
    """
    if not outcomes:
        return None
    by_item: dict[str, list[float]] = {}
    for outcome in outcomes:
        by_item.setdefault(outcome.item_id, []).append(float(getattr(outcome, attribute)))
    means = [sum(values) / len(values) for values in by_item.values()]
    n = len(means)
    value = sum(means) / n
    low, high = wilson_interval(round(value * n), n, confidence)
    return RateInterval(value, low, high, n)


@dataclass(frozen=True)
class ThinkingDistribution:
    """Thinking tokens over all samples, and how many thinking blocks never closed."""

    n: int
    median: float
    p90: float
    p99: float
    never_closed: float  # share of samples whose thinking block never closed

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "median": self.median, "p90": self.p90, "p99": self.p99,
                "never_closed": self.never_closed}


def thinking_distribution(outcomes: Sequence[ItemOutcome]) -> ThinkingDistribution | None:
    """Median, p90 and p99 of thinking tokens; ``None`` when there are no outcomes.

    Taken over samples (not item means): it describes the distribution itself, whose tail is where a
    variant that thinks longer meets the output cap.
    """
    if not outcomes:
        return None
    tokens = np.array([o.thinking_tokens for o in outcomes], dtype=float)
    median, p90, p99 = (float(v) for v in np.percentile(tokens, [50, 90, 99]))
    never_closed = sum(not o.thinking_closed for o in outcomes) / len(outcomes)
    return ThinkingDistribution(len(outcomes), median, p90, p99, never_closed)


@dataclass(frozen=True)
class ReasonExample:
    """How many outputs one kind of degeneracy flagged, with the first of them as an example."""

    kind: str  # the reason's label, e.g. "loop" or "answer absent"
    count: int
    item_id: str
    sample_index: int
    reason: str
    excerpt: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count,
                "example": {"item_id": self.item_id, "sample_index": self.sample_index,
                            "reason": self.reason, "excerpt": self.excerpt}}


@dataclass(frozen=True)
class DegeneracyDigest:
    total: int
    degenerate: int
    top_reasons: list[ReasonExample]

    @property
    def rate(self) -> float | None:
        return self.degenerate / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "degenerate": self.degenerate, "rate": self.rate,
                "top_reasons": [reason.to_dict() for reason in self.top_reasons]}


def reason_kind(reason: str) -> str:
    """The label of a detector's reason string: the text before its first colon (``loop: ...`` -> ``loop``)."""
    return reason.split(":", 1)[0].strip()


def degeneracy_digest(
    outcomes: Sequence[ItemOutcome], records: Iterable[GenerationRecord] = (), top: int = 3,
    excerpt_width: int = EXCERPT_CHARS,
) -> DegeneracyDigest:
    """Degenerate count and the ``top`` most frequent kinds of reason, each with its first example.

    Outcomes carry their detectors' reason strings (not the detectors' findings), so reasons are
    grouped by their label; ties keep the order in which the kinds were first seen.
    """
    texts = {(r.item_id, r.sample_index): r.text for r in records}
    counts: Counter[str] = Counter()
    examples: dict[str, ReasonExample] = {}
    flagged = [o for o in outcomes if o.degenerate]
    for outcome in flagged:
        for reason in outcome.degenerate_reasons:
            kind = reason_kind(reason)
            counts[kind] += 1
            if kind not in examples:
                text = texts.get((outcome.item_id, outcome.sample_index))
                examples[kind] = ReasonExample(kind, 0, outcome.item_id, outcome.sample_index, reason,
                                               excerpt(text, excerpt_width) if text is not None else "")
    ranked = sorted(counts, key=lambda kind: -counts[kind])[:top]
    top_reasons = [dataclasses.replace(examples[kind], count=counts[kind]) for kind in ranked]
    return DegeneracyDigest(len(outcomes), len(flagged), top_reasons)


def degeneracy_line(entry: RunEvidence, digest: DegeneracyDigest) -> str:
    """One line for the terminal and Markdown: the count, then each top reason with its first example.

    E.g. ``broken on zoo: 8/8 degenerate (canary) — loop ×8, e.g. item 0: 1-char unit "!" repeats 96x
    ..., output "!!!!" … "!!!!"; run ×8, e.g. item 0: ...``; each example output is quoted once.
    """
    head = f"{entry.variant} on {entry.task}: {digest.degenerate}/{digest.total} degenerate"
    if entry.canary is not None and not entry.complete:
        head += " (canary)"
    parts, shown = [], set()
    for reason in digest.top_reasons:
        detail = reason.reason.split(":", 1)[1].strip() if ":" in reason.reason else reason.reason
        example = (reason.item_id, reason.sample_index)
        output = f", output {reason.excerpt}" if reason.excerpt and example not in shown else ""
        shown.add(example)
        parts.append(f"{reason.kind} ×{reason.count}, e.g. item {reason.item_id}: {detail}{output}")
    return head + (" — " + "; ".join(parts) if parts else "")


def failure_messages(entries: Sequence[RunEvidence]) -> list[str]:
    """Every failed check and failed canary, as ``variant on task: message``."""
    messages = []
    for entry in entries:
        if entry.canary is not None and not entry.canary.passed:
            messages.append(f"{entry.variant} on {entry.task}: {entry.canary.message}")
        messages += [f"{entry.variant} on {entry.task}: {result.message}"
                     for result in entry.checks.values() if not result.passed]
        if entry.diagnosis is not None:
            messages.append(f"{entry.variant} on {entry.task}: {entry.diagnosis.message}")
    return messages


def degeneracy_lines(entries: Sequence[RunEvidence]) -> list[str]:
    """One line per variant x task with degenerate outputs: the count and the top reasons, one example each."""
    lines = []
    for entry in entries:
        digest = degeneracy_digest(entry.outcomes, entry.records, excerpt_width=LINE_EXCERPT_CHARS)
        if digest.degenerate:
            lines.append(degeneracy_line(entry, digest))
    return lines


def length_unit_lines(entries: Sequence[RunEvidence]) -> list[str]:
    """One line per variant x task whose lengths are words, not tokens (a replay file without counts)."""
    return [f"{entry.variant} on {entry.task}: lengths counted in words (replay file without token counts; "
            "--tokenizer counts tokens); never compared with token counts"
            for entry in entries if entry.row.get("length_unit", "tokens") != "tokens"]


# ---------------------------------------------------------------------------------------------------
# Flips: the per-item evidence behind an accuracy delta


@dataclass(frozen=True)
class Flip:
    """One sample graded correct for one model and wrong for the other, with both outputs."""

    variant: str
    task: str
    item_id: str
    sample_index: int
    direction: Direction  # "lost": reference right, variant wrong; "gained": the other way round
    question: str | None
    expected: str | None
    reference: dict[str, Any]
    candidate: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "task": self.task, "item_id": self.item_id,
                "sample_index": self.sample_index, "direction": self.direction, "question": self.question,
                "expected": self.expected, "reference": self.reference, "variant_output": self.candidate}


def _side(outcome: ItemOutcome, record: GenerationRecord | None) -> dict[str, Any]:
    return {
        "correct": outcome.correct, "extracted": outcome.extracted, "truncated": outcome.truncated,
        "thinking_closed": outcome.thinking_closed, "degenerate": outcome.degenerate,
        "output_tokens": outcome.output_tokens, "thinking_tokens": outcome.thinking_tokens,
        "finish_reason": record.finish_reason if record is not None else None,
        "text": record.text if record is not None else None,
    }


def find_flips(entry: RunEvidence) -> list[Flip]:
    """Every (item, sample) both models answered on which exactly one of them is correct.

    Pairs are matched by (item id, sample index) over the samples both runs have (in the variant's run
    order), so a variant stopped
    by its canary still shows the flips among the canary's items. Texts are ``None`` where a side has
    no record (a reference taken from a stored baseline keeps outcomes only).
    """
    if entry.reference_outcomes is None:
        return []
    reference = {(o.item_id, o.sample_index): o for o in entry.reference_outcomes}
    reference_texts = {(r.item_id, r.sample_index): r for r in entry.reference_records or []}
    variant_texts = {(r.item_id, r.sample_index): r for r in entry.records}
    flips = []
    for outcome in entry.outcomes:
        key = (outcome.item_id, outcome.sample_index)
        paired = reference.get(key)
        if paired is None or paired.correct == outcome.correct:
            continue
        item = entry.items.get(outcome.item_id)
        flips.append(Flip(
            entry.variant, entry.task, outcome.item_id, outcome.sample_index,
            "lost" if paired.correct else "gained",
            item.question if item else None, item.answer if item else None,
            _side(paired, reference_texts.get(key)), _side(outcome, variant_texts.get(key)),
        ))
    return flips


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a missing or undefined number is written as null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)
