"""``--stop-early``'s looks: the reference on demand (what is generated first, how it grows) and the checks
a FAIL left unjudged."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_qtests.evaluate.canary_scoring import canary_requests
from pytest_qtests.evaluate.looks import SequentialRun, reference_extension, reference_head
from pytest_qtests.gate.sequential import FUTILITY_FROM, SequentialCheck, SequentialGate, look_ends, seeded_order
from pytest_qtests.records import GenerationRequest, SamplingParams

SETTINGS = settings(max_examples=80, deadline=None)


def _requests(n_items: int, repeats: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest(f"q{i:04d}", sample, f"prompt {i}", SamplingParams(max_tokens=8))
            for i in range(n_items) for sample in range(repeats)]


@SETTINGS
@given(st.integers(2, 600), st.integers(1, 3), st.integers(0, 40), st.integers(0, 10))
def test_the_head_is_the_first_looks_a_variant_may_stop_at_and_the_canary(n_items, repeats, canary, seed):
    requests = _requests(n_items, repeats)
    head = reference_head(requests, canary, seed)
    order = seeded_order([f"q{i:04d}" for i in range(n_items)], seed)
    first = next(end for end in look_ends(n_items) if end >= FUTILITY_FROM * n_items)
    items = {request.item_id for request in head}
    assert set(order[:first]) <= items  # every item of the looks before the first futility look
    assert {request.item_id for request in canary_requests(requests, canary)} <= items  # the canary pairs with it
    assert head == [request for request in requests if request.item_id in items]  # whole items, request order


def test_the_head_of_the_zoo_is_a_fifth_of_its_items_and_the_canary():
    requests = _requests(320)
    head = reference_head(requests, 16, 0)
    canary = {request.item_id for request in canary_requests(requests, 16)}
    first_looks = set(seeded_order([r.item_id for r in requests], 0)[:64])
    assert {r.item_id for r in head} == first_looks | canary and 64 <= len(head) <= 80


@SETTINGS
@given(st.integers(10, 500), st.integers(0, 10), st.data())
def test_an_extension_covers_what_is_needed_and_at_least_doubles_the_prefix(n_items, seed, data):
    items = [f"q{i:04d}" for i in range(n_items)]
    order = seeded_order(items, seed)
    prefix = data.draw(st.integers(1, n_items - 1))
    have = set(order[:prefix])
    needed = data.draw(st.lists(st.sampled_from(order), min_size=1, max_size=20))
    new = reference_extension(items, seed, have, needed)
    grown = have | set(new)
    assert set(needed) <= grown and not have & set(new)
    covered = next((i for i, item in enumerate(order) if item not in grown), n_items)
    assert covered >= min(n_items, 2 * prefix)  # doubling: at most log2(items / head) engine swaps
    assert new == [item for item in order if item in set(new)]  # in the seeded order


def _failed_run(n_items: int, items_seen: int) -> SequentialRun:
    """Accuracy 100 points down, truncation unchanged, seen look by look up to ``items_seen`` items."""
    checks = [SequentialCheck("accuracy", "lower", -0.02), SequentialCheck("truncation", "higher", 0.05)]
    gate = SequentialGate(checks, 0.05, items_planned=n_items)
    gate.observe([np.full(items_seen, -1.0), np.zeros(items_seen)])
    return SequentialRun(n_items, items_seen, 1, 1, gate, "rule")


def test_a_check_left_open_by_an_early_fail_is_not_judged_but_one_the_end_reached_is():
    early = _failed_run(320, 64)
    assert early.gate.failed == ["accuracy"] and early.not_judged("accuracy") is None
    assert early.not_judged("truncation") == ("truncation not judged: --stop-early stopped after 64 of 320 items at "
                                              "the variant's first FAIL (accuracy); run with --no-stop-early to "
                                              "judge every check")
    assert _failed_run(64, 64).not_judged("truncation") is None  # the end: the fixed-n test judges it
