"""Records read back from disk, and how a model source is told apart: hub id or local path."""

from __future__ import annotations

import json

import pytest

from pytest_qtests.records import GenerationRecord, ItemOutcome, SamplingParams
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.variants import is_hub_id

RECORDS = [
    SamplingParams(temperature=0.6, top_p=0.95, max_tokens=512, seed=3),
    GenerationRecord("q1", 2, "<think>x</think> 42", 30, 12, "stop", thinking_tokens=4, token_ids=[1, 2, 3]),
    ItemOutcome("q1", 2, True, False, 12, 4, True, extracted="42", degenerate_reasons=["loop"]),
    Fingerprint({"kind": "hub", "id": "org/m", "hash": "a" * 64}, "gsm8k", "d" * 64, "p" * 64,
                {"temperature": 0.0}, 256, False, 1, 0, "transformers", "4.57"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_records_round_trip_through_json(record):
    assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_fields_written_by_a_newer_qtests_are_dropped_not_refused(record):
    assert type(record).from_dict({**record.to_dict(), "added_in_a_later_version": [1, 2]}) == record


def test_a_missing_field_is_still_an_error():
    data = RECORDS[2].to_dict()
    del data["correct"]
    with pytest.raises(TypeError, match="correct"):
        ItemOutcome.from_dict(data)


@pytest.mark.parametrize("source", ["Qwen/Qwen3-0.6B", "org/tiny", "my-org/model.v2_b"])
def test_hub_ids(source):
    assert is_hub_id(source)


@pytest.mark.parametrize("source", ["./out/int4", "/data/ckpt", "~/ckpt", "out/int4/model", "gpt2", "org/", "-org/m"])
def test_paths_and_malformed_ids_are_not_hub_ids(source):
    assert not is_hub_id(source)
