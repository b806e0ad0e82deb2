"""Truncation forensics as pure functions: the split by who truncated, continuation requests and merged
records, the clause of a failing verdict, the report sections and the option's validation."""

from __future__ import annotations

import json

import pytest

from pytest_qtests.engines.base import make_record
from pytest_qtests.store.cache import request_key
from pytest_qtests.options import GateOptions, build_config
from pytest_qtests.evaluate.continuation import Extension, continuation_requests, extended_cap, merge_continuation
from pytest_qtests.gate.forensics import build_forensics, compare_at_cap, truncation_split
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, QtestsError, SamplingParams
from pytest_qtests.report.evidence import RunEvidence
from pytest_qtests.report.files import results_problem, write_report_files
from pytest_qtests.report.truncation import forensics_lines, forensics_rows


def outcome(item: str, correct: bool, truncated: bool, sample: int = 0, thinking: int = 10) -> ItemOutcome:
    return ItemOutcome(item, sample, correct, truncated, 48 if truncated else 30, thinking, not truncated)


def pairs(spec: list[tuple[bool, bool, bool, bool]]) -> tuple[list[ItemOutcome], list[ItemOutcome]]:
    """(ref correct, ref truncated, variant correct, variant truncated) per item."""
    reference = [outcome(str(i), rc, rt) for i, (rc, rt, _, _) in enumerate(spec)]
    variant = [outcome(str(i), vc, vt) for i, (_, _, vc, vt) in enumerate(spec)]
    return reference, variant


# 20 items: 10 both completed (ref 10 right, variant 8), 6 only the variant truncated (ref right, variant
# wrong), 1 only the reference truncated (variant right), 3 both truncated (all wrong).
SCENARIO = ([(True, False, True, False)] * 8 + [(True, False, False, False)] * 2
            + [(True, False, False, True)] * 6 + [(False, True, True, False)] + [(False, True, False, True)] * 3)


def test_the_split_adds_up_to_the_overall_change_and_names_each_stratum():
    reference, variant = pairs(SCENARIO)
    split = truncation_split(reference, variant)
    assert split.n_pairs == 20
    assert split.overall_delta == pytest.approx((9 - 16) / 20)
    counts = {name: stratum.n for name, stratum in split.strata.items()}
    assert counts == {"both_completed": 10, "variant_only_truncated": 6, "reference_only_truncated": 1,
                      "both_truncated": 3}
    assert split.reasoning_delta == pytest.approx(-0.2)
    assert split.reasoning_part == pytest.approx(10 / 20 * -0.2)
    assert split.truncation_part == pytest.approx(6 / 20 * -1 + 1 / 20 * 1)
    assert split.reasoning_part + split.truncation_part == pytest.approx(split.overall_delta)
    assert sum(s.contribution for s in split.strata.values()) == pytest.approx(split.overall_delta)
    assert split.truncation_share == pytest.approx(0.25 / 0.35)
    low, high = split.reasoning_ci
    assert low < -0.2 < high
    assert split.strata["reference_only_truncated"].delta == 1.0


def test_no_truncation_means_all_reasoning_and_no_share_when_accuracy_rose():
    reference, variant = pairs([(True, False, False, False), (False, False, True, False), (False, False, True, False)])
    split = truncation_split(reference, variant)
    assert split.truncation_part == 0 and split.reasoning_part == pytest.approx(1 / 3)
    assert split.truncation_share is None  # nothing was lost
    assert "on the 3 pairs both completed accuracy changed +33.3pp" in split.explanation()


def test_repeats_pair_by_sample_and_use_items_as_the_unit_for_the_interval():
    reference = [outcome(str(i), True, False, sample=k) for i in range(6) for k in range(2)]
    variant = [outcome(str(i), k == 0 or i < 3, False, sample=k) for i in range(6) for k in range(2)]
    split = truncation_split(reference, variant)
    assert split.n_pairs == 12 and split.reasoning_delta == pytest.approx(-3 / 12)
    assert split.reasoning_ci[0] < split.reasoning_delta <= split.reasoning_ci[1]


