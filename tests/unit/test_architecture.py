"""The layout's promises, checked on the source: no import cycle, and only the pytest face imports pytest.

A cycle (even one only type checkers follow) ties two layers into one; a library module that imports
pytest could not be used without it (``pytest_qtests`` is also a library and a CLI).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "pytest_qtests"
PYTEST_FACE = {"pytest_qtests.plugin", "pytest_qtests.distributed", "pytest_qtests.hookspec", "pytest_qtests.fixtures"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("pytest_qtests", *path.relative_to(PACKAGE).with_suffix("").parts))
        modules[name.removesuffix(".__init__")] = path
    return modules


def _module_level_imports(path: Path) -> set[str]:
    """Modules imported when the module is imported, or by a type checker (``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    body = list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.If):
            body.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            body.extend(node.body)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _module_level_imports(path) & set(modules) - {name} for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target, stack)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_the_package_has_no_import_cycle_not_even_a_type_only_one():
    assert _find_cycle(_graph()) is None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]


def test_only_the_pytest_face_imports_pytest():
    importers = {name for name, path in _modules().items()
                 if {"pytest", "_pytest"} & {m.split(".")[0] for m in _module_level_imports(path)}}
    assert importers <= PYTEST_FACE, f"library modules importing pytest: {sorted(importers - PYTEST_FACE)}"
