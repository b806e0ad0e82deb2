"""Files for CI: ``results.json`` (every number of the run) and ``summary.md`` (a GitHub step summary)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .format import cell_delta, cell_footprint, cell_rate, cell_ratio, row_verdict


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key.endswith("_result"):
            out[key[: -len("_result")]] = {
                "passed": value.passed, "estimate": value.estimate, "ci_low": value.ci_low,
                "ci_high": value.ci_high, "margin": value.margin, "p_value": value.p_value,
                "adjusted_p_value": value.adjusted_p_value, "message": value.message}
        else:
            out[key] = value
    return out


def markdown_summary(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | task | footprint | accuracy | Δ acc | truncated | Δ trunc | length × | degenerate | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append("| " + " | ".join([
            row["variant"] + (" (ref)" if row["role"] == "reference" else ""), row["task"],
            cell_footprint(row["footprint_bytes"]), cell_rate(row["accuracy"]), cell_delta(row.get("accuracy_result")),
            cell_rate(row["truncation"]), cell_delta(row.get("truncation_result")), cell_ratio(row.get("length_result")),
            cell_rate(row["degenerate"]), row_verdict(row)]) + " |")
    failures = [r.message for row in rows for k, r in row.items() if k.endswith("_result") and not r.passed]
    if failures:
        lines += ["", "### Failed checks", ""] + [f"- {message}" for message in failures]
    return "\n".join(lines) + "\n"


def write_reports(gate: Any, directory: Path) -> None:
    rows = gate.summary_rows()
    _atomic_write(directory / "results.json", json.dumps([_jsonable(r) for r in rows], indent=2, default=str))
    _atomic_write(directory / "summary.md", markdown_summary(rows))
