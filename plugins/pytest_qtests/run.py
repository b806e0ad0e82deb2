"""The gate from Python, without pytest: every variant x task x check and every policy, in one call.

The pytest plugin and :func:`run_gate` share one :class:`~pytest_qtests.session.GateSession`, so a
notebook, a script or another test runner gets the same runs, cache, verdicts and report files as
``pytest --model ...``; only the turning of verdicts into test outcomes is pytest's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_qtests.options import GateOptions, build_config
from pytest_qtests.preflight import check_before_run
from pytest_qtests.records import QtestsError
from pytest_qtests.session import SUITE_CHECKS, GateSession, Verdict


@dataclass(frozen=True)
class CheckVerdict:
    """One gate check of one variant: what a test of the standard suite asserts."""

    variant: str
    subject: str  # the task (for a paired or absolute check) or the policy (for a static check)
    check: str  # "degenerate", "accuracy", "truncation", "length", or "policy"
    verdict: Verdict

    @property
    def status(self) -> str:
        """``PASS``, ``FAIL`` or ``SKIP`` (nothing to compare with, or a failed canary stopped the run)."""
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.verdict.passed]


@dataclass(frozen=True)
class GateResult:
    """Every check's verdict, the verdict table as the terminal shows it, and the files written."""

    checks: list[CheckVerdict]
    summary: str
    written: list[Path]

    @property
    def passed(self) -> bool:
        """True when no check failed (skipped checks do not fail a gate, as in pytest)."""
        return all(check.verdict.passed is not False for check in self.checks)

    def failures(self) -> list[CheckVerdict]:
        return [check for check in self.checks if check.verdict.passed is False]


def run_gate(options: GateOptions | None = None, **fields: Any) -> GateResult:
    """Evaluate every variant, judge every check and policy, save baselines and reports as asked.

    ``options`` or keyword arguments are the gate's options by field name (``models``, ``reference``,
    ``tasks``, ``max_tokens``, ``report``, ...; see :class:`GateOptions`). An engine or data failure of
    one variant becomes that variant's failed checks, as in pytest; bad settings raise
    :class:`~pytest_qtests.records.QtestsError` before anything is generated.
    """
    if options is not None and fields:
        raise QtestsError("run_gate takes a GateOptions or keyword options, not both: put every option in one")
    config = build_config(options if options is not None else GateOptions(**fields))
    session = GateSession(config)
    session.evaluator.preload_tasks(check_before_run(config))
    try:
        checks = [CheckVerdict(variant.label, task, check, _judged(lambda: session.verdict(variant, task, check)))
                  for variant in session.variants for task in config.tasks for check in SUITE_CHECKS]
        checks += [CheckVerdict(variant.label, policy, "policy", _judged(lambda: session.policy_verdict(variant, policy)))
                   for variant in session.variants for policy in config.policies]
        written = [Path(path) for path in session.save_baselines()] if config.save_baseline else []
        if config.report_dir is not None:
            from pytest_qtests.report.files import write_reports

            write_reports(session, config.report_dir)
            written.append(config.report_dir)
        from pytest_qtests.report.terminal import render_summary

        summary = render_summary(session) if session.evaluator.completed_runs() else ""
    finally:
        session.close()
    return GateResult(checks, summary, written)


def _judged(judge: Any) -> Verdict:
    """A variant's own failure (its engine would not load, its data would not grade) fails its check."""
    try:
        return judge()
    except QtestsError as error:
        return Verdict(False, str(error))
