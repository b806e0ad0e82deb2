"""The gate of one pytest session: runs -> comparisons -> verdicts, baselines, audit and summary rows.

Knows nothing of pytest: the plugin turns :class:`Verdict` objects into passes, failures and skips.
"""

from __future__ import annotations

import statistics
from functools import partial
import warnings
from dataclasses import dataclass, field
from typing import Any

from pytest_qtests.audit.checkpoint import AuditReport, audit
from pytest_qtests.store.baselines import Baseline, baseline_path, load_baseline, resolve_baseline, save_baseline
from pytest_qtests.settings import RunConfig
from pytest_qtests.gate.expectations import Expectation, expectation_checks
from pytest_qtests.store.fingerprint import check_compatible
from pytest_qtests.gate.forensics import Forensics, build_forensics
from pytest_qtests.gate.checks import CheckResult, run_checks
from pytest_qtests.gate.tolerances import CHECK_SPECS
from pytest_qtests.gate.decisions import sequential_results
from pytest_qtests.gate.multiplicity import apply_gatekeeping
from pytest_qtests.gate.verdict import InconclusiveWarning
from pytest_qtests.gate.stats import mean_or_none
from pytest_qtests.evaluate.diagnosis import Diagnosis
from pytest_qtests.evaluate.parity import ParityReport
from pytest_qtests.audit.policies import evaluate_policy
from pytest_qtests.build.provenance import describe_provenance, read_provenance
from pytest_qtests.records import ItemOutcome, QtestsError, VariantSpec
from pytest_qtests.evaluate.evaluator import Evaluator, TaskRun
from pytest_qtests.tasks.registry import task_spec_name

# The checks the standard suite has one test each for (qtests/test_gate.py), in its order.
SUITE_CHECKS = ("degenerate", "accuracy", "truncation", "length")


@dataclass
class Verdict:
    """What one test asserts: passed (True/False), or skipped with a reason."""

    passed: bool | None
    message: str
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.passed is None


@dataclass
class ReferenceOutcomes:
    outcomes: list[ItemOutcome]
    source: str  # "reference <label>" or "baseline <path>"
    length_unit: str = "tokens"  # "words" for a replay file without token counts


def length_unit(run_fingerprint: Any) -> str:
    """The unit a run's lengths are in: tokens, unless a replay file had to count words."""
    return run_fingerprint.extra.get("length_unit", "tokens")


