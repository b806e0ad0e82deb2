"""Stored absolute expectations (vLLM CI's way): "gsm8k accuracy should be 0.78, give or take 8%".

Some teams keep hand-set numbers per model and task and want a gate that compares with them, as
vLLM's lm-eval tests do (a measured value passes when it is at least ``(1 - rtol) * expected``; for
metrics where lower is better, at most ``(1 + rtol) * expected``). This module reads those numbers from
the suite file's ``[expect]`` table and from ``--expect``, and turns a run's outcomes into
:func:`~pytest_qtests.gate.checks.check_absolute` results.

How it combines with the paired gate: an expectation *replaces* the paired check of that metric for
that variant and task (one rule decides a check, and the user chose this one); the other metrics are
still paired with the reference or baseline when there is one. With no reference and no baseline the
expectations are the only comparison. Absolute checks have no p-value and stay out of Holm's family.

Suite file::

    [expect]
    rtol = 0.08                      # default for every entry (vLLM's lm-eval tests use 0.08)
    [expect.gsm8k]                   # every tested variant on gsm8k
    accuracy = 0.78
    truncation = 0.02
    [expect.gsm8k.variants.int4]     # this variant's own numbers win, metric by metric
    accuracy = 0.75
    rtol = 0.05

Command line (repeatable, overrides the file): ``--expect gsm8k:accuracy=0.78,rtol=0.05`` or
``--expect int4:gsm8k:accuracy=0.75``; ``--expect-rtol`` sets the default rtol.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pytest_qtests.gate.checks import CheckResult, check_absolute
from pytest_qtests.gate.tolerances import CHECK_SPECS
from pytest_qtests.records import ItemOutcome, QtestsError
from pytest_qtests.gate.stats import per_item_means

DEFAULT_RTOL = 0.08  # vLLM's lm-eval correctness tests
EXPECT_EXAMPLE = "gsm8k:accuracy=0.78,rtol=0.08 (or LABEL:gsm8k:accuracy=0.78 for one variant)"


@dataclass(frozen=True)
class Expectation:
    """One expected value of one metric; ``source`` says where it was written, for the failure message."""

    check: str
    value: float
    rtol: float
    source: str


@dataclass(frozen=True)
class Expectations:
    """Expected values keyed by ``(variant label or None for every variant, task name)``."""

    entries: Mapping[tuple[str | None, str], Mapping[str, Expectation]] = field(default_factory=dict)

    def for_run(self, label: str, task: str) -> dict[str, Expectation]:
        """The expectations of ``label`` on ``task``: the task-wide ones, overridden by the variant's own."""
        merged = dict(self.entries.get((None, task), {}))
        merged.update(self.entries.get((label, task), {}))
        return merged

    def merged_with(self, other: Expectations) -> Expectations:
        """``other`` wins metric by metric (command line over suite file)."""
        entries = {key: dict(value) for key, value in self.entries.items()}
        for key, value in other.entries.items():
            entries.setdefault(key, {}).update(value)
        return Expectations(entries)

    def targets(self) -> Iterable[tuple[str | None, str]]:
        """Every ``(label or None, task)`` with expected values."""
        return self.entries.keys()


