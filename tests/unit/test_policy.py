"""Layer policies and the footprint claim, evaluated on audits of hand-built checkpoints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pytest_qtests.audit.checkpoint import LINEAR_ATTN, SELF_ATTN, SHARED_EXPERT, audit
from pytest_qtests.audit.policies import (
    NAMED_POLICIES, PolicyRule, evaluate_policy, footprint_claim, parse_policy,
)
from pytest_qtests.records import QtestsError

_spec = importlib.util.spec_from_file_location(
    "audit_checkpoints", Path(__file__).parents[1] / "audit_fixtures" / "checkpoints.py")
cp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cp
_spec.loader.exec_module(cp)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    return {case: audit(cp.build_case(case, root / case)) for case in ("bf16", "auto-round-int4", "gptq-int4",
                                                                       "ct-nvfp4", "modelopt-nvfp4", "fp8")}


def test_parse_named_and_custom_rules():
    assert parse_policy("keep-attn") == PolicyRule("keep-attn", (SELF_ATTN, LINEAR_ATTN), "16bit")
    assert parse_policy(" shared_expert = bf16 ") == PolicyRule("shared_expert = bf16", (SHARED_EXPERT,), "bf16")
    assert parse_policy("routed_experts=4bit").required == "4bit"
    assert set(NAMED_POLICIES) == {"keep-shared-expert", "keep-linear-attn", "keep-router", "keep-lm-head", "keep-attn",
                                   "keep-experts"}


@pytest.mark.parametrize("text, message", [
    ("keep-everything", "unknown policy 'keep-everything'"),
    ("attention=bf16", "unknown class 'attention'"),
    ("shared_expert=int5x", "unknown format 'int5x'"),
])
def test_bad_rules_name_the_problem(text, message):
    with pytest.raises(QtestsError, match=message):
        parse_policy(text)


def test_keep_shared_expert_names_offending_modules(reports):
    result = evaluate_policy(reports["auto-round-int4"], "keep-shared-expert")
    assert not result.passed
    assert result.checked_modules == 12 and len(result.offending_modules) == 12
    assert result.offending_modules[0] == "model.layers.0.mlp.shared_expert.down_proj"
    assert result.message == (
        "keep-shared-expert: 12 of 12 shared_expert modules are not 16bit: "
        "model.layers.0.mlp.shared_expert.down_proj (int4), model.layers.0.mlp.shared_expert.gate_proj (int4), "
        "model.layers.0.mlp.shared_expert.up_proj (int4), model.layers.1.mlp.shared_expert.down_proj (int4), "
        "model.layers.1.mlp.shared_expert.gate_proj (int4) and 7 more")


def test_keep_router_and_lm_head_pass_where_kept(reports):
    for case in ("auto-round-int4", "gptq-int4", "ct-nvfp4", "fp8"):
        assert evaluate_policy(reports[case], "keep-router").passed
        assert evaluate_policy(reports[case], "keep-lm-head").passed


def test_keep_attn_covers_both_attention_kinds(reports):
    # GPTQ fixture keeps self_attn 16-bit but quantizes linear attention; ModelOpt the opposite.
    gptq = evaluate_policy(reports["gptq-int4"], "keep-attn")
    assert not gptq.passed and all(".linear_attn." in m for m in gptq.offending_modules)
    modelopt = evaluate_policy(reports["modelopt-nvfp4"], "keep-attn")
    assert not modelopt.passed and all(".self_attn." in m for m in modelopt.offending_modules)
    assert evaluate_policy(reports["modelopt-nvfp4"], "keep-linear-attn").passed


def test_custom_rules_exact_format_and_width(reports):
    nvfp4 = reports["ct-nvfp4"]
    assert evaluate_policy(nvfp4, "routed_experts=nvfp4").passed
    assert evaluate_policy(nvfp4, "routed_experts=4bit").passed
    assert not evaluate_policy(nvfp4, "routed_experts=mxfp4").passed
    assert evaluate_policy(nvfp4, "router=bf16").passed
    assert not evaluate_policy(nvfp4, "router=fp16").passed
    # Mixed widths: the "+:" dynamic rule stores layer 3's shared expert in int8.
    mixed = evaluate_policy(reports["gptq-int4"], "shared_expert=int4")
    assert mixed.offending_modules == tuple(f"model.layers.3.mlp.shared_expert.{p}_proj" for p in ("down", "gate", "up"))


def test_rule_on_an_absent_class_does_not_apply(reports):
    result = evaluate_policy(reports["bf16"], "vision=bf16")
    assert result.passed and result.checked_modules == 0 and "does not apply" in result.message


def test_footprint_claim_passes_for_a_real_saving(reports):
    claim = footprint_claim(reports["auto-round-int4"], min_saving=0.25)
    assert claim.passed and claim.variant_format == "int4" and claim.reference_format == "fp8"
    assert claim.footprint_bytes == reports["auto-round-int4"].footprint_bytes
    assert claim.saving == pytest.approx(1 - claim.footprint_bytes / claim.reference_bytes)
    fp8 = footprint_claim(reports["fp8"])
    assert fp8.passed and fp8.reference_format == "bf16"


def test_footprint_claim_warns_when_16bit_layers_eat_the_gain(reports):
    # ModelOpt fixture keeps all linear attention in BF16: NVFP4 saves little over FP8.
    claim = footprint_claim(reports["modelopt-nvfp4"], min_saving=0.25)
    assert not claim.passed and 0 < claim.saving < 0.25
    assert "saves" in claim.message and "below the required 25%" in claim.message


def test_footprint_claim_against_an_audited_reference(reports):
    claim = footprint_claim(reports["auto-round-int4"], min_saving=0.25, reference=reports["fp8"])
    assert claim.reference_bytes == reports["fp8"].footprint_bytes
    assert claim.saving == pytest.approx(1 - reports["auto-round-int4"].footprint_bytes / reports["fp8"].footprint_bytes)


def test_footprint_claim_on_unquantized_and_bad_fraction(reports):
    assert footprint_claim(reports["bf16"]).passed
    with pytest.raises(QtestsError, match="must be a fraction"):
        footprint_claim(reports["fp8"], min_saving=1.5)


def test_real_auto_round_exports_default_vs_keep_fragile(tmp_path):
    """On real auto-round 0.16.1 layouts: the default recipe quantizes the shared expert; the
    layer_config that keeps shared_expert and linear_attn passes both policies."""
    default = audit(cp.restore_real("autoround-int4", tmp_path / "default"))
    keep = audit(cp.restore_real("autoround-int4-keep", tmp_path / "keep"))
    assert not evaluate_policy(default, "keep-shared-expert").passed
    assert not evaluate_policy(default, "keep-linear-attn").passed
    assert evaluate_policy(keep, "keep-shared-expert").passed
    assert evaluate_policy(keep, "keep-linear-attn").passed
    assert not evaluate_policy(keep, "shared_expert=bf16").passed  # auto-round kept them in float32
