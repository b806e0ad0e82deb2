"""xdist coordination: GPU slices per worker, roles, and runs published by workers for the controller."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pytest_qtests.distributed import (
    available_devices, check_gpu_budget, gpu_slice, parse_visible_devices, scope_of, worker_index,
)
from pytest_qtests.store.cache import GenerationCache, request_key
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, QtestsError, SamplingParams, VariantSpec
from pytest_qtests.store.run_store import RunStore
from pytest_qtests.evaluate.evaluator import CanaryResult, TaskRun


def test_worker_index_reads_the_xdist_number():
    assert worker_index("gw0") == 0 and worker_index("gw12") == 12
    with pytest.raises(QtestsError, match="not gwN"):
        worker_index("master")


def test_each_worker_gets_its_own_consecutive_block():
    devices = [str(i) for i in range(8)]
    assert gpu_slice("gw0", 2, devices) == ["0", "1"]
    assert gpu_slice("gw1", 2, devices) == ["2", "3"]
    assert gpu_slice("gw3", 2, devices) == ["6", "7"]
    slices = [gpu_slice(f"gw{k}", 4, devices) for k in range(2)]
    assert slices == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]


def test_slices_come_from_the_devices_the_controller_was_given():
    devices = parse_visible_devices(" 4,6 ,GPU-ab12,7")
    assert devices == ["4", "6", "GPU-ab12", "7"]
    assert gpu_slice("gw1", 2, devices) == ["GPU-ab12", "7"]
    assert available_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert available_devices({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_too_few_gpus_is_one_line_naming_the_fix():
    with pytest.raises(QtestsError) as error:
        check_gpu_budget(3, 2, ["0", "1", "2", "3"])
    message = str(error.value)
    assert "needs 6 GPUs but 4 are visible (0,1,2,3)" in message and "lower -n or --gpus-per-worker" in message
    assert "\n" not in message
    with pytest.raises(QtestsError, match="needs 4 GPUs"):
        gpu_slice("gw1", 2, ["0", "1", "2"])
    with pytest.raises(QtestsError, match="positive"):
        check_gpu_budget(1, 0, ["0"])
    check_gpu_budget(2, 2, ["0", "1", "2", "3"])  # exactly enough


def test_tests_of_one_variant_share_a_scheduling_scope():
    scopes = {"int4-a-zoo": "int4-a", "int4-a-keep-router": "int4-a", "bf16-zoo": "bf16"}
    assert scope_of("qtests/test_gate.py::test_accuracy[int4-a-zoo]", scopes) == "int4-a"
    assert scope_of("qtests/test_gate.py::test_policy[int4-a-keep-router]", scopes) == "int4-a"
    assert scope_of("qtests/test_gate.py::test_length[bf16-zoo]@bf16", scopes) == "bf16"  # xdist's group suffix
    # anything else is its own unit, as under xdist's plain load scheduling
    assert scope_of("tests/test_other.py::test_x[3]", scopes) == "tests/test_other.py::test_x[3]"
    assert scope_of("tests/test_other.py::test_y", scopes) == "tests/test_other.py::test_y"


# -- runs published by workers ------------------------------------------------------------------

SAMPLING = SamplingParams(max_tokens=16)
ENGINE = "fake-engine 1.0"


def _run(cache_dir: Path, label: str, with_error: bool = False) -> TaskRun:
    """A run as a worker has it after generating through the cache."""
    variant = VariantSpec(label, f"/models/{label}")
    requests = [GenerationRequest(str(i), 0, f"prompt {i}", SAMPLING) for i in range(3)]
    records = [GenerationRecord(str(i), 0, f"answer {i} of {label}", 5, 4, "stop") for i in range(3)]
    if with_error:
        records[1] = GenerationRecord("1", 0, "", 5, 0, "error", error="engine finish_reason='abort'")
    keys = [request_key(f"hash-{label}", ENGINE, r) for r in requests]
    with GenerationCache.in_directory(cache_dir) as cache:
        cache.put_many(zip(keys, records))
    outcomes = [ItemOutcome(r.item_id, 0, r.finish_reason == "stop", False, r.output_tokens, 0, True) for r in records]
    fingerprint = Fingerprint.for_run(model={"hash": f"hash-{label}"}, task="zoo", dataset_hash="d", prompt_template_hash="t",
                                      sampling=SAMPLING, thinking=True, repeats=1, engine="fake", engine_version=ENGINE,
                                      extra={"device": "cuda", "cuda_visible_devices": "2,3"})
    canary = CanaryResult(2, 0, 0, 1.0, True, [], 3)
    return TaskRun(variant, "zoo", records, outcomes, fingerprint, canary, 1.5, record_keys=keys)


def test_a_published_run_reads_back_equal_with_records_from_the_cache(tmp_path):
    runs = [_run(tmp_path, "bf16"), _run(tmp_path, "int4", with_error=True)]
    store = RunStore(tmp_path)
    store.publish("session-1", "gw0", runs)
    store.publish("session-1", "gw1", [_run(tmp_path, "bf16")])  # the reference, evaluated by both workers
    store.publish("session-2", "gw0", [_run(tmp_path, "bf16")])
    variants = [VariantSpec("int4", "/models/int4"), VariantSpec("bf16", "/models/bf16")]
    loaded = store.load("session-1", variants, ["zoo"])
    assert [run.variant.label for run in loaded] == ["int4", "bf16"]  # the session's order
    by_label = {run.variant.label: run for run in loaded}
    for run in runs:
        back = by_label[run.variant.label]
        assert back.records == run.records and back.outcomes == run.outcomes
        assert back.fingerprint == run.fingerprint and back.canary == run.canary and back.wall_s == run.wall_s
    # records are referenced, not copied; only the error record (never cached) travels inline
    with sqlite3.connect(tmp_path / "generations.sqlite3") as connection:
        payload = connection.execute("SELECT payload FROM published_runs WHERE run_id='session-1' AND variant='int4'").fetchone()[0]
    assert "answer 0 of int4" not in payload and "abort" in payload
    assert len(store.load("session-2", variants, ["zoo"])) == 1
    assert store.load("session-3", variants, ["zoo"]) == []
    store.close()


def test_a_run_without_cache_keys_cannot_be_published(tmp_path):
    run = _run(tmp_path, "bf16")
    run.record_keys = []
    store = RunStore(tmp_path)
    with pytest.raises(QtestsError, match="no cache keys"):
        store.publish("s", "gw0", [run])
    store.close()


def test_records_missing_from_the_cache_are_a_user_error(tmp_path):
    store = RunStore(tmp_path)
    store.publish("s", "gw0", [_run(tmp_path, "bf16")])
    with sqlite3.connect(tmp_path / "generations.sqlite3") as connection:
        connection.execute("DELETE FROM generations")
    with pytest.raises(QtestsError, match="lost records of bf16"):
        store.load("s", [VariantSpec("bf16", "/models/bf16")], ["zoo"])
    store.close()
