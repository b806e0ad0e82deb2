"""Export defects: each one built from a real zoo export (``audit_fixtures/defects.py``), each caught by
``qtests audit`` with a one-line finding and exit status 1; healthy exports give no finding."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pytest_qtests.audit.checkpoint import audit
from pytest_qtests.cli.main import main

FIXTURES = Path(__file__).parents[1] / "audit_fixtures"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"audit_{name}", FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


defects = _module("defects")
cp = _module("checkpoints")
ZOO = defects.ZOO
HEALTHY = ("tiny-qwen3next", "int4-default", "int4-keep-fragile", "nvfp4-all", "int2-default",
           "qwen35-moe-twin", "qwen35-moe-twin-int4")
EXPECTED = {  # defect -> (rule, a module the finding must name, words of its message)
    "zero-expert-scale": ("bad-scale", defects.ZEROED_EXPERT, "weight_global_scale is zero"),
    "dropped-expert-scale": ("missing-tensor", defects.DROPPED_EXPERT, "without weight_global_scale"),
    "reset-expert-scale": ("scale-outlier", defects.RESET_EXPERT, "implies max |weight| 2.69e+03"),
    "split-name-ignore": ("ignore-split-names", "model.layers.0.linear_attn.in_proj_qkvz", "names a split projection"),
    "experts-left-bf16": ("config-mismatch", "model.layers.3.mlp.experts.0.up_proj", "says nvfp4 but the tensors are bf16"),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", sorted(defects.DEFECTS))
def test_each_defect_is_one_finding_and_fails_qtests_audit(name, tmp_path, capsys):
    directory = defects.DEFECTS[name](tmp_path / name)
    rule, module, words = EXPECTED[name]
    found = audit(directory).defects
    assert [f.rule for f in found] == [rule] * len(found) and found
    assert any(module in f.modules for f in found) and words in found[0].message
    assert main(["audit", str(directory)]) == 1
    assert f"DEFECT {found[0].message}" in capsys.readouterr().out
    assert main(["audit", str(directory), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["defects"][0]["rule"] == rule


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_zoo_exports_have_no_finding(name, capsys):
    assert audit(ZOO / name).defects == []
    assert main(["audit", str(ZOO / name)]) == 0
    assert "DEFECT" not in capsys.readouterr().out


def test_nvfp4_broken_is_named_by_its_expert_global_scales():
    (finding,) = audit(ZOO / "nvfp4-broken").defects
    assert finding.rule == "scale-outlier" and len(finding.modules) == 96
    assert finding.message.startswith("model.layers.*.mlp.experts.*.down_proj, model.layers.*.mlp.experts.*.gate_proj, "
                                      "model.layers.*.mlp.experts.*.up_proj (96 modules): weight_global_scale implies")


def test_w4a4_module_without_input_global_scale_is_missing_a_tensor(tmp_path):
    def choose(module):
        if module == "model.layers.0.mlp.shared_expert.up_proj":
            return lambda m, o, i: {k: v for k, v in cp.ct_nvfp4(m, o, i).items() if not k.endswith("input_global_scale")}
        return None
    config = cp.load_config("ct_nvfp4.json")
    config["config_groups"]["group_0"]["input_activations"] = {"num_bits": 4, "type": "float"}
    directory = cp.build_case("ct-nvfp4", tmp_path / "w4a4", choose=cp._keep(
        ("lm_head", "mlp.gate", "shared_expert_gate"), cp.ct_nvfp4, choose), quant_config=config)
    missing = [f for f in audit(directory).defects if f.rule == "missing-tensor"]
    assert [f.modules for f in missing] == [("model.layers.0.mlp.shared_expert.up_proj",)]
    assert "without input_global_scale" in missing[0].message


def test_partly_ignored_fused_projection_and_unmatched_entry(tmp_path):
    """Qwen3.5 stores in_proj_qkv and in_proj_z split; vLLM fuses them, so ignoring one alone is a defect."""
    linears, floats = cp.qwen3_5_layout(layers=4, hidden=64, intermediate=128, heads=2, kv_heads=1, head_dim=32,
                                        lin_k_heads=2, lin_v_heads=2, lin_dim=32, vocab=128, vision_depth=0, mtp_layers=0)
    prefix = "model.language_model.layers.0.linear_attn"
    config = cp.load_config("ct_nvfp4.json")
    config["ignore"] = ["re:.*lm_head", f"{prefix}.in_proj_qkv", "model.layers.0.mlp.gatee"]
    config["config_groups"]["group_0"]["targets"] = ["re:.*mlp.down_proj"]
    choose = lambda m: cp.ct_nvfp4 if m.endswith("mlp.down_proj") else cp.bf16
    directory = cp.write_checkpoint(tmp_path / "q35", cp.store(linears, floats, choose),
                                    {"config.json": {"model_type": "qwen3_5_text", "quantization_config": config}})
    found = {f.rule: f for f in audit(directory).defects}
    assert set(found) == {"ignore-partial-fused", "ignore-unmatched"}
    assert found["ignore-partial-fused"].message.startswith(
        f"ignore keeps {prefix}.in_proj_qkv unquantized but not in_proj_z, which vLLM fuses with it into one in_proj_qkvz")
    assert '"model.layers.0.mlp.gatee" matches no module' in found["ignore-unmatched"].message


def test_policy_tests_of_the_gate_fail_on_a_defect(tmp_path):
    import subprocess
    import sys

    directory = defects.DEFECTS["zero-expert-scale"](tmp_path / "zero")
    repo = Path(__file__).parents[2]
    env = {"PYTHONPATH": f"{repo / 'plugins'}:{repo}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "qtests", "-q", "-p", "no:cacheprovider",
                           "-k", "policy", "--model", f"zero={directory}", "--policy", "keep-router",
                           "--tasks", "zoo", "--cache-dir", str(tmp_path / "cache")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert ("zero: keep-router: all 4 router modules are 16bit; export defect: "
            f"{defects.ZEROED_EXPERT}: weight_global_scale is zero") in done.stdout
