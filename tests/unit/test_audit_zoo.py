"""The checkpoint audit on the committed zoo: real auto-round exports, not hand-built headers.

The zoo's variants (``fixtures/build/make_variants.py``) differ only in which layers they quantized,
and the Qwen3.5-MoE twin (``fixtures/build/make_qwen35_twin.py``) carries Qwen3.5's unfused linear
attention names, so these tests pin what the audit must see in checkpoints real tools wrote.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pytest_qtests.audit.checkpoint import LINEAR_ATTN, ROUTED_EXPERTS, SELF_ATTN, SHARED_EXPERT, audit, classify
from pytest_qtests.audit.policies import evaluate_policy

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
CHECKPOINTS = ("tiny-qwen3next", "int4-default", "int4-keep-fragile", "nvfp4-all", "int2-default",
               "nvfp4-broken", "qwen35-moe-twin", "qwen35-moe-twin-int4")
QWEN35_LINEAR_ATTN = ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b")
TWIN_LINEAR_LAYERS = (0, 2)  # layer types: linear, full, linear, full


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def linear_formats(report, module_class: str) -> dict[str, str]:
    return {m.name: m.format for m in report.modules_in(module_class) if m.is_linear}


def test_int4_default_quantizes_the_shared_expert_and_the_policy_names_it():
    report = audit(ZOO / "int4-default")
    shared = linear_formats(report, SHARED_EXPERT)
    assert len(shared) == 12 and set(shared.values()) == {"int4"}  # 4 layers x gate/up/down
    result = evaluate_policy(report, "keep-shared-expert")
    assert not result.passed
    assert set(result.offending_modules) == set(shared)
    assert "12 of 12 shared_expert modules are not 16bit" in result.message
    assert "model.layers.0.mlp.shared_expert.down_proj (int4)" in result.message


def test_int4_keep_fragile_passes_both_keep_policies_and_still_quantizes_the_rest():
    report = audit(ZOO / "int4-keep-fragile")
    assert report.disagreements == []
    for policy in ("keep-shared-expert", "keep-linear-attn"):
        result = evaluate_policy(report, policy)
        assert result.passed and result.checked_modules > 0, result.message
    assert set(linear_formats(report, SELF_ATTN).values()) == {"int4"}
    assert set(linear_formats(report, ROUTED_EXPERTS).values()) == {"int4"}


def test_nvfp4_all_stores_linear_attention_in_nvfp4():
    report = audit(ZOO / "nvfp4-all")
    linear_attn = linear_formats(report, LINEAR_ATTN)
    assert len(linear_attn) == 6 and set(linear_attn.values()) == {"nvfp4"}  # 2 layers x qkvz/ba/out
    assert report.class_summary(LINEAR_ATTN).format == "nvfp4"
    assert not evaluate_policy(report, "keep-linear-attn").passed


@pytest.mark.parametrize("name", QWEN35_LINEAR_ATTN)
def test_qwen35_projection_names_are_linear_attention(name):
    assert classify(f"model.layers.0.linear_attn.{name}") == LINEAR_ATTN
    assert classify(f"model.language_model.layers.0.linear_attn.{name}") == LINEAR_ATTN


def test_qwen35_twin_int4_reports_which_linear_attention_projections_stayed_16bit():
    report = audit(ZOO / "qwen35-moe-twin-int4")
    assert report.architecture == "Qwen3_5MoeForCausalLM"
    assert report.disagreements == []
    formats = linear_formats(report, LINEAR_ATTN)
    expected = {
        f"model.layers.{layer}.linear_attn.{proj}": fmt
        for layer in TWIN_LINEAR_LAYERS
        for proj, fmt in (("in_proj_qkv", "int4"), ("in_proj_z", "int4"), ("in_proj_a", "bf16"),
                          ("in_proj_b", "bf16"), ("out_proj", "int4"))
    }
    assert formats == expected
    kept = [m for m in report.modules_in(LINEAR_ATTN) if m.is_linear and not m.quantized]
    assert all(m.expected == "16bit" for m in kept)  # the export's extra_config says so, and it holds
    assert report.class_summary(LINEAR_ATTN).format == "int4 (6) + bf16 (4)"
    result = evaluate_policy(report, "keep-linear-attn")
    assert not result.passed
    assert {name.rsplit(".", 1)[-1] for name in result.offending_modules} == {"in_proj_qkv", "in_proj_z", "out_proj"}


def test_qwen35_twin_reference_is_all_bf16_with_the_same_module_names():
    reference, quantized = audit(ZOO / "qwen35-moe-twin"), audit(ZOO / "qwen35-moe-twin-int4")
    assert reference.architecture == "Qwen3_5MoeForCausalLM"
    assert {m.format for m in reference.modules if m.is_linear} == {"bf16"}
    assert [m.name for m in reference.modules] == [m.name for m in quantized.modules]
    assert reference.params == quantized.params


def header_declared_bytes(shard: Path) -> tuple[int, int]:
    """(sum of the header's ``data_offsets`` spans, bytes after the header), parsed by hand from the
    safetensors layout: 8-byte little-endian header length, JSON header, tensor data."""
    with shard.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    spans = sum(end - begin for key, entry in header.items() if key != "__metadata__"
                for begin, end in [entry["data_offsets"]])
    return spans, shard.stat().st_size - 8 - length


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_footprint_is_the_sum_of_header_declared_tensor_bytes(name):
    checkpoint = ZOO / name
    shards = sorted(checkpoint.glob("*.safetensors"))
    assert shards, f"zoo checkpoint {name} has no safetensors: rebuild it with fixtures/build"
    spans, payload = map(sum, zip(*(header_declared_bytes(shard) for shard in shards)))
    assert spans == payload  # the header accounts for every data byte in the files
    assert audit(checkpoint).footprint_bytes == spans
