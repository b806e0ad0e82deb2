"""One engine in memory at a time: the next variant's engine is created only after the last one closed.

Two quantized checkpoints of a large model rarely fit on one accelerator together, so whoever asks
for another variant's engine gets it only after the current engine released its memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qtests.engines.registry import create_backend
from pytest_qtests.records import VariantSpec

if TYPE_CHECKING:
    from pytest_qtests.engines.base import Backend
    from pytest_qtests.settings import RunConfig


class EngineSlot:
    """Holds at most one (lazily loading) engine, for the variant it was last asked for."""

    def __init__(self, config: RunConfig):
        self.config = config
        self._backend: Backend | None = None
        self._label: str | None = None

    def get(self, variant: VariantSpec) -> Backend:
        """The engine for ``variant``; the previous variant's engine is released first."""
        if self._backend is None or self._label != variant.label:
            self.release()
            self._backend = create_backend(self.config, variant)
            self._label = variant.label
        return self._backend

    def release(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend, self._label = None, None
