"""``qtests sweep``: the Pareto marking (pure) and one small real sweep on the zoo reference."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_qtests.cli.main import main
from pytest_qtests.records import QtestsError
from pytest_qtests.build.sweep import SweepRow, mark_pareto, smallest_passing, sweep_points
from pytest_qtests.report.sweep import markdown_table, rich_table

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"


def row(label: str, footprint: int, d_acc: float, d_trunc: float, verdict: str = "PASS") -> SweepRow:
    return SweepRow(label, "W4A16", "default", "zoo", footprint, 4.0, accuracy=1 + d_acc, delta_accuracy=d_acc,
                    truncation=d_trunc, delta_truncation=d_trunc, length_ratio=1.0, verdict=verdict)


def test_pareto_front_keeps_only_undominated_variants_and_highlights_the_smallest_pass():
    rows = [
        row("small-bad", 100, -0.30, 0.05, "FAIL"),   # smallest: on the front although it fails
        row("mid-good", 200, -0.01, 0.00),            # passes, smallest passing
        row("mid-worse", 200, -0.02, 0.01),           # same size, worse on both: dominated
        row("big-best", 400, 0.00, 0.00),             # most accurate: on the front
        row("big-dominated", 500, -0.01, 0.00),       # bigger than mid-good, no better: dominated
        row("broken", 150, 0.0, 0.0, "ERROR"),        # no numbers to compare: never marked
    ]
    rows[-1].delta_accuracy = rows[-1].delta_truncation = None
    mark_pareto(rows)
    assert {r.label for r in rows if r.pareto} == {"small-bad", "mid-good", "big-best"}
    assert [r.label for r in rows if r.smallest_passing] == ["mid-good"]


def test_the_card_goes_to_the_smallest_variant_that_passed_on_every_task():
    rows = [row("tiny", 100, 0.0, 0.0), row("small", 200, -0.01, 0.0), row("big", 400, 0.0, 0.0)]
    rows += [replace(rows[0], task="gsm8k", verdict="FAIL"), replace(rows[1], task="gsm8k"),
             replace(rows[2], task="gsm8k"), row("reference", 800, 0.0, 0.0, "reference")]
    assert smallest_passing(rows) == "small"  # tiny passed zoo but failed gsm8k
    assert smallest_passing([r for r in rows if r.label in ("tiny", "reference")]) is None


def test_tables_sort_by_footprint_and_mark_the_smallest_passing_variant():
    rows = [row("b", 300, -0.01, 0.0), row("a", 100, -0.2, 0.1, "FAIL"), row("c", 200, 0.0, 0.0)]
    rows[1].failed = ["accuracy", "length"]
    mark_pareto(rows)
    markdown = markdown_table(rows, "sweep")
    body = [line for line in markdown.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [line.split("|")[1].strip().strip("*") for line in body] == ["a", "c", "b"]
    assert "**c**" in markdown and "◀ smallest passing" in markdown
    assert "FAIL (accuracy, length)" in markdown and "-20.0 pp" in markdown
    assert "smallest passing" in rich_table(rows)


def test_sweep_points_validate_names_and_name_directories(tmp_path):
    points = sweep_points(["W4A16", "W2A16"], ["default", "recommended"], tmp_path)
    assert [p.label for p in points] == ["w4a16-default", "w4a16-recommended", "w2a16-default", "w2a16-recommended"]
    assert points[0].path == tmp_path / "variants" / "w4a16-default"
    with pytest.raises(QtestsError, match="unknown scheme or recipe 'W5A16'"):
        sweep_points(["W5A16"], ["default"], tmp_path)


def test_small_sweep_builds_gates_and_reuses(tmp_path, monkeypatch, capsys):
    """One W2A16 variant on a few zoo items: real auto-round, real transformers generation, then a re-run
    that reuses the checkpoint and the cached generations."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["sweep", str(ZOO / "tiny-qwen3next"), "--schemes", "W2A16", "--recipes", "recommended",
            "--tasks", "zoo", "--limit", "12", "--max-tokens", "96", "--group-size", "32", "--nsamples", "8",
            "--seqlen", "128", "--calibration", str(ZOO / "task" / "calibration.jsonl"),
            "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "sweep")]
    code = main(argv)
    first = capsys.readouterr()
    assert code in (0, 1)
    document = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    by_label = {r["label"]: r for r in document["rows"]}
    assert set(by_label) == {"reference", "w2a16-recommended"}
    reference, variant = by_label["reference"], by_label["w2a16-recommended"]
    assert reference["verdict"] == "reference" and reference["delta_accuracy"] == 0.0
    assert variant["verdict"] in ("PASS", "FAIL") and variant["build"] == "built"
    assert (code == 0) == (variant["verdict"] == "PASS")
    assert variant["delta_accuracy"] == pytest.approx(variant["accuracy"] - reference["accuracy"])
    assert 0 < variant["footprint_bytes"] < reference["footprint_bytes"]
    assert "w2a16-recommended" in first.out and (tmp_path / "sweep" / "sweep.md").is_file()
    assert (tmp_path / "sweep" / "report" / "results.json").is_file()
    summary = (tmp_path / "sweep" / "report" / "summary.md").read_text()
    assert "w2a16-recommended: made by qtests quantize: recipe recommended, W2A16 g32" in summary

    assert main(argv + ["--card"]) == code  # same inputs: both checkpoints reused, generations from the cache
    second = capsys.readouterr()
    assert second.err.count("reusing") == 1 and "quantizing" not in second.err
    card = tmp_path / "sweep" / "variants" / "w2a16-recommended" / "README.md"
    assert card.is_file() == (variant["verdict"] == "PASS")  # the card goes to the smallest passing variant only
    if card.is_file():
        assert f"model card: {card}" in second.out and "Recipe `recommended`" in card.read_text()
    else:
        assert "no variant passed the gate: no model card written" in second.out
    again = {r["label"]: r for r in json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]}
    assert again["w2a16-recommended"]["build"] == "reused"
    assert again["w2a16-recommended"]["delta_accuracy"] == variant["delta_accuracy"]


@pytest.mark.parametrize("flags, line", [
    (["--fail-on", "accuracy:lots"], "qtests: error: --fail-on: cannot read 'accuracy:lots'"),
    (["--backend", "openai"], "qtests: error: --backend openai cannot load the checkpoints a sweep builds: "
                              "use --backend transformers or vllm"),
])
def test_sweep_rejects_bad_gate_flags_before_building(tmp_path, capsys, flags, line):
    code = main(["sweep", str(ZOO / "tiny-qwen3next"), "--schemes", "W4A16", *flags, "-o", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.startswith(line) and err.count("\n") == 1
    assert not (tmp_path / "sweep" / "variants").exists()
