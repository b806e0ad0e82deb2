"""The one interface every engine implements.

Backends are the only code that touches an inference engine. They receive fully rendered prompts
and return :class:`GenerationRecord` objects; grading, statistics and reporting never see the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError
from pytest_qtests.tasks.prompts import prompt_opens_thinking
from pytest_qtests.thinking import THINK_CLOSE, thinking_extent

if TYPE_CHECKING:
    from pytest_qtests.engines.teacher_forcing import TokenScores

ProgressCallback = Callable[[int], None]  # called with the number of newly finished requests


class EngineLoadError(QtestsError):
    """An engine could not load a variant; the message carries the engine's own error line."""


def last_error_line(error: BaseException) -> str:
    """The last non-empty line of an engine exception: usually the one that names the cause."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@dataclass(frozen=True)
class EngineCapabilities:
    """What a backend can do beyond ``generate``; callers ask these instead of probing for attributes,
    so a third-party backend states its features once, where it is defined."""

    renders_prompts: bool = False
    """It holds the model's tokenizer (``Backend.tokenizer``): prompts are rendered through its chat
    template. Without, user messages go to the engine as they are (a server applies its own template)."""
    teacher_forced_scoring: bool = False
    """``Backend.score(texts)`` works: the canary's teacher-forced divergence and engine parity need it."""
    continuation: bool = False
    """``generate`` continues a request's partial output (``--extend-truncated``)."""
    streams: bool = False
    """``Backend.stream(requests, lookahead)`` works: a rolling window of requests (a served engine, or an
    offline one qtests steps itself), so a caller that consumes records a few at a time (``--stop-early``'s
    looks) keeps the engine busy across its own boundaries. Without, such a caller sends one ``generate``
    batch at a time."""


class Backend(Protocol):
    name: str
    capabilities: EngineCapabilities

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer when ``capabilities.renders_prompts`` (may load it), else None."""

    def engine_version(self) -> str:
        """Engine name and version, part of the fingerprint and cache key."""

    def device_info(self) -> dict[str, Any]:
        """The devices that ran the generations, for the fingerprint (empty when the engine is remote or
        there is none)."""

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        """Generate every request (all submitted at once where the engine batches) in request order."""

    def stream(
        self, requests: Sequence[GenerationRequest], lookahead: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[GenerationRecord]:
        """The records of ``requests`` in request order, as they are consumed; called only when
        ``capabilities.streams``. Requests are sent in order, never more than ``lookahead`` plus the
        engine's own concurrency past the oldest record not yet consumed (None: no bound); closing the
        iterator cancels what is in flight and sends nothing more."""

    def score(self, texts: Sequence[str]) -> list[TokenScores]:
        """Teacher-forced scores of each text's tokens; called only when ``capabilities.teacher_forced_scoring``."""

    def close(self) -> None:
        """Release the engine (and its GPU memory) before the next variant is loaded."""


def think_close_id(tokenizer) -> int | None:
    """The ``</think>`` token id if the tokenizer has it as a single token, else None."""
    ids = tokenizer.encode(THINK_CLOSE, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def prompt_token_ids(tokenizer, request: GenerationRequest) -> list[int]:
    """The ids a local engine is given: the prompt's, then the partial output's own ids when known."""
    if request.continuation_ids:
        return tokenizer.encode(request.prompt, add_special_tokens=False) + list(request.continuation_ids)
    return tokenizer.encode(request.prompt + request.continuation, add_special_tokens=False)


def make_record(
    request: GenerationRequest,
    text: str,
    prompt_tokens: int,
    token_ids: list[int] | None,
    finish_reason: str,
    latency_s: float,
    close_token_id: int | None,
    output_tokens: int | None = None,
) -> GenerationRecord:
    """Build a record the same way for every engine, so records from vLLM, transformers, an OpenAI
    server or a replay file carry the same fields with the same meaning."""
    # A continuation's own tokens are measured alone: they start inside the thinking block when the
    # prompt or the partial output left it open, and are all answer when the partial output closed it.
    opened = prompt_opens_thinking(request.prompt + request.continuation)
    thinking_tokens, closed = thinking_extent(text, token_ids, close_token_id, opened, output_tokens)
    reason = finish_reason if finish_reason in ("stop", "length") else "error"
    return GenerationRecord(
        item_id=request.item_id,
        sample_index=request.sample_index,
        text=text,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens if output_tokens is not None else len(token_ids or []),
        finish_reason=reason,
        thinking_tokens=thinking_tokens,
        thinking_closed=closed,
        latency_s=latency_s,
        token_ids=token_ids,
        error=None if reason != "error" else f"engine finish_reason={finish_reason!r}",
    )


def free_device_memory() -> None:
    """Give a closed engine's memory back now: the next variant's engine loads in the same process."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
