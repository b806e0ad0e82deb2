"""Public fixtures for users' own tests: ``qt_model``, ``qt_reference`` and ``qt_compare``.

``qt_model`` is parametrized by the plugin over the run's reference and variants (test ids by label,
``test_json[int4]``), and each variant's tests are scheduled with the gate's, so one engine serves both.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest

from pytest_qtests.gate.scores import compare_scores
from pytest_qtests.models import QtModel
from pytest_qtests.records import QtestsError


def _session(request: pytest.FixtureRequest) -> Any:
    from pytest_qtests.plugin import gate_session

    return gate_session(request.config)


@pytest.fixture
def qt_model(request: pytest.FixtureRequest) -> QtModel:
    """The model under test: one of the run's variants, or the reference (``qt_model.is_reference``)."""
    session = _session(request)
    return QtModel(request.param, session.is_reference(request.param), session.evaluator)


@pytest.fixture
def qt_reference(request: pytest.FixtureRequest) -> QtModel:
    """The run's live reference (``--reference``), to generate its outputs for the same prompts."""
    session = _session(request)
    if session.config.reference is None:
        pytest.skip("no live reference to compare with: pass --reference SPEC")
    return QtModel(session.config.reference, True, session.evaluator)


@pytest.fixture
def qt_compare(request: pytest.FixtureRequest, record_property: Any) -> Callable[..., None]:
    """``qt_compare(scores, reference_scores, ids=None, name="score", tolerance=None)``: the gate's paired
    accuracy check on per-item pass/fail scores of ``qt_model`` and the reference. Passes, fails with the
    gate's one-line message, or skips when ``qt_model`` is the reference itself; the numbers become
    JUnit properties (``NAME.p_value``, ...). ``tolerance`` defaults to the run's accuracy tolerance."""
    session = _session(request)
    model = request.getfixturevalue("qt_model") if "qt_model" in request.fixturenames else None

    def compare(scores: Sequence[bool], reference_scores: Sequence[bool], *, ids: Sequence[str] | None = None,
                name: str = "score", tolerance: str | None = None) -> None:
        if model is not None and model.is_reference:
            pytest.skip(f"{model.label}: this is the reference itself")
        config = session.config
        try:
            result = compare_scores(scores, reference_scores, ids=ids,
                                    tolerance=config.tolerances["accuracy"] if tolerance is None else tolerance, alpha=config.alpha,
                                    mode=config.gate_mode, seed=config.sampling.seed, name=name)
        except QtestsError as error:
            pytest.fail(str(error), pytrace=False)
        for key, value in result.junit_properties().items():
            record_property(key, value)
        label = f"{model.label}: " if model is not None else ""
        if not result.passed:
            pytest.fail(label + result.message, pytrace=False)

    return compare

