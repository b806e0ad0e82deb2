"""Names bound now, imported on first use: keeps ``import pytest_qtests`` (every pytest start, every
usage error, ``pytest --help``) free of heavy libraries that only a comparison needs.

scipy.stats alone takes one to three seconds to import; a run refused for a typo should not wait for it.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyAttribute:
    """Stands for ``module.name``: calls and attribute reads go to the real object, imported once."""

    def __init__(self, module: str, name: str):
        self._module, self._name = module, name
        self._target: Any = None

    def _load(self) -> Any:
        if self._target is None:
            self._target = getattr(importlib.import_module(self._module), self._name)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._load()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._load(), attribute)

    def __repr__(self) -> str:
        return f"<lazy {self._module}.{self._name}>"
