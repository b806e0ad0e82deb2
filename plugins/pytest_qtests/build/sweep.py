"""``qtests sweep``: quantize every scheme x recipe, audit and gate each, and find the smallest that passes.

The variants go through the same :class:`~pytest_qtests.session.GateSession` the pytest suite uses
(same canary, paired checks, Holm family per variant and tolerances), so a sweep's verdict is the
verdict ``pytest qtests --reference ... --model ...`` would give. Checkpoints whose provenance
matches the planned build are reused, and generations come from the usual cache, so a re-run after
adding one recipe costs one build and one evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pytest_qtests.build.provenance import plan_provenance, read_provenance, same_build
from pytest_qtests.build.quantize import check_request, fit_to_context, prepare_calibration, quantize
from pytest_qtests.build.recipes import RECIPES, SCHEMES, QuantizeSettings
from pytest_qtests.gate.stats import mean_or_none
from pytest_qtests.options import GateOptions, build_config
from pytest_qtests.records import QtestsError, VariantSpec

REFERENCE_LABEL = "reference"
SWEEP_BACKENDS = ("transformers", "vllm")  # the engines that load local checkpoints (not openai, not replay)
GATE_CHECKS = ("degenerate", "accuracy", "truncation", "length")


@dataclass(frozen=True)
class SweepPoint:
    """One scheme x recipe of the sweep and where its checkpoint lives."""

    scheme: str
    recipe: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.scheme.lower()}-{self.recipe}"


@dataclass
class SweepRow:
    """One line of the Pareto table: footprint, deltas against the reference, verdict."""

    label: str
    scheme: str | None
    recipe: str | None
    task: str
    footprint_bytes: int | None
    bits_per_param: float | None
    accuracy: float | None = None
    delta_accuracy: float | None = None
    truncation: float | None = None
    delta_truncation: float | None = None
    length_ratio: float | None = None
    verdict: str = "PASS"  # PASS, FAIL, ERROR, or "reference"
    failed: list[str] = field(default_factory=list)
    build: str = ""  # built / reused / "" for the reference
    build_s: float = 0.0
    pareto: bool = False
    smallest_passing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def sweep_points(schemes: Sequence[str], recipes: Sequence[str], directory: Path) -> list[SweepPoint]:
    """Every scheme x recipe, validated before anything is built."""
    unknown = [s for s in schemes if s not in SCHEMES] + [r for r in recipes if r not in RECIPES]
    if unknown:
        raise QtestsError(f"unknown scheme or recipe {unknown[0]!r}; schemes: {', '.join(SCHEMES)}; "
                          f"recipes: {', '.join(RECIPES)}")
    if not schemes or not recipes:
        raise QtestsError("--schemes and --recipes each need at least one value, "
                          "e.g. --schemes W4A16 --recipes default")
    points = [SweepPoint(s, r, directory / "variants" / f"{s.lower()}-{r}") for s in schemes for r in recipes]
    return list({p.label: p for p in points}.values())


def build_points(model: str, points: Sequence[SweepPoint], base: QuantizeSettings, calibration: str | None,
                 log: Callable[[str], None] = print) -> dict[str, tuple[str, float]]:
    """Quantize every point not already built from the same inputs; label -> (built|reused, seconds)."""
    for point in points:
        check_request(replace(base, scheme=point.scheme, recipe=point.recipe))
    done: dict[str, tuple[str, float]] = {}
    for point in points:
        settings = replace(base, scheme=point.scheme, recipe=point.recipe)
        if _already_built(model, point, settings, calibration):
            done[point.label] = ("reused", 0.0)
            log(f"{point.label}: reusing {point.path} (same provenance)")
            continue
        log(f"{point.label}: quantizing {point.scheme} with recipe {point.recipe} ...")
        started = time.perf_counter()
        point.path.parent.mkdir(parents=True, exist_ok=True)
        quantize(model, point.path, settings, calibration, overwrite=True)
        done[point.label] = ("built", time.perf_counter() - started)
    return done


def _already_built(model: str, point: SweepPoint, settings: QuantizeSettings, calibration: str | None) -> bool:
    existing = read_provenance(point.path)
    if existing is None or not (point.path / "config.json").is_file():
        return False
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = AutoTokenizer.from_pretrained(model) if calibration else None
        settings = fit_to_context(settings, model)  # as quantize() records it
        calib = prepare_calibration(calibration, tokenizer, settings, Path(scratch))
        return same_build(existing, plan_provenance(model, settings, RECIPES[settings.recipe], calib))


def gate_options(model: str, points: Sequence[SweepPoint], options: GateOptions) -> GateOptions:
    """The user's gate options for a session with the model as reference and every point as a variant."""
    return replace(options, reference=f"{REFERENCE_LABEL}={model}",
                   models=[f"{p.label}={p.path}" for p in points] or None)


def evaluate_points(session: Any, points: Sequence[SweepPoint], builds: Mapping[str, tuple[str, float]],
                    log: Callable[[str], None] = print) -> list[SweepRow]:
    """Gate every point in ``session`` (a GateSession); one row per variant x task, reference first."""
    reference = session.config.reference
    rows = []
    for task in session.config.tasks:
        rows.append(_reference_row(session, reference, task))
    for point, variant in zip(points, session.config.models):
        log(f"{point.label}: evaluating against the reference ...")
        for task in session.config.tasks:
            rows.append(_variant_row(session, point, variant, task, builds.get(point.label, ("", 0.0))))
    mark_pareto(rows)
    return rows


