"""The verdict table printed at the end of a session: one row per variant x task, then degeneracy reasons."""

from __future__ import annotations

import io
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from pytest_qtests.report.evidence import RunEvidence, degeneracy_lines, gather, length_unit_lines
from pytest_qtests.report.format import TABLE_COLUMNS, table_cells
from pytest_qtests.report.truncation import forensics_lines


def render_table(rows: list[dict[str, Any]], width: int = 120) -> str:
    table = Table(show_lines=False, header_style="bold")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "task", "verdict") else "right")
    for row in rows:
        table.add_row(*table_cells(row))
    buffer = io.StringIO()
    Console(file=buffer, width=max(width, 150), force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def render_entries(entries: Sequence[RunEvidence], width: int = 120) -> str:
    """The table, then one line per variant x task with degenerate outputs (top reasons, one example each),
    then the truncation forensics of each variant x task with truncated outputs."""
    text = render_table([entry.row for entry in entries], width)
    lines = length_unit_lines(entries) + degeneracy_lines(entries) + forensics_lines(entries)
    return text + "".join(line + "\n" for line in lines)


def render_summary(gate: Any, width: int = 120) -> str:
    """What ``pytest_terminal_summary`` prints for a gate session."""
    return render_entries(gather(gate), width)
