"""Model identity and fingerprint comparison: what makes two runs comparable, and what refuses them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from pytest_qtests.store.fingerprint import (
    Fingerprint,
    check_compatible,
    content_hash,
    dataset_hash,
    diff_fingerprints,
    mismatch_field_names,
    model_identity,
    read_safetensors_header,
)
from pytest_qtests.records import QtestsError, SamplingParams, TaskItem, VariantSpec


def make_checkpoint(directory: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """A minimal two-shard checkpoint: config, tokenizer, quant config, index and real safetensors files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen3_next", "hidden_size": 128}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (directory / "quantization_config.json").write_text(json.dumps({"bits": 4, "group_size": 32}))
    rng = np.random.default_rng(seed)
    save_file({"a.weight": (rng.standard_normal((64, 64)) * scale).astype(np.float32)}, str(directory / "model-1.safetensors"))
    save_file({"b.weight": (rng.standard_normal((32, 64)) * scale).astype(np.float32)}, str(directory / "model-2.safetensors"))
    index = {"weight_map": {"a.weight": "model-1.safetensors", "b.weight": "model-2.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def local_hash(directory: Path) -> str:
    return model_identity(VariantSpec(label="m", source=str(directory)))["hash"]


def make_fingerprint(**changes) -> Fingerprint:
    settings = dict(
        model={"kind": "hub", "id": "org/model", "revision": "main", "commit": None, "hash": "0" * 64},
        task="gsm8k",
        dataset_hash="d" * 64,
        prompt_template_hash="p" * 64,
        sampling=SamplingParams(temperature=0.6, top_p=0.95, max_tokens=512, seed=7),
        thinking=True,
        repeats=1,
        engine="vllm",
        engine_version="vllm 0.32.0",
        extra={"device": "cpu"},
    )
    settings.update(changes)
    return Fingerprint.for_run(**settings)


# --- model identity -------------------------------------------------------------------------------


def test_local_identity_is_stable_and_independent_of_location(tmp_path):
    original = make_checkpoint(tmp_path / "a")
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(original, moved)
    identity = model_identity(VariantSpec(label="m", source=str(original)))
    assert identity["kind"] == "local"
    assert identity["path"] == str(original.resolve())
    assert "model-1.safetensors" in identity["files"] and "config.json" in identity["files"]
    assert local_hash(original) == local_hash(original) == local_hash(moved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: (d / "config.json").write_text(json.dumps({"model_type": "qwen3_next", "hidden_size": 256})),
        lambda d: (d / "quantization_config.json").write_text(json.dumps({"bits": 3, "group_size": 32})),
        lambda d: (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "other"})),
        lambda d: (d / "generation_config.json").write_text(json.dumps({"temperature": 0.7})),
        lambda d: save_file({"a.weight": np.zeros((64, 32), np.float32)}, str(d / "model-1.safetensors")),
        lambda d: (d / "model-2.safetensors").unlink(),
    ],
    ids=["config", "quant-config", "tokenizer", "generation-config", "tensor-shape", "shard-removed"],
)
def test_local_identity_changes_with_anything_that_changes_generation(tmp_path, edit):
    directory = make_checkpoint(tmp_path / "m")
    before = local_hash(directory)
    edit(directory)
    assert local_hash(directory) != before


def test_retrained_weights_with_identical_headers_get_another_identity(tmp_path):
    """Same names, shapes and offsets but other values: the sampled weight bytes must tell them apart."""
    first = make_checkpoint(tmp_path / "first", seed=0)
    second = make_checkpoint(tmp_path / "second", seed=1)
    assert read_safetensors_header(first / "model-1.safetensors") == read_safetensors_header(second / "model-1.safetensors")
    assert local_hash(first) != local_hash(second)


def test_identity_ignores_files_that_do_not_affect_generation(tmp_path):
    directory = make_checkpoint(tmp_path / "m")
    before = local_hash(directory)
    (directory / "README.md").write_text("model card")
    (directory / "training_log.txt").write_text("loss 0.1")
    assert local_hash(directory) == before