class GateSession:
    def __init__(self, config: RunConfig):
        self.config = config
        self.evaluator = Evaluator(config)
        self._checks: dict[str, dict[str, dict[str, CheckResult]]] = {}
        self._absolute: dict[tuple[str, str], dict[str, CheckResult]] = {}
        self._audits: dict[str, AuditReport | QtestsError] = {}
        self._references: dict[tuple[str, str], ReferenceOutcomes | str] = {}
        self.parity_reports: dict[tuple[str, str], ParityReport] = {}
        self.diagnoses: dict[tuple[str, str], Diagnosis] = {}

    # -- what the suite parametrizes over ----------------------------------------------------------------
    @property
    def variants(self) -> list[VariantSpec]:
        return self.config.models or ([self.config.reference] if self.config.reference else [])

    def is_reference(self, variant: VariantSpec) -> bool:
        return self.config.reference is not None and variant.label == self.config.reference.label

    # -- runs and comparisons ---------------------------------------------------------------------------
    def run(self, variant: VariantSpec, task: str) -> TaskRun:
        return self.evaluator.run(variant, task)

    def reference_for(self, variant: VariantSpec, task: str) -> ReferenceOutcomes | str:
        """The outcomes to pair with, from the live reference or a stored baseline; else why there are none."""
        key = (variant.label, task)
        if key in self._references:
            return self._references[key]
        if self.config.reference is not None and not self.is_reference(variant):
            reference_run = self.run(self.config.reference, task)
            found: ReferenceOutcomes | str = ReferenceOutcomes(
                reference_run.outcomes, f"reference {self.config.reference.label}",
                length_unit(reference_run.fingerprint))
        elif self.config.baseline:
            task_name = self.evaluator.task_data(task).task.name  # a spec may be NAME=FILE
            path = resolve_baseline(self.config.baseline, self.config.baseline_dir, task_name)
            baseline = load_baseline(str(path), self.config.baseline_dir, task_name)
            run = self.run(variant, task)
            check_compatible(baseline.fingerprint, run.fingerprint, self.config.allow_mismatch, baseline.name)
            found = ReferenceOutcomes(baseline.items, f"baseline {path}", length_unit(baseline.fingerprint))
        elif self.is_reference(variant):
            found = "this is the reference itself"
        else:
            found = "no --reference and no stored baseline (--baseline NAME_OR_PATH): nothing to compare with"
        run = self.run(variant, task) if isinstance(found, ReferenceOutcomes) else None
        if run is not None and run.sequential is not None:
            # --stop-early: the variant stopped after some looks; pair with the reference on those items only.
            evaluated = {o.item_id for o in run.outcomes}
            found = ReferenceOutcomes([o for o in found.outcomes if o.item_id in evaluated], found.source,
                                      found.length_unit)
        self._references[key] = found
        return found

    def checks(self, variant: VariantSpec) -> dict[str, dict[str, CheckResult]]:
        """Every paired check of ``variant`` on every task with a reference, as one family at ``alpha``.

        A fixed run shares ``alpha`` by accuracy-first weighted Holm (:mod:`gate.multiplicity`); a
        ``--stop-early`` run was decided look by look, each task's gate at ``alpha / tasks``
        (:mod:`gate.decisions`). Metrics with a stored expectation are left out here:
        :meth:`absolute_checks` decides them.
        """
        if variant.label in self._checks:
            return self._checks[variant.label]
        flat: list[tuple[str, CheckResult]] = []
        recomputes = []
        by_task: dict[str, dict[str, CheckResult]] = {}
        for task in self.config.tasks:
            reference = self.reference_for(variant, task)
            run = self.run(variant, task)
            if isinstance(reference, str) or not run.complete:
                continue
            expected = self._expected(variant, task)
            skipped = set(expected) | set(self._incomparable_lengths(reference, run))
            paired = {check: tol for check, tol in self.config.tolerances.items() if check not in skipped}

            def recompute(check: str, level: float, ref=reference.outcomes, outcomes=run.outcomes, tols=paired):
                return run_checks(ref, outcomes, {check: tols[check]}, level, self.config.gate_mode,
                                  seed=self.config.sampling.seed)[0]

            if run.sequential is not None:
                by_task[task] = sequential_results(run.sequential.gate, recompute)
                continue
            results = run_checks(reference.outcomes, run.outcomes, paired, self.config.alpha,
                                 self.config.gate_mode, seed=self.config.sampling.seed)
            flat += [(task, result) for result in results]
            recomputes += [partial(recompute, result.check) for result in results]
        family = apply_gatekeeping([result for _, result in flat], lambda i, level: recomputes[i](level))
        for (task, _), result in zip(flat, family):
            by_task.setdefault(task, {})[result.check] = result
        self._checks[variant.label] = by_task
        return by_task

    @staticmethod
    def _incomparable_lengths(reference: ReferenceOutcomes, run: TaskRun) -> dict[str, str]:
        """Length checks that cannot be judged, with why: lengths in words are never compared with tokens."""
        unit = length_unit(run.fingerprint)
        if unit == reference.length_unit:
            return {}
        why = (f"lengths not compared: {reference.source} counted {reference.length_unit}, this run {unit} "
               "(a replay file without token counts; give --tokenizer to count tokens)")
        return {name: why for name, spec in CHECK_SPECS.items() if spec.kind == "ratio"}

    def _expected(self, variant: VariantSpec, task: str) -> dict[str, Expectation]:
        return self.config.expectations.for_run(variant.label, task_spec_name(task))

    def absolute_checks(self, variant: VariantSpec, task: str) -> dict[str, CheckResult]:
        """The checks of ``variant`` on ``task`` against stored expectations (``[expect]``, ``--expect``).

        Per task, unlike the paired family: absolute checks have no p-value to adjust, so a ``-k``
        selection never generates other tasks for them.
        """
        key = (variant.label, task)
        if key not in self._absolute:
            expected = self._expected(variant, task)
            run = self.run(variant, task) if expected else None
            found = expectation_checks(run.outcomes, expected) if run is not None and run.complete else []
            self._absolute[key] = {result.check: result for result in found}
        return self._absolute[key]

    def verdict(self, variant: VariantSpec, task: str, check: str) -> Verdict:
        run = self.run(variant, task)
        if check == "degenerate" and run.canary is not None and not run.canary.passed:
            return Verdict(False, f"{variant.label} on {task}: {run.canary.message}; {self.diagnosis(variant, task).message}",
                           run.canary.junit_properties())
        if not run.complete:
            return Verdict(None, f"{variant.label} failed its canary on {task} after {run.canary.spent}; "
                                 f"full run not made, {check} not judged")
        absolute = self.absolute_checks(variant, task).get(check)
        if absolute is not None:
            message = f"{variant.label} on {task}: {absolute.message} [expected in {absolute.details['source']}]"
            return Verdict(absolute.passed, message, absolute.junit_properties())
        reference = self.reference_for(variant, task)
        if isinstance(reference, str):
            return Verdict(None, f"{variant.label} on {task}: {reference}")
        incomparable = self._incomparable_lengths(reference, run).get(check)
        if incomparable is not None:
            return Verdict(None, f"{variant.label} on {task}: {incomparable}")
        result = self.checks(variant).get(task, {}).get(check)
        if result is None:
            return Verdict(None, f"no tolerance for {check} (set it with --fail-on {check}:...)")
        not_judged = run.sequential.not_judged(check) if run.sequential is not None else None
        if not_judged is not None:
            return Verdict(None, f"{variant.label} on {task}: {not_judged}", result.junit_properties())
        where = f" [{reference.source}]"
        message = f"{variant.label} on {task}: {result.message}"
        if check in ("truncation", "accuracy") and not result.passed:
            message += f"; {self.forensics(variant, task).verdict_clause()}"
        if check == "degenerate" and not result.passed:
            message += f"; {self.diagnosis(variant, task).message}"
        if result.verdict == "INCONCLUSIVE" and result.passed:
            warnings.warn(InconclusiveWarning(message), stacklevel=2)
        return Verdict(result.passed, message + where, result.junit_properties())

    def forensics(self, variant: VariantSpec, task: str) -> Forensics | None:
        """Truncation forensics of a compared run (None without a reference or after a failed canary)."""
        reference = self.reference_for(variant, task)
        run = self.run(variant, task)
        if isinstance(reference, str) or not run.complete:
            return None
        live = self.config.reference is not None and not self.is_reference(variant)  # as reference_for pairs
        reference_extension = self.run(self.config.reference, task).extension if live else None
        return build_forensics(reference.outcomes, run.outcomes, self.config.sampling.max_tokens, self.config.alpha,
                               reference_extension, run.extension)

    def parity_verdict(self, variant: VariantSpec, task: str) -> Verdict:
        """``--parity A,B``: the variant on both engines; fails when their teacher-forced scores part."""
        from pytest_qtests.evaluate.parity_run import run_parity

        assert self.config.parity is not None
        key = (variant.label, task)
        if key not in self.parity_reports:
            self.parity_reports[key] = run_parity(self.evaluator, variant, task, self.config.parity)
        report = self.parity_reports[key]
        return Verdict(report.passed, report.message, report.junit_properties())

    def diagnosis(self, variant: VariantSpec, task: str) -> Diagnosis:
        """Why ``variant`` emits gibberish on ``task``: load report, export defects, per-layer localisation."""
        from pytest_qtests.evaluate.diagnosis import diagnose

        key = (variant.label, task)
        if key not in self.diagnoses:
            try:
                defects = self.audit(variant).defects
            except QtestsError:
                defects = []
            reference = self.config.reference
            texts = "no live --reference" if reference is None else self.evaluator.reference_canary_scores(task)
            try:
                self.diagnoses[key] = diagnose(None if reference is None else reference.source, variant.source,
                                               variant.label, texts if isinstance(texts, str) else texts[0], defects)
            except QtestsError as error:
                self.diagnoses[key] = Diagnosis(variant.label, None, defects, None, str(error))
        return self.diagnoses[key]

    # -- checkpoint audit ----------------------------------------------------------------------------
    def audit(self, variant: VariantSpec) -> AuditReport:
        if variant.label not in self._audits:
            try:
                self._audits[variant.label] = audit(variant.source, variant.revision)
            except QtestsError as error:
                self._audits[variant.label] = error
        found = self._audits[variant.label]
        if isinstance(found, QtestsError):
            raise found
        return found

    def policy_verdict(self, variant: VariantSpec, policy: str) -> Verdict:
        report = self.audit(variant)
        result = evaluate_policy(report, policy)
        defects = "".join(f"; export defect: {finding.message}" for finding in report.defects)
        return Verdict(result.passed and not report.defects, f"{variant.label}: {result.message}{defects}")

    # -- baselines and summary ------------------------------------------------------------------------
    def save_baselines(self) -> list[str]:
        """Write a baseline for every complete run of this session; returns the paths written."""
        baselines = [Baseline.from_outcomes(label, run.fingerprint.task, run.fingerprint, run.outcomes)
                     for (label, _), run in self.evaluator.completed_runs().items()
                     if run.complete and not any(o.error for o in run.outcomes)]
        for baseline in baselines:  # every path is checked before the first write: all are saved, or none
            baseline_path(self.config.baseline_dir, baseline.name, baseline.task)
        return [str(save_baseline(baseline, self.config.baseline_dir)) for baseline in baselines]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per evaluated (variant, task) for the terminal table and reports."""
        rows = []
        for (label, task), run in self.evaluator.completed_runs().items():
            variant = run.variant
            outcomes = run.outcomes
            row: dict[str, Any] = {
                "variant": label, "task": task, "n": len(outcomes),
                "accuracy": mean_or_none(o.correct for o in outcomes),
                "truncation": mean_or_none(o.truncated for o in outcomes),
                "median_tokens": statistics.median([o.output_tokens for o in outcomes]) if outcomes else None,
                "length_unit": length_unit(run.fingerprint),
                "degenerate": mean_or_none(o.degenerate for o in outcomes),
                "footprint_bytes": self._footprint(variant),
                "canary": None if run.canary is None else run.canary.passed,
                "role": "reference" if self.is_reference(variant) else "variant",
                "wall_s": run.wall_s,
                "provenance": _provenance_line(variant),
            }
            if run.complete:
                results = {**self._checks.get(variant.label, {}).get(task, {}), **self._absolute.get((label, task), {})}
                row.update({f"{name}_result": result for name, result in results.items()})
            rows.append(row)
        return rows

    def _footprint(self, variant: VariantSpec) -> int | None:
        try:
            return self.audit(variant).footprint_bytes
        except QtestsError:
            return None

    def close(self) -> None:
        self.evaluator.close()


def _provenance_line(variant: VariantSpec) -> str | None:
    """How ``qtests quantize`` made a local variant (its ``qtests_provenance.json``), for the reports."""
    try:
        provenance = read_provenance(variant.source)
    except QtestsError:
        return None
    return None if provenance is None else describe_provenance(provenance)
