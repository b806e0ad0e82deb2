"""``qtests sweep``'s hooks: the working directory's conftest.py, read as pytest reads it (plain functions,
its own directory importable), so a sweep sees the tasks and engines a pytest run there sees."""

from __future__ import annotations

import sys

import pytest

from pytest_qtests.engines import registry
from pytest_qtests.hooks import cli_hooks, register_hooked_extensions
from pytest_qtests.records import QtestsError
from pytest_qtests.tasks import registry as tasks

CONFTEST = """
from helpers import make_task

def pytest_qtests_register_tasks(register):
    register(make_task())

def pytest_qtests_register_backends(register):
    register("echo", lambda config, variant: None)

def pytest_qtests_results(results):
    RECEIVED.append(results)

RECEIVED = []
"""
HELPERS = """
from pytest_qtests.tasks import FieldMap, Grade, Task

def make_task():
    return Task(name="inhouse", fields=FieldMap(question="q", answer="a"), grader=lambda answer, item: Grade(True),
                user_message=lambda item: item.question)
"""


@pytest.fixture
def registries(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "helpers", raising=False)


def test_a_conftest_registers_tasks_and_engines_and_receives_results(tmp_path, registries):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "helpers.py").write_text(HELPERS)
    hooks = cli_hooks(tmp_path)
    register_hooked_extensions(hooks)
    assert tasks.get_task("inhouse").name == "inhouse"
    assert "echo" in registry.backend_names()
    hooks.pytest_qtests_results(results={"runs": []})
    [plugin] = [p for p in hooks.pytest_qtests_results.get_hookimpls()]
    assert plugin.plugin.RECEIVED == [{"runs": []}]


def test_a_hook_that_raises_is_one_line_naming_it(tmp_path, registries):
    (tmp_path / "conftest.py").write_text("def pytest_qtests_register_backends(register):\n    1 / 0\n")
    with pytest.raises(QtestsError, match=r"^hook pytest_qtests_register_backends raised ZeroDivisionError: "
                                          r"division by zero \(at .*conftest.py:2\); fix that implementation$"):
        register_hooked_extensions(cli_hooks(tmp_path))


def test_without_a_conftest_nothing_is_registered(tmp_path, registries):
    before = registry.backend_names()
    register_hooked_extensions(cli_hooks(tmp_path))
    assert registry.backend_names() == before