def test_local_identity_hash_is_the_same_in_another_process(tmp_path):
    directory = make_checkpoint(tmp_path / "m")
    code = (
        "import sys; from pytest_qtests.store.fingerprint import model_identity; from pytest_qtests.records import VariantSpec; "
        "print(model_identity(VariantSpec('m', sys.argv[1]))['hash'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(directory)],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(Path(__file__).parents[2] / "plugins"), "PYTHONHASHSEED": "123"},
    )
    assert result.stdout.strip() == local_hash(directory)


def test_checkpoint_without_config_is_refused(tmp_path):
    directory = make_checkpoint(tmp_path / "m")
    (directory / "config.json").unlink()
    with pytest.raises(QtestsError, match=r"no config\.json in .*: point --model at a Hugging Face checkpoint"):
        model_identity(VariantSpec("m", str(directory)))


@pytest.mark.parametrize(
    "content",
    [b"\x01\x02", (10**9).to_bytes(8, "little") + b"{}", (12).to_bytes(8, "little") + b"{not json!}", (2).to_bytes(8, "little") + b"[]"],
    ids=["too-short", "length-beyond-file", "not-json", "not-an-object"],
)
def test_corrupt_safetensors_header_names_the_file(tmp_path, content):
    directory = make_checkpoint(tmp_path / "m")
    (directory / "model-2.safetensors").write_bytes(content)
    with pytest.raises(QtestsError) as raised:
        model_identity(VariantSpec("m", str(directory)))
    message = str(raised.value)
    assert "corrupt safetensors header in" in message and "model-2.safetensors" in message
    assert "re-export or re-download" in message and "\n" not in message


def test_missing_local_path_is_refused_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(QtestsError, match="model path .* does not exist"):
        model_identity(VariantSpec("m", str(tmp_path / "nowhere" / "ckpt")))
    with pytest.raises(QtestsError, match="does not exist"):
        model_identity(VariantSpec("m", "./out/int4"))


def test_file_instead_of_directory_is_refused(tmp_path):
    directory = make_checkpoint(tmp_path / "m")
    with pytest.raises(QtestsError, match="is a file: pass the checkpoint directory"):
        model_identity(VariantSpec("m", str(directory / "model-1.safetensors")))


@pytest.fixture
def hub_cache(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache of the test's own, offline (huggingface_hub reads it at call time)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_identity_records_id_and_revision_offline(hub_cache):
    pinned = model_identity(VariantSpec("m", "Qwen/Qwen3-0.6B", revision="abc123"))
    assert pinned["kind"] == "hub" and pinned["id"] == "Qwen/Qwen3-0.6B" and pinned["revision"] == "abc123"
    assert pinned["commit"] is None  # nothing in this empty cache
    default = model_identity(VariantSpec("m", "Qwen/Qwen3-0.6B"))
    assert default["revision"] == "main"
    assert pinned["hash"] != default["hash"]
    assert model_identity(VariantSpec("m", "Qwen/Qwen3-0.6B", revision="abc123"))["hash"] == pinned["hash"]


def test_hub_identity_resolves_the_commit_the_local_cache_holds(hub_cache):
    """A moving ``main`` is pinned to the commit actually on disk (huggingface_hub's cache layout)."""
    commit = "1" * 40
    repo = hub_cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    identity = model_identity(VariantSpec("m", "org/tiny"))
    assert identity["commit"] == commit


# --- hashes ---------------------------------------------------------------------------------------


def test_dataset_hash_changes_with_any_item_content():
    items = [TaskItem("0", "1+1?", "2"), TaskItem("1", "2+2?", "4")]
    base = dataset_hash(items)
    assert dataset_hash(list(items)) == base
    assert dataset_hash([TaskItem("0", "1+1?", "3"), items[1]]) != base
    assert dataset_hash(items[::-1]) != base
    assert dataset_hash([TaskItem("0", "1+1?", "2", choices=("2", "3")), items[1]]) != base


def test_content_hash_ignores_key_order():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 1.5})


