"""The one interface every engine implements.

Backends are the only code that touches an inference engine. They receive fully rendered prompts
and return :class:`GenerationRecord` objects; grading, statistics and reporting never see the engine.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from ..records import GenerationRecord, GenerationRequest

ProgressCallback = Callable[[int], None]  # called with the number of newly finished requests


class Backend(Protocol):
    name: str

    def engine_version(self) -> str:
        """Engine name and version, part of the fingerprint and cache key."""

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        """Generate every request (all submitted at once where the engine batches) in request order."""

    def close(self) -> None:
        """Release the engine (and its GPU memory) before the next variant is loaded."""
