"""Truncation forensics in the reports: the accuracy change split into truncation and reasoning parts,
and what the continued samples of ``--extend-truncated`` did at the larger cap.

Lines for the terminal and summary.md, a table for report.html; results.json takes
:meth:`~pytest_qtests.gate.forensics.Forensics.to_dict` as it is. Every function reads :class:`RunEvidence`.
"""

from __future__ import annotations

from typing import Sequence

from pytest_qtests.evaluate.continuation import Extension
from pytest_qtests.gate.forensics import STRATA, STRATUM_TITLES, CapComparison, Forensics
from pytest_qtests.report.evidence import RunEvidence


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}pp"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def has_truncation(forensics: Forensics) -> bool:
    """Worth a line: someone was truncated, or the truncated samples were continued."""
    split = forensics.at_cap.split
    return split.strata["both_completed"].n < split.n_pairs or forensics.variant_extension is not None


def split_line(label: str, comparison: CapComparison) -> str:
    """``accuracy -15.0pp = truncation -10.0pp + reasoning -5.0pp`` with the strata's pair counts."""
    split = comparison.split
    strata = ", ".join(
        f"{STRATUM_TITLES[name]} {split.strata[name].n}"
        + (f" ({_rate(split.strata[name].variant_accuracy)} vs {_rate(split.strata[name].reference_accuracy)})"
           if split.strata[name].n else "")
        for name in STRATA)
    share = "" if split.truncation_share is None else f" ({split.truncation_share:.0%} of the loss)"
    interval = ("" if split.reasoning_ci is None else
                f" [{split.confidence:.0%} CI {_pp(split.reasoning_ci[0])}, {_pp(split.reasoning_ci[1])}]")
    return (f"{label} at cap {comparison.max_tokens}: accuracy {_pp(split.overall_delta)} = truncation "
            f"{_pp(split.truncation_part)}{share} + reasoning {_pp(split.reasoning_part)}; reasoning delta on pairs "
            f"both completed {_pp(split.reasoning_delta)}{interval}; pairs (variant vs reference accuracy): {strata}")


def extension_text(who: str, extension: Extension) -> str:
    return (f"{who}: {extension.continued} continued to cap {extension.max_tokens}, {extension.finished} finished, "
            f"{extension.finished_correct} right ({extension.extra_tokens} tokens decoded; a fresh re-run would also "
            f"re-decode {extension.reused_tokens})")


def forensics_lines(entries: Sequence[RunEvidence]) -> list[str]:
    """One or two lines per compared variant x task with any truncation (terminal and summary.md)."""
    lines = []
    for entry in entries:
        forensics: Forensics | None = entry.forensics
        if forensics is None or not has_truncation(forensics):
            continue
        label = f"{entry.variant} on {entry.task}"
        lines.append(split_line(label, forensics.at_cap))
        if forensics.variant_extension is not None:
            parts = [extension_text(entry.variant, forensics.variant_extension)]
            if forensics.reference_extension is not None:
                parts.append(extension_text("reference", forensics.reference_extension))
            if forensics.extended is not None:
                parts.append(forensics.extended.describe())
            lines.append(f"{label}, --extend-truncated {forensics.extended_factor:g}: " + "; ".join(parts))
    return lines


FORENSICS_HEADER = (["variant", "task", "cap", "accuracy Δ", "truncation Δ", "truncation part", "reasoning part",
                     "reasoning Δ (both completed)"]
                    + [f"{STRATUM_TITLES[name]}: n, variant / ref acc" for name in STRATA])


def forensics_rows(entries: Sequence[RunEvidence]) -> list[list[str]]:
    """Rows under :data:`FORENSICS_HEADER`: per compared variant x task, one at the cap, one at the larger cap."""
    rows = []
    for entry in entries:
        forensics: Forensics | None = entry.forensics
        if forensics is None:
            continue
        for comparison in (forensics.at_cap, forensics.extended):
            if comparison is None:
                continue
            split = comparison.split
            interval = ("" if split.reasoning_ci is None else
                        f" [{_pp(split.reasoning_ci[0])}, {_pp(split.reasoning_ci[1])}]")
            cells = [entry.variant, entry.task,
                     f"{comparison.max_tokens}" + (" (extended)" if comparison is forensics.extended else ""),
                     _pp(comparison.accuracy_delta), _pp(comparison.truncation_delta), _pp(split.truncation_part),
                     _pp(split.reasoning_part), _pp(split.reasoning_delta) + interval]
            for name in STRATA:
                stratum = split.strata[name]
                cells.append(f"{stratum.n}" + (f": {_rate(stratum.variant_accuracy)} / {_rate(stratum.reference_accuracy)}"
                                                if stratum.n else ""))
            rows.append(cells)
    return rows
