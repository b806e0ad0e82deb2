"""Teacher-forced divergence math on generated distributions: zero for identical sides, planted
divergences found where planted, the KL bound never negative and never above the exact KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypothesis.extra.numpy import arrays
from scipy.special import log_softmax, rel_entr

from pytest_qtests.evaluate.divergence import compare_logprobs, pool, topk_kl
from pytest_qtests.records import QtestsError

# Every property runs with deadline=None: the test machine is shared, so timings say nothing.

VOCAB = 12

logits = arrays(np.float64, (VOCAB,), elements=st.floats(-8, 8, allow_nan=False))


def top_k(logprobs: np.ndarray, k: int, always: int | None = None) -> dict[int, float]:
    """The engine's view: the k most likely tokens (plus the scored token, as vLLM adds it)."""
    order = np.argsort(-logprobs, kind="stable")[:k]
    chosen = set(int(t) for t in order) | ({always} if always is not None else set())
    return {t: float(logprobs[t]) for t in chosen}


@st.composite
def scored_sequences(draw, min_len: int = 1):
    """Per-position full log-prob vectors for one side, and the scored token ids."""
    length = draw(st.integers(min_len, 24))
    rows = np.stack([log_softmax(draw(logits)) for _ in range(length)])
    tokens = draw(st.lists(st.integers(0, VOCAB - 1), min_size=length, max_size=length))
    return rows, tokens


def sides(rows: np.ndarray, tokens: list[int], k: int):
    scored = [float(rows[i, t]) for i, t in enumerate(tokens)]
    return scored, [top_k(rows[i], k, tokens[i]) for i in range(len(tokens))]


@given(scored_sequences(), st.integers(1, VOCAB))
@settings(deadline=None)
def test_identical_sides_have_zero_divergence_and_full_agreement(sequence, k):
    rows, tokens = sequence
    scored, topk = sides(rows, tokens, k)
    report = compare_logprobs(scored, scored, topk, topk)
    assert report.mean_abs_logprob_delta == 0.0 and report.max_abs_logprob_delta == 0.0
    assert report.mean_kl == pytest.approx(0.0, abs=1e-12)
    assert report.top1_agreement == 1.0
    assert report.topk_overlap == pytest.approx(1.0)
    assert report.first_divergence is None and report.first_divergence_reason is None


@given(scored_sequences(min_len=2), st.data(), st.floats(1.5, 20))
@settings(deadline=None)
def test_a_planted_logprob_shift_is_reported_at_its_position(sequence, data, shift):
    rows, tokens = sequence
    scored, _ = sides(rows, tokens, 1)
    k = data.draw(st.integers(0, len(scored) - 1))
    noise = data.draw(st.lists(st.floats(-0.5, 0.5), min_size=len(scored), max_size=len(scored)))
    variant = [s + e for s, e in zip(scored, noise)]  # ordinary quantization noise, below 1 nat
    variant[k] = scored[k] - shift
    report = compare_logprobs(scored, variant)
    assert report.first_divergence == k
    assert "|Δ logprob|" in report.first_divergence_reason
    assert report.max_abs_logprob_delta == pytest.approx(shift)
    assert report.mean_kl is None and report.top1_agreement is None


@given(scored_sequences(min_len=2), st.data(), st.integers(2, VOCAB))
@settings(deadline=None)
def test_a_planted_top1_swap_is_reported_at_its_position(sequence, data, k):
    rows, tokens = sequence
    position = data.draw(st.integers(0, len(tokens) - 1))
    order = np.argsort(-rows[position], kind="stable")
    first, second = int(order[0]), int(order[1])
    # The variant prefers the reference's runner-up by one nat at this position only.
    variant_rows = rows.copy()
    boost = np.zeros(VOCAB)
    boost[second] = rows[position, first] - rows[position, second] + 1.0
    variant_rows[position] = log_softmax(rows[position] + boost)
    reference_scored, reference_topk = sides(rows, tokens, k)
    variant_scored, variant_topk = sides(variant_rows, tokens, k)
    report = compare_logprobs(reference_scored, variant_scored, reference_topk, variant_topk)
    assert report.first_divergence == position
    assert report.first_divergence_reason.startswith("top-1 differs")
    assert report.top1_agreement == pytest.approx(1 - 1 / len(tokens))


@given(logits, logits, st.integers(1, VOCAB))
@settings(deadline=None)
def test_topk_kl_is_a_nonnegative_lower_bound_exact_on_the_full_vocabulary(a, b, k):
    p, q = log_softmax(a), log_softmax(b)
    exact = float(rel_entr(np.exp(p), np.exp(q)).sum())
    bound, overlap = topk_kl(top_k(p, k), top_k(q, k))
    assert bound >= 0.0
    assert bound <= exact + 1e-9
    assert 0.0 <= overlap <= 1.0 + 1e-9
    full, full_overlap = topk_kl(top_k(p, VOCAB), top_k(q, VOCAB))
    assert full == pytest.approx(exact, rel=1e-6, abs=1e-9)
    assert full_overlap == pytest.approx(1.0)


def test_nan_logprobs_from_broken_weights_count_as_maximal_divergence():
    report = compare_logprobs([-0.1, -0.2, -0.3], [-0.1, float("nan"), -0.3],
                              [{1: -0.1}, {2: -0.2}, {3: -0.3}], [{1: -0.1}, {2: float("nan")}, {3: -0.3}])
    assert report.first_divergence == 1
    assert math.isinf(report.mean_abs_logprob_delta) and math.isinf(report.mean_kl)
    both_impossible = compare_logprobs([float("-inf")], [float("-inf")])
    assert both_impossible.mean_abs_logprob_delta == 0.0


def test_pool_weighs_positions_and_lists_first_divergences():
    short = compare_logprobs([-1.0], [-3.0], [{0: -1.0, 1: -0.5}], [{0: -3.0, 1: -0.1}])
    long = compare_logprobs([-1.0] * 3, [-1.0] * 3, [{0: -0.5}] * 3, [{0: -0.5}] * 3)
    pooled = pool([short, long])
    assert (pooled.texts, pooled.positions, pooled.texts_diverged) == (2, 4, 1)
    assert pooled.mean_abs_logprob_delta == pytest.approx(2.0 / 4)
    assert pooled.top1_agreement == pytest.approx(1.0)
    assert pooled.first_divergences == (0, None)
    assert pool([compare_logprobs([-1.0], [-1.0])]).mean_kl is None


def test_mismatched_inputs_raise_a_one_line_error():
    with pytest.raises(QtestsError, match="score the same token ids"):
        compare_logprobs([-1.0, -2.0], [-1.0])
    with pytest.raises(QtestsError, match="for one side only"):
        compare_logprobs([-1.0], [-1.0], [{0: -1.0}], None)
    with pytest.raises(QtestsError, match="one dict per scored token"):
        compare_logprobs([-1.0], [-1.0], [{0: -1.0}], [{0: -1.0}, {1: -2.0}])
