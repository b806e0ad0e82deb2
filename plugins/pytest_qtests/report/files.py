"""The files of ``--qt-report DIR``: ``results.json``, ``summary.md``, ``flips.jsonl`` and ``report.html``.

``results.json`` holds every number of the run and is validated against ``schemas/results.schema.json``
before it is written, so a consumer (a dashboard, a model card generator) can rely on its shape.
``summary.md`` fits ``$GITHUB_STEP_SUMMARY`` or a model card; ``flips.jsonl`` lists the samples whose
grade differs between reference and variant, with both outputs, so a reader sees *why* accuracy moved;
``report.html`` is one self-contained page with plots. Every file is written atomically
(:func:`pytest_qtests.store.atomic.atomic_write`), so a crash never leaves half a report.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import jsonschema
from jsonschema.exceptions import best_match

from pytest_qtests.version import __version__
from pytest_qtests.settings import RunConfig
from pytest_qtests.gate.checks import CheckResult
from pytest_qtests.records import QtestsError
from pytest_qtests.report.evidence import (
    RunEvidence,
    degeneracy_digest,
    degeneracy_lines,
    length_unit_lines,
    failure_messages,
    find_flips,
    finite_or_none,
    gather,
    rate_interval,
    thinking_distribution,
)
from pytest_qtests.report.format import TABLE_COLUMNS, row_passed, row_verdict, table_cells
from pytest_qtests.report.html import render_html
from pytest_qtests.report.truncation import forensics_lines
from pytest_qtests.store.atomic import atomic_write

RESULTS_SCHEMA_VERSION = 1


def settings_of(config: RunConfig) -> dict[str, Any]:
    """The settings a reader of ``results.json`` needs to interpret the numbers."""
    return {
        "reference": config.reference.label if config.reference is not None else None,
        "baseline": config.baseline,
        "tasks": list(config.tasks),
        "backend": config.backend,
        "gate_mode": config.gate_mode,
        "alpha": config.alpha,
        "fail_on": {check: tolerance.text for check, tolerance in config.tolerances.items()},
        "max_tokens": config.sampling.max_tokens,
        "repeats": config.repeats,
        "canary": config.canary,
        "limit": config.limit,
        "thinking": config.thinking,
        "extend_truncated": config.extend_truncated,
    }


def write_reports(gate: Any, directory: Path) -> None:
    """Entry point of ``--qt-report DIR``: gather the session's evidence and write every report file."""
    write_report_files(gather(gate), settings_of(gate.config), Path(directory))


def results_of(gate: Any) -> dict[str, Any]:
    """The session's ``results.json`` document, for the ``pytest_qtests_results`` hook."""
    return results_document(gather(gate), settings_of(gate.config))


def write_report_files(entries: Sequence[RunEvidence], settings: dict[str, Any], directory: Path) -> list[Path]:
    """Write the four report files into ``directory``; returns their paths.

    ``results.json`` is validated first: nothing is written when it does not match its schema.
    """
    document = results_document(entries, settings)
    problem = results_problem(document)
    if problem:
        raise QtestsError(f"refusing to write {directory / 'results.json'}: {problem}; this is a qtests bug, please report it")
    written = {
        "results.json": json.dumps(document, indent=1, allow_nan=False, ensure_ascii=False) + "\n",
        "summary.md": markdown_summary(entries),
        "flips.jsonl": flips_jsonl(entries),
        "report.html": render_html(entries, settings),
    }
    paths = []
    for name, text in written.items():
        atomic_write(directory / name, text)
        paths.append(directory / name)
    return paths


# ---------------------------------------------------------------------------------------------------
# results.json


def check_document(result: CheckResult) -> dict[str, Any]:
    return {
        "check": result.check, "mode": result.mode, "passed": result.passed, "verdict": result.verdict or None,
        "decided_look": result.decided_look, "mde": finite_or_none(result.mde),
        "reference_value": finite_or_none(result.reference_value), "variant_value": result.variant_value,
        "estimate": result.estimate, "ci_low": finite_or_none(result.ci_low), "ci_high": finite_or_none(result.ci_high),
        "confidence": finite_or_none(result.confidence), "margin": result.margin, "limit_text": result.limit_text,
        "p_value": finite_or_none(result.p_value), "adjusted_p_value": finite_or_none(result.adjusted_p_value),
        "method": result.method, "n_items": result.n_items, "message": result.message,
        "discordant": _discordant(result),
    }


def _discordant(result: CheckResult) -> dict[str, Any] | None:
    """The discordant counts and exact McNemar p-value of a paired 0/1 check, else None."""
    details = result.details
    if "down" not in details:
        return None
    return {"reference_only": details["down"], "variant_only": details["up"],
            "mcnemar_exact_p": details["mcnemar_exact_p"]}


def _reference_tokens(entry: RunEvidence) -> int | None:
    """The live reference's output tokens on the items this run was compared on (None without one)."""
    if entry.reference_records is None:
        return None
    compared = {o.item_id for o in entry.reference_outcomes or []}
    return sum(r.output_tokens for r in entry.reference_records if r.item_id in compared)


def _canary_document(canary: Any) -> dict[str, Any] | None:
    if canary is None:
        return None
    return {
        "passed": canary.passed, "n_items": canary.n_items, "variant_degenerate": canary.variant_degenerate,
        "reference_degenerate": canary.reference_degenerate, "p_value": finite_or_none(canary.p_value),
        "full_run_generations": canary.full_run_generations, "reasons": list(canary.reasons),
        "message": canary.message,
        "divergence": None if canary.divergence is None else canary.divergence.to_dict(),
    }


