"""Report files on constructed runs: results.json against its schema, summary.md, flips.jsonl, report.html.

The runs are built the way the evaluator builds them, without an engine: texts -> GenerationRecords,
real thinking extents, real degeneracy verdicts (thresholds calibrated on the reference's texts) and
real gate checks, family-adjusted per variant. One test drives ``write_reports`` through a real
GateSession whose "engine" is the replay backend (outputs read from files). The slow run of
``--qt-report`` with generation on the zoo is done by hand, not here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_qtests.options import DEFAULT_FAIL_ON
from pytest_qtests.evaluate.degeneracy import DetectorThresholds, assess, calibrate
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.gate.checks import run_checks
from pytest_qtests.gate.multiplicity import apply_gatekeeping
from pytest_qtests.gate.tolerances import parse_fail_on
from pytest_qtests.records import GenerationRecord, ItemOutcome, QtestsError, SamplingParams, TaskItem
from pytest_qtests.report.evidence import (
    RunEvidence,
    degeneracy_digest,
    find_flips,
    rate_interval,
    thinking_distribution,
)
from pytest_qtests.report.files import (
    markdown_summary,
    results_document,
    results_problem,
    write_report_files,
)
from pytest_qtests.report.plots import PLOTS
from pytest_qtests.report.terminal import render_entries
from pytest_qtests.evaluate.evaluator import CanaryResult
from pytest_qtests.audit.defects import Finding
from pytest_qtests.evaluate.diagnosis import Diagnosis, LayerError, Localisation, LoadReport
from pytest_qtests.gate.stats import wilson_interval
from pytest_qtests.thinking import thinking_extent

CAP = 96
N_ITEMS = 40
TASKS = ("zoo", "arith")
TOLERANCES = parse_fail_on(DEFAULT_FAIL_ON)
# The int4 variant, by construction: wrong on LOST_WRONG, cut at the cap on TRUNCATED, right where the
# reference is wrong on GAINED. The reference is wrong on every item whose index ends in 9.
REFERENCE_WRONG = {i for i in range(N_ITEMS) if i % 10 == 9}
LOST_WRONG = {0, 1, 2, 3, 4, 5}
TRUNCATED = set(range(20, 34))
GAINED = {9, 19}
INJECTION = "<script>alert('x')</script>"


def item(i: int) -> TaskItem:
    a, b = 11 * i + 3, 7 * i + 5
    return TaskItem(str(i), f"What is {a}+{b}? <b>show steps</b>", str(a + b))


def reasoning(i: int, answer: str) -> str:
    steps = "\n".join(f"{d}+{d + 1}+0={2 * d + 1}" for d in range(i % 5 + 2))
    return f"<think>\n{steps}\n</think>\nAnswer: {answer}"


def generation(task: str, i: int, text: str, finish: str, thresholds: DetectorThresholds) -> tuple[GenerationRecord, ItemOutcome]:
    """One record and its graded outcome, as runner.Evaluator.grade makes them (chars are the zoo's tokens)."""
    thinking_tokens, closed = thinking_extent(text, None, None, opened_in_prompt=False)
    record = GenerationRecord(str(i), 0, text, 20, len(text), finish, thinking_tokens, closed)
    found = re.search(r"Answer: (\d+)", text)
    extracted = found.group(1) if found else None
    truncated = finish == "length" or not closed
    verdict = assess(text, None, thresholds, answer_found=extracted is not None, truncated=truncated)
    outcome = ItemOutcome(str(i), 0, extracted == item(i).answer, truncated, len(text), thinking_tokens, closed,
                          extracted, verdict.degenerate, list(verdict.reasons))
    return record, outcome


def fingerprint(label: str, task: str) -> dict:
    return Fingerprint.for_run(
        model={"kind": "local", "hash": hashlib.sha256(label.encode()).hexdigest()}, task=task,
        dataset_hash="d" * 64, prompt_template_hash="p" * 64, sampling=SamplingParams(0.6, 0.95, 20, 0.0, CAP, 0),
        thinking=True, repeats=1, engine="transformers", engine_version="5.19.0").to_dict()


def reference_text(i: int) -> tuple[str, str]:
    answer = item(i).answer
    return reasoning(i, str(int(answer) + 1) if i in REFERENCE_WRONG else answer), "stop"


def int4_text(i: int) -> tuple[str, str]:
    answer = item(i).answer
    if i in TRUNCATED:
        return ("<think>\n" + "\n".join(f"{d}+{d}+0={2 * d}" for d in range(40)))[:CAP], "length"
    if i in LOST_WRONG:
        return reasoning(i, str(int(answer) + 10)) + (INJECTION if i == 0 else ""), "stop"
    if i in GAINED:
        return reasoning(i, answer), "stop"
    return reference_text(i)


def row(label: str, task: str, role: str, outcomes: list[ItemOutcome], footprint: int | None, canary=None) -> dict:
    """A summary row as GateSession.summary_rows makes it."""
    return {"variant": label, "task": task, "n": len(outcomes),
            "accuracy": statistics.fmean(o.correct for o in outcomes),
            "truncation": statistics.fmean(o.truncated for o in outcomes),
            "median_tokens": statistics.median(o.output_tokens for o in outcomes),
            "degenerate": statistics.fmean(o.degenerate for o in outcomes), "footprint_bytes": footprint,
            "canary": None if canary is None else canary.passed, "role": role, "wall_s": 1.5}


@dataclass
class Scenario:
    entries: list[RunEvidence]
    settings: dict


def build_scenario(footprints: bool = True) -> Scenario:
    entries: list[RunEvidence] = []
    int4_checks = []
    per_task = {}
    for task in TASKS:
        items = {str(i): item(i) for i in range(N_ITEMS)}
        reference_texts = [reference_text(i) for i in range(N_ITEMS)]
        thresholds = calibrate([text for text, _ in reference_texts])
        ref = [generation(task, i, *reference_texts[i], thresholds) for i in range(N_ITEMS)]
        var = [generation(task, i, *int4_text(i), thresholds) for i in range(N_ITEMS)]
        canary_items = list(range(0, N_ITEMS, 5))
        broken = [generation(task, i, "!" * CAP, "length", thresholds) for i in canary_items]
        ref_records, ref_outcomes = map(list, zip(*ref))
        var_records, var_outcomes = map(list, zip(*var))
        broken_records, broken_outcomes = map(list, zip(*broken))
        int4_checks += [(task, result) for result in run_checks(ref_outcomes, var_outcomes, TOLERANCES)]
        canary = CanaryResult(len(broken), sum(o.degenerate for o in broken_outcomes), 0, 1.5e-5, False,
                              [f"item {broken_outcomes[0].item_id}: {broken_outcomes[0].degenerate_reasons[0]}"], N_ITEMS)
        per_task[task] = (items, ref_records, ref_outcomes, var_records, var_outcomes, broken_records, broken_outcomes, canary)
    flat = [r for _, r in int4_checks]
    adjusted = dict(zip(range(len(int4_checks)), apply_gatekeeping(flat, lambda i, level: flat[i])))
    by_task: dict[str, dict] = {}
    for index, (task, _) in enumerate(int4_checks):
        by_task.setdefault(task, {})[f"{adjusted[index].check}_result"] = adjusted[index]
    for task in TASKS:
        items, ref_records, ref_outcomes, var_records, var_outcomes, broken_records, broken_outcomes, canary = per_task[task]
        source = "reference bf16"
        entries.append(RunEvidence("bf16", task, "reference", row("bf16", task, "reference", ref_outcomes,
                                   4_000_000 if footprints else None), ref_outcomes, ref_records,
                                   fingerprint("bf16", task), items=items))
        entries.append(RunEvidence("int4", task, "variant", {**row("int4", task, "variant", var_outcomes,
                                   1_500_000 if footprints else None), **by_task[task]}, var_outcomes, var_records,
                                   fingerprint("int4", task), None, True, source, ref_outcomes, ref_records, items))
        entries.append(RunEvidence("broken", task, "variant", row("broken", task, "variant", broken_outcomes,
                                   1_200_000 if footprints else None, canary), broken_outcomes, broken_records,
                                   fingerprint("broken", task), canary, False, source, ref_outcomes, ref_records, items))
        entries[-1].diagnosis = BROKEN_DIAGNOSIS
    settings = {"reference": "bf16", "baseline": None, "tasks": list(TASKS), "backend": "transformers",
                "gate_mode": "evidence-of-harm", "alpha": 0.05,
                "fail_on": {k: t.text for k, t in TOLERANCES.items()}, "max_tokens": CAP, "repeats": 1,
                "canary": 8, "limit": N_ITEMS, "thinking": True}
    return Scenario(entries, settings)


# What the gate attaches to a variant that failed its canary (numbers of the zoo's nvfp4-broken, rounded).
BROKEN_DIAGNOSIS = Diagnosis(
    "broken", LoadReport(("model.layers.0.mlp.experts.0.up_proj.weight_global_scale",), (), ()),
    [Finding("scale-outlier", ("model.layers.0.mlp.experts.0.up_proj",), "model.layers.0.mlp.experts.0.up_proj: reset")],
    Localisation(8, 354, (LayerError(0, 1.6e12, {"linear_attn": 0.096, "routed_experts": 2.0e12, "shared_expert": 0.084}),
                          LayerError(1, float("nan"), {"self_attn": 1.2, "routed_experts": float("nan")}))))


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


@pytest.fixture(scope="module")
def report_dir(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report")
    write_report_files(scenario.entries, scenario.settings, directory)
    return directory


def by_name(document: dict, variant: str, task: str) -> dict:
    return next(run for run in document["runs"] if run["variant"] == variant and run["task"] == task)


# ---------------------------------------------------------------------------------------------------
# results.json


def test_results_json_validates_and_holds_every_check_canary_and_distribution(scenario, report_dir):
    document = json.loads((report_dir / "results.json").read_text())
    assert results_problem(document) is None
    assert len(document["runs"]) == len(TASKS) * 3

    int4 = by_name(document, "int4", "zoo")
    entry = next(e for e in scenario.entries if e.variant == "int4" and e.task == "zoo")
    assert set(int4["checks"]) == set(TOLERANCES)
    for name, result in entry.checks.items():
        written = int4["checks"][name]
        assert written["estimate"] == pytest.approx(result.estimate)
        assert written["adjusted_p_value"] == pytest.approx(result.adjusted_p_value)
        assert written["passed"] is result.passed and written["message"] == result.message
    assert int4["checks"]["truncation"]["passed"] is False  # 14 of 40 newly truncated
    assert int4["verdict"].startswith("FAIL") and "truncation" in int4["verdict"] and int4["passed"] is False
    assert int4["flips"] == {"lost": len(LOST_WRONG | (TRUNCATED - REFERENCE_WRONG)), "gained": len(GAINED)}
    assert int4["thinking"]["never_closed"] == pytest.approx(len(TRUNCATED) / N_ITEMS)
    assert int4["reference_thinking"] == by_name(document, "bf16", "zoo")["thinking"]
    assert int4["reference_thinking"]["never_closed"] == 0
    low, high = int4["summary"]["accuracy_ci"]
    correct = N_ITEMS - len(LOST_WRONG | TRUNCATED | (REFERENCE_WRONG - GAINED))
    assert (low, high) == pytest.approx(wilson_interval(correct, N_ITEMS))
    assert int4["fingerprint"]["max_tokens"] == CAP

    broken = by_name(document, "broken", "arith")
    assert broken["complete"] is False and broken["verdict"] == "FAIL (canary)" and broken["passed"] is False
    assert by_name(document, "bf16", "zoo")["passed"] is None  # the reference is not judged
    assert broken["canary"]["passed"] is False and broken["canary"]["full_run_generations"] == N_ITEMS
    assert broken["degeneracy"]["rate"] == 1.0
    kinds = [reason["kind"] for reason in broken["degeneracy"]["top_reasons"]]
    assert "loop" in kinds
    example = broken["degeneracy"]["top_reasons"][0]["example"]
    assert "!!!!" in example["excerpt"] and example["item_id"] == "0"
    assert by_name(document, "bf16", "zoo")["reference_thinking"] is None


def test_schema_names_the_field_of_a_bad_document(scenario):
    document = results_document(scenario.entries, scenario.settings)
    document["runs"][1]["summary"]["accuracy"] = 1.5
    assert results_problem(document).startswith("runs[1].summary.accuracy")
    del document["runs"][0]["fingerprint"]
    assert "fingerprint" in results_problem(document)


def test_nothing_is_written_when_results_do_not_match_the_schema(scenario, tmp_path):
    entries = build_scenario().entries
    entries[0].row["truncation"] = -0.1  # a rate below zero: a bug upstream, never written
    with pytest.raises(QtestsError, match=r"runs\[0\]\.summary\.truncation"):
        write_report_files(entries, scenario.settings, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_file_is_written_without_leftover_temporary_files(report_dir):
    assert sorted(p.name for p in report_dir.iterdir()) == ["flips.jsonl", "report.html", "results.json", "summary.md"]


# ---------------------------------------------------------------------------------------------------
# flips.jsonl


def test_flips_are_exactly_the_discordant_items_with_both_outputs(report_dir):
    rows = [json.loads(line) for line in (report_dir / "flips.jsonl").read_text().splitlines()]
    found = {(r["variant"], r["task"], r["item_id"], r["direction"]) for r in rows}
    lost = LOST_WRONG | (TRUNCATED - REFERENCE_WRONG)
    expected = {("int4", task, str(i), "lost") for task in TASKS for i in lost}
    expected |= {("int4", task, str(i), "gained") for task in TASKS for i in GAINED}
    # broken ran only the canary's items (every 5th); each is wrong, so it lost those the reference got right
    expected |= {("broken", task, str(i), "lost") for task in TASKS for i in range(0, N_ITEMS, 5)
                 if i not in REFERENCE_WRONG}
    assert found == expected and len(rows) == len(expected)
    truncated = next(r for r in rows if r["variant"] == "int4" and r["item_id"] == "20")
    assert truncated["variant_output"]["truncated"] is True and truncated["reference"]["truncated"] is False
    assert truncated["variant_output"]["finish_reason"] == "length"
    assert truncated["variant_output"]["text"] == int4_text(20)[0]
    assert truncated["reference"]["text"] == reference_text(20)[0]
    assert truncated["expected"] == item(20).answer and truncated["question"] == item(20).question


def test_flips_without_reference_texts_keep_outcomes_and_null_texts(scenario):
    entry = next(e for e in scenario.entries if e.variant == "int4")
    stored = RunEvidence(entry.variant, entry.task, entry.role, entry.row, entry.outcomes, entry.records,
                         entry.fingerprint, reference_source="baseline baselines/bf16/zoo.json",
                         reference_outcomes=entry.reference_outcomes, items=entry.items)
    flips = find_flips(stored)
    assert len(flips) == len(find_flips(entry))
    assert all(f.reference["text"] is None and f.candidate["text"] is not None for f in flips)


# ---------------------------------------------------------------------------------------------------
# summary.md and terminal


def test_markdown_has_one_table_row_per_variant_and_task_then_failures_and_degeneracy(scenario, report_dir):
    text = (report_dir / "summary.md").read_text()
    assert text == markdown_summary(scenario.entries)
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert len(table) == len(TASKS) * 3
    assert {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]) for line in table} == {
        (name, task) for name in ("bf16 (ref)", "int4", "broken") for task in TASKS}
    failures = text.split("### Failed checks")[1].split("###")[0]
    assert failures.count("int4 on zoo:") >= 1 and failures.count("broken on arith: canary failed") == 1
    degenerate = text.split("### Degenerate output")[1].split("###")[0]
    assert "broken on zoo: 8/8 degenerate (canary) — loop" in degenerate
    assert '"!!!!' in degenerate


def test_terminal_prints_the_top_degeneracy_reason_under_the_table(scenario):
    text = render_entries(scenario.entries, width=150)
    table_end = text.index("broken on zoo: 8/8 degenerate")
    assert "FAIL (canary)" in text[:table_end]
    line = text[table_end:].splitlines()[0]
    assert 'loop ×8, e.g. item 0: 1-char unit "!" repeats 96x' in line and '"!!!!' in line
    assert "int4 on zoo" not in text[table_end:]  # int4 outputs are not degenerate


# ---------------------------------------------------------------------------------------------------
# report.html


def test_html_embeds_one_png_per_plot_and_names_every_variant(report_dir):
    page = (report_dir / "report.html").read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == page.count("<img") == len(PLOTS)
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)
    for name in ("bf16", "int4", "broken"):
        assert f">{name}" in page
    assert "<script" not in page and "&lt;script&gt;alert" in page  # model output is escaped
    assert "&lt;b&gt;show steps&lt;/b&gt;" in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "<link" not in page  # self-contained


