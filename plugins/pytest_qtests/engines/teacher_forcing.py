"""Teacher-forced scores of one text, in the same shape from every engine.

A backend's ``score(texts)`` returns one :class:`TokenScores` per text; :func:`compare_scores` checks
that both sides scored the very same token ids before handing the numbers to
:func:`divergence.compare_logprobs`, so a tokenizer mismatch is reported as such instead of showing up
as a huge "divergence".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pytest_qtests.evaluate.divergence import DivergenceReport, compare_logprobs
from pytest_qtests.records import QtestsError

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


def scores_from_logits(token_ids: Sequence[int], logits: Any, top_k: int = TOP_K) -> TokenScores:
    """:class:`TokenScores` of one text from a causal LM's logits over it (a ``[len(token_ids), vocab]``
    torch tensor, as one forward pass of transformers gives): position i's logits predict token i+1."""
    import torch

    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.as_tensor(list(token_ids[1:]), dtype=torch.long)
    top = torch.topk(logprobs, top_k, dim=-1)
    return TokenScores(
        token_ids=targets.tolist(),
        logprobs=logprobs.gather(1, targets[:, None])[:, 0].tolist(),
        topk=[dict(zip(ids.tolist(), values.tolist())) for ids, values in zip(top.indices, top.values)],
    )


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
