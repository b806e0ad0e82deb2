"""The verdict table printed at the end of a session: one row per variant x task."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from .format import cell_delta, cell_footprint, cell_rate, cell_ratio, row_verdict


def render_table(rows: list[dict[str, Any]], width: int = 120) -> str:
    table = Table(show_lines=False, header_style="bold")
    for column in ("variant", "task", "footprint", "accuracy", "Δ acc", "truncated", "Δ trunc",
                   "length ×", "degenerate", "verdict"):
        table.add_column(column, justify="left" if column in ("variant", "task", "verdict") else "right")
    for row in rows:
        table.add_row(
            row["variant"] + (" (ref)" if row["role"] == "reference" else ""),
            row["task"],
            cell_footprint(row["footprint_bytes"]),
            cell_rate(row["accuracy"]),
            cell_delta(row.get("accuracy_result")),
            cell_rate(row["truncation"]),
            cell_delta(row.get("truncation_result")),
            cell_ratio(row.get("length_result")),
            cell_rate(row["degenerate"]),
            row_verdict(row),
        )
    buffer = io.StringIO()
    Console(file=buffer, width=max(width, 150), force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()