def _audit_numbers(session: Any, variant: VariantSpec) -> tuple[int | None, float | None]:
    try:
        report = session.audit(variant)
    except QtestsError:
        return None, None
    return report.footprint_bytes, report.bits_per_param


def _reference_row(session: Any, reference: VariantSpec, task: str) -> SweepRow:
    footprint, bits = _audit_numbers(session, reference)
    run = session.run(reference, task)
    outcomes = run.outcomes
    return SweepRow(REFERENCE_LABEL, None, None, task, footprint, bits,
                    accuracy=mean_or_none(o.correct for o in outcomes), delta_accuracy=0.0,
                    truncation=mean_or_none(o.truncated for o in outcomes), delta_truncation=0.0, length_ratio=1.0,
                    verdict="reference")


def _variant_row(session: Any, point: SweepPoint, variant: VariantSpec, task: str,
                 build: tuple[str, float]) -> SweepRow:
    footprint, bits = _audit_numbers(session, variant)
    row = SweepRow(point.label, point.scheme, point.recipe, task, footprint, bits, build=build[0], build_s=build[1])
    try:
        verdicts = {check: session.verdict(variant, task, check) for check in GATE_CHECKS}
        verdicts.update({f"policy:{p}": session.policy_verdict(variant, p) for p in session.config.policies})
    except QtestsError as error:
        row.verdict, row.failed = "ERROR", [str(error)]
        return row
    row.failed = [name for name, verdict in verdicts.items() if verdict.passed is False]
    row.verdict = "FAIL" if row.failed else "PASS"
    results = session.checks(variant).get(task, {})
    if "accuracy" in results:
        row.accuracy, row.delta_accuracy = results["accuracy"].variant_value, results["accuracy"].estimate
    if "truncation" in results:
        row.truncation, row.delta_truncation = results["truncation"].variant_value, results["truncation"].estimate
    if "length" in results:
        row.length_ratio = results["length"].estimate
    return row


def mark_pareto(rows: list[SweepRow]) -> None:
    """Mark, per task, the variants no other variant beats on footprint, Δaccuracy and Δtruncation at once,
    and the smallest variant that passed the gate."""
    for task in {row.task for row in rows}:
        measured = [r for r in rows if r.task == task and r.verdict in ("PASS", "FAIL", "reference")
                    and None not in (r.footprint_bytes, r.delta_accuracy, r.delta_truncation)]
        for row in measured:
            row.pareto = not any(_dominates(other, row) for other in measured if other is not row)
        passing = [r for r in rows if r.task == task and r.verdict == "PASS" and r.footprint_bytes is not None]
        if passing:
            min(passing, key=lambda r: (r.footprint_bytes, -(r.delta_accuracy or 0.0))).smallest_passing = True


def smallest_passing(rows: Sequence[SweepRow]) -> str | None:
    """The label of the smallest variant that passed on every task (the one worth publishing), else None."""
    labels = {row.label for row in rows if row.verdict != "reference"}
    passing = [row for row in rows if row.label in labels and row.footprint_bytes is not None
               and all(other.verdict == "PASS" for other in rows if other.label == row.label)]
    return min(passing, key=lambda r: (r.footprint_bytes, -(r.delta_accuracy or 0.0))).label if passing else None


def _dominates(a: SweepRow, b: SweepRow) -> bool:
    """``a`` is at least as small, as accurate and as rarely truncated as ``b``, and better in one."""
    no_worse = (a.footprint_bytes <= b.footprint_bytes and a.delta_accuracy >= b.delta_accuracy
                and a.delta_truncation <= b.delta_truncation)
    better = (a.footprint_bytes < b.footprint_bytes or a.delta_accuracy > b.delta_accuracy
              or a.delta_truncation < b.delta_truncation)
    return no_worse and better


def run_sweep(model: str, points: Sequence[SweepPoint], base: QuantizeSettings, calibration: str | None,
              gate: GateOptions, report_dir: Path | None = None,
              log: Callable[[str], None] = print) -> tuple[list[SweepRow], dict[str, float]]:
    """Build, audit and gate every point; returns the rows and the wall time of each phase."""
    from pytest_qtests.session import GateSession

    backend = build_config(gate_options(model, [], gate)).backend  # bad gate flags fail in a second, before any build
    if backend not in SWEEP_BACKENDS:
        raise QtestsError(f"--backend {backend} cannot load the checkpoints a sweep builds: "
                          f"use --backend {' or '.join(SWEEP_BACKENDS)}")
    started = time.perf_counter()
    builds = build_points(model, points, base, calibration, log)
    built = time.perf_counter()
    session = GateSession(build_config(gate_options(model, points, gate)))
    try:
        rows = evaluate_points(session, points, builds, log)
        evaluated = time.perf_counter()
        if report_dir is not None:
            from pytest_qtests.report.files import write_reports

            write_reports(session, report_dir)
    finally:
        session.close()
    return rows, {"quantize_s": built - started, "evaluate_s": evaluated - built}

