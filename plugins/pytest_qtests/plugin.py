"""pytest plugin: command-line options, parametrization of the suite, and the verdict table.

The suite (``qtests/``) asks for ``qt_case`` and ``qt_policy_case``; this module parametrizes them
with one value per variant x task (or variant x policy) so test ids read
``test_accuracy[int4-default-zoo]``. All evaluation is lazy and shared through the ``qt_session``
fixture, so ``-k``/``--lf`` runs generate only what the selected tests need.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, NoReturn

import pytest

from pytest_qtests import distributed, hookspec
from pytest_qtests.fixtures import qt_compare, qt_model, qt_reference  # noqa: F401 (the public fixtures)
from pytest_qtests.hooks import call_hook, register_hooked_extensions
from pytest_qtests.options import GateOptions, add_gate_options, build_config
from pytest_qtests.settings import RunConfig
from pytest_qtests.preflight import check_before_run
from pytest_qtests.records import QtestsError, VariantSpec
from pytest_qtests.session import SUITE_CHECKS, GateSession, Verdict

_SESSION_KEY = pytest.StashKey[GateSession]()
_NOTES_KEY = pytest.StashKey[str]()
_CONTROLLER_KEY = pytest.StashKey[distributed.ControllerHooks]()
_SUITE_FILE = Path(importlib.util.find_spec("qtests").origin).parent / "test_gate.py"  # the standard gate suite


@dataclass(frozen=True)
class Case:
    variant: VariantSpec
    task: str

    @property
    def id(self) -> str:
        return f"{self.variant.label}-{self.task}"


@dataclass(frozen=True)
class PolicyCase:
    variant: VariantSpec
    policy: str

    @property
    def id(self) -> str:
        return f"{self.variant.label}-{self.policy}"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qtests", "quantized checkpoint gate")
    add_gate_options(group.addoption)
    # Not a gate option: how pytest-xdist workers share the machine's GPUs.
    group.addoption("--gpus-per-worker", dest="qt_gpus_per_worker", type=int, metavar="N",
                    help="with pytest-xdist -n: give each worker its own N GPUs (CUDA_VISIBLE_DEVICES slice by worker id)")


def _wants_qtests(config: pytest.Config) -> bool:
    options = GateOptions.from_namespace(config.option)
    return bool(options.models or options.reference or options.suite_file)


def gate_session(config: pytest.Config) -> GateSession:
    """The session's gate, built on first use (after every conftest had its say about defaults)."""
    if _SESSION_KEY not in config.stash:
        register_hooked_extensions(config.hook)
        run_config: RunConfig = build_config(GateOptions.from_namespace(config.option))
        preloaded_tasks = check_before_run(run_config)
        session = GateSession(run_config)
        session.evaluator.preload_tasks(preloaded_tasks)
        config.stash[_SESSION_KEY] = session
    return config.stash[_SESSION_KEY]


def _gate_suite_args(config: pytest.Config) -> None:
    """What runs: asked for qtests on the command line (``--model``, ``--reference``, ``--qt-config``) with
    no test paths, the standard gate suite of the installed ``qtests`` package runs; with test paths,
    those tests run and the gate suite beside them, unless ``--no-gate``."""
    given = config.known_args_namespace  # the command line only: a conftest's defaults do not count
    if not (given.qt_models or given.qt_reference or given.qt_suite_file):
        return  # not asked for on the command line: pytest collects what it always would
    suite = str(_SUITE_FILE)
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [suite]
    elif not config.getoption("qt_no_gate") and not _names_suite(config, suite):
        config.args.append(suite)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """The installed gate suite, collected from outside the rootdir (``pytest --model ...`` in a user's
    project), would get an empty node id (``::test_accuracy[int4-gsm8k]``); name it as in this repo."""
    if module_path != _SUITE_FILE or module_path.is_relative_to(parent.config.rootpath):
        return None
    return pytest.Module.from_parent(parent, path=module_path, nodeid=f"{_SUITE_FILE.parent.name}/{_SUITE_FILE.name}")


