"""The sweep's Pareto table as rich (terminal), Markdown and JSON; pure functions of :class:`SweepRow` lists.

Rows are sorted by footprint so the table reads as a size/quality trade-off from the smallest
variant up; ``*`` marks the Pareto front (nothing else is smaller, more accurate and less truncated
at once) and the smallest passing variant is highlighted.
"""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

from pytest_qtests.build.sweep import SweepRow
from pytest_qtests.report.format import format_bytes

COLUMNS = ("variant", "scheme", "recipe", "footprint", "bits/param", "accuracy", "Δaccuracy", "truncation",
           "Δtruncation", "length", "verdict", "pareto")
MAX_FAILED_SHOWN = 3


def sorted_rows(rows: Sequence[SweepRow]) -> list[SweepRow]:
    return sorted(rows, key=lambda r: (r.task, r.footprint_bytes is None, r.footprint_bytes or 0, r.label))


def cells(row: SweepRow) -> tuple[str, ...]:
    verdict = row.verdict
    if row.failed and row.verdict == "FAIL":
        more = "…" if len(row.failed) > MAX_FAILED_SHOWN else ""
        verdict += " (" + ", ".join(row.failed[:MAX_FAILED_SHOWN]) + more + ")"
    elif row.verdict == "ERROR":
        verdict += f": {row.failed[0]}" if row.failed else ""
    if row.smallest_passing:
        verdict += "  ◀ smallest passing"
    return (row.label, row.scheme or "bf16", row.recipe or "-", format_bytes(row.footprint_bytes),
            _num(row.bits_per_param, 2), _num(row.accuracy, 3), _points(row.delta_accuracy), _num(row.truncation, 3), _points(row.delta_truncation),
            "-" if row.length_ratio is None else f"{row.length_ratio:.2f}x", verdict, "*" if row.pareto else "")


def markdown_table(rows: Sequence[SweepRow], title: str = "") -> str:
    lines = [f"## {title}", ""] if title else []
    for task in dict.fromkeys(r.task for r in sorted_rows(rows)):
        lines += [f"### task {task}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---" if i < 3 or i == 10 else "---:" for i in range(len(COLUMNS))) + "|"]
        for row in sorted_rows(r for r in rows if r.task == task):
            values = [c.replace("|", "\\|") for c in cells(row)]
            if row.smallest_passing:
                values = [f"**{v}**" if v and v != "*" else v for v in values]  # a bold lone * reads as markup
            lines.append("| " + " | ".join(values) + " |")
        lines.append("")
    lines.append("Δ are variant minus reference in percentage points; length is the ratio of median output tokens; "
                 "`*` marks the Pareto front (footprint, Δaccuracy, Δtruncation).")
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[SweepRow], width: int | None = None) -> str:
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=width or 180, force_terminal=False)
    for task in dict.fromkeys(r.task for r in sorted_rows(rows)):
        table = Table(title=f"qtests sweep: task {task} (* = Pareto front)")
        for index, column in enumerate(COLUMNS):
            table.add_column(column, justify="left" if index in (0, 1, 2, 10) else "right")
        for row in sorted_rows(r for r in rows if r.task == task):
            style = "bold green" if row.smallest_passing else ("red" if row.verdict in ("FAIL", "ERROR") else None)
            table.add_row(*cells(row), style=style)
        console.print(table)
    return buffer.getvalue()


def json_document(rows: Sequence[SweepRow], meta: dict[str, Any]) -> str:
    return json.dumps({**meta, "rows": [row.to_dict() for row in sorted_rows(rows)]}, indent=1, allow_nan=False) + "\n"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} pp"

