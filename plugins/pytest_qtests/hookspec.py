"""Hooks a ``conftest.py`` or an installed package implements to extend the gate.

Registered through ``pytest_addhooks``, so they are implemented like any pytest hook: a function of
that name in a ``conftest.py``, or in a module loaded through the ``pytest11`` entry point group.
``qtests sweep`` calls the same hooks (from ``conftest.py`` in the working directory and installed
plugins), so a sweep sees the same tasks and engines as ``pytest``.

Register a task with its own grader::

    # conftest.py
    from pytest_qtests.tasks import DataSource, FieldMap, Grade, Task

    def grade_json(output, item):
        ...
        return Grade(correct=..., extracted=...)

    def pytest_qtests_register_tasks(register):
        register(Task(name="invoices", fields=FieldMap(question="prompt", answer="expected", id="id"),
                      grader=grade_json, user_message=lambda item: item.question,
                      bundled=(Path(__file__).parent / "data" / "invoices.jsonl",)))

Add an engine (``--backend sglang``)::

    def pytest_qtests_register_backends(register):
        register("sglang", lambda config, variant: SGLangBackend(variant.source, config.sampling.max_tokens))

Receive the final results (the ``results.json`` document, whether or not ``--qt-report`` is given)::

    def pytest_qtests_results(results):
        requests.post(DASHBOARD, json=results)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from pytest_qtests.engines.registry import BackendFactory
    from pytest_qtests.tasks.registry import Task

spec = pluggy.HookspecMarker("pytest")  # pytest's own marker, so plain pluggy (``qtests sweep``) sees them too


@spec
def pytest_qtests_register_tasks(register: Callable[[Task], None]) -> None:
    """Add tasks with ``register(Task(...))``; then ``--tasks NAME`` runs them exactly like built-in ones
    (same validation, report, baselines, and fingerprint, the grader's identity included). Called once
    per session, before the command line's tasks are looked up."""


@spec
def pytest_qtests_register_backends(register: Callable[[str, BackendFactory], None]) -> None:
    """Add engines with ``register(NAME, factory)``; then ``--backend NAME`` builds each model's engine
    with ``factory(config, variant)`` (the run's :class:`~pytest_qtests.settings.RunConfig` and one
    :class:`~pytest_qtests.records.VariantSpec`), lazily, once per model, when its first test needs it.
    The engine implements :class:`pytest_qtests.engines.base.Backend` (``generate``, ``engine_version``,
    ``device_info``, ``close``) and declares what it can do as ``capabilities``; see the README's
    "Another engine". Called once per session, before ``--backend`` is checked; a built-in name is refused."""


@spec
def pytest_qtests_results(results: dict[str, Any]) -> None:
    """Receive the session's final results, the ``results.json`` document (schema
    ``pytest_qtests/schemas/results.schema.json``), to upload or post-process. Called once, on the
    process that reports (the xdist controller), after every test ran; an exception here is a one-line
    error and a non-zero exit, like a report that cannot be written."""