def _names_suite(config: pytest.Config, suite: str) -> bool:
    """True when an argument already collects the suite (``--pyargs qtests``, ``qtests/``, the file)."""
    suite_path = Path(suite)
    for arg in config.args:
        target = arg.split("::")[0]
        if config.option.pyargs and target.split(".")[0] == "qtests":
            return True
        path = Path(config.invocation_params.dir, target).resolve()
        if path in (suite_path, suite_path.parent):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    """Quiet a pytest warning; under xdist, the controller checks the GPU budget and hands workers a run
    id and devices, and each worker pins its GPU slice here, before anything can initialise CUDA."""
    # pytest warns that record_property does not fit its default junit_family (xunit2), yet writes the
    # properties all the same, and CI systems read them: one warning per gate test is noise, not news.
    config.addinivalue_line(
        "filterwarnings", "ignore:record_property is incompatible with junit_family:pytest.PytestWarning")
    _gate_suite_args(config)
    if not _wants_qtests(config):
        return
    per_worker = config.getoption("qt_gpus_per_worker")
    try:
        if distributed.is_controller(config):
            if build_config(GateOptions.from_namespace(config.option)).stop_early:
                raise QtestsError("--stop-early cannot be combined with pytest-xdist -n yet: the workers' runs reach "
                                  "the controller without their looks; drop one of them")
            if config.getoption("qt_no_cache"):
                raise QtestsError("--no-cache cannot be combined with pytest-xdist -n: the controller builds the "
                                  "verdict table from the cache the workers share; for a cold run pass a fresh "
                                  "--cache-dir instead")
            devices = None
            if per_worker:
                devices = distributed.available_devices()
                workers = distributed.worker_count(config)
                if workers is not None:
                    distributed.check_gpu_budget(workers, per_worker, devices)
            config.stash[_CONTROLLER_KEY] = distributed.ControllerHooks(devices, lambda: _case_scopes(config))
            config.pluginmanager.register(config.stash[_CONTROLLER_KEY], "qtests-xdist-controller")
        else:
            distributed.pin_worker_devices(config, per_worker)
    except QtestsError as error:
        raise pytest.UsageError(f"qtests: {error}") from None


def _case_scopes(config: pytest.Config) -> dict[str, str]:
    """Test parameter id -> variant label, for scheduling each variant's tests onto one xdist worker."""
    session = gate_session(config)
    cases = [Case(v, t) for v in session.variants for t in session.config.tasks]
    cases += [PolicyCase(v, p) for v in session.variants for p in session.config.policies]
    return {**{case.id: case.variant.label for case in cases}, **{v.label: v.label for v in _user_models(session)}}


def _user_models(session: GateSession) -> list[VariantSpec]:
    """What ``qt_model`` is parametrized over: the reference (when live), then the variants."""
    reference = [session.config.reference] if session.config.reference else []
    return reference + [v for v in session.config.models]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Validate the command line and suite file before collection: a bad flag costs one line, not a run."""
    if _wants_qtests(session.config):
        try:
            gate_session(session.config)
        except QtestsError as error:
            raise pytest.UsageError(f"qtests: {error}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = {"qt_case", "qt_policy_case", "qt_parity_case", "qt_model"} & set(metafunc.fixturenames)
    if not wanted:
        return
    if not _wants_qtests(metafunc.config):
        raise pytest.UsageError("qtests: no model to test: pass --model [LABEL=]PATH_OR_HUB_ID or --qt-config FILE")
    try:
        session = gate_session(metafunc.config)
    except QtestsError as error:
        raise pytest.UsageError(f"qtests: {error}") from None
    if "qt_case" in wanted:
        cases = [Case(v, t) for v in session.variants for t in session.config.tasks]
        metafunc.parametrize("qt_case", cases, ids=[c.id for c in cases])
    if "qt_policy_case" in wanted:
        cases = [PolicyCase(v, p) for v in session.variants for p in session.config.policies]
        metafunc.parametrize("qt_policy_case", cases, ids=[c.id for c in cases])
    if "qt_model" in wanted:
        models = _user_models(session)
        metafunc.parametrize("qt_model", models, ids=[m.label for m in models], indirect=True)
    if "qt_parity_case" in wanted:  # without --parity the test is deselected (see collection below)
        cases = [Case(v, t) for v in session.variants for t in session.config.tasks] if session.config.parity else []
        metafunc.parametrize("qt_parity_case", cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each variant's tests together: one engine load per variant. (Under xdist, whole variants
    go to workers through :class:`distributed.ControllerHooks`.) Without ``--parity``, drop
    ``test_parity``, and without a policy ``test_policy`` (deselected rather than skipped as
    ``[NOTSET]``, so plain runs count no extra skip)."""
    if _SESSION_KEY not in config.stash:
        return
    run_config = gate_session(config).config
    idle = {"qt_parity_case"} if run_config.parity is None else set()
    idle |= set() if run_config.policies else {"qt_policy_case"}
    unwanted = [item for item in items if idle & set(getattr(item, "fixturenames", ()))]
    if unwanted:
        config.hook.pytest_deselected(items=unwanted)
        items[:] = [item for item in items if item not in unwanted]
    order = {v.label: i for i, v in enumerate(gate_session(config).variants)}

    def variant_of(item: pytest.Item) -> str | None:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = next((v for v in params.values() if isinstance(v, (Case, PolicyCase, VariantSpec))), None)
        return None if case is None else case.label if isinstance(case, VariantSpec) else case.variant.label

    items.sort(key=lambda item: order.get(variant_of(item) or "", -1))


