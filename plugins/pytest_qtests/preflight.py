"""Checks run before collection, so a bad input costs one line in the first seconds, not a failed run.

Everything here is cheap and static: task names, local task files (read once and kept for the run),
policy rules, stored baselines named by ``--baseline``, and what the chosen backend needs. What only an
engine can tell (a checkpoint that does not load, weights that produce NaN) stays a per-variant error
at run time, so one broken variant never stops the others from being evaluated.
"""

from __future__ import annotations

from pytest_qtests.store.baselines import load_baseline
from pytest_qtests.settings import RunConfig
from pytest_qtests.audit.policies import parse_policy
from pytest_qtests.records import QtestsError
from pytest_qtests.tasks.loaders import TaskData, load_task
from pytest_qtests.tasks.registry import resolve_task_spec


def check_before_run(config: RunConfig) -> dict[str, TaskData]:
    """Raise :class:`QtestsError` for the first input of the run that cannot work; nothing is written
    before these checks pass (not even the cache). Returns the local tasks it read, by task spec, for
    the run to reuse."""
    loaded: dict[str, TaskData] = {}
    for spec in config.tasks:
        task, source = resolve_task_spec(spec)
        if source.path is not None:  # local data: read it now, so errors name the file before any engine starts
            loaded[spec] = load_task(task, source, limit=config.limit, seed=config.sampling.seed)
        if config.baseline:
            load_baseline(config.baseline, config.baseline_dir, task.name)
    for rule in config.policies:
        parse_policy(rule)
    labels = {variant.label for variant in config.models}
    if config.reference is not None:
        labels.add(config.reference.label)
    if config.backend == "openai" and not config.base_urls:
        raise QtestsError("--backend openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1)")
    if config.backend == "replay":
        strays = sorted(set(config.replay) - labels)
        if strays:
            raise QtestsError(f"--replay names no model of this run: {', '.join(strays)}; "
                              f"use the LABEL of a --model or --reference ({', '.join(sorted(labels))})")
    return loaded