def _interval(entry: RunEvidence, attribute: str) -> list[float] | None:
    interval = rate_interval(entry.outcomes, attribute)
    return None if interval is None else [interval.low, interval.high]


def run_document(entry: RunEvidence) -> dict[str, Any]:
    """One variant x task of ``results.json``."""
    row = entry.row
    flips = find_flips(entry)
    thinking = thinking_distribution(entry.outcomes)
    reference_thinking = thinking_distribution(entry.reference_outcomes or [])
    return {
        "variant": entry.variant,
        "task": entry.task,
        "role": entry.role,
        "complete": entry.complete,
        "items_planned": len(entry.items) if entry.items else len({o.item_id for o in entry.outcomes}),
        "items_evaluated": len({o.item_id for o in entry.outcomes}),
        "tokens_generated": {"variant": sum(r.output_tokens for r in entry.records),
                             "reference": _reference_tokens(entry)},
        "sequential": entry.sequential.to_dict() if entry.sequential is not None else None,
        "verdict": row_verdict(row),
        "passed": row_passed(row),
        "reference_source": entry.reference_source,
        "summary": {
            "n_samples": len(entry.outcomes),
            "n_items": len({o.item_id for o in entry.outcomes}),
            "accuracy": finite_or_none(row.get("accuracy")),
            "accuracy_ci": _interval(entry, "correct"),
            "truncation": finite_or_none(row.get("truncation")),
            "truncation_ci": _interval(entry, "truncated"),
            "median_output_tokens": finite_or_none(row.get("median_tokens")),
            "degenerate": finite_or_none(row.get("degenerate")),
            "footprint_bytes": row.get("footprint_bytes"),
            "wall_s": float(row.get("wall_s") or 0.0),
        },
        "checks": {name: check_document(result) for name, result in entry.checks.items()},
        "canary": _canary_document(entry.canary),
        "degeneracy": degeneracy_digest(entry.outcomes, entry.records).to_dict(),
        "thinking": thinking.to_dict() if thinking else None,
        "reference_thinking": reference_thinking.to_dict() if reference_thinking else None,
        "flips": {"lost": sum(f.direction == "lost" for f in flips), "gained": sum(f.direction == "gained" for f in flips)},
        "fingerprint": entry.fingerprint,
        "truncation_forensics": None if entry.forensics is None else entry.forensics.to_dict(),
        "diagnosis": None if entry.diagnosis is None else entry.diagnosis.to_dict(),
    }


def results_document(entries: Sequence[RunEvidence], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "qtests_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "runs": [run_document(entry) for entry in entries],
    }


@lru_cache(maxsize=1)
def results_validator() -> jsonschema.Draft202012Validator:
    text = resources.files("pytest_qtests").joinpath("schemas/results.schema.json").read_text("utf-8")
    return jsonschema.Draft202012Validator(json.loads(text), format_checker=jsonschema.FormatChecker())


def results_problem(document: Any) -> str | None:
    """``None`` when ``document`` matches the results schema, else one line naming the field."""
    error = best_match(results_validator().iter_errors(document))
    if error is None:
        return None
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path).lstrip(".")
    return f"{where or 'the document'}: {error.message}"


# ---------------------------------------------------------------------------------------------------
# summary.md and flips.jsonl


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(entries: Sequence[RunEvidence]) -> str:
    """The verdict table, then failed checks, then degeneracy reasons: a GitHub step summary or model card."""
    lines = ["## qtests verdicts", "",
             "| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join("---" if c in ("variant", "task", "verdict") else "---:" for c in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in table_cells(entry.row)) + " |" for entry in entries]
    failures = failure_messages(entries)
    if failures:
        lines += ["", "### Failed checks", ""] + [f"- {_markdown_cell(message)}" for message in failures]
    units = length_unit_lines(entries)
    if units:
        lines += ["", "### Lengths", ""] + [f"- {_markdown_cell(line)}" for line in units]
    degenerate = degeneracy_lines(entries)
    if degenerate:
        lines += ["", "### Degenerate output", ""] + [f"- {_markdown_cell(line)}" for line in degenerate]
    truncation = forensics_lines(entries)
    if truncation:
        lines += ["", "### Truncation forensics", ""] + [f"- {_markdown_cell(line)}" for line in truncation]
    made = dict.fromkeys(f"{entry.variant}: {entry.row['provenance']}"
                         for entry in entries if entry.row.get("provenance"))
    if made:
        lines += ["", "### How the variants were made", ""] + [f"- {_markdown_cell(line)}" for line in made]
    flips = [(entry, find_flips(entry)) for entry in entries if entry.reference_outcomes is not None]
    if flips:
        lines += ["", "### Items that flipped (details in flips.jsonl)", ""]
        for entry, found in flips:
            lost = sum(f.direction == "lost" for f in found)
            lines.append(f"- {entry.variant} on {entry.task}: {lost} lost, {len(found) - lost} gained "
                         f"vs {entry.reference_source}")
    return "\n".join(lines) + "\n"


def flips_jsonl(entries: Sequence[RunEvidence]) -> str:
    """One JSON object per flipped sample of every variant x task, with both outputs."""
    rows = [json.dumps(flip.to_dict(), ensure_ascii=False) for entry in entries for flip in find_flips(entry)]
    return "".join(row + "\n" for row in rows)
