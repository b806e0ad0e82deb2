"""``--extend-truncated`` on the real zoo reference with transformers (CPU, a few seconds): the truncated
samples are continued, not re-run, and greedy continuation gives what a fresh run at the larger cap gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_qtests.store.cache import GenerationCache
from pytest_qtests.settings import RunConfig
from pytest_qtests.records import SamplingParams, VariantSpec
from pytest_qtests.evaluate.evaluator import Evaluator

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
REFERENCE = VariantSpec("bf16", str(ZOO / "tiny-qwen3next"))
CAP = 20  # the reference needs ~23 tokens at 1 digit, ~33 at 2 and ~43 at 3: every item is cut, and at
# twice the cap the short ones finish while the 3-digit one is cut again


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> str:
    rows = [json.loads(line) for line in (ZOO / "task" / "test.jsonl").read_text().splitlines()]
    picked = [rows[i] for i in (0, 1, 40, 80)]  # 1, 1, 2 and 3 digits
    path = tmp_path_factory.mktemp("task") / "items.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in picked))
    return f"zoo={path}"


def evaluate(task: str, cache_dir: Path, max_tokens: int, extend: float | None):
    config = RunConfig(reference=REFERENCE, models=[], tasks=[task], sampling=SamplingParams(max_tokens=max_tokens),
                       canary=0, cache_dir=cache_dir, extend_truncated=extend, batch_size=8)
    evaluator = Evaluator(config)
    try:
        return evaluator.run(REFERENCE, task)
    finally:
        evaluator.close()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def extended(task, cache_dir):
    return evaluate(task, cache_dir, CAP, 2)


def test_truncated_samples_are_continued_cached_and_match_a_fresh_run_at_the_larger_cap(task, extended, cache_dir,
                                                                                         tmp_path):
    run = extended
    extension = run.extension
    cut = [r for r in run.records if r.finish_reason == "length"]
    assert len(cut) == 4 and extension.continued == len(cut) and extension.max_tokens == 2 * CAP
    assert extension.reused_tokens == CAP * len(cut)

    fresh = evaluate(task, tmp_path / "fresh", 2 * CAP, None)
    fresh_by_item = {r.item_id: r for r in fresh.records}
    first_by_item = {r.item_id: r for r in cut}
    fresh_tokens = 0
    for merged in extension.records:
        first = first_by_item[merged.item_id]
        assert merged.text.startswith(first.text) and merged.token_ids[:CAP] == first.token_ids
        assert merged.text == fresh_by_item[merged.item_id].text  # greedy: continuing == re-running
        assert merged.finish_reason == fresh_by_item[merged.item_id].finish_reason
        assert merged.thinking_tokens == fresh_by_item[merged.item_id].thinking_tokens
        fresh_tokens += fresh_by_item[merged.item_id].output_tokens
    # only the rest was decoded: fewer tokens than a fresh re-run of the same samples
    assert extension.extra_tokens == fresh_tokens - extension.reused_tokens < fresh_tokens
    by_item = {o.item_id: o for o in extension.outcomes}
    for outcome in fresh.outcomes:
        assert (by_item[outcome.item_id].correct, by_item[outcome.item_id].truncated) == (outcome.correct, outcome.truncated)
    assert 0 < extension.finished < extension.continued  # the short items finish, the 3-digit one is cut again
    assert 0 < extension.finished_correct <= extension.finished

    with GenerationCache.in_directory(cache_dir) as cache:
        assert len(cache) == len(run.records) + extension.continued  # continuations are cached too


def test_a_rerun_reads_the_continuations_from_the_cache(task, extended, cache_dir, monkeypatch):
    first = extended
    from pytest_qtests.engines.transformers_backend import TransformersBackend

    def refuse(self, requests, progress=None):
        raise AssertionError(f"generated {len(requests)} requests instead of reading the cache")

    monkeypatch.setattr(TransformersBackend, "generate", refuse)
    again = evaluate(task, cache_dir, CAP, 2)
    assert [r.text for r in again.extension.records] == [r.text for r in first.extension.records]