# --- comparing fingerprints -----------------------------------------------------------------------


def test_for_run_lists_each_setting_once():
    fingerprint = make_fingerprint()
    assert fingerprint.max_tokens == 512 and fingerprint.seed == 7
    assert "max_tokens" not in fingerprint.sampling and "seed" not in fingerprint.sampling
    assert fingerprint.sampling["temperature"] == 0.6


def test_round_trip_through_dict():
    fingerprint = make_fingerprint()
    assert Fingerprint.from_dict(json.loads(json.dumps(fingerprint.to_dict()))) == fingerprint


def test_identical_settings_with_another_model_and_device_are_compatible():
    baseline = make_fingerprint()
    run = make_fingerprint(
        model={"kind": "local", "path": "/x", "hash": "1" * 64}, extra={"device": "H100", "wall_s": 3.0}
    )
    assert diff_fingerprints(baseline, run) == []
    assert check_compatible(baseline, run, set()) == []


def test_diff_lists_every_differing_field_in_order():
    baseline = make_fingerprint()
    run = make_fingerprint(
        sampling=SamplingParams(temperature=1.0, top_p=0.95, max_tokens=256, seed=7), thinking=False
    )
    assert [str(d) for d in diff_fingerprints(baseline, run)] == [
        "sampling.temperature 0.6 != 1.0",
        "max_tokens 512 != 256",
        "thinking on != off",
    ]
    with_model = diff_fingerprints(baseline, make_fingerprint(model={"kind": "hub", "hash": "2" * 64}), ignore=())
    assert {d.field for d in with_model} >= {"model.hash", "model.id"}


def test_mismatch_is_refused_with_fields_and_fix():
    baseline = make_fingerprint()
    run = make_fingerprint(sampling=SamplingParams(temperature=0.6, top_p=0.95, max_tokens=256, seed=7), thinking=False)
    with pytest.raises(QtestsError) as raised:
        check_compatible(baseline, run, set(), baseline_name="bf16")
    assert str(raised.value) == (
        "fingerprint mismatch with baseline bf16: max_tokens 512 != 256, thinking on != off; "
        "rerun with matching settings or pass --allow-mismatch max_tokens,thinking"
    )


def test_allow_mismatch_overrides_only_the_named_fields():
    baseline = make_fingerprint()
    run = make_fingerprint(
        sampling=SamplingParams(temperature=1.0, top_p=0.9, max_tokens=256, seed=7), engine_version="vllm 0.33.0"
    )
    with pytest.raises(QtestsError, match="engine_version vllm 0.32.0 != vllm 0.33.0") as raised:
        check_compatible(baseline, run, {"max_tokens", "sampling"})
    assert "max_tokens" not in str(raised.value) and "sampling" not in str(raised.value)
    allowed = check_compatible(baseline, run, {"max_tokens", "sampling.temperature", "sampling.top_p", "engine_version"})
    assert [d.field for d in allowed] == ["sampling.temperature", "sampling.top_p", "max_tokens", "engine_version"]


def test_dataset_hash_mismatch_is_shown_shortened():
    run = make_fingerprint(dataset_hash="e" * 64)
    with pytest.raises(QtestsError, match=r"dataset_hash dddddddddddd != eeeeeeeeeeee;"):
        check_compatible(make_fingerprint(), run, set())


def test_unknown_allow_mismatch_field_is_refused():
    with pytest.raises(QtestsError, match=r"unknown --allow-mismatch field max_token: choose from .*max_tokens"):
        check_compatible(make_fingerprint(), make_fingerprint(), {"max_token"})
    assert "model" not in mismatch_field_names() and "extra" not in mismatch_field_names()
    assert "sampling.temperature" in mismatch_field_names() and "sampling" in mismatch_field_names()