def test_html_leaves_out_the_footprint_plot_when_no_footprint_is_known(scenario):
    from pytest_qtests.report.html import render_html

    page = render_html(build_scenario(footprints=False).entries, scenario.settings)
    assert page.count("<img") == len(PLOTS) - 1 and 'id="plot-footprint"' not in page


def test_html_without_matplotlib_still_has_the_tables(scenario, monkeypatch):
    from pytest_qtests.report.html import render_html

    monkeypatch.setitem(sys.modules, "pytest_qtests.report.plots", None)  # as if matplotlib were missing
    page = render_html(scenario.entries, scenario.settings)
    assert "<img" not in page and "pip install matplotlib" in page and "FAIL (canary)" in page


# ---------------------------------------------------------------------------------------------------
# Evidence functions


def outcome(item_id: str, correct: bool = True, thinking: int = 10, closed: bool = True, sample: int = 0,
            reasons: tuple[str, ...] = ()) -> ItemOutcome:
    return ItemOutcome(item_id, sample, correct, not closed, thinking + 5, thinking, closed, None, bool(reasons),
                       list(reasons))


def test_thinking_distribution_quantiles_and_never_closed_share():
    outcomes = [outcome(str(i), thinking=i, closed=i <= 75) for i in range(1, 101)]
    distribution = thinking_distribution(outcomes)
    assert (distribution.median, distribution.p90, distribution.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert distribution.never_closed == 0.25 and distribution.n == 100
    assert thinking_distribution([]) is None


def test_rate_interval_counts_items_not_samples_with_repeats():
    # 10 items x 3 repeats; items 0-5 always right, item 6 right in 2 of 3 samples, the rest never
    outcomes = [outcome(str(i), correct=i < 6 or (i == 6 and s < 2), sample=s) for i in range(10) for s in range(3)]
    interval = rate_interval(outcomes, "correct")
    assert interval.n == 10 and interval.value == pytest.approx((6 + 2 / 3) / 10)
    assert (interval.low, interval.high) == pytest.approx(wilson_interval(7, 10))
    assert rate_interval([], "correct") is None


def test_degeneracy_digest_ranks_reason_kinds_with_their_first_example():
    outcomes = [
        outcome("a", reasons=("run: character \"!\" repeated 90x in a row (limit 12)",)),
        outcome("b", reasons=("loop: 1-char unit \"+\" repeats 80x at the end", "run: character \"+\" repeated 80x")),
        outcome("c"),
        outcome("d", reasons=("loop: 2-char unit \"ab\" repeats 40x at the end",)),
        outcome("e", reasons=("answer absent: the task's extractor found no answer",)),
    ]
    records = [GenerationRecord(o.item_id, 0, f"text of {o.item_id}", 3, 3, "stop") for o in outcomes]
    digest = degeneracy_digest(outcomes, records, top=2)
    assert (digest.total, digest.degenerate, digest.rate) == (5, 4, 0.8)
    assert [(r.kind, r.count, r.item_id) for r in digest.top_reasons] == [("run", 2, "a"), ("loop", 2, "b")]
    assert digest.top_reasons[1].excerpt == '"text of b"'
    assert degeneracy_digest([outcome("x")]).top_reasons == []


def test_real_detector_reasons_are_grouped_by_their_label():
    text = "<think>\n1+2+0=3\n</think>\n" + "ab" * 60
    verdict = assess(text, None, DetectorThresholds(), answer_found=False)
    outcomes = [ItemOutcome("0", 0, False, False, len(text), 8, True, None, verdict.degenerate, list(verdict.reasons))]
    digest = degeneracy_digest(outcomes, [GenerationRecord("0", 0, text, 5, len(text), "stop")])
    assert verdict.degenerate
    assert [r.kind for r in digest.top_reasons] == ["loop", "repetition", "answer absent"]
    assert [r.reason for r in digest.top_reasons] == verdict.reasons


# ---------------------------------------------------------------------------------------------------
# From a real gate session (replay backend: outputs from files, no engine)


def test_write_reports_from_a_replayed_gate_session(tmp_path):
    """``write_reports(gate, dir)`` on a real GateSession whose engines are replay files."""
    from pytest_qtests.settings import RunConfig
    from pytest_qtests.records import VariantSpec
    from pytest_qtests.report.files import write_reports
    from pytest_qtests.report.terminal import render_summary
    from pytest_qtests.session import GateSession
    from pytest_qtests.tasks.loaders import load_task
    from pytest_qtests.tasks.registry import get_task

    zoo = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
    items = load_task(get_task("zoo"), limit=24).items

    def replay(name: str, output) -> str:
        path = tmp_path / f"{name}.jsonl"
        lines = []
        for index, task_item in enumerate(items):
            text, finish = output(index, task_item)
            lines.append(json.dumps({"id": task_item.item_id, "output": text, "finish_reason": finish,
                                     "output_tokens": len(text), "prompt_tokens": 8}))
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def right(index, task_item):
        return f"<think>\n{task_item.question}=..\n</think>\nAnswer: {task_item.answer}", "stop"

    def two_wrong(index, task_item):
        if index in (3, 17):
            return f"<think>\n{task_item.question}=..\nwait\n</think>\nAnswer: {int(task_item.answer) + 1}", "stop"
        return right(index, task_item)

    config = RunConfig(
        reference=VariantSpec("bf16", str(zoo / "tiny-qwen3next")),
        models=[VariantSpec("int2", str(zoo / "int2-default")), VariantSpec("broken", str(zoo / "nvfp4-broken"))],
        tasks=["zoo"], backend="replay", limit=24, canary=8, cache_dir=None, tolerances=dict(TOLERANCES),
        replay={"bf16": replay("bf16", right), "int2": replay("int2", two_wrong),
                "broken": replay("broken", lambda index, task_item: ("!" * CAP, "length"))},
    )
    gate = GateSession(config)
    try:
        for variant in config.models:
            gate.run(variant, "zoo")
            gate.checks(variant)
        write_reports(gate, tmp_path / "report")
        terminal = render_summary(gate, width=150)
    finally:
        gate.close()
    document = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results_problem(document) is None
    assert [(run["variant"], run["verdict"]) for run in document["runs"]] == [
        ("bf16", "reference"), ("int2", "PASS, inconclusive accuracy,truncation,degenerate"), ("broken", "FAIL (canary)")]
    # A few items cannot show two lost items are within the margins: passed, but said so, with what it could see.
    assert all(check["verdict"] == "INCONCLUSIVE" and check["passed"] and check["mde"] > 0
               for name, check in by_name(document, "int2", "zoo")["checks"].items() if name != "length")
    int2 = by_name(document, "int2", "zoo")
    assert int2["reference_source"] == "reference bf16" and int2["flips"] == {"lost": 2, "gained": 0}
    assert int2["summary"]["footprint_bytes"] < by_name(document, "bf16", "zoo")["summary"]["footprint_bytes"]
    flips = [json.loads(line) for line in (tmp_path / "report" / "flips.jsonl").read_text().splitlines()]
    assert {(f["variant"], f["item_id"]) for f in flips if f["variant"] == "int2"} == {
        ("int2", items[3].item_id), ("int2", items[17].item_id)}
    assert all(f["expected"] is not None and "wait" in f["variant_output"]["text"] for f in flips if f["variant"] == "int2")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "broken on zoo: 8/8 degenerate (canary) — loop ×8" in summary
    assert "FAIL (canary)" in terminal and "broken on zoo: 8/8 degenerate (canary) — loop ×8" in terminal