def _metric_value(check: str, value: Any, source: str) -> float:
    if check not in CHECK_SPECS:
        raise QtestsError(
            f"{source}: unknown metric {check!r}; expected one of {', '.join(sorted(CHECK_SPECS))} or rtol, "
            f"e.g. {EXPECT_EXAMPLE}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QtestsError(f"{source}: {check} must be a number, got {value!r}; e.g. {EXPECT_EXAMPLE}")
    value = float(value)
    if CHECK_SPECS[check].kind == "rate" and not 0.0 <= value <= 1.0:
        raise QtestsError(f"{source}: {check} {value:g} is not a fraction between 0 and 1 (write 0.78, not 78)")
    if CHECK_SPECS[check].kind == "ratio" and value <= 0:
        raise QtestsError(f"{source}: {check} {value:g} must be a positive number of tokens")
    return value


def _rtol(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise QtestsError(f"{source}: rtol must be a non-negative number such as 0.08, got {value!r}")
    return float(value)


def _metrics(table: Mapping[str, Any], rtol: float, source: str) -> dict[str, Expectation]:
    """``{"accuracy": 0.78, "rtol": 0.05}`` -> one :class:`Expectation` per metric."""
    if "rtol" in table:
        rtol = _rtol(table["rtol"], source)
    return {check: Expectation(check, _metric_value(check, value, source), rtol, source)
            for check, value in table.items() if check not in ("rtol", "variants")}


def parse_expect_table(table: Mapping[str, Any], default_rtol: float | None, source: str) -> Expectations:
    """The suite file's ``[expect]`` table (already checked against the suite schema)."""
    rtol = default_rtol if default_rtol is not None else _rtol(table.get("rtol", DEFAULT_RTOL), f"{source} rtol")
    entries: dict[tuple[str | None, str], dict[str, Expectation]] = {}
    for task, task_table in table.items():
        if task == "rtol":
            continue
        where = f"{source}.{task}"
        task_rtol = _rtol(task_table["rtol"], where) if "rtol" in task_table else rtol
        entries[(None, task)] = _metrics(task_table, task_rtol, where)
        for label, variant_table in task_table.get("variants", {}).items():
            entries[(label, task)] = _metrics(variant_table, task_rtol, f"{where}.variants.{label}")
    return Expectations(entries)


def parse_expect_option(text: str, default_rtol: float | None) -> Expectations:
    """One ``--expect [LABEL:]TASK:METRIC=VALUE[,METRIC=VALUE...]`` (``rtol=`` allowed among them)."""
    source = f"--expect {text}"
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (2, 3) or not all(parts):
        raise QtestsError(f"{source}: expected [LABEL:]TASK:METRIC=VALUE[,...], e.g. --expect {EXPECT_EXAMPLE}")
    *target, assignments = parts
    label, task = (None, target[0]) if len(target) == 1 else (target[0], target[1])
    table: dict[str, Any] = {}
    for assignment in assignments.split(","):
        key, equals, raw = (piece.strip() for piece in assignment.partition("="))
        if not equals or not key or not raw:
            raise QtestsError(f"{source}: {assignment.strip()!r} is not METRIC=VALUE, e.g. --expect {EXPECT_EXAMPLE}")
        if key in table:
            raise QtestsError(f"{source}: {key} is given twice; keep one")
        try:
            table[key] = float(raw)
        except ValueError:
            raise QtestsError(f"{source}: {key}={raw} is not a number, e.g. --expect {EXPECT_EXAMPLE}") from None
    rtol = DEFAULT_RTOL if default_rtol is None else default_rtol
    return Expectations({(label, task): _metrics(table, rtol, source)})


def check_targets(
    expectations: Expectations, tasks: Sequence[str], labels: Sequence[str] | None, source: str
) -> None:
    """Refuse expectations for tasks or variants the suite does not have: a typo must not disable a check.

    ``labels=None`` skips the variant check (the command line replaced the suite file's models).
    """
    for label, task in expectations.targets():
        if task not in tasks:
            raise QtestsError(
                f"{source}: expectation for task {task!r}, which is not among the tasks ({', '.join(tasks)}); "
                f"fix the task name"
            )
        if label is not None and labels is not None and label not in labels:
            raise QtestsError(
                f"{source}: expectation for variant {label!r}, which is not among the models "
                f"({', '.join(labels)}); use the model's LABEL"
            )


def build_expectations(
    table: Mapping[str, Any] | None,
    table_source: str,
    options: Sequence[str],
    default_rtol: float | None,
    tasks: Sequence[str],
    suite_tasks: Sequence[str],
    labels: Sequence[str],
    models_from_suite: bool,
) -> Expectations:
    """The run's expectations: the suite file's ``[expect]`` table, then each ``--expect`` over it.

    Targets are checked against the run's tasks and labels (the suite file's may also name tasks of
    its own ``tasks`` list that ``--tasks`` left out this time).
    """
    if default_rtol is not None:
        _rtol(default_rtol, "--expect-rtol")
    expectations = Expectations()
    if table:
        expectations = parse_expect_table(table, default_rtol, table_source)
        known_tasks = list(dict.fromkeys([*tasks, *suite_tasks]))
        check_targets(expectations, known_tasks, labels if models_from_suite else None, table_source)
    for text in options:
        given = parse_expect_option(text, default_rtol)
        check_targets(given, tasks, labels, f"--expect {text}")
        expectations = expectations.merged_with(given)
    return expectations


def observed_value(check: str, outcomes: Sequence[ItemOutcome]) -> float:
    """The run's value of ``check``, items as the unit (per-item means first, as the paired checks do):
    a rate's mean, or the median (p95) of per-item output or thinking tokens."""
    spec = CHECK_SPECS[check]
    ids = np.array([o.item_id for o in outcomes])
    values = np.array([float(getattr(o, spec.outcome_field)) for o in outcomes])
    _, per_item = per_item_means(values, ids)
    if spec.kind == "rate":
        return float(per_item.mean())
    return float(np.quantile(per_item, spec.quantile))


def expectation_checks(outcomes: Sequence[ItemOutcome], expected: Mapping[str, Expectation]) -> list[CheckResult]:
    """One absolute check per expected metric; ``details["source"]`` names where the number was set."""
    if not outcomes:
        raise QtestsError("no samples to compare with the expectations; the task selected no items")
    n_items = len({o.item_id for o in outcomes})
    results = []
    for check, expectation in expected.items():
        result = check_absolute(check, observed_value(check, outcomes), expectation.value, expectation.rtol,
                                n_items=n_items)
        results.append(replace(result, details={**result.details, "source": expectation.source}))
    return results
