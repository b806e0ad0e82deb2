"""Generation cache: round trip, resume, kill -9 mid-run, and several processes writing at once."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_qtests.engines.base import EngineCapabilities
from pytest_qtests.store.cache import GenerationCache, cached_generate, request_key
from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, SamplingParams

_spec = importlib.util.spec_from_file_location("cache_worker", Path(__file__).parents[1] / "cache_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
ENGINE = "fake-engine 1.0"


def keyed(requests):
    return {request_key(worker.MODEL_HASH, ENGINE, r): worker.expected_record(r) for r in requests}


def rows(db: Path) -> dict[str, dict]:
    """Every row of a cache file, read with plain sqlite3 (not through the code under test)."""
    with sqlite3.connect(db) as connection:
        return {key: json.loads(text) for key, text in connection.execute("SELECT key, record FROM generations")}


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def run_worker(db: Path, first: int, count: int, *extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "cache_worker.py"), str(db), str(first), str(count), *extra],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PLUGINS)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class FailingBackend(worker.DeterministicBackend):
    """Dies like an engine crash on its ``fail_on_call``-th generate call."""

    def __init__(self, fail_on_call: int):
        super().__init__()
        self.fail_on_call = fail_on_call

    def generate(self, requests, progress=None):
        if self.calls + 1 == self.fail_on_call:
            raise RuntimeError("engine died")
        return super().generate(requests, progress)


class ErroringBackend(worker.DeterministicBackend):
    """Reports a per-request engine error for odd items, as backends do for a failed request."""

    def generate(self, requests, progress=None):
        records = super().generate(requests, progress)
        for record in records:
            if int(record.item_id) % 2:
                record.finish_reason, record.text, record.error = "error", "", "timeout"
        return records


# --- keys -----------------------------------------------------------------------------------------


def test_request_key_depends_on_everything_that_changes_the_sample():
    request = worker.make_requests(0, 1)[0]
    base = request_key("m" * 64, ENGINE, request)
    variants = [
        request_key("n" * 64, ENGINE, request),
        request_key("m" * 64, "fake-engine 1.1", request),
        request_key("m" * 64, ENGINE, GenerationRequest("0", 0, request.prompt + " ", request.sampling)),
        request_key("m" * 64, ENGINE, GenerationRequest("0", 1, request.prompt, request.sampling)),
        request_key("m" * 64, ENGINE, GenerationRequest("0", 0, request.prompt, SamplingParams(temperature=0.7, top_p=0.95, max_tokens=64, seed=3))),
        request_key("m" * 64, ENGINE, GenerationRequest("0", 0, request.prompt, SamplingParams(temperature=0.6, top_p=0.95, max_tokens=65, seed=3))),
        request_key("m" * 64, ENGINE, GenerationRequest("0", 0, request.prompt, SamplingParams(temperature=0.6, top_p=0.95, max_tokens=64, seed=4))),
        request_key("m" * 64, ENGINE, GenerationRequest("0", 0, request.prompt, request.sampling, continuation="<think>")),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert request_key("m" * 64, ENGINE, GenerationRequest("other item", 0, request.prompt, request.sampling)) == base


def test_request_key_is_the_same_in_another_process():
    request = worker.make_requests(5, 1)[0]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cache_worker as w; from pytest_qtests.store.cache import request_key; "
        f"print(request_key(w.MODEL_HASH, {ENGINE!r}, w.make_requests(5, 1)[0]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parents[1])], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(PLUGINS), "PYTHONHASHSEED": "987"},
    )
    assert result.stdout.strip() == request_key(worker.MODEL_HASH, ENGINE, request)


# --- store ----------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    expected = keyed(worker.make_requests(0, 20))
    with GenerationCache.in_directory(tmp_path / "cache") as cache:
        assert cache.put_many(expected) == 40
        assert len(cache) == 40
        missing = "f" * 64
        assert cache.get_many([*expected, missing]) == expected
    with GenerationCache(tmp_path / "cache" / "generations.sqlite3") as reopened:
        assert reopened.get_many(expected) == expected
    with sqlite3.connect(tmp_path / "cache" / "generations.sqlite3") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_more_keys_than_one_query_holds(tmp_path):
    expected = keyed(worker.make_requests(0, 700))
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        cache.put_many(expected)
        assert cache.get_many(list(expected)) == expected


def test_error_records_are_never_stored_and_first_record_wins(tmp_path):
    requests = worker.make_requests(0, 2)
    first, second = (request_key(worker.MODEL_HASH, ENGINE, r) for r in requests[:2])
    good = worker.expected_record(requests[0])
    failed = GenerationRecord("0", 1, "", 5, 0, "error", error="engine timeout")
    other = GenerationRecord("0", 0, "different text", 5, 2, "stop")
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        assert cache.put_many([(first, good), (second, failed)]) == 1
        assert cache.put_many([(first, other)]) == 0
        assert cache.get_many([first, second]) == {first: good}


def test_a_batch_is_all_or_nothing(tmp_path):
    record = worker.expected_record(worker.make_requests(0, 1)[0])
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        with pytest.raises(sqlite3.IntegrityError):
            cache.put_many([("k1", record), ("k2", record), (None, record)])  # third row violates NOT NULL
        assert len(cache) == 0
        assert cache.put_many([("k1", record)]) == 1  # the connection is usable after the rollback


def test_a_file_that_is_not_a_cache_is_a_user_error(tmp_path):
    path = tmp_path / "generations.sqlite3"
    path.write_bytes(b"this is not an sqlite database, just some bytes" * 10)
    with pytest.raises(QtestsError, match=r"generation cache .* cannot be used \(file is not a database\): delete it, pass another --cache-dir, or run with --no-cache"):
        GenerationCache(path)


def test_an_unwritable_cache_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QtestsError, match="cannot create the generation cache in .*: pass a writable --cache-dir or run with --no-cache"):
        GenerationCache.in_directory(blocker / "cache")


def test_an_unreadable_row_is_a_user_error(tmp_path):
    db = tmp_path / "c.sqlite3"
    GenerationCache(db).close()
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO generations VALUES ('k', '{\"item_id\": ', 0)")
    with GenerationCache(db) as cache, pytest.raises(QtestsError, match="holds an unreadable record .*: delete the cache file or run with --no-cache"):
        cache.get_many(["k"])


# --- cached_generate ------------------------------------------------------------------------------


def test_rerun_generates_nothing_and_returns_the_same_records(tmp_path):
    requests = worker.make_requests(0, 10)
    first_backend, second_backend = worker.DeterministicBackend(), worker.DeterministicBackend()
    ticks: list[int] = []
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        first = cached_generate(cache, first_backend, requests, worker.MODEL_HASH, ticks.append, chunk_size=6)
        assert (first_backend.calls, first_backend.generated) == (4, 20)
        assert sum(ticks) == 20
        ticks.clear()
        second = cached_generate(cache, second_backend, requests, worker.MODEL_HASH, ticks.append)
    assert second_backend.calls == 0
    assert sum(ticks) == 20
    assert first == second == [worker.expected_record(r) for r in requests]


def test_another_model_does_not_reuse_records(tmp_path):
    requests = worker.make_requests(0, 3)
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        cached_generate(cache, worker.DeterministicBackend(), requests, worker.MODEL_HASH)
        backend = worker.DeterministicBackend()
        cached_generate(cache, backend, requests, "d" * 64)
    assert backend.generated == 6


def test_identical_prompts_are_generated_once_and_labelled_per_item(tmp_path):
    sampling = worker.SAMPLING
    requests = [GenerationRequest("a", 0, "same prompt", sampling), GenerationRequest("b", 0, "same prompt", sampling)]
    backend, ticks = worker.DeterministicBackend(), []
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        records = cached_generate(cache, backend, requests, worker.MODEL_HASH, ticks.append)
    assert backend.generated == 1 and sum(ticks) == 2
    assert [r.item_id for r in records] == ["a", "b"]
    assert records[0].text == records[1].text


def test_errors_are_returned_but_retried_next_run(tmp_path):
    requests = worker.make_requests(0, 4)
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        records = cached_generate(cache, ErroringBackend(), requests, worker.MODEL_HASH)
        assert [r.finish_reason == "error" for r in records] == [False, False, True, True, False, False, True, True]
        assert len(cache) == 4
        retry = worker.DeterministicBackend()
        records = cached_generate(cache, retry, requests, worker.MODEL_HASH)
    assert retry.generated == 4
    assert records == [worker.expected_record(r) for r in requests]


def test_engine_dying_midway_keeps_finished_chunks_and_rerun_resumes(tmp_path):
    requests = worker.make_requests(0, 10)
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        with pytest.raises(RuntimeError, match="engine died"):
            cached_generate(cache, FailingBackend(fail_on_call=3), requests, worker.MODEL_HASH, chunk_size=4)
        assert len(cache) == 8  # two finished chunks kept
        resumed = worker.DeterministicBackend()
        records = cached_generate(cache, resumed, requests, worker.MODEL_HASH, chunk_size=4)
    assert resumed.generated == 12
    assert records == [worker.expected_record(r) for r in requests]


def test_without_cache_everything_is_generated(tmp_path):
    requests = worker.make_requests(0, 3)
    backend = worker.DeterministicBackend()
    assert cached_generate(None, backend, requests, worker.MODEL_HASH) == [worker.expected_record(r) for r in requests]
    assert backend.calls == 1 and backend.generated == 6


def test_records_out_of_order_are_refused_and_not_stored(tmp_path):
    class Shuffling(worker.DeterministicBackend):
        def generate(self, requests, progress=None):
            return super().generate(requests, progress)[::-1]

    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        with pytest.raises(RuntimeError, match="backend fake returned record 1#1 for request 0#0: records must be in request order"):
            cached_generate(cache, Shuffling(), worker.make_requests(0, 2), worker.MODEL_HASH)
        assert len(cache) == 0


def test_chunk_size_must_be_positive(tmp_path):
    with GenerationCache(tmp_path / "c.sqlite3") as cache, pytest.raises(QtestsError, match="at least 1"):
        cached_generate(cache, worker.DeterministicBackend(), worker.make_requests(0, 1), worker.MODEL_HASH, chunk_size=0)


# --- fault tests: real processes --------------------------------------------------------------------


def count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize(
    ("items", "chunk", "delay", "kill_at"),
    [(30, 2, "0.05", 6), (1000, 1, "0", 40)],
    ids=["slow-engine", "busy-writer"],
)
def test_kill_9_midway_then_rerun_equals_an_uninterrupted_run(tmp_path, items, chunk, delay, kill_at):
    """SIGKILL lands while the engine works (slow-engine) or amid back-to-back commits (busy-writer)."""
    db = tmp_path / "killed.sqlite3"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[1] / "cache_worker.py"), str(db), "0", str(items), "--chunk", str(chunk), "--delay", delay],
        env={**os.environ, "PYTHONPATH": str(PLUGINS)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while count_rows(db) < kill_at and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the worker finished before it could be killed"

    assert integrity(db) == "ok"
    kept = rows(db)
    expected = {key: record.to_dict() for key, record in keyed(worker.make_requests(0, items)).items()}
    assert kill_at <= len(kept) < len(expected)
    assert all(expected[key] == record for key, record in kept.items())  # every surviving row is whole

    rerun = run_worker(db, 0, items, "--chunk", str(chunk))
    assert rerun["generated"] == len(expected) - len(kept)
    uninterrupted = run_worker(tmp_path / "clean.sqlite3", 0, items, "--chunk", str(chunk))
    assert uninterrupted["generated"] == len(expected)
    assert rerun["records"] == uninterrupted["records"]
    assert rows(db) == rows(tmp_path / "clean.sqlite3") == expected
    assert integrity(db) == "ok"


def test_four_processes_writing_at_once(tmp_path):
    """Overlapping item ranges, small chunks, started together: every row present once and whole."""
    db, go = tmp_path / "shared.sqlite3", tmp_path / "go"
    ranges = [(k * 40, 80) for k in range(4)]  # each overlaps its neighbours by 40 items
    processes = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).parents[1] / "cache_worker.py"), str(db), str(first), str(count), "--chunk", "3", "--go", str(go)],
            env={**os.environ, "PYTHONPATH": str(PLUGINS)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for first, count in ranges
    ]
    time.sleep(0.5)  # let every worker open the cache (concurrent creation is part of the test)
    go.write_text("")
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out))

    all_requests = worker.make_requests(0, 40 * 3 + 80)
    expected = {key: record.to_dict() for key, record in keyed(all_requests).items()}
    assert integrity(db) == "ok"
    assert rows(db) == expected
    for (first, count), result in zip(ranges, results):
        assert result["records"] == [worker.expected_record(r).to_dict() for r in worker.make_requests(first, count)]


# --- rendered prompts: a fully cached re-run loads no tokenizer ------------------------------------

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"


class TokenizingBackend(worker.DeterministicBackend):
    """Fake engine with the zoo reference's real tokenizer, loaded lazily as the vLLM backend loads its own."""

    loads = 0
    capabilities = EngineCapabilities(renders_prompts=True)

    def __init__(self):
        super().__init__()
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            TokenizingBackend.loads += 1
            self._tokenizer = AutoTokenizer.from_pretrained(ZOO / "tiny-qwen3next")
        return self._tokenizer

    def device_info(self):
        return {"device": "cpu"}


