"""Cell formatting shared by the terminal table and the Markdown summary; byte sizes for the audit and sweep."""

from __future__ import annotations

from typing import Any

from pytest_qtests.gate.checks import CheckResult
from pytest_qtests.gate.tolerances import is_ratio


def cell_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cell_footprint(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def format_bytes(nbytes: int) -> str:
    """A byte count in decimal units with two decimals (``798.74 KB``): the audit's and the sweep's sizes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


def mark(result: CheckResult) -> str:
    """``✓`` shown within the margin, ``✗`` failed, ``?`` inconclusive (``?✓`` where the mode passes it)."""
    if result.verdict == "INCONCLUSIVE":
        return "?✓" if result.passed else "?✗"
    return "✓" if result.passed else "✗"


def cell_delta(result: CheckResult | None) -> str:
    """A rate delta in percentage points with its verdict mark, e.g. ``-5.0pp ✗``."""
    if result is None:
        return "-"
    return f"{100 * result.estimate:+.1f}pp {mark(result)}"


def cell_ratio(result: CheckResult | None) -> str:
    if result is None:
        return "-"
    return f"{result.estimate:.2f} {mark(result)}"


def _row_results(row: dict[str, Any]) -> list[CheckResult]:
    return [value for key, value in row.items() if key.endswith("_result")]


def row_passed(row: dict[str, Any]) -> bool | None:
    """Whether the row's model passed the gate; None for the reference and for a row with nothing to compare.

    The boolean readers use (the model card, the HTML report, CI scripts reading ``results.json``), so
    none of them parses :func:`row_verdict`'s text.
    """
    results = _row_results(row)
    if row["role"] == "reference" and not results:  # a tested reference has only absolute expectations
        return None
    if row.get("canary") is False:
        return False
    return all(r.passed for r in results) if results else None


def row_verdict(row: dict[str, Any]) -> str:
    passed, results = row_passed(row), _row_results(row)
    if passed is None:
        return "reference" if row["role"] == "reference" else "no comparison"
    if row.get("canary") is False:
        return "FAIL (canary)"
    if not passed:
        return "FAIL " + ",".join(r.check for r in results if not r.passed)
    inconclusive = [r.check for r in results if r.verdict == "INCONCLUSIVE"]
    return "PASS" if not inconclusive else "PASS, inconclusive " + ",".join(inconclusive)


def cell_estimate(result: CheckResult) -> str:
    """The estimate in its natural unit: ``-5.0 pp`` for rates, ``x1.18`` for length ratios."""
    return f"x{result.estimate:.2f}" if is_ratio(result.check) else f"{100 * result.estimate:+.1f} pp"


def cell_interval(result: CheckResult) -> str:
    """The two-sided interval the verdict uses, e.g. ``[-9.1, -0.9] pp (90%)``; ``-`` when there is none."""
    if result.ci_low is None or result.ci_high is None:
        return "-"
    level = f" ({result.confidence:.0%})" if result.confidence else ""
    if is_ratio(result.check):
        return f"[x{result.ci_low:.2f}, x{result.ci_high:.2f}]{level}"
    return f"[{100 * result.ci_low:+.1f}, {100 * result.ci_high:+.1f}] pp{level}"


def cell_p(p_value: float | None) -> str:
    if p_value is None:
        return "-"
    return f"{p_value:.1e}" if p_value < 1e-4 else f"{p_value:.3g}"


TABLE_COLUMNS = ("variant", "task", "footprint", "accuracy", "Δ acc", "truncated", "Δ trunc", "length ×",
                 "degenerate", "verdict")


def table_cells(row: dict[str, Any]) -> list[str]:
    """The verdict table's cells of one row (shared by Markdown and HTML)."""
    return [
        row["variant"] + (" (ref)" if row["role"] == "reference" else ""), row["task"],
        cell_footprint(row["footprint_bytes"]), cell_rate(row["accuracy"]), cell_delta(row.get("accuracy_result")),
        cell_rate(row["truncation"]), cell_delta(row.get("truncation_result")), cell_ratio(row.get("length_result")),
        cell_rate(row["degenerate"]), row_verdict(row),
    ]
