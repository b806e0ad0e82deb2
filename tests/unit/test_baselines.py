"""Baselines: schema-validated, atomically written, safely located, and every bad file refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_qtests.cli import main as cli
from pytest_qtests.store.baselines import (
    Baseline,
    baseline_path,
    load_baseline,
    read_baseline_file,
    sanitize_name,
    save_baseline,
    summarize_outcomes,
)
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.records import ItemOutcome, QtestsError, SamplingParams


def outcome(item_id: str, correct: bool, sample_index: int = 0, output_tokens: int = 40, **fields) -> ItemOutcome:
    defaults = dict(truncated=False, thinking_tokens=output_tokens // 2, thinking_closed=True)
    defaults.update(fields)
    return ItemOutcome(item_id=item_id, sample_index=sample_index, correct=correct, output_tokens=output_tokens, **defaults)


def fingerprint(**changes) -> Fingerprint:
    settings = dict(
        model={"kind": "local", "path": "/models/bf16", "hash": "a" * 64},
        task="gsm8k",
        dataset_hash="d" * 64,
        prompt_template_hash="p" * 64,
        sampling=SamplingParams(temperature=0.6, max_tokens=512, seed=1),
        thinking=True,
        repeats=1,
        engine="transformers",
        engine_version="transformers 5.19",
        extra={"device": "cpu"},
    )
    settings.update(changes)
    return Fingerprint.for_run(**settings)


def make_baseline(name: str = "bf16", task: str = "gsm8k", correct: tuple[bool, ...] = (True, True, False, True), **fp) -> Baseline:
    outcomes = [outcome(str(i), c, output_tokens=30 + 10 * i) for i, c in enumerate(correct)]
    return Baseline.from_outcomes(name, task, fingerprint(task=task, **fp), outcomes)


def write_json(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


# --- summaries ------------------------------------------------------------------------------------


def test_summary_metrics_of_single_samples():
    outcomes = [
        outcome("a", True, output_tokens=10),
        outcome("b", False, output_tokens=100, truncated=True, thinking_closed=False),
        outcome("c", True, output_tokens=20, degenerate=True, degenerate_reasons=["repetition"]),
        outcome("d", False, output_tokens=30, error="engine died"),
    ]
    summary = summarize_outcomes(outcomes)
    assert summary == {
        "n_items": 4,
        "n_samples": 4,
        "accuracy": 0.5,
        "truncation_rate": 0.25,
        "mean_output_tokens": 40.0,
        "median_output_tokens": 25.0,
        "mean_thinking_tokens": (5 + 50 + 10 + 15) / 4,
        "degenerate_rate": 0.25,
        "error_rate": 0.25,
    }


def test_summary_averages_repeats_per_item_first():
    """Item a has 4 samples (all right), item b 1 sample (wrong): accuracy is 0.5, not 0.8."""
    outcomes = [outcome("a", True, sample_index=k) for k in range(4)] + [outcome("b", False)]
    summary = summarize_outcomes(outcomes)
    assert summary["n_items"] == 2 and summary["n_samples"] == 5
    assert summary["accuracy"] == pytest.approx(0.5)


def test_summary_of_nothing_is_a_user_error():
    with pytest.raises(QtestsError, match="no outcomes to summarize"):
        summarize_outcomes([])


# --- save and load --------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    baseline = make_baseline()
    path = save_baseline(baseline, tmp_path)
    assert path == tmp_path.resolve() / "bf16" / "gsm8k.json"
    loaded = load_baseline("bf16", tmp_path, "gsm8k")
    assert loaded == baseline
    assert load_baseline(str(path), tmp_path) == baseline  # by path, no task needed
    assert load_baseline(str(path.parent), tmp_path) == baseline  # a folder with one task
    assert [p.name for p in path.parent.iterdir()] == ["gsm8k.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644  # readable like any file (CI artifacts, a shared runner)


def test_save_replaces_an_existing_baseline(tmp_path):
    save_baseline(make_baseline(correct=(True, True)), tmp_path)
    save_baseline(make_baseline(correct=(False, False)), tmp_path)
    assert load_baseline("bf16", tmp_path, "gsm8k").summary["accuracy"] == 0.0


def test_invalid_baseline_is_refused_before_anything_is_written(tmp_path):
    save_baseline(make_baseline(correct=(True, True)), tmp_path)
    before = (tmp_path / "bf16" / "gsm8k.json").read_bytes()
    broken = make_baseline(correct=(False, False))
    broken.items[1].sample_index = -1
    with pytest.raises(QtestsError, match=r"refusing to save baseline bf16/gsm8k: items\[1\]\.sample_index: -1 is less than"):
        save_baseline(broken, tmp_path)
    assert (tmp_path / "bf16" / "gsm8k.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "bf16").iterdir()) == ["gsm8k.json"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    """Interrupted between writing the temporary file and the rename: the old baseline survives intact."""
    save_baseline(make_baseline(correct=(True, True)), tmp_path)
    before = (tmp_path / "bf16" / "gsm8k.json").read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_baseline(make_baseline(correct=(False, False)), tmp_path)
    assert (tmp_path / "bf16" / "gsm8k.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "bf16").iterdir()) == ["gsm8k.json"]


def test_duplicate_samples_are_refused(tmp_path):
    baseline = make_baseline()
    baseline.items[2].item_id = baseline.items[0].item_id
    with pytest.raises(QtestsError, match=r"items\[2\]: duplicate sample \(item_id '0', sample_index 0\)"):
        save_baseline(baseline, tmp_path)


def test_nan_metrics_are_refused(tmp_path):
    baseline = make_baseline()
    baseline.fingerprint.sampling["temperature"] = float("nan")
    with pytest.raises(QtestsError, match="refusing to save baseline bf16/gsm8k: Out of range float values are not JSON compliant: nan; a NaN"):
        save_baseline(baseline, tmp_path)
    assert not (tmp_path / "bf16" / "gsm8k.json").exists()


# --- path safety ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bf16", "bf16"), ("Qwen/Qwen3.5-27B", "Qwen_Qwen3.5-27B"), ("../../etc/passwd", "etc_passwd"), (".hidden", "hidden"), ("a b\\c", "a_b_c")],
)
def test_names_become_one_safe_path_component(name, expected):
    assert sanitize_name(name) == expected


def test_name_without_usable_characters_is_refused():
    with pytest.raises(QtestsError, match=r"baseline name '\.\./' has no usable characters"):
        sanitize_name("../")


def test_escaping_names_still_write_inside_the_directory(tmp_path):
    root = tmp_path / "baselines"
    path = save_baseline(make_baseline(name="../../outside", task="../task"), root)
    assert path.is_relative_to(root.resolve())
    assert list(tmp_path.iterdir()) == [root]


def test_symlink_out_of_the_directory_is_refused(tmp_path):
    root, outside = tmp_path / "baselines", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "bf16").symlink_to(outside, target_is_directory=True)
    with pytest.raises(QtestsError, match="outside the baseline directory .*: remove the symlink or choose another --baseline-dir"):
        save_baseline(make_baseline(), root)
    assert list(outside.iterdir()) == []
    with pytest.raises(QtestsError, match="outside the baseline directory"):
        baseline_path(root, "bf16", "gsm8k")


# --- bad files ------------------------------------------------------------------------------------


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bf16" / "gsm8k.json"
    path.parent.mkdir()
    path.write_text('{\n  "schema_version": 1,\n  "name": "bf16"\n  "task": "gsm8k"\n}\n')
    with pytest.raises(QtestsError) as raised:
        load_baseline("bf16", tmp_path, "gsm8k")
    assert str(raised.value) == (
        f"baseline {path} is not valid JSON (line 4, column 3: Expecting ',' delimiter); "
        "fix the file or re-save it with --save-baseline"
    )


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "b.json"
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(QtestsError, match="is not UTF-8 text"):
        read_baseline_file(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["items"][3].update(correct="yes"), "items[3].correct: 'yes' is not of type 'boolean'"),
        (lambda d: d["fingerprint"].pop("max_tokens"), "fingerprint: 'max_tokens' is a required property"),
        (lambda d: d["summary"].update(accuracy=1.5), "summary.accuracy: 1.5 is greater than the maximum of 1"),
        (lambda d: d.update(items=[]), "items: [] should be non-empty"),
        (lambda d: d.update(colour="blue"), "(top level): Additional properties are not allowed ('colour' was unexpected)"),
        (lambda d: d.update(schema_version="1"), "schema_version: 1 was expected"),
    ],
    ids=["item-type", "missing-field", "rate-range", "no-items", "unknown-key", "version-as-string"],
)
def test_schema_errors_point_at_the_field(tmp_path, edit, message):
    document = make_baseline().to_dict()
    edit(document)
    path = write_json(tmp_path / "bf16" / "gsm8k.json", document)
    with pytest.raises(QtestsError) as raised:
        load_baseline("bf16", tmp_path, "gsm8k")
    assert str(raised.value) == f"baseline {path} is invalid: {message}; fix the file or re-save it with --save-baseline"


def test_several_schema_errors_are_counted_in_one_line(tmp_path):
    document = make_baseline().to_dict()
    document["items"][0]["correct"] = "yes"
    document["items"][1]["truncated"] = "no"
    path = write_json(tmp_path / "b.json", document)
    with pytest.raises(QtestsError, match=r"is invalid: items\[\d\]\.\w+: '\w+' is not of type 'boolean' \(and 1 more schema errors\)"):
        read_baseline_file(path)


def test_other_schema_version_says_upgrade_or_resave(tmp_path):
    document = make_baseline().to_dict()
    document["schema_version"] = 2
    document["new_field_of_v2"] = {}
    path = write_json(tmp_path / "bf16" / "gsm8k.json", document)
    with pytest.raises(QtestsError) as raised:
        load_baseline("bf16", tmp_path, "gsm8k")
    assert str(raised.value) == (
        f"baseline {path} was written by schema version 2; this qtests reads version 1: "
        "upgrade qtests or re-save the baseline with --save-baseline"
    )


def test_missing_baselines_say_what_exists(tmp_path):
    save_baseline(make_baseline(name="bf16"), tmp_path)
    save_baseline(make_baseline(name="fp8"), tmp_path)
    with pytest.raises(QtestsError, match=r"no baseline named int4 in .* \(available: bf16, fp8\); create it with --save-baseline"):
        load_baseline("int4", tmp_path, "gsm8k")
    with pytest.raises(QtestsError, match=r"no baseline for task aime in bf16 \(tasks there: gsm8k\)"):
        load_baseline("bf16", tmp_path, "aime")
    with pytest.raises(QtestsError, match=r"baseline file .*missing\.json not found"):
        load_baseline(str(tmp_path / "missing.json"), tmp_path)
    with pytest.raises(QtestsError, match="it holds no baselines"):
        load_baseline("bf16", tmp_path / "empty", "gsm8k")


def test_a_name_with_several_tasks_needs_task(tmp_path):
    save_baseline(make_baseline(task="gsm8k"), tmp_path)
    save_baseline(make_baseline(task="aime"), tmp_path)
    with pytest.raises(QtestsError, match=r"bf16 has baselines for several tasks \(aime, gsm8k\): pass --task"):
        load_baseline("bf16", tmp_path)
    assert load_baseline("bf16", tmp_path, "aime").task == "aime"


def test_a_file_of_another_task_is_refused(tmp_path):
    path = save_baseline(make_baseline(task="aime"), tmp_path)
    with pytest.raises(QtestsError, match="is for task aime, not gsm8k"):
        load_baseline(str(path), tmp_path, "gsm8k")


# --- qtests baseline show | diff | validate ----------------------------------------------------------


def test_cli_show_prints_summary_and_fingerprint(tmp_path, capsys):
    save_baseline(make_baseline(), tmp_path)
    assert cli.main(["baseline", "show", "bf16", "--baseline-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bf16 / gsm8k  (")
    assert "  accuracy               0.75" in out
    assert "  max_tokens             512" in out and "  sampling.temperature   0.6" in out
    assert "  extra.device           cpu" in out


def test_cli_show_every_task_of_a_name(tmp_path, capsys):
    save_baseline(make_baseline(task="gsm8k"), tmp_path)
    save_baseline(make_baseline(task="aime"), tmp_path)
    assert cli.main(["baseline", "show", "bf16", "--baseline-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bf16 / aime" in out and "bf16 / gsm8k" in out


def test_cli_diff_shows_settings_metrics_and_flips(tmp_path, capsys):
    save_baseline(make_baseline("bf16", correct=(True, True, False, True)), tmp_path)
    save_baseline(
        make_baseline("int4", correct=(True, False, True, False), model={"kind": "local", "hash": "b" * 64}, engine_version="transformers 5.20"),
        tmp_path,
    )
    assert cli.main(["baseline", "diff", "bf16", "int4", "--task", "gsm8k", "--baseline-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fingerprint: model.path /models/bf16 != unset; model.hash aaaaaaaaaaaa != bbbbbbbbbbbb; engine_version transformers 5.19 != transformers 5.20" in out
    assert "accuracy                     0.75        0.5  -25.00 pp" in out
    assert "paired samples: 4 (only in A: 0, only in B: 0); flips: correct->wrong 2, wrong->correct 1" in out


def test_cli_validate_reports_each_file_and_exits_1_on_any_bad(tmp_path, capsys):
    good = save_baseline(make_baseline(), tmp_path)
    bad = write_json(tmp_path / "int4" / "gsm8k.json", {"schema_version": 1})
    assert cli.main(["baseline", "validate", str(good)]) == 0
    assert capsys.readouterr().out == f"ok: {good} (bf16 / gsm8k, 4 samples)\n"
    assert cli.main(["baseline", "validate", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok: ")
    assert lines[1].startswith(f"invalid: baseline {bad} is invalid: (top level): 'name' is a required property")
    assert len(lines) == 2


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert cli.main(["baseline", "show", "nothing", "--baseline-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qtests: error: no baseline named nothing") and err.count("\n") == 1
    assert "Traceback" not in err


# -- the zoo's committed baseline and the CI path -------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
ZOO_SUITE = REPO / "fixtures" / "zoo" / "suite.toml"


def test_a_baseline_flag_replaces_the_suites_live_reference():
    from pytest_qtests.options import build_config

    live = build_config({"qt_config": str(ZOO_SUITE)})
    ci = build_config({"qt_config": str(ZOO_SUITE), "qt_baseline": "bf16"})
    both = build_config({"qt_config": str(ZOO_SUITE), "qt_baseline": "bf16", "qt_reference": "bf16=org/bf16"})
    assert live.reference.label == "bf16" and live.baseline is None
    assert ci.reference is None and ci.baseline == "bf16" and ci.models == live.models
    assert both.reference.source == "org/bf16"  # an explicit --reference still wins


def test_committed_zoo_baseline_is_valid_and_made_by_the_zoo_reference_under_the_zoo_suite():
    import tomllib

    from pytest_qtests.engines.sampling import sampling_preset
    from pytest_qtests.records import VariantSpec
    from pytest_qtests.store.fingerprint import model_identity

    assert cli.main(["baseline", "validate", str(REPO / "baselines")]) == 0
    baseline = read_baseline_file(REPO / "baselines" / "bf16" / "zoo.json")
    suite = tomllib.loads(ZOO_SUITE.read_text())
    zoo_items = (REPO / "fixtures" / "zoo" / "task" / "test.jsonl").read_text().splitlines()
    assert (baseline.name, baseline.task, len(baseline.items)) == ("bf16", "zoo", len(zoo_items))
    fingerprint = baseline.fingerprint
    assert (fingerprint.max_tokens, fingerprint.repeats, fingerprint.engine) == (suite["max_tokens"], 1, suite["backend"])
    preset = sampling_preset(suite["sampling"], max_tokens=suite["max_tokens"], seed=0)
    assert set(fingerprint.sampling) >= {"temperature", "top_p", "top_k"}
    assert fingerprint.sampling == {key: getattr(preset, key) for key in fingerprint.sampling}
    reference = VariantSpec("bf16", str(REPO / "fixtures" / "zoo" / "tiny-qwen3next"))
    assert fingerprint.model["hash"] == model_identity(reference)["hash"]  # the weights in fixtures/zoo today
