"""``qtests quantize``: real auto-round (RTN, iters 0) on the zoo reference, checked with the audit.

Each build takes seconds with a few calibration samples; the recipes are judged by what the
safetensors headers say (the audit), never by what the code meant to do.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from pytest_qtests.audit.checkpoint import LINEAR_ATTN, ROUTED_EXPERTS, SELF_ATTN, SHARED_EXPERT, SHARED_EXPERT_GATE, audit
from pytest_qtests.cli.main import main
from pytest_qtests.build.provenance import PROVENANCE_FILE, describe_provenance, plan_provenance, read_provenance, same_build
from pytest_qtests.build.quantize import check_request, fit_to_context, prepare_calibration, quantize, write_task_calibration
from pytest_qtests.build.recipes import RECIPES, QuantizeSettings
from pytest_qtests.records import QtestsError

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
REFERENCE = str(ZOO / "tiny-qwen3next")
CALIBRATION = str(ZOO / "task" / "calibration.jsonl")
FAST = QuantizeSettings("W4A16", "default", nsamples=8, seqlen=128, group_size=32)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def linear_formats(report, *classes: str) -> set[str]:
    return {m.format for m in report.modules_in(*classes) if m.is_linear}


@pytest.fixture(scope="module")
def keep_attn_run(tmp_path_factory) -> tuple[Path, int, str]:
    """``qtests quantize`` as a user runs it: the checkpoint, the exit status and what it printed."""
    out = tmp_path_factory.mktemp("q") / "keep-attn"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["quantize", REFERENCE, "--scheme", "W4A16", "--recipe", "keep-attn", "--group-size", "32",
                     "--nsamples", "8", "--seqlen", "128", "--calibration", CALIBRATION, "-o", str(out)])
    return out, code, printed.getvalue()


@pytest.fixture(scope="module")
def keep_attn(keep_attn_run) -> Path:
    return keep_attn_run[0]


@pytest.fixture(scope="module")
def keep_shared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "keep-shared"
    quantize(REFERENCE, out, QuantizeSettings("W2A16", "keep-shared-expert", nsamples=8, seqlen=128, group_size=32),
             CALIBRATION)
    return out


def test_keep_attn_keeps_every_attention_linear_bf16_and_quantizes_the_rest(keep_attn):
    report = audit(keep_attn)
    assert linear_formats(report, SELF_ATTN, LINEAR_ATTN) == {"bf16"}
    assert linear_formats(report, ROUTED_EXPERTS, SHARED_EXPERT) == {"int4"}
    assert not report.disagreements  # the exported quantization config says what the tensors are


def test_keep_shared_expert_keeps_the_shared_expert_and_its_gate_only(keep_shared):
    report = audit(keep_shared)
    assert linear_formats(report, SHARED_EXPERT, SHARED_EXPERT_GATE) == {"bf16"}
    assert linear_formats(report, SELF_ATTN, ROUTED_EXPERTS) == {"int2"}
    assert "int2" in linear_formats(report, LINEAR_ATTN)


def test_keep_experts_keeps_the_fused_routed_experts_16_bit_under_w8a8(tmp_path):
    """transformers 5 fuses each layer's experts into one module that auto-round splits only as it runs;
    INT8 (W8A8) also quantizes activations, which a kept layer must not get either."""
    out = tmp_path / "keep-experts"
    provenance = quantize(REFERENCE, out, QuantizeSettings("INT8", "keep-experts", "llm_compressor", nsamples=8,
                                                           seqlen=128), CALIBRATION)
    assert provenance["kept_modules"] == [f"model.layers.{n}.mlp.experts" for n in range(4)]
    report = audit(out)
    assert linear_formats(report, ROUTED_EXPERTS) == {"bf16"}
    assert linear_formats(report, SELF_ATTN, SHARED_EXPERT) == {"int8"}


def test_provenance_records_recipe_settings_inputs_and_kept_modules(keep_attn):
    provenance = json.loads((keep_attn / PROVENANCE_FILE).read_text())
    assert provenance["settings"] == {"scheme": "W4A16", "recipe": "keep-attn", "export_format": "auto_round",
                                      "iters": 0, "nsamples": 8, "seqlen": 128, "group_size": 32, "seed": 0}
    assert provenance["recipe"]["policies"] == ["keep-attn"]
    assert provenance["calibration"]["source"] == CALIBRATION and len(provenance["calibration"]["sha256"]) == 64
    assert len(provenance["model_sha256"]) == 64
    assert set(provenance["versions"]) == {"auto-round", "transformers", "torch"}
    kept_in_checkpoint = {m.name for m in audit(keep_attn).modules_in(SELF_ATTN, LINEAR_ATTN)
                          if m.is_linear and not m.quantized}
    assert set(provenance["kept_modules"]) == kept_in_checkpoint
    assert len(kept_in_checkpoint) == 4 * 2 + 3 * 2  # q/k/v/o in 2 layers, in_proj_qkvz/in_proj_ba/out_proj in 2


def test_same_build_matches_only_identical_inputs(keep_attn):
    existing = read_provenance(keep_attn)
    settings = QuantizeSettings("W4A16", "keep-attn", nsamples=8, seqlen=128, group_size=32)
    from transformers import AutoTokenizer

    calibration = prepare_calibration(CALIBRATION, AutoTokenizer.from_pretrained(REFERENCE), settings, keep_attn)
    assert same_build(existing, plan_provenance(REFERENCE, settings, RECIPES['keep-attn'], calibration))
    other = QuantizeSettings("W4A16", "keep-attn", nsamples=8, seqlen=128, group_size=32, seed=1)
    assert not same_build(existing, plan_provenance(REFERENCE, other, RECIPES['keep-attn'], calibration))
    assert not same_build(None, plan_provenance(REFERENCE, settings, RECIPES['keep-attn'], calibration))


def test_audit_command_shows_the_provenance(keep_attn, capsys):
    assert main(["audit", str(keep_attn)]) == 0
    output = capsys.readouterr().out
    assert describe_provenance(read_provenance(keep_attn)) in output
    assert "recipe keep-attn, W4A16 g32 as auto_round" in output
    assert main(["audit", str(keep_attn), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"]["settings"]["recipe"] == "keep-attn"


def test_quantize_command_prints_the_audit_and_the_recipe_verdicts(keep_attn_run):
    out, code, output = keep_attn_run
    assert code == 0
    assert "PASS keep-attn: all 14 self_attn/linear_attn modules are 16bit" in output
    assert f"14 modules kept 16-bit by recipe keep-attn; provenance: {out / PROVENANCE_FILE}" in output
    assert (out / "model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize(("argv", "message"), [
    (["--scheme", "NVFP4", "--format", "auto_gptq"], "cannot export NVFP4 as auto_gptq"),
    (["--scheme", "FP8_BLOCK", "--format", "auto_gptq"], "cannot export FP8_BLOCK as auto_gptq"),
    (["--scheme", "NVFP4", "--group-size", "32"], "--group-size applies to"),
    (["--scheme", "W4A16", "--nsamples", "0"], "--nsamples must be at least 1"),
    (["--scheme", "W4A16", "--calibration", "missing.jsonl"], "calibration file missing.jsonl does not exist"),
])
def test_bad_requests_fail_with_one_line_before_any_model_loads(tmp_path, capsys, argv, message):
    code = main(["quantize", REFERENCE, "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten_without_the_flag(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QtestsError, match="exists and is not empty"):
        quantize(REFERENCE, out, FAST)
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_recipe_and_bad_calibration_lines_are_user_errors(tmp_path):
    with pytest.raises(QtestsError, match="unknown recipe 'keep-everything'"):
        check_request(QuantizeSettings("W4A16", "keep-everything"))
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"prompt": "no text field"}\n')
    with pytest.raises(QtestsError, match='"text" string'):
        prepare_calibration(str(bad), None, FAST, tmp_path)


def test_seqlen_past_the_models_context_is_clamped_to_it():
    """The default --seqlen 2048 on the zoo (context 512) used to end in auto-round's "no data has been cached"."""
    assert fit_to_context(QuantizeSettings("W4A16", "default"), REFERENCE).seqlen == 512
    assert fit_to_context(FAST, REFERENCE) == FAST


