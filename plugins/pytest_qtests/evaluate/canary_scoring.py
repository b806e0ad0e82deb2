"""The canary's measurements on engines: which requests it looks at, and its teacher-forced divergence.

The verdict on those measurements is :mod:`pytest_qtests.evaluate.canary`; this module is the part
that asks a backend for scores. The reference scores its own canary texts (prompt + its output) while
its engine is still loaded; each variant later scores the same texts, and the two are compared token
by token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

from pytest_qtests.engines.teacher_forcing import TokenScores, compare_scores
from pytest_qtests.evaluate.canary import CanaryDivergence
from pytest_qtests.evaluate.divergence import pool
from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError

if TYPE_CHECKING:
    from pytest_qtests.engines.base import Backend

# The reference's canary texts and its scores of them, or why there are none.
ReferenceScores = tuple[list[str], list[TokenScores]] | str
# Scores texts on one model: the backend's ``score``, or the same through the cache (``store.cache.cached_score``).
Scorer = Callable[[Sequence[str]], list[TokenScores]]


def canary_indices(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over the run, so the canary sees easy and hard items alike."""
    step = total / count
    return sorted({min(total - 1, math.floor(i * step)) for i in range(count)})


def canary_requests(requests: Sequence[GenerationRequest], count: int) -> list[GenerationRequest]:
    """The canary's ``count`` requests of a run's ``requests`` (none without a canary, or when the run is no
    longer than the canary)."""
    return [requests[i] for i in canary_indices(len(requests), count)] if 0 < count < len(requests) else []


def score_reference_canary(backend: Backend, canary: Sequence[GenerationRequest],
                           records: Sequence[GenerationRecord], score: Scorer | None = None) -> ReferenceScores:
    """The reference's ``backend`` scores its own canary texts (through ``score`` when given): the prompts
    of the ``canary`` requests followed by the reference's outputs on them (``records``, any order, a
    superset)."""
    if not backend.capabilities.teacher_forced_scoring:
        return f"the {backend.name} backend cannot score tokens"
    output = {(record.item_id, record.sample_index): record for record in records}
    pairs = [(request, output[(request.item_id, request.sample_index)]) for request in canary]
    texts = [request.prompt + record.text for request, record in pairs if record.finish_reason != "error"]
    return (texts, (score or backend.score)(texts)) if texts else "no reference canary outputs to score"


def canary_divergence(backend: Backend, reference_scores: ReferenceScores, score: Scorer | None = None) -> CanaryDivergence:
    """The variant's ``backend`` scores the reference's canary texts (through ``score`` when given);
    pooled divergence from the reference's scores."""
    if isinstance(reference_scores, str):
        return CanaryDivergence(None, reference_scores)
    texts, reference = reference_scores
    try:
        reports = [compare_scores(r, v) for r, v in zip(reference, (score or backend.score)(texts))]
    except QtestsError as error:  # e.g. a variant shipped with a different tokenizer
        return CanaryDivergence(None, str(error))
    return CanaryDivergence(pool(reports))
