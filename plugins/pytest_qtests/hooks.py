"""Calling the hooks of ``hookspec.py`` from library code, under pytest and from the CLI alike.

Under pytest the hooks are ``config.hook``; ``qtests sweep`` builds the same relay with pluggy from the
``conftest.py`` of its working directory, so a sweep sees the tasks and engines a ``pytest`` run there sees.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

import pluggy

from pytest_qtests.records import QtestsError


def call_hook(hook: Any, **kwargs: Any) -> Any:
    """Call a qtests hook; an exception in a user's implementation is one line naming where it was raised."""
    try:
        return hook(**kwargs)
    except QtestsError:
        raise
    except Exception as error:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        raise QtestsError(f"hook {hook.name} raised {type(error).__name__}: {error} (at {frame.filename}:"
                          f"{frame.lineno}); fix that implementation") from None


def cli_hooks(directory: Path) -> Any:
    """The hook relay for a CLI command: qtests' hook specifications, implemented by ``directory/conftest.py``
    when there is one (imported as pytest would, under the name ``conftest``)."""
    from pytest_qtests import hookspec

    manager = _ConftestPluginManager("pytest")
    manager.add_hookspecs(hookspec)
    conftest = directory / "conftest.py"
    if conftest.is_file():
        if str(directory) not in sys.path:  # as pytest's default import mode: the conftest's own modules import
            sys.path.insert(0, str(directory))
        spec = importlib.util.spec_from_file_location("conftest", conftest)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise QtestsError(f"{conftest} failed to import ({type(error).__name__}: {error}); fix it") from None
        manager.register(module, str(conftest))
    return manager.hook


class _ConftestPluginManager(pluggy.PluginManager):
    """Takes a conftest's plain ``pytest_qtests_*`` functions as implementations, as pytest's own manager
    does (bare pluggy wants each marked with ``HookimplMarker``, which no conftest does)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("pytest_qtests_") and callable(getattr(plugin, name, None)):
            opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False, "tryfirst": False,
                    "trylast": False, "specname": None}
        return opts


def register_hooked_extensions(hooks: Any) -> None:
    """Tasks and engines from ``pytest_qtests_register_tasks`` / ``pytest_qtests_register_backends``
    implementations, before ``--tasks`` and ``--backend`` are resolved."""
    from pytest_qtests.engines.registry import register_user_backend
    from pytest_qtests.tasks.registry import register_user_task

    call_hook(hooks.pytest_qtests_register_tasks, register=register_user_task)
    call_hook(hooks.pytest_qtests_register_backends, register=register_user_backend)