def test_the_verdict_clause_gives_the_truncation_share_and_the_larger_cap():
    reference, variant = pairs(SCENARIO)
    at_double = [outcome(o.item_id, o.correct or o.truncated, False) for o in variant]
    ref_double = [outcome(o.item_id, True, False) for o in reference]
    forensics = build_forensics(reference, variant, 48, 0.05,
                                Extension(2, 96, [], ref_double, 100, 200), Extension(2, 96, [], at_double, 300, 450))
    clause = forensics.verdict_clause()
    assert clause.startswith("truncation explains -25.0pp of the -35.0pp accuracy change (71%)")
    assert "with --extend-truncated 2, at cap 96: accuracy" in clause
    assert forensics.extended.truncation_delta == 0 and forensics.extended.accuracy_delta == pytest.approx(-2 / 20)
    assert build_forensics(reference, variant, 48).extended is None  # a baseline cannot be continued


def test_compare_at_cap_gives_both_rates():
    reference, variant = pairs(SCENARIO)
    comparison = compare_at_cap(reference, variant, 48)
    assert comparison.reference_accuracy == pytest.approx(16 / 20) and comparison.variant_accuracy == pytest.approx(9 / 20)
    assert comparison.truncation_delta == pytest.approx((9 - 4) / 20)


# -- continuations -----------------------------------------------------------------------------------


def record(item: str, text: str, finish: str, ids: list[int] | None, thinking: int, closed: bool) -> GenerationRecord:
    return GenerationRecord(item, 0, text, 20, len(ids) if ids else len(text), finish, thinking, closed, 0.5, ids)


def test_only_samples_the_engine_cut_are_continued_with_the_room_left():
    sampling = SamplingParams(max_tokens=4)
    requests = [GenerationRequest(str(i), 0, f"p{i}", sampling) for i in range(3)]
    records = [record("0", "<thi", "length", [1, 2, 3, 4], 4, False),
               record("1", "ok", "stop", [5, 6], 0, True),
               record("2", "<thi", "stop", [1, 2, 3], 3, False)]  # stopped with thinking open: not cut
    picked = continuation_requests(requests, records, extended_cap(4, 2.5))
    assert [index for index, _ in picked] == [0]
    continued = picked[0][1]
    assert continued.sampling.max_tokens == 10 - 4 and continued.sampling.temperature == sampling.temperature
    assert continued.prompt == "p0" and continued.continuation == "<thi" and continued.continuation_ids == (1, 2, 3, 4)
    assert continued.seed == requests[0].seed
    no_ids = continuation_requests(requests, [record("0", "<thi", "length", None, 4, False)] + records[1:], 8)
    assert no_ids[0][1].continuation_ids == ()  # an OpenAI server returned no ids: text only


def test_a_merged_record_reads_like_one_generation():
    first = record("a", "<think>\n1+2", "length", [1, 2, 3], 3, False)
    rest = record("a", "=3\n</think>\nAnswer: 3", "stop", [4, 5, 6, 7], 2, True)
    merged = merge_continuation(first, rest)
    assert merged.text == "<think>\n1+2=3\n</think>\nAnswer: 3" and merged.token_ids == [1, 2, 3, 4, 5, 6, 7]
    assert merged.output_tokens == 7 and merged.thinking_tokens == 5 and merged.thinking_closed
    assert merged.finish_reason == "stop" and merged.prompt_tokens == 20
    closed_first = record("b", "<think>x</think>Ans", "length", [1, 9, 2], 1, True)
    assert merge_continuation(closed_first, record("b", "wer: 3", "stop", [3, 4], 0, True)).thinking_tokens == 1


def test_a_continuation_record_counts_its_own_thinking_tokens():
    sampling = SamplingParams(max_tokens=8)
    inside = GenerationRequest("a", 0, "<|im_start|>assistant\n", sampling, continuation="<think>\n1+2")
    rest = make_record(inside, "=3\n</think>\nAnswer: 3", 20, [4, 5, 9, 6], "stop", 0.1, close_token_id=9)
    assert rest.thinking_closed and rest.thinking_tokens == 2
    after = GenerationRequest("b", 0, "<|im_start|>assistant\n", sampling, continuation="<think>\nx\n</think>\nAns")
    tail = make_record(after, "wer: 3", 20, [7, 8], "stop", 0.1, close_token_id=9)
    assert tail.thinking_closed and tail.thinking_tokens == 0


