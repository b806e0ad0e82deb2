"""Teacher-forced scores of one text, in the same shape from every engine.

A backend's ``score(texts)`` returns one :class:`TokenScores` per text; :func:`compare_scores` checks
that both sides scored the very same token ids before handing the numbers to
:func:`divergence.compare_logprobs`, so a tokenizer mismatch is reported as such instead of showing up
as a huge "divergence".
"""

from __future__ import annotations

from dataclasses import dataclass

from .divergence import DivergenceReport, compare_logprobs
from .records import QtestsError

TOP_K = 5  # alternatives kept per position: enough for top-1 agreement and a useful KL lower bound


@dataclass(frozen=True)
class TokenScores:
    """Scores of every token after the first (the first has no context to be predicted from).

    ``logprobs[i]`` is the log-probability of ``token_ids[i]`` given all tokens before it;
    ``topk[i]`` maps the ``TOP_K`` most likely token ids at that position to their log-probabilities.
    """

    token_ids: list[int]
    logprobs: list[float]
    topk: list[dict[int, float]]


def compare_scores(reference: TokenScores, variant: TokenScores) -> DivergenceReport:
    """Divergence of ``variant`` from ``reference`` on one text both sides scored token by token."""
    if list(reference.token_ids) != list(variant.token_ids):
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(reference.token_ids, variant.token_ids)) if a != b),
            min(len(reference.token_ids), len(variant.token_ids)),
        )
        raise QtestsError(
            f"the two sides tokenized the text differently (first difference at scored token {mismatch}); "
            "score with the same tokenizer on both sides"
        )
    return compare_logprobs(reference.logprobs, variant.logprobs, reference.topk, variant.topk)
