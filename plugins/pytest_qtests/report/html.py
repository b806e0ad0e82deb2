"""``report.html``: one self-contained page (inline CSS, plots as base64 PNG, no JavaScript).

A single file survives being attached to a CI run, mailed or opened offline years later. Every piece
of text from a model or a dataset is HTML-escaped: outputs of a broken checkpoint are arbitrary.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from typing import Any, Sequence

from pytest_qtests.report.evidence import Flip, RunEvidence, degeneracy_lines, failure_messages, find_flips, thinking_distribution
from pytest_qtests.report.format import TABLE_COLUMNS, cell_estimate, cell_interval, cell_p, row_passed, table_cells
from pytest_qtests.report.truncation import FORENSICS_HEADER, forensics_lines, forensics_rows

FLIPS_SHOWN = 5  # per variant x task and direction; flips.jsonl has all of them
OUTPUT_CHARS_SHOWN = 4000  # per output in the page; flips.jsonl has the full text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #212121; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f5f5f5; } td.text, th.text { text-align: left; }
td.pass { color: #2e7d32; font-weight: 600; } td.fail { color: #c62828; font-weight: 600; }
.meta { color: #616161; font-size: 0.9em; } figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #616161; font-size: 0.9em; }
pre { white-space: pre-wrap; word-break: break-all; background: #fafafa; border: 1px solid #eee; padding: 0.5em;
      max-height: 20em; overflow: auto; font-size: 0.85em; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: set[int],
           classes: Sequence[Sequence[str]] | None = None) -> str:
    """An HTML table of already-escaped cells; ``text_columns`` are left-aligned."""
    def cell(tag: str, index: int, content: str, extra: str = "") -> str:
        names = " ".join(filter(None, ["text" if index in text_columns else "", extra]))
        attribute = f' class="{names}"' if names else ""
        return f"<{tag}{attribute}>{content}</{tag}>"

    head = "".join(cell("th", i, _e(name)) for i, name in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        extras = classes[r] if classes else [""] * len(row)
        body.append("<tr>" + "".join(cell("td", i, content, extras[i]) for i, content in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdict_class(passed: bool | None) -> str:
    return "" if passed is None else "pass" if passed else "fail"


def verdict_table(entries: Sequence[RunEvidence]) -> str:
    rows = [[_e(cell) for cell in table_cells(entry.row)] for entry in entries]
    classes = [[""] * (len(TABLE_COLUMNS) - 1) + [_verdict_class(row_passed(entry.row))] for entry in entries]
    return _table(TABLE_COLUMNS, rows, {0, 1, len(TABLE_COLUMNS) - 1}, classes)


def checks_table(entries: Sequence[RunEvidence]) -> str:
    header = ("variant", "task", "check", "reference", "variant value", "estimate", "interval", "margin", "p",
              "family p", "verdict", "message")
    rows, classes = [], []
    for entry in entries:
        for name, result in entry.checks.items():
            verdict = result.verdict or ("PASS" if result.passed else "FAIL")
            rows.append([_e(entry.variant), _e(entry.task), _e(name),
                         _e("-" if result.reference_value is None else f"{result.reference_value:.4g}"),
                         _e(f"{result.variant_value:.4g}"), _e(cell_estimate(result)), _e(cell_interval(result)),
                         _e(result.limit_text), _e(cell_p(result.p_value)), _e(cell_p(result.adjusted_p_value)),
                         _e(verdict), _e(result.message)])
            classes.append([""] * 10 + [_verdict_class(verdict), ""])
    if not rows:
        return "<p>No comparisons were made (no reference or baseline, or every variant stopped at its canary).</p>"
    return _table(header, rows, {0, 1, 2, 11}, classes)


def thinking_table(entries: Sequence[RunEvidence]) -> str:
    header = ("variant", "task", "median", "p90", "p99", "never closed", "ref median", "ref p90", "ref p99",
              "ref never closed")
    rows = []
    for entry in entries:
        own = thinking_distribution(entry.outcomes)
        reference = thinking_distribution(entry.reference_outcomes or [])
        cells = [_e(entry.variant + (" (ref)" if entry.role == "reference" else "")), _e(entry.task)]
        for distribution in (own, reference):
            if distribution is None:
                cells += ["-"] * 4
            else:
                cells += [_e(f"{distribution.median:g}"), _e(f"{distribution.p90:g}"), _e(f"{distribution.p99:g}"),
                          _e(f"{distribution.never_closed:.1%}")]
        rows.append(cells)
    return _table(header, rows, {0, 1})


def truncation_section(entries: Sequence[RunEvidence]) -> str:
    rows = forensics_rows(entries)
    if not rows:
        return "<p>No variant was paired with a reference.</p>"
    table = _table(FORENSICS_HEADER, [[_e(cell) for cell in row] for row in rows], {0, 1})
    return table + _list(forensics_lines(entries), "Neither model was truncated.")


def _output_block(title: str, side: dict[str, Any]) -> str:
    text = side.get("text")
    if text is None:
        body = "<p class=meta>(no text: the reference came from a stored baseline)</p>"
    else:
        shown = text if len(text) <= OUTPUT_CHARS_SHOWN else text[:OUTPUT_CHARS_SHOWN] + f"\n… ({len(text)} characters, full text in flips.jsonl)"
        body = f"<pre>{_e(shown)}</pre>"
    facts = (f"{'correct' if side['correct'] else 'wrong'}, answer {side['extracted']!r}, {side['output_tokens']} tokens"
             f"{', truncated' if side['truncated'] else ''}{', thinking never closed' if not side['thinking_closed'] else ''}"
             f"{', degenerate' if side['degenerate'] else ''}")
    return f"<div><strong>{_e(title)}</strong> <span class=meta>{_e(facts)}</span>{body}</div>"


def _flip_block(flip: Flip) -> str:
    summary = (f"item {flip.item_id}" + (f" sample {flip.sample_index}" if flip.sample_index else "")
               + (f" — expected {flip.expected}" if flip.expected is not None else ""))
    question = f"<pre>{_e(flip.question)}</pre>" if flip.question else ""
    return (f"<details><summary>{_e(summary)}</summary>{question}<div class=pair>"
            f"{_output_block('reference', flip.reference)}{_output_block(flip.variant, flip.candidate)}</div></details>")


def flips_section(entries: Sequence[RunEvidence]) -> str:
    parts = []
    for entry in entries:
        if entry.reference_outcomes is None:
            continue
        flips = find_flips(entry)
        lost = [f for f in flips if f.direction == "lost"]
        gained = [f for f in flips if f.direction == "gained"]
        parts.append(f"<h3>{_e(entry.variant)} on {_e(entry.task)}: {len(lost)} lost, {len(gained)} gained "
                     f"<span class=meta>vs {_e(entry.reference_source)}</span></h3>")
        for word, group in (("Lost (reference right, variant wrong)", lost), ("Gained (variant right, reference wrong)", gained)):
            if group:
                more = f" — first {FLIPS_SHOWN} of {len(group)}" if len(group) > FLIPS_SHOWN else ""
                parts.append(f"<p>{_e(word)}{_e(more)}</p>" + "".join(_flip_block(f) for f in group[:FLIPS_SHOWN]))
    return "".join(parts) or "<p>No variant was paired with a reference.</p>"


def plots_section(entries: Sequence[RunEvidence]) -> str:
    """Every plot as an embedded PNG; a note instead when matplotlib is not installed."""
    try:
        from pytest_qtests.report.plots import make_plots
    except ImportError:
        return ("<p>Plots need matplotlib, which is not installed: <code>pip install matplotlib</code> "
                "and run again (results.json has every number).</p>")
    figures = []
    for plot in make_plots(entries):
        data = base64.b64encode(plot.png).decode("ascii")
        figures.append(f"<figure id=\"plot-{_e(plot.name)}\"><h3>{_e(plot.title)}</h3>"
                       f"<img alt=\"{_e(plot.title)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{_e(plot.caption)}</figcaption></figure>")
    return "".join(figures)


def _list(lines: Sequence[str], empty: str) -> str:
    if not lines:
        return f"<p>{_e(empty)}</p>"
    return "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>"


def render_html(entries: Sequence[RunEvidence], settings: dict[str, Any]) -> str:
    fail_on = ", ".join(f"{k}:{v}" for k, v in settings.get("fail_on", {}).items()) or "none"
    meta = (f"reference {settings.get('reference') or settings.get('baseline') or 'none'} · "
            f"tasks {', '.join(settings.get('tasks', []))} · backend {settings.get('backend')} · "
            f"max tokens {settings.get('max_tokens')} · repeats {settings.get('repeats')} · "
            f"gate {settings.get('gate_mode')} at α={settings.get('alpha')} · fail on {fail_on} · "
            f"written {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    sections = [
        ("Verdicts", verdict_table(entries)),
        ("Failed checks", _list(failure_messages(entries), "No check failed.")),
        ("Degenerate output", _list(degeneracy_lines(entries), "No degenerate output.")),
        ("Checks", checks_table(entries)),
        ("Truncation forensics", truncation_section(entries)),
        ("Thinking length (tokens)", thinking_table(entries)),
        ("Plots", plots_section(entries)),
        ("Items that flipped", flips_section(entries)),
    ]
    body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>qtests report</title>"
            f"<style>{STYLE}</style></head><body><h1>qtests report</h1><p class=meta>{_e(meta)}</p>{body}</body></html>\n")