def test_continuation_ids_change_the_cache_key_only_when_set():
    base = GenerationRequest("a", 0, "p", SamplingParams(), continuation="x")
    with_ids = GenerationRequest("a", 0, "p", SamplingParams(), continuation="x", continuation_ids=(7,))
    assert request_key("m", "e", base) != request_key("m", "e", with_ids)
    assert request_key("m", "e", base) == request_key("m", "e", GenerationRequest("a", 0, "p", SamplingParams(),
                                                                                   continuation="x", continuation_ids=()))


# -- options -----------------------------------------------------------------------------------------


def test_the_option_is_validated_up_front(tmp_path):
    options = {"models": ["m=some/model"], "max_tokens": 48}
    assert build_config(GateOptions(**options, extend_truncated=2.0)).extend_truncated == 2.0
    with pytest.raises(QtestsError, match="factor above 1"):
        build_config(GateOptions(**options, extend_truncated=1.0))
    with pytest.raises(QtestsError, match="replay backend only scores stored ones"):
        build_config(GateOptions(**options, extend_truncated=2.0, backend="replay"))
    suite = tmp_path / "suite.toml"
    suite.write_text('models = ["m=some/model"]\nextend_truncated = 1.5\n')
    assert build_config(GateOptions(suite_file=str(suite))).extend_truncated == 1.5
    suite.write_text('models = ["m=some/model"]\nextend_truncated = 0.5\n')
    with pytest.raises(QtestsError, match="extend_truncated"):
        build_config(GateOptions(suite_file=str(suite)))


# -- reports -----------------------------------------------------------------------------------------


def entry_with_forensics() -> RunEvidence:
    reference, variant = pairs(SCENARIO)
    at_double = [outcome(o.item_id, o.correct or o.truncated, False) for o in variant]
    forensics = build_forensics(reference, variant, 48, 0.05,
                                Extension(2, 96, [], [outcome(o.item_id, True, False) for o in reference], 100, 200),
                                Extension(2, 96, [], at_double, 300, 450))
    row = {"variant": "int2", "task": "zoo", "n": 20, "accuracy": 0.45, "truncation": 0.45, "median_tokens": 30,
           "degenerate": 0.0, "footprint_bytes": None, "canary": None, "role": "variant", "wall_s": 1.0}
    fingerprint = {"model": {"hash": "x"}, "task": "zoo", "dataset_hash": "d", "prompt_template_hash": "t",
                   "sampling": SamplingParams(max_tokens=48).to_dict(), "max_tokens": 48, "thinking": True,
                   "repeats": 1, "seed": 0, "engine": "transformers", "engine_version": "v", "extra": {}}
    return RunEvidence("int2", "zoo", "variant", row, variant, [], fingerprint, reference_source="reference bf16",
                       reference_outcomes=reference, forensics=forensics)


def test_reports_carry_the_split_and_the_extension(tmp_path):
    entry = entry_with_forensics()
    lines = forensics_lines([entry])
    assert lines[0].startswith("int2 on zoo at cap 48: accuracy -35.0pp = truncation -25.0pp (71% of the loss) "
                               "+ reasoning -10.0pp")
    assert "only variant truncated 6 (0.000 vs 1.000)" in lines[0]
    assert lines[1].startswith("int2 on zoo, --extend-truncated 2: int2: 0 continued to cap 96")
    assert [row[2] for row in forensics_rows([entry])] == ["48", "96 (extended)"]
    settings = {"reference": "bf16", "baseline": None, "tasks": ["zoo"], "backend": "transformers",
                "gate_mode": "evidence-of-harm", "alpha": 0.05, "fail_on": {}, "max_tokens": 48, "repeats": 1,
                "canary": 0, "limit": None, "thinking": True, "extend_truncated": 2.0}
    write_report_files([entry], settings, tmp_path)
    document = json.loads((tmp_path / "results.json").read_text())
    assert results_problem(document) is None
    written = document["runs"][0]["truncation_forensics"]
    assert written["at_cap"]["split"]["strata"]["variant_only_truncated"]["n"] == 6
    assert written["extended"]["max_tokens"] == 96 and written["variant_extension"]["reused_tokens"] == 450
    assert "### Truncation forensics" in (tmp_path / "summary.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "Truncation forensics" in page and "96 (extended)" in page
