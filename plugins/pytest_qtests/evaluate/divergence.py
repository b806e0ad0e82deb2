"""Teacher-forced divergence between two models (or two engines) scoring the same tokens.

Both sides score one fixed token sequence, so every position is comparable; no sampling noise enters.
Broken weights show here even where sampled text still looks fluent, and the first diverging position
localizes an engine or kernel bug (parity) to a step of the output.

Inputs per position are the log-probability of the scored token under each side and, optionally, the
top-k alternatives as ``{token_id: logprob}`` (the shape of vLLM's ``prompt_logprobs`` entries once
their Logprob objects are reduced to floats; drop vLLM's leading ``None`` for the first prompt token).

KL approximation: with only the top-k of each side known, the two distributions are compared on a
coarsened outcome space: each token present in *both* top-k lists is its own outcome and everything
else is merged into one "other" outcome (mass ``1 - sum`` on each side). Merging outcomes never
increases KL (data-processing inequality), so the value is a lower bound of the true KL(reference ||
variant); it is exact when both lists cover the whole vocabulary. When the lists barely overlap the
bound is loose, which is why ``topk_overlap`` and top-1 agreement are reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from pytest_qtests.records import QtestsError

TopK = Mapping[int, float]

DELTA_THRESHOLD_NATS = 1.0  # |Δ logprob| above 1 nat: the scored token's probability changed e-fold
PROBABILITY_FLOOR = 1e-12  # stands in for a zero probability on the variant side of the KL


@dataclass(frozen=True)
class DivergenceReport:
    """Per-text comparison; ``None`` fields need top-k lists that were not given."""

    positions: int
    mean_abs_logprob_delta: float
    max_abs_logprob_delta: float
    mean_kl: float | None  # nats, lower bound (see module docstring)
    top1_agreement: float | None
    topk_overlap: float | None  # mean share of the reference's listed mass on tokens both sides list
    first_divergence: int | None  # 0-based position in the scored tokens
    first_divergence_reason: str | None
    abs_delta: tuple[float, ...]
    kl: tuple[float, ...] | None


@dataclass(frozen=True)
class PooledDivergence:
    """Several texts pooled: means are over all positions, so long texts weigh more."""

    texts: int
    positions: int
    mean_abs_logprob_delta: float
    mean_kl: float | None
    top1_agreement: float | None
    texts_diverged: int
    first_divergences: tuple[int | None, ...]


def _as_logprobs(values: Sequence[float], side: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise QtestsError(f"{side} log-probs must be one number per scored token; got shape {array.shape}")
    return array


def _abs_delta(reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """|Δ| per position; equal values (both -inf included) give 0, any other non-finite value gives inf.

    A NaN log-prob is what broken weights produce; it must read as maximal divergence, not vanish
    from a mean.
    """
    with np.errstate(invalid="ignore"):
        delta = np.abs(reference - variant)
    delta[reference == variant] = 0.0
    delta[~np.isfinite(delta)] = math.inf
    return delta


def _top1(distribution: TopK) -> int:
    """Most likely listed token; ties go to the lower id so the result is reproducible."""
    return min(distribution, key=lambda token: (-distribution[token], token))


def topk_kl(reference: TopK, variant: TopK) -> tuple[float, float]:
    """(KL lower bound in nats, overlap) on the shared support plus one merged "other" outcome."""
    shared = sorted(set(reference) & set(variant))
    p = np.exp(np.array([reference[t] for t in shared], dtype=float))
    q = np.exp(np.array([variant[t] for t in shared], dtype=float))
    listed_p = float(np.exp(np.array(list(reference.values()), dtype=float)).sum())
    p = np.append(p, max(0.0, 1.0 - p.sum()))
    q = np.append(q, max(0.0, 1.0 - q.sum()))
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        return math.inf, 0.0
    support = p > 0
    terms = p[support] * (np.log(p[support]) - np.log(np.maximum(q[support], PROBABILITY_FLOOR)))
    overlap = float(p[:-1].sum() / listed_p) if listed_p > 0 else 0.0
    return max(0.0, float(terms.sum())), overlap


def compare_logprobs(
    reference_logprobs: Sequence[float],
    variant_logprobs: Sequence[float],
    reference_topk: Sequence[TopK] | None = None,
    variant_topk: Sequence[TopK] | None = None,
    delta_threshold: float = DELTA_THRESHOLD_NATS,
) -> DivergenceReport:
    """Compare two sides' log-probs of the same scored tokens, position by position.

    The first diverging position is the first where the top-1 tokens differ (when top-k lists are
    given) or where |Δ logprob| exceeds ``delta_threshold`` nats.
    """
    reference = _as_logprobs(reference_logprobs, "reference")
    variant = _as_logprobs(variant_logprobs, "variant")
    if reference.size != variant.size:
        raise QtestsError(
            f"reference scored {reference.size} tokens but variant {variant.size}; "
            "score the same token ids on both sides"
        )
    if (reference_topk is None) != (variant_topk is None):
        raise QtestsError("top-k log-probs were given for one side only; pass them for both or for neither")
    delta = _abs_delta(reference, variant)
    first = int(np.argmax(delta > delta_threshold)) if (delta > delta_threshold).any() else None
    first_reason = (
        f"|Δ logprob| {delta[first]:.2f} > {delta_threshold:.2f} nats "
        f"(reference {reference[first]:.3f}, variant {variant[first]:.3f})"
        if first is not None else None
    )
    kl = agreement = overlap = None
    if reference_topk is not None and variant_topk is not None:
        if not len(reference_topk) == len(variant_topk) == reference.size:
            raise QtestsError(
                f"top-k lists cover {len(reference_topk)} and {len(variant_topk)} positions for "
                f"{reference.size} scored tokens; give one dict per scored token on each side"
            )
        if any(not d for d in reference_topk) or any(not d for d in variant_topk):
            raise QtestsError("a top-k dict is empty; request at least 1 log-prob per position from the engine")
        pairs = [topk_kl(r, v) for r, v in zip(reference_topk, variant_topk)]
        kl = np.array([k for k, _ in pairs], dtype=float)
        overlap = float(np.mean([o for _, o in pairs])) if pairs else 1.0
        top1 = [(_top1(r), _top1(v)) for r, v in zip(reference_topk, variant_topk)]
        matches = np.array([a == b for a, b in top1], dtype=bool)
        agreement = float(matches.mean()) if matches.size else 1.0
        if not matches.all():
            disagree = int(np.argmin(matches))
            if first is None or disagree <= first:
                first = disagree
                first_reason = f"top-1 differs: reference token {top1[disagree][0]}, variant {top1[disagree][1]}"
    return DivergenceReport(
        positions=int(reference.size),
        mean_abs_logprob_delta=float(delta.mean()) if delta.size else 0.0,
        max_abs_logprob_delta=float(delta.max()) if delta.size else 0.0,
        mean_kl=(float(kl.mean()) if kl.size else 0.0) if kl is not None else None,
        top1_agreement=agreement,
        topk_overlap=overlap,
        first_divergence=first,
        first_divergence_reason=first_reason,
        abs_delta=tuple(float(x) for x in delta),
        kl=tuple(float(x) for x in kl) if kl is not None else None,
    )


def pool(reports: Sequence[DivergenceReport]) -> PooledDivergence:
    """Pool per-text reports of one variant (e.g. a canary set) into position-weighted means."""
    positions = sum(r.positions for r in reports)

    def weighted(values: list[tuple[float, int]]) -> float:
        return sum(v * n for v, n in values) / positions if positions else 0.0

    with_topk = [r for r in reports if r.mean_kl is not None]
    complete = bool(with_topk) and len(with_topk) == len(reports)
    return PooledDivergence(
        texts=len(reports),
        positions=positions,
        mean_abs_logprob_delta=weighted([(r.mean_abs_logprob_delta, r.positions) for r in reports]),
        mean_kl=weighted([(r.mean_kl, r.positions) for r in with_topk]) if complete else None,
        top1_agreement=weighted([(r.top1_agreement, r.positions) for r in with_topk]) if complete else None,
        texts_diverged=sum(r.first_divergence is not None for r in reports),
        first_divergences=tuple(r.first_divergence for r in reports),
    )