def test_a_calibration_file_with_no_line_as_long_as_seqlen_is_one_line_before_any_model_loads(tmp_path, capsys):
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "1+1=2"}\n{"text": "12+30=42"}\n')
    code = main(["quantize", REFERENCE, "--scheme", "W4A16", "--calibration", str(short), "--seqlen", "128",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    longest = len("12+30=42")  # the zoo's vocabulary is one token per character
    assert f"calibration file {short}: no line reaches --seqlen 128 tokens (the longest has {longest})" in err
    assert f"pass --seqlen {longest} or less" in err and not (tmp_path / "out").exists()


def test_task_calibration_packs_chat_formatted_items_to_seqlen(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REFERENCE)
    target = tmp_path / "calibration.jsonl"
    write_task_calibration("zoo", tokenizer, QuantizeSettings("W4A16", "default", nsamples=5, seqlen=100), target)
    lines = [json.loads(line)["text"] for line in target.read_text().splitlines()]
    assert len(lines) == 5
    assert all(len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= 100 for text in lines)
    assert "<|im_start|>user" in lines[0] and "<|im_start|>assistant" in lines[0]
    calibration = prepare_calibration("zoo", tokenizer, FAST, tmp_path)
    assert calibration.source == "task zoo" and len(calibration.sha256) == 64


def test_an_offline_build_ships_the_tokenizer_config_an_online_build_ships(tmp_path):
    from pytest_qtests.build.quantize import unpin_offline_loading

    offline = {"model_max_length": 512, "local_files_only": True, "chat_template": "{{ x }}"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(offline, indent=2) + "\n")
    assert unpin_offline_loading(tmp_path) is True
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {**offline, "local_files_only": False}
    assert unpin_offline_loading(tmp_path) is False  # already as an online build writes it
    assert unpin_offline_loading(tmp_path / "missing") is False