@pytest.fixture(scope="session")
def qt_session(request: pytest.FixtureRequest) -> GateSession:
    return gate_session(request.config)


@pytest.fixture
def qt_run(qt_case: Case, qt_session: GateSession):
    """The variant's evaluated run; an engine or data failure is this variant's error, not the session's."""
    try:
        return qt_session.run(qt_case.variant, qt_case.task)
    except QtestsError as error:
        failure = str(error)
    _fail(failure)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A user's test that misuses the public fixtures (``qt_model.generate("one string")``, ...) fails with
    qtests' one line saying what to change, not a traceback through qtests' internals."""
    report = yield
    if call.when == "call" and call.excinfo is not None and call.excinfo.errisinstance(QtestsError):
        report.longrepr = f"qtests: {call.excinfo.value}"
    return report


def _fail(message: str) -> NoReturn:
    """Fail the test with the one-line message only: raised outside any ``except`` block (and with the
    context cleared), so pytest does not print the QtestsError again under "During handling of ..."."""
    try:
        pytest.fail(message, pytrace=False)
    except pytest.fail.Exception as failure:
        failure.__context__ = None
        failure.__suppress_context__ = True
        raise


def enforce(verdict: Verdict, record_property: Any) -> None:
    """Turn a verdict into the test outcome, with its numbers as JUnit properties."""
    for name, value in verdict.properties.items():
        record_property(name, value)
    if verdict.skipped:
        pytest.skip(verdict.message)
    if not verdict.passed:
        pytest.fail(verdict.message, pytrace=False)


def check_case(session: GateSession, case: Case, check: str, record_property: Any) -> None:
    if check not in SUITE_CHECKS:
        raise ValueError(f"unknown check {check}")
    try:
        verdict = session.verdict(case.variant, case.task, check)
    except QtestsError as error:
        _fail(str(error))
    enforce(verdict, record_property)


def check_parity(session: GateSession, case: Case, record_property: Any) -> None:
    try:
        verdict = session.parity_verdict(case.variant, case.task)
    except QtestsError as error:
        pytest.fail(str(error), pytrace=False)
    enforce(verdict, record_property)


def check_policy(session: GateSession, case: PolicyCase, record_property: Any) -> None:
    try:
        verdict = session.policy_verdict(case.variant, case.policy)
    except QtestsError as error:
        _fail(str(error))
    enforce(verdict, record_property)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _SESSION_KEY not in config.stash:
        return
    gate = config.stash[_SESSION_KEY]
    notes: list[str] = []
    try:
        run_id = distributed.published_run_id(config)
        if run_id is not None:  # an xdist worker: its runs go to the controller, which reports them
            from pytest_qtests.store.run_store import publish_session_runs

            publish_session_runs(gate, run_id, config.workerinput["workerid"])
            return
        if _CONTROLLER_KEY in config.stash:
            from pytest_qtests.store.run_store import adopt_published_runs

            adopt_published_runs(gate, config.stash[_CONTROLLER_KEY].run_id)
        if gate.config.save_baseline and exitstatus == pytest.ExitCode.INTERRUPTED:
            notes.append("qtests: baselines not saved: the run was interrupted; rerun to save them")
        elif gate.config.save_baseline:
            notes += [f"baseline written: {path}" for path in gate.save_baselines()]
        if gate.config.report_dir is not None:
            from pytest_qtests.report.files import write_reports

            write_reports(gate, gate.config.report_dir)
        if config.hook.pytest_qtests_results.get_hookimpls() and gate.evaluator.completed_runs():
            from pytest_qtests.report.files import results_of

            call_hook(config.hook.pytest_qtests_results, results=results_of(gate))
    except (QtestsError, OSError) as error:
        # A baseline or report that cannot be written is the user's to fix (a bad directory, a symlink out
        # of the store): one line and a non-zero exit, never an INTERNALERROR traceback.
        notes.append(f"qtests: error: {_write_error(error)}")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
    finally:
        gate.close()
        config.stash[_NOTES_KEY] = "\n".join(notes)


def _write_error(error: BaseException) -> str:
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"cannot write{where} ({error.strerror}): pass a writable --qt-report / --baseline-dir"
    return str(error)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _SESSION_KEY not in config.stash:
        return
    from pytest_qtests.report.terminal import render_summary

    gate = config.stash[_SESSION_KEY]
    if gate.evaluator.completed_runs():
        terminalreporter.section("qtests verdicts")
        terminalreporter.write(render_summary(gate, terminalreporter.config.get_terminal_writer().fullwidth))
    if gate.parity_reports:
        terminalreporter.section("qtests engine parity")
        for report in gate.parity_reports.values():
            terminalreporter.write_line(report.message)
    notes = config.stash.get(_NOTES_KEY, "")
    if notes:
        terminalreporter.write_line(notes)
