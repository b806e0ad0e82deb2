"""The report's figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No pyplot: figures are built as :class:`matplotlib.figure.Figure` objects, so no global state or GUI
backend is touched inside a pytest session (and nothing needs ``matplotlib.use``). One panel per task;
the reference is drawn in black. In the rate and footprint panels a variant that failed the panel's
check is red, one that passed green and one without a comparison grey; distribution curves take
matplotlib's color cycle so that several variants stay apart.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pytest_qtests.records import ItemOutcome
from pytest_qtests.report.evidence import RunEvidence, rate_interval, thinking_distribution
from pytest_qtests.report.format import cell_footprint

REFERENCE_COLOR = "black"
PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
NEUTRAL_COLOR = "#757575"
MAX_COLUMNS = 3


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Series:
    """What one model contributes to one task's panel."""

    label: str
    outcomes: list[ItemOutcome]
    color: str
    is_reference: bool
    entry: RunEvidence | None  # None for a reference known only from a stored baseline


def tasks_of(entries: Sequence[RunEvidence]) -> list[str]:
    return list(dict.fromkeys(entry.task for entry in entries))


def series_for(entries: Sequence[RunEvidence], task: str, check: str | None = None) -> list[Series]:
    """The reference first, then each variant, colored by the verdict of ``check`` (if given).

    When the reference is a stored baseline (no live reference run), its outcomes are taken from the
    first variant that was compared with it.
    """
    on_task = [e for e in entries if e.task == task]
    series = [Series(e.variant + " (ref)", e.outcomes, REFERENCE_COLOR, True, e) for e in on_task if e.role == "reference"]
    if not series:
        stored = next((e for e in on_task if e.reference_outcomes), None)
        if stored is not None:
            series.append(Series(str(stored.reference_source), stored.reference_outcomes, REFERENCE_COLOR, True, None))
    for entry in on_task:
        if entry.role == "reference":
            continue
        result = entry.checks.get(check) if check else None
        color = NEUTRAL_COLOR if result is None else (PASS_COLOR if result.passed else FAIL_COLOR)
        label = entry.variant + ("" if entry.complete else " (canary only)")
        series.append(Series(label, entry.outcomes, color, False, entry))
    return [s for s in series if s.outcomes]


