"""Checkpoint audit: configs + safetensors headers -> module classes, formats, sizes, disagreements.

Every checkpoint here is hand-built by ``audit_fixtures/checkpoints.py``: real safetensors headers,
hand-written configs shaped like real exports, and sparse files with no tensor data.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from pytest_qtests.audit.checkpoint import (
    DENSE_MLP, EMBEDDINGS, LINEAR_ATTN, LM_HEAD, MTP, NORM, OTHER, ROUTED_EXPERTS, ROUTER, SELF_ATTN,
    SHARED_EXPERT, SHARED_EXPERT_GATE, VISION, audit, classify,
)
from pytest_qtests.cli.audit import format_report
from pytest_qtests.cli.main import main
from pytest_qtests.audit.policies import evaluate_policy, footprint_claim
from pytest_qtests.records import QtestsError

_spec = importlib.util.spec_from_file_location(
    "audit_checkpoints", Path(__file__).parents[1] / "audit_fixtures" / "checkpoints.py")
cp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cp
_spec.loader.exec_module(cp)

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def class_formats(report) -> dict[str, str]:
    return {c.module_class: c.format for c in report.classes}


# --- classification ---------------------------------------------------------------------------

@pytest.mark.parametrize("module, expected", [
    ("model.embed_tokens", EMBEDDINGS),
    ("model.language_model.embed_tokens", EMBEDDINGS),
    ("lm_head", LM_HEAD),
    ("model.layers.3.self_attn.q_proj", SELF_ATTN),
    ("model.language_model.layers.3.self_attn.o_proj", SELF_ATTN),
    ("model.layers.0.linear_attn.in_proj_qkvz", LINEAR_ATTN),
    ("model.layers.0.linear_attn.in_proj_ba", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.in_proj_qkv", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.in_proj_z", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.in_proj_a", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.in_proj_b", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.out_proj", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.conv1d", LINEAR_ATTN),
    ("model.language_model.layers.0.linear_attn.A_log", LINEAR_ATTN),
    ("model.language_model.layers.0.mlp.gate_proj", DENSE_MLP),
    ("model.layers.0.mlp.gate", ROUTER),
    ("model.language_model.layers.0.mlp.gate", ROUTER),
    ("model.layers.0.mlp.experts.7.gate_proj", ROUTED_EXPERTS),
    ("model.language_model.layers.0.mlp.experts.gate_up_proj", ROUTED_EXPERTS),
    ("model.layers.0.mlp.shared_expert.up_proj", SHARED_EXPERT),
    ("model.layers.0.mlp.shared_expert_gate", SHARED_EXPERT_GATE),
    ("model.visual.blocks.0.attn.qkv", VISION),
    ("model.visual.merger.linear_fc1", VISION),
    ("mtp.layers.0.self_attn.q_proj", MTP),
    ("mtp.fc", MTP),
    ("model.layers.0.input_layernorm", NORM),
    ("model.layers.0.linear_attn.norm", NORM),
    ("model.layers.3.self_attn.q_norm", NORM),
    ("model.rotary_emb", OTHER),
])
def test_classify(module, expected):
    assert classify(module) == expected


# --- one checkpoint per format ------------------------------------------------------------------

EXPECTED_CLASS_FORMATS = {
    "bf16": {SELF_ATTN: "bf16", LINEAR_ATTN: "bf16", ROUTED_EXPERTS: "bf16", SHARED_EXPERT: "bf16"},
    "auto-round-int4": {SELF_ATTN: "int4", LINEAR_ATTN: "int4 (6) + bf16 (3)", ROUTED_EXPERTS: "int4",
                        SHARED_EXPERT: "int4", ROUTER: "bf16", SHARED_EXPERT_GATE: "bf16", LM_HEAD: "bf16"},
    "gptq-int4": {SELF_ATTN: "bf16", LINEAR_ATTN: "int4 (6) + bf16 (3)", ROUTED_EXPERTS: "int4",
                  SHARED_EXPERT: "int4 (9) + int8 (3)", ROUTER: "bf16"},
    "ct-int4": {SELF_ATTN: "int4", LINEAR_ATTN: "int4 (6) + bf16 (3)", ROUTED_EXPERTS: "int4", ROUTER: "bf16"},
    "ct-nvfp4": {SELF_ATTN: "nvfp4", LINEAR_ATTN: "nvfp4", ROUTED_EXPERTS: "nvfp4", SHARED_EXPERT: "nvfp4",
                 ROUTER: "bf16", LM_HEAD: "bf16"},
    "ct-mxfp4": {SELF_ATTN: "mxfp4", LINEAR_ATTN: "mxfp4", ROUTED_EXPERTS: "mxfp4", SHARED_EXPERT: "mxfp4"},
    "ct-mixed": {SELF_ATTN: "fp8", LINEAR_ATTN: "fp8 (6) + bf16 (3)", ROUTED_EXPERTS: "nvfp4",
                 SHARED_EXPERT: "bf16"},
    "fp8": {SELF_ATTN: "fp8", LINEAR_ATTN: "fp8 (6) + bf16 (3)", ROUTED_EXPERTS: "fp8", ROUTER: "bf16"},
    "modelopt-nvfp4": {SELF_ATTN: "nvfp4", LINEAR_ATTN: "bf16", ROUTED_EXPERTS: "nvfp4", ROUTER: "bf16"},
}
EXPECTED_GRANULARITY = {
    "auto-round-int4": ("g32",), "gptq-int4": ("g32",), "ct-int4": ("g64",), "ct-nvfp4": ("g16",),
    "ct-mxfp4": ("g32",), "ct-mixed": ("g16",), "fp8": ("128x128",), "modelopt-nvfp4": ("g16",), "bf16": (),
}


@pytest.fixture(scope="module")
def bf16_params(tmp_path_factory):
    return audit(cp.build_case("bf16", tmp_path_factory.mktemp("bf16"))).params


@pytest.mark.parametrize("case", sorted(cp.FORMAT_CASES))
def test_each_format_is_read_from_config_and_headers(case, tmp_path, bf16_params):
    directory = cp.build_case(case, tmp_path / case)
    report = audit(directory)

    formats = class_formats(report)
    assert {k: formats[k] for k in EXPECTED_CLASS_FORMATS[case]} == EXPECTED_CLASS_FORMATS[case]
    assert report.class_summary(ROUTED_EXPERTS).granularities == EXPECTED_GRANULARITY[case]
    assert report.disagreements == []
    # Logical parameters are rebuilt from packed shapes: every format holds the same model.
    assert report.params == bf16_params
    # Footprint is exactly what the headers declare, summed by an independent parser.
    assert report.footprint_bytes == cp.raw_header_bytes(directory)
    assert sum(c.nbytes for c in report.classes) == report.footprint_bytes


def test_bf16_totals(tmp_path):
    report = audit(cp.build_case("bf16", tmp_path / "bf16"))
    assert report.quant_method == "none"
    assert report.architecture == "Qwen3NextForCausalLM"
    # The tiny layout stores linear_attn.A_log in F32 (as real Qwen3-Next checkpoints do): 8 extra bytes.
    assert report.footprint_bytes == report.bf16_bytes + 3 * 2 * 2
    assert 16.0 < report.bits_per_param < 16.001


def test_packed_shapes_give_bits_and_group(tmp_path):
    report = audit(cp.build_case("gptq-int4", tmp_path / "gptq"))
    by_name = {m.name: m for m in report.modules}
    override = by_name["model.layers.3.mlp.shared_expert.up_proj"]
    assert (override.format, override.bits, override.group_size, override.params) == ("int8", 8, 32, 128 * 128)
    expert = by_name["model.layers.0.mlp.experts.1.down_proj"]
    assert (expert.format, expert.bits, expert.group_size, expert.params) == ("int4", 4, 32, 128 * 64)
    assert expert.tensors == ("g_idx", "qweight", "qzeros", "scales")
    assert expert.expected_reason == "global scheme"
    assert by_name["model.layers.3.self_attn.q_proj"].expected_reason == "not in modules_in_block_to_quantize"


# --- cross-check both directions -------------------------------------------------------------

def test_auto_round_disagreements_both_directions(tmp_path):
    config = cp.load_config("autoround_int4.json")
    config["extra_config"]["model.layers.1.mlp.shared_expert.up_proj"] = {"bits": 16, "data_type": "fp"}
    default = cp.FORMAT_CASES["auto-round-int4"][2]
    choose = lambda m: cp.bf16 if m == "model.layers.0.linear_attn.in_proj_qkvz" else default(m)  # noqa: E731

    report = audit(cp.build_case("auto-round-int4", tmp_path / "ar", choose=choose, quant_config=config))
    found = {d.module: d for d in report.disagreements}
    assert set(found) == {"model.layers.0.linear_attn.in_proj_qkvz", "model.layers.1.mlp.shared_expert.up_proj"}
    quantized_in_config = found["model.layers.0.linear_attn.in_proj_qkvz"]
    assert (quantized_in_config.config_says, quantized_in_config.stored_as) == ("int4", "bf16")
    kept_in_config = found["model.layers.1.mlp.shared_expert.up_proj"]
    assert (kept_in_config.config_says, kept_in_config.stored_as) == ("16bit", "int4")
    assert kept_in_config.message == (
        'model.layers.1.mlp.shared_expert.up_proj: config says 16bit '
        '(extra_config["model.layers.1.mlp.shared_expert.up_proj"]) but it is stored as int4')


def test_auto_round_exact_key_beats_regex_key(tmp_path):
    config = cp.load_config("autoround_int4.json")
    config["extra_config"][".*shared_expert.*"] = {"bits": 16}
    config["extra_config"]["model.layers.2.mlp.shared_expert.up_proj"] = {"bits": 4, "data_type": "int"}
    default = cp.FORMAT_CASES["auto-round-int4"][2]

    def choose(module):
        if ".shared_expert." in module and module != "model.layers.2.mlp.shared_expert.up_proj":
            return cp.bf16
        return default(module)

    report = audit(cp.build_case("auto-round-int4", tmp_path / "keep", choose=choose, quant_config=config))
    assert report.disagreements == []
    assert class_formats(report)[SHARED_EXPERT] == "bf16 (11) + int4 (1)"
    kept = next(m for m in report.modules if m.name == "model.layers.0.mlp.shared_expert.down_proj")
    assert kept.expected_reason == 'extra_config[".*shared_expert.*"]'


def test_auto_round_regex_keys_apply_to_linear_layers_only(tmp_path):
    """".*linear_attn.*" also matches conv1d and A_log; like auto-round, the audit applies it to
    linear layers only, so those float tensors are no disagreement."""
    config = cp.load_config("autoround_int4.json")
    config["extra_config"][".*linear_attn.*"] = {"bits": 8}
    default = cp.FORMAT_CASES["auto-round-int4"][2]
    choose = lambda m: cp.gptq(8, 32, g_idx=False) if m.endswith(("in_proj_qkvz", "out_proj")) else default(m)  # noqa
    report = audit(cp.build_case("auto-round-int4", tmp_path / "r", choose=choose, quant_config=config))
    assert report.disagreements == []
    assert class_formats(report)[LINEAR_ATTN] == "int8 (6) + bf16 (3)"


def test_gptq_dynamic_bits_disagree_with_stored_bits(tmp_path):
    default = cp.FORMAT_CASES["gptq-int4"][2]
    choose = lambda m: cp.gptq(4, 32) if "layers.3.mlp.shared_expert.down_proj" in m else default(m)  # noqa: E731
    report = audit(cp.build_case("gptq-int4", tmp_path / "g", choose=choose))
    [disagreement] = report.disagreements
    assert disagreement.module == "model.layers.3.mlp.shared_expert.down_proj"
    assert (disagreement.config_says, disagreement.stored_as) == ("int8", "int4")
    assert disagreement.reason.startswith('dynamic["+:')


def test_fp8_modules_to_not_convert_is_checked(tmp_path):
    default = cp.FORMAT_CASES["fp8"][2]
    choose = lambda m: cp.fp8_block() if m == "lm_head" else default(m)  # noqa: E731
    report = audit(cp.build_case("fp8", tmp_path / "f", choose=choose))
    assert [(d.module, d.config_says, d.stored_as) for d in report.disagreements] == [("lm_head", "16bit", "fp8")]


def test_compressed_tensors_ignore_regex_and_targets(tmp_path):
    default = cp.FORMAT_CASES["ct-int4"][2]
    # ignore "re:.*linear_attn\.in_proj_ba$" keeps in_proj_ba 16-bit: storing it quantized disagrees.
    choose = lambda m: cp.ct_int(4, 64) if m.endswith("layers.2.linear_attn.in_proj_ba") else default(m)  # noqa: E731
    report = audit(cp.build_case("ct-int4", tmp_path / "c", choose=choose))
    [disagreement] = report.disagreements
    assert disagreement.module == "model.layers.2.linear_attn.in_proj_ba"
    assert disagreement.reason == 'ignore["re:.*linear_attn\\.in_proj_ba$"]'


def test_modelopt_exclude_globs(tmp_path):
    default = cp.FORMAT_CASES["modelopt-nvfp4"][2]
    choose = lambda m: cp.modelopt_nvfp4 if m == "model.layers.0.linear_attn.out_proj" else default(m)  # noqa: E731
    report = audit(cp.build_case("modelopt-nvfp4", tmp_path / "m", choose=choose))
    [disagreement] = report.disagreements
    assert (disagreement.module, disagreement.reason) == (
        "model.layers.0.linear_attn.out_proj", 'exclude_modules["model.layers.*.linear_attn*"]')


def test_quantized_tensors_without_config_disagree(tmp_path):
    choose = lambda m: cp.gptq(4, 32) if m == "model.layers.3.self_attn.q_proj" else cp.bf16  # noqa: E731
    report = audit(cp.build_case("bf16", tmp_path / "b", choose=choose))
    assert [(d.module, d.config_says, d.stored_as) for d in report.disagreements] == [
        ("model.layers.3.self_attn.q_proj", "16bit", "int4")]


def test_unparsed_quant_method_reads_formats_from_tensors(tmp_path):
    """AWQ is not parsed: the audit says so and still reads AWQ's [in, out*bits/32] packing."""
    def awq(module, out, inp):
        return {f"{module}.qweight": ("I32", (inp, out * 4 // 32)), f"{module}.qzeros": ("I32", (inp // 32, out // 8)),
                f"{module}.scales": ("F16", (inp // 32, out))}

    choose = lambda m: cp.bf16 if m.endswith(("lm_head", "in_proj_ba", "mlp.gate", "shared_expert_gate")) else awq  # noqa
    report = audit(cp.build_case("bf16", tmp_path / "awq", choose=choose,
                                 quant_config={"quant_method": "awq", "bits": 4, "group_size": 32}))
    assert report.quant_method == "awq"
    assert any("'awq' is not parsed" in note for note in report.notes)
    assert report.disagreements == []
    assert class_formats(report)[ROUTED_EXPERTS] == "int4"
    assert report.params == audit(cp.build_case("bf16", tmp_path / "ref")).params


def test_fused_3d_experts(tmp_path):
    """Qwen3.5-MoE stores experts fused: one 3-D tensor per projection, classed as routed experts."""
    p = "model.language_model.layers.0.mlp"
    tensors = {f"{p}.experts.gate_up_proj": ("BF16", (8, 128, 64)), f"{p}.experts.down_proj": ("BF16", (8, 64, 64)),
               f"{p}.gate.weight": ("BF16", (8, 64)), f"{p}.shared_expert.up_proj.weight": ("BF16", (64, 64))}
    report = audit(cp.write_checkpoint(tmp_path / "fused", tensors, {"config.json": {"model_type": "qwen3_5_moe"}}))
    experts = report.modules_in(ROUTED_EXPERTS)
    assert [(m.name, m.is_linear, m.params) for m in experts] == [
        (f"{p}.experts.down_proj", True, 8 * 64 * 64), (f"{p}.experts.gate_up_proj", True, 8 * 128 * 64)]
    assert class_formats(report) == {ROUTED_EXPERTS: "bf16", SHARED_EXPERT: "bf16", ROUTER: "bf16"}


# --- real auto-round 0.16.1 export layouts (headers recorded from actual exports) ---------------

REAL_CLASS_FORMATS = {
    "autoround-int4": {SHARED_EXPERT: "int4", LINEAR_ATTN: "int4 (6) + fp32 (3)", ROUTER: "fp32", SELF_ATTN: "int4"},
    "autoround-int4-keep": {SHARED_EXPERT: "fp32", LINEAR_ATTN: "fp32", ROUTED_EXPERTS: "int4", SELF_ATTN: "int4"},
    "gptq-int4": {SHARED_EXPERT: "int4", LINEAR_ATTN: "int4 (6) + fp32 (3)", SHARED_EXPERT_GATE: "fp32"},
    "ct-nvfp4": {SHARED_EXPERT: "nvfp4", LINEAR_ATTN: "nvfp4", ROUTER: "fp32", LM_HEAD: "fp32"},
    "ct-mxfp4": {SHARED_EXPERT: "mxfp4", LINEAR_ATTN: "mxfp4", ROUTED_EXPERTS: "mxfp4"},
    "ct-fp8-block": {SHARED_EXPERT: "fp8", LINEAR_ATTN: "fp8", ROUTER: "fp32"},
    "bf16": {SHARED_EXPERT: "bf16", LINEAR_ATTN: "bf16", ROUTED_EXPERTS: "bf16"},
}
REAL_GRANULARITY = {"autoround-int4": ("g32",), "autoround-int4-keep": ("g32",), "gptq-int4": ("g32",),
                    "ct-nvfp4": ("g16",), "ct-mxfp4": ("g32",), "ct-fp8-block": ("128x128",), "bf16": ()}


@pytest.mark.parametrize("case", sorted(REAL_CLASS_FORMATS))
def test_real_export_layouts(case, tmp_path):
    directory = cp.restore_real(case, tmp_path / case)
    report = audit(directory)
    formats = class_formats(report)
    assert {k: formats[k] for k in REAL_CLASS_FORMATS[case]} == REAL_CLASS_FORMATS[case]
    assert report.class_summary(ROUTED_EXPERTS).granularities == REAL_GRANULARITY[case]
    assert report.disagreements == [] and report.notes == []
    assert report.params == 1_321_420  # the source model's parameter count, rebuilt from packed shapes
    assert report.footprint_bytes == cp.raw_header_bytes(directory)


# --- a 27B-scale sharded checkpoint of sparse files --------------------------------------------

def test_27b_sharded_sparse_checkpoint(tmp_path):
    """Qwen3.5-27B shapes, GPTQ-Int4 on the MLP only (attention kept BF16): the issue's example of a
    "4-bit" checkpoint that weighs about what FP8 does. 11 shards, ~30 GB declared, ~nothing on disk."""
    linears, floats = cp.qwen3_5_layout()
    tensors = cp.store(linears, floats, lambda m: cp.gptq(4, 128) if ".mlp." in m and "language_model" in m else cp.bf16)
    config = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
              "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                      "lm_head": False,
                                      "modules_in_block_to_quantize": [["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]}}
    directory = cp.write_checkpoint(tmp_path / "qwen3.5-27b-int4", tensors, {"config.json": config}, shards=11)
    shards = list(directory.glob("*.safetensors"))
    declared = sum(p.stat().st_size for p in shards)
    assert declared > 25e9 and sum(p.stat().st_blocks * 512 for p in shards) < 0.001 * declared  # sparse

    start = time.perf_counter()
    report = audit(directory)
    elapsed = time.perf_counter() - start
    print(f"\naudit of {len(tensors)} tensors in {len(shards)} sparse shards ({declared / 1e9:.1f} GB): {elapsed:.3f} s")
    assert elapsed < 5

    assert report.shards == 11
    assert report.footprint_bytes == cp.raw_header_bytes(directory)
    assert 27.0e9 < report.params < 28.5e9
    formats = class_formats(report)
    assert {k: formats[k] for k in (SELF_ATTN, LINEAR_ATTN, DENSE_MLP, VISION, MTP, LM_HEAD, EMBEDDINGS)} == {
        SELF_ATTN: "bf16", LINEAR_ATTN: "bf16", DENSE_MLP: "int4", VISION: "bf16", MTP: "bf16",
        LM_HEAD: "bf16", EMBEDDINGS: "bf16"}
    assert len(report.modules_in(LINEAR_ATTN)) == 48 * 8  # 5 linears + conv1d + A_log + dt_bias per layer
    assert report.disagreements == []
    claim = footprint_claim(report, min_saving=0.25)
    assert not claim.passed and claim.saving < 0.05
    assert evaluate_policy(report, "keep-attn").passed


# --- the zoo (real auto-round exports, built by fixtures/build) --------------------------------

def _zoo(name: str) -> Path:
    path = ZOO / name
    if not (path / "config.json").is_file():
        pytest.skip(f"zoo checkpoint {name} not built yet (fixtures/zoo/{name}/config.json missing)")
    return path


def test_zoo_int4_default_quantizes_the_shared_expert():
    report = audit(_zoo("int4-default"))
    assert report.disagreements == []
    assert all(m.quantized for m in report.modules_in(SHARED_EXPERT) if m.is_linear)
    assert not evaluate_policy(report, "keep-shared-expert").passed


def test_zoo_int4_keep_fragile_passes_both_policies():
    report = audit(_zoo("int4-keep-fragile"))
    assert report.disagreements == []
    assert evaluate_policy(report, "keep-shared-expert").passed
    assert evaluate_policy(report, "keep-linear-attn").passed


def test_zoo_nvfp4_all_has_linear_attention_in_nvfp4():
    report = audit(_zoo("nvfp4-all"))
    assert report.disagreements == []
    assert class_formats(report)[LINEAR_ATTN].startswith("nvfp4")


# --- bad input --------------------------------------------------------------------------------

def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(QtestsError, match="no checkpoint at .*not a directory and not a hub id"):
        audit(tmp_path / "nope" / "deeper")


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(QtestsError, match="not a local directory, and the hub is not reachable"):
        audit("Qwen/Qwen3.5-27B")


def test_truncated_shard_is_a_clear_error(tmp_path):
    directory = cp.build_case("bf16", tmp_path / "t")
    shard = directory / "model.safetensors"
    os.truncate(shard, shard.stat().st_size - 1)
    with pytest.raises(QtestsError, match="not a valid safetensors file.*re-download"):
        audit(directory)


def test_index_naming_a_missing_tensor_is_a_clear_error(tmp_path):
    linears, floats = cp.qwen3_next_layout()
    directory = cp.write_checkpoint(tmp_path / "s", cp.store(linears, floats, lambda m: cp.bf16), {}, shards=3)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.mlp.gate.weight"] = "model-00001-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(QtestsError, match="model.layers.9.mlp.gate.weight.*re-download"):
        audit(directory)


def test_directory_without_safetensors_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(QtestsError, match="no \\*.safetensors files"):
        audit(tmp_path)


# --- qtests audit ------------------------------------------------------------------------------

def test_cli_table_and_policy_exit_status(tmp_path, capsys):
    directory = cp.build_case("auto-round-int4", tmp_path / "ar")
    assert main(["audit", str(directory), "--policy", "keep-router"]) == 0
    out = capsys.readouterr().out
    assert "auto-round int4 g32" in out and "shared_expert" in out and "PASS keep-router" in out
    assert main(["audit", str(directory), "--policy", "keep-shared-expert"]) == 1
    assert "FAIL keep-shared-expert: 12 of 12 shared_expert modules" in capsys.readouterr().out


def test_cli_json(tmp_path, capsys):
    directory = cp.build_case("ct-nvfp4", tmp_path / "nv")
    assert main(["audit", str(directory), "--json", "--modules", "--policy", "linear_attn=16bit"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["footprint_bytes"] == cp.raw_header_bytes(directory)
    assert {c["module_class"]: c["format"] for c in data["classes"]}[LINEAR_ATTN] == "nvfp4"
    assert len(data["modules"]) == len(audit(directory).modules)
    [policy] = data["policies"]
    assert policy["passed"] is False and len(policy["offending_modules"]) == 9  # 3 layers x 3 linears
    assert data["footprint_claim"]["passed"] is True


def test_cli_bad_policy_is_one_line_error(tmp_path, capsys):
    directory = cp.build_case("bf16", tmp_path / "b")
    assert main(["audit", str(directory), "--policy", "keep-everything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qtests: error: unknown policy 'keep-everything'") and err.count("\n") == 1


def test_plain_table_without_rich(tmp_path):
    report = audit(cp.build_case("fp8", tmp_path / "f"))
    text = format_report(report, use_rich=False)
    header = text.splitlines()[1].split()
    assert header == ["class", "modules", "format", "bits", "group", "params", "bytes", "bits/param"]
    assert any(line.split()[:1] == ["routed_experts"] and "128x128" in line for line in text.splitlines())
    assert f"footprint {report.footprint_bytes:,} bytes" in text
