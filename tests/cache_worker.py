"""A process that fills a generation cache through ``cached_generate`` with a deterministic fake engine.

``test_cache.py`` runs it as a separate process to kill it with SIGKILL mid-run and to have several
processes write one cache at once, and imports it for the fake engine. The engine is a test double on
purpose: the cache is under test, and a fake whose output is a pure function of the request is what
lets a resumed run be compared exactly with an uninterrupted one.

Usage: python cache_worker.py DB FIRST COUNT [--chunk N] [--delay S] [--go FILE]
Prints one JSON line: {"generated": requests the engine was asked for, "records": [...]}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

from pytest_qtests.engines.base import EngineCapabilities
from pytest_qtests.store.cache import GenerationCache, cached_generate
from pytest_qtests.records import GenerationRecord, GenerationRequest, SamplingParams

MODEL_HASH = "c" * 64
SAMPLING = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=64, seed=3)
REPEATS = 2


def make_requests(first: int, count: int) -> list[GenerationRequest]:
    """Items ``first .. first+count-1``, ``REPEATS`` samples each."""
    return [
        GenerationRequest(item_id=str(i), sample_index=k, prompt=f"Question {i}: what is {i} + {2 * i}?", sampling=SAMPLING)
        for i in range(first, first + count)
        for k in range(REPEATS)
    ]


def expected_record(request: GenerationRequest) -> GenerationRecord:
    """What the fake engine answers: a pure function of prompt and per-sample seed."""
    digest = hashlib.sha256(f"{request.prompt}|{request.seed}".encode()).hexdigest()
    text = f"<think>{digest[:16]}</think> Answer: {int(digest[:6], 16)} ü"
    return GenerationRecord(
        item_id=request.item_id,
        sample_index=request.sample_index,
        text=text,
        prompt_tokens=len(request.prompt),
        output_tokens=len(text),
        finish_reason="length" if digest[0] in "01" else "stop",
        thinking_tokens=16,
        thinking_closed=True,
        latency_s=0.0,
        token_ids=[ord(c) for c in text],
    )


class DeterministicBackend:
    """Fake engine: answers with :func:`expected_record`, optionally slowly, counting what it generated."""

    name = "fake"
    capabilities = EngineCapabilities()  # generation only: prompts go in as they are
    tokenizer = None

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls = 0
        self.generated = 0

    def engine_version(self) -> str:
        return "fake-engine 1.0"

    def generate(self, requests: Sequence[GenerationRequest], progress=None) -> list[GenerationRecord]:
        time.sleep(self.delay_s)
        self.calls += 1
        self.generated += len(requests)
        if progress:
            progress(len(requests))
        return [expected_record(request) for request in requests]

    def device_info(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--go", type=Path, help="wait until this file exists, so several workers start together")
    args = parser.parse_args()
    requests = make_requests(args.first, args.count)
    backend = DeterministicBackend(args.delay)
    with GenerationCache(args.db) as cache:
        while args.go and not args.go.exists():
            time.sleep(0.005)
        records = cached_generate(cache, backend, requests, MODEL_HASH, chunk_size=args.chunk)
    print(json.dumps({"generated": backend.generated, "records": [r.to_dict() for r in records]}))


if __name__ == "__main__":
    main()
