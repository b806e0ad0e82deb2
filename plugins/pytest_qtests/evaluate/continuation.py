"""``--extend-truncated F``: let the samples cut at the output cap finish under an F-times larger cap.

The only way to know whether a truncated sample would have been right is to let it finish. A fresh
re-run at the larger cap pays for the first cap's tokens again; a continuation does not: the prompt
plus the partial output becomes the new prompt (prefill, cheap) and only the rest is decoded, up to
the larger cap minus what was already written. The continuation goes through the generation cache
like any generation (the partial output is part of the key), and the two halves are merged into one
record that reads as if it had been generated in one go at the larger cap.

Only samples the *engine* cut (``finish_reason == "length"``) are continued: a sample that stopped
with its thinking still open ended of its own accord, and more room would not change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, QtestsError


@dataclass
class Extension:
    """One run's truncated samples continued to ``max_tokens``, and the run's outcomes at that cap."""

    factor: float
    max_tokens: int
    records: list[GenerationRecord]  # merged records of the continued samples only
    outcomes: list[ItemOutcome]  # every sample of the run at the larger cap (continued ones replaced)
    extra_tokens: int  # tokens the continuations decoded
    reused_tokens: int  # tokens of the first cap that a fresh re-run would have decoded again

    @property
    def continued(self) -> int:
        return len(self.records)

    @property
    def finished(self) -> int:
        """Continued samples that stopped within the larger cap."""
        return sum(r.finish_reason == "stop" for r in self.records)

    @property
    def finished_correct(self) -> int:
        continued = {(r.item_id, r.sample_index) for r in self.records}
        return sum(o.correct and not o.truncated for o in self.outcomes if (o.item_id, o.sample_index) in continued)

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "max_tokens": self.max_tokens, "continued": self.continued,
                "finished": self.finished, "finished_correct": self.finished_correct,
                "extra_tokens": self.extra_tokens, "reused_tokens": self.reused_tokens}


def extended_cap(max_tokens: int, factor: float) -> int:
    """The larger output cap: ``factor`` times the first, rounded up."""
    if not factor > 1:
        raise QtestsError(f"--extend-truncated must be a factor above 1 (e.g. 2), got {factor}")
    return math.ceil(max_tokens * factor)


def continuation_requests(requests: Sequence[GenerationRequest], records: Sequence[GenerationRecord],
                          max_tokens: int) -> list[tuple[int, GenerationRequest]]:
    """(index, request) continuing each sample the engine cut, with the room left under ``max_tokens``.

    The partial output goes in as text (what an OpenAI-compatible server takes) and, when the engine
    returned them, as its own token ids (what vLLM and transformers are fed, so nothing is re-tokenized).
    """
    continued = []
    for index, (request, record) in enumerate(zip(requests, records)):
        if record.finish_reason != "length" or record.output_tokens >= max_tokens:
            continue
        sampling = replace(request.sampling, max_tokens=max_tokens - record.output_tokens)
        ids_known = record.token_ids is not None and (not request.continuation or request.continuation_ids)
        ids = request.continuation_ids + tuple(record.token_ids) if ids_known else ()
        continued.append((index, replace(request, sampling=sampling, continuation=request.continuation + record.text,
                                         continuation_ids=ids)))
    return continued


def merge_continuation(first: GenerationRecord, rest: GenerationRecord) -> GenerationRecord:
    """One record for the whole sample: the first part's text and tokens followed by the continuation's.

    Thinking tokens add up while the first part was still thinking (the continuation counts only its
    own); once the first part had closed its thinking, the continuation is all answer.
    """
    thinking = first.thinking_tokens + (rest.thinking_tokens if not first.thinking_closed else 0)
    return GenerationRecord(
        item_id=first.item_id,
        sample_index=first.sample_index,
        text=first.text + rest.text,
        prompt_tokens=first.prompt_tokens,
        output_tokens=first.output_tokens + rest.output_tokens,
        finish_reason=rest.finish_reason,
        thinking_tokens=thinking,
        thinking_closed=rest.thinking_closed,
        latency_s=first.latency_s + rest.latency_s,
        token_ids=None if first.token_ids is None or rest.token_ids is None else first.token_ids + rest.token_ids,
        error=rest.error,
    )


def extend_run(generate: Callable[[list[GenerationRequest]], list[GenerationRecord]],
               grade: Callable[[list[GenerationRecord], list[GenerationRequest]], list[ItemOutcome]],
               requests: Sequence[GenerationRequest], records: Sequence[GenerationRecord],
               outcomes: Sequence[ItemOutcome], factor: float) -> Extension:
    """Continue the run's cut samples with ``generate`` (the variant's engine, already loaded) and regrade
    them with ``grade`` (records and the requests that made them)."""
    max_tokens = extended_cap(requests[0].sampling.max_tokens if requests else 1, factor)
    picked = continuation_requests(requests, records, max_tokens)
    rests = generate([request for _, request in picked]) if picked else []
    merged = [merge_continuation(records[index], rest) for (index, _), rest in zip(picked, rests)]
    regraded = grade(merged, [requests[index] for index, _ in picked])
    at_larger_cap = list(outcomes)
    for (index, _), outcome in zip(picked, regraded):
        at_larger_cap[index] = outcome
    return Extension(factor, max_tokens, merged, at_larger_cap,
                     extra_tokens=sum(r.output_tokens for r in rests),
                     reused_tokens=sum(records[index].output_tokens for index, _ in picked))
