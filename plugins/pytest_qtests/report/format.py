"""Cell formatting shared by the terminal table and the Markdown summary."""

from __future__ import annotations

from typing import Any

from ..gate import CheckResult


def cell_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cell_footprint(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def cell_delta(result: CheckResult | None) -> str:
    """A rate delta in percentage points with its verdict mark, e.g. ``-5.0pp ✗``."""
    if result is None:
        return "-"
    return f"{100 * result.estimate:+.1f}pp {'✓' if result.passed else '✗'}"


def cell_ratio(result: CheckResult | None) -> str:
    if result is None:
        return "-"
    return f"{result.estimate:.2f} {'✓' if result.passed else '✗'}"


def row_verdict(row: dict[str, Any]) -> str:
    if row["role"] == "reference":
        return "reference"
    if row.get("canary") is False:
        return "FAIL (canary)"
    results = [value for key, value in row.items() if key.endswith("_result")]
    if not results:
        return "no comparison"
    failed = [r.check for r in results if not r.passed]
    return "PASS" if not failed else "FAIL " + ",".join(failed)