def _figure(panels: int, rows_per_panel: int) -> tuple[Figure, list[Any]]:
    columns = min(panels, MAX_COLUMNS)
    lines = -(-panels // columns)
    figure = Figure(figsize=(4.8 * columns, (1.6 + 0.45 * rows_per_panel) * lines), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False).ravel().tolist()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _rate_plot(entries: Sequence[RunEvidence], attribute: str, check: str, xlabel: str) -> bytes | None:
    tasks = tasks_of(entries)
    panels = {task: series_for(entries, task, check) for task in tasks}
    if not any(panels.values()):
        return None
    figure, axes = _figure(len(tasks), max(len(s) for s in panels.values()))
    for axis, task in zip(axes, tasks):
        series = panels[task][::-1]  # the reference on top
        for y, one in enumerate(series):
            interval = rate_interval(one.outcomes, attribute)
            axis.errorbar(interval.value, y, xerr=[[interval.value - interval.low], [interval.high - interval.value]],
                          fmt="o", color=one.color, capsize=4)
            axis.annotate(f"{interval.value:.1%}  n={interval.n}", (interval.value, y), xytext=(0, 7),
                          textcoords="offset points", ha="center", fontsize=8)
            if one.is_reference:
                axis.axvline(interval.value, color=REFERENCE_COLOR, linestyle=":", linewidth=1)
        axis.set_yticks(range(len(series)), [s.label for s in series])
        axis.set_ylim(-0.6, len(series) - 0.3)
        axis.set_xlim(-0.02, 1.02)
        axis.set_xlabel(xlabel)
        axis.set_title(task)
        axis.grid(axis="x", alpha=0.3)
    return _png(figure)


def accuracy_plot(entries: Sequence[RunEvidence]) -> bytes | None:
    """Accuracy per model with its 95% Wilson interval."""
    return _rate_plot(entries, "correct", "accuracy", "accuracy (95% Wilson CI)")


def truncation_plot(entries: Sequence[RunEvidence]) -> bytes | None:
    """Share of outputs cut at the cap (or whose thinking never closed), with 95% Wilson intervals."""
    return _rate_plot(entries, "truncated", "truncation", "truncation rate (95% Wilson CI)")


def _cap(entries: Sequence[RunEvidence], task: str) -> int | None:
    caps = {e.fingerprint.get("max_tokens") for e in entries if e.task == task}
    caps.discard(None)
    return caps.pop() if len(caps) == 1 else None


def length_plot(entries: Sequence[RunEvidence]) -> bytes | None:
    """Output-token distributions (empirical CDFs), reference vs each variant, with the output cap."""
    tasks = tasks_of(entries)
    panels = {task: series_for(entries, task) for task in tasks}
    if not any(panels.values()):
        return None
    figure, axes = _figure(len(tasks), 6)
    for axis, task in zip(axes, tasks):
        for one in panels[task]:
            values = np.sort([o.output_tokens for o in one.outcomes])
            shares = np.arange(1, values.size + 1) / values.size
            median = float(np.median(values))
            axis.step(values, shares, where="post", color=REFERENCE_COLOR if one.is_reference else None,
                      linewidth=2.5 if one.is_reference else 1.5, label=f"{one.label} (median {median:g})")
        cap = _cap(entries, task)
        if cap:
            axis.axvline(cap, color=FAIL_COLOR, linestyle="--", linewidth=1, label=f"cap {cap}")
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("output tokens")
        axis.set_ylabel("share of outputs ≤ x")
        axis.set_title(task)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    return _png(figure)


def thinking_plot(entries: Sequence[RunEvidence]) -> bytes | None:
    """Thinking-token distributions: box p25-p75, bar at the median, whiskers p1-p99, x at p90."""
    tasks = tasks_of(entries)
    panels = {task: series_for(entries, task, "thinking_length") for task in tasks}
    if not any(panels.values()):
        return None
    figure, axes = _figure(len(tasks), max(len(s) for s in panels.values()))
    for axis, task in zip(axes, tasks):
        series = panels[task][::-1]  # the reference on top
        labels = []
        for y, one in enumerate(series):
            tokens = np.array([o.thinking_tokens for o in one.outcomes], dtype=float)
            p1, p25, median, p75, p99 = np.percentile(tokens, [1, 25, 50, 75, 99])
            distribution = thinking_distribution(one.outcomes)
            axis.hlines(y, p1, p99, color=one.color, linewidth=1)
            axis.barh(y, p75 - p25, left=p25, height=0.5, color="#bdbdbd" if one.is_reference else "#e3f2fd",
                      edgecolor=one.color)
            axis.vlines(median, y - 0.25, y + 0.25, color="black", linewidth=2)
            axis.plot(distribution.p90, y, marker="x", color=FAIL_COLOR)
            labels.append(f"{one.label}\nnever closed {distribution.never_closed:.0%}")
        axis.set_yticks(range(len(series)), labels)
        axis.set_ylim(-0.6, len(series) - 0.4)
        axis.set_xlim(left=0)
        axis.set_xlabel("thinking tokens")
        axis.set_title(task)
        axis.grid(axis="x", alpha=0.3)
    return _png(figure)


def footprint_plot(entries: Sequence[RunEvidence]) -> bytes | None:
    """Accuracy (95% Wilson CI) against checkpoint footprint: what each byte saved cost."""
    tasks = tasks_of(entries)
    panels = {task: [s for s in series_for(entries, task, "accuracy")
                     if s.entry is not None and s.entry.row.get("footprint_bytes")] for task in tasks}
    if not any(panels.values()):
        return None
    figure, axes = _figure(len(tasks), 6)
    for axis, task in zip(axes, tasks):
        for one in panels[task]:
            nbytes = one.entry.row["footprint_bytes"]
            interval = rate_interval(one.outcomes, "correct")
            axis.errorbar(nbytes / 1e6, interval.value,
                          yerr=[[interval.value - interval.low], [interval.high - interval.value]],
                          fmt="o", color=one.color, capsize=4)
            axis.annotate(f"{one.label}\n{cell_footprint(nbytes)}", (nbytes / 1e6, interval.value),
                          xytext=(6, 4), textcoords="offset points", fontsize=8)
        axis.set_xlabel("checkpoint footprint (MB)")
        axis.set_ylabel("accuracy (95% Wilson CI)")
        axis.set_ylim(-0.02, 1.05)
        axis.set_xlim(0, 1.35 * max(one.entry.row["footprint_bytes"] for one in panels[task]) / 1e6)
        axis.set_title(task)
        axis.grid(alpha=0.3)
    return _png(figure)


def localisation_plot(entries: Sequence[RunEvidence]) -> bytes | None:
    """Per diagnosed variant: relative error of each decoder layer's output and module classes, log scale."""
    diagnosed = [e for e in entries if e.diagnosis is not None and e.diagnosis.localisation is not None]
    if not diagnosed:
        return None
    figure, axes = _figure(len(diagnosed), 6)
    for axis, entry in zip(axes, diagnosed):
        localisation = entry.diagnosis.localisation
        layers = [layer.layer for layer in localisation.layers]
        classes = sorted({name for layer in localisation.layers for name in layer.modules})
        for name in ["output", *classes]:
            values = [layer.output if name == "output" else layer.modules.get(name, math.nan)
                      for layer in localisation.layers]
            axis.plot(layers, [v if math.isfinite(v) and v > 0 else math.nan for v in values], marker="o",
                      linewidth=2.5 if name == "output" else 1.2, color="black" if name == "output" else None,
                      label=name)
        if localisation.jump_layer is not None:
            axis.axvline(layers[localisation.jump_layer], color="red", linestyle=":", label="error jumps")
        axis.set_yscale("log")
        axis.set_xticks(layers)
        axis.set_xlabel("decoder layer")
        axis.set_ylabel("relative error vs reference")
        axis.set_title(f"{entry.variant} on {entry.task}", fontsize=9)
        axis.legend(fontsize=7)
    return _png(figure)


PLOTS: tuple[tuple[str, str, str, Callable[[Sequence[RunEvidence]], bytes | None]], ...] = (
    ("accuracy", "Accuracy", "Dots: accuracy; bars: 95% Wilson interval (items as the unit); dotted line: "
     "the reference. Red: the accuracy check failed; green: passed.", accuracy_plot),
    ("truncation", "Truncation rate", "Share of outputs cut at the output cap or whose thinking never "
     "closed, with 95% Wilson intervals.", truncation_plot),
    ("length", "Output-length distributions", "Empirical CDF of output tokens per model; a curve that "
     "reaches the cap line early truncates more.", length_plot),
    ("thinking", "Thinking-length distributions", "Thinking tokens per output: box p25-p75, bar at the "
     "median, whiskers p1-p99, x at p90; the label gives the share of outputs whose thinking block never "
     "closed.", thinking_plot),
    ("footprint", "Accuracy vs footprint", "Accuracy (95% Wilson interval) against the checkpoint's "
     "size on disk, as the audit measured it.", footprint_plot),
    ("localisation", "Where the error enters", "Variants that failed the canary or the degenerate check, "
     "teacher-forced on the reference's canary texts: ||variant - reference|| / ||reference|| of each decoder "
     "layer's output (black) and of each module class inside it; dotted red: the layer where the error jumps.",
     localisation_plot),
)


def make_plots(entries: Sequence[RunEvidence]) -> list[Plot]:
    """Every plot that has data (a run without known footprints has no footprint plot)."""
    plots = []
    for name, title, caption, draw in PLOTS:
        png = draw(entries)
        if png is not None:
            plots.append(Plot(name, title, caption, png))
    return plots