def test_a_cached_rerun_renders_from_the_cache_and_loads_no_tokenizer(tmp_path, monkeypatch, register_backend):
    from pytest_qtests.evaluate.evaluator import Evaluator
    from pytest_qtests.settings import RunConfig
    from pytest_qtests.records import VariantSpec

    register_backend("tokenizing", lambda config, variant: TokenizingBackend())
    monkeypatch.setattr(TokenizingBackend, "loads", 0)
    reference = VariantSpec("bf16", str(ZOO / "tiny-qwen3next"))
    task = f"zoo={ZOO / 'task' / 'test.jsonl'}"

    def evaluate(thinking: bool):
        config = RunConfig(reference=reference, models=[], tasks=[task], backend="tokenizing", limit=5, canary=0,
                           thinking=thinking, sampling=SamplingParams(max_tokens=32), cache_dir=tmp_path)
        evaluator = Evaluator(config)
        try:
            return evaluator.run(reference, task)
        finally:
            evaluator.close()

    first = evaluate(thinking=True)
    assert TokenizingBackend.loads == 1
    again = evaluate(thinking=True)
    assert TokenizingBackend.loads == 1  # prompts and the template hash came from the cache
    assert again.records == first.records and again.fingerprint == first.fingerprint
    assert again.record_keys == first.record_keys

    off = evaluate(thinking=False)  # another rendering: the tokenizer is needed again
    assert TokenizingBackend.loads == 2
    assert off.record_keys != first.record_keys


