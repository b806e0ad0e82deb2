"""Checks run before collection, so a bad input costs one line in the first seconds, not a failed run.

Everything here is cheap and static: task names, local task files (read once and kept for the run),
policy rules, stored baselines named by ``--baseline``, and what the chosen backend needs. What only an
engine can tell (a checkpoint that does not load, weights that produce NaN) stays a per-variant error
at run time, so one broken variant never stops the others from being evaluated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .baselines import load_baseline
from .policy import parse_policy
from .records import QtestsError
from .tasks.registry import resolve_task_spec

if TYPE_CHECKING:
    from .session import GateSession


def check_before_run(session: GateSession) -> None:
    """Raise :class:`QtestsError` for the first input of the run that cannot work."""
    config = session.config
    for spec in config.tasks:
        task, source = resolve_task_spec(spec)
        if source.path is not None:  # local data: read it now (cached for the run), errors name the file
            session.evaluator.task_data(spec)
        if config.baseline:
            load_baseline(config.baseline, config.baseline_dir, task.name)
    for rule in config.policies:
        parse_policy(rule)
    labels = {variant.label for variant in session.variants}
    if config.reference is not None:
        labels.add(config.reference.label)
    if config.backend == "openai" and not config.base_urls:
        raise QtestsError("--backend openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1)")
    if config.backend == "replay":
        strays = sorted(set(config.replay) - labels)
        if strays:
            raise QtestsError(f"--replay names no model of this run: {', '.join(strays)}; "
                              f"use the LABEL of a --model or --reference ({', '.join(sorted(labels))})")