# --- teacher-forced scores: the canary of a fully cached re-run loads no model ---------------------


class ScoringBackend(worker.DeterministicBackend):
    """Scores a text from its characters (a stand-in for a model), counting the texts it was asked for."""

    def __init__(self):
        super().__init__()
        self.scored: list[str] = []

    def score(self, texts):
        from pytest_qtests.engines.teacher_forcing import TokenScores

        self.scored += texts
        return [TokenScores([ord(c) for c in text[1:]], [-len(text) / 7.0] * (len(text) - 1),
                            [{ord(c): -0.1, 7: -2.5} for c in text[1:]]) for text in texts]


def test_scores_are_cached_per_model_and_read_back_exactly(tmp_path):
    from pytest_qtests.store.cache import cached_score

    backend = ScoringBackend()
    with GenerationCache(tmp_path / "c.sqlite3") as cache:
        first = cached_score(cache, backend, ["abc", "hello", "abc"], worker.MODEL_HASH)
        assert backend.scored == ["abc", "hello"]  # a repeated text is scored once
        again = cached_score(cache, backend, ["hello", "abc", "new"], worker.MODEL_HASH)
        assert backend.scored == ["abc", "hello", "new"]  # only the text the cache lacked
        assert again[:2] == [first[1], first[0]]  # token ids, logprobs and top-k (int keys) round-trip exactly
        cached_score(cache, backend, ["abc"], "another-model")
        assert backend.scored[-1] == "abc"  # another model's scores are its own
    assert cached_score(None, backend, ["abc"], worker.MODEL_HASH) == [first[0]]  # --no-cache scores everything
