"""The shapes of output files users already have, read by the replay backend (see tests/data/replay/SOURCE.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_qtests.engines.replay_backend import ReplayBackend
from pytest_qtests.records import GenerationRequest, QtestsError, SamplingParams
from pytest_qtests.tasks.graders import grade_output
from pytest_qtests.tasks.loaders import load_task
from pytest_qtests.tasks.registry import get_task

DATA = Path(__file__).resolve().parents[1] / "data" / "replay"
LM_EVAL_SAMPLES = DATA / "lm_eval_samples_qtests_zoo.jsonl"
BATCH_OUTPUT = DATA / "openai_batch_output.jsonl"


def requests(ids, samples: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest(i, s, "p", SamplingParams()) for i in ids for s in range(samples)]


def test_a_samples_file_written_by_lm_eval_is_graded_like_lm_eval_graded_it():
    """lm-eval 0.4.13 wrote this file on the zoo; qtests reads its raw generations and grades them with the
    zoo task's own grader: the per-item verdicts agree with lm-eval's exact_match."""
    lines = [json.loads(line) for line in LM_EVAL_SAMPLES.read_text().splitlines()]
    task = get_task("zoo")
    items = {item.item_id: item for item in load_task(task, limit=len(lines)).items}
    backend = ReplayBackend(LM_EVAL_SAMPLES)
    records = backend.generate(requests([line["doc"]["id"] for line in lines]))
    assert backend.format == "an lm-evaluation-harness samples file"
    assert [r.text for r in records] == [line["resps"][0][0] for line in lines]
    assert all(r.finish_reason == "stop" and r.error is None for r in records)
    graded = [grade_output(task.grader, r.text, items[r.item_id]).correct for r in records]
    assert graded == [line["exact_match"] == 1.0 for line in lines]
    assert backend.length_unit == "words" and records[0].output_tokens == len(lines[0]["resps"][0][0].split())


def test_lm_eval_items_without_an_id_field_are_their_doc_id(tmp_path):
    """GSM8K has no id column: its items are row indices, which is what lm-eval's doc_id is."""
    line = {"doc_id": 3, "doc": {"question": "q", "answer": "#### 4"}, "target": "4",
            "resps": [["first", "second"]], "filtered_resps": ["4"]}
    path = tmp_path / "samples_gsm8k.jsonl"
    path.write_text(json.dumps(line) + "\n")
    records = ReplayBackend(path).generate(requests(["3"], samples=2))
    assert [(r.item_id, r.sample_index, r.text) for r in records] == [("3", 0, "first"), ("3", 1, "second")]


def test_a_loglikelihood_samples_file_is_refused_with_why(tmp_path):
    line = {"doc_id": 0, "doc": {}, "target": 1, "resps": [[["-1.5", "False"]], [["-0.2", "True"]]],
            "filtered_resps": [["-1.5", "False"]]}
    path = tmp_path / "samples_mc.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(QtestsError) as caught:
        ReplayBackend(path)
    assert str(caught.value) == (
        f'replay file {path} line 1: "resps" is not [[generation, ...]] (one generate_until request per doc): only '
        "generative tasks can be replayed, not log-likelihood ones; the file was read as an lm-evaluation-harness "
        "samples file (from its first line)")


def test_the_documented_batch_output_gives_texts_counts_and_reasons():
    backend = ReplayBackend(BATCH_OUTPUT)
    records = backend.generate(requests(["request-1", "request-2"]))
    assert backend.format == "an OpenAI Batch API output file" and backend.length_unit == "tokens"
    assert [(r.text, r.output_tokens, r.prompt_tokens, r.finish_reason) for r in records] == [
        ("Hello! How can I assist you today?", 9, 20, "stop"), ("Hello.", 2, 22, "stop")]


def test_batch_reasoning_failures_and_choices(tmp_path):
    """A chat message's separated reasoning goes back inside <think>; a failed request is that item's
    error; n choices are n samples (usage then counts all of them, so lengths are counted instead)."""
    def ok(custom_id, choices, usage):
        return {"id": "batch_req_1", "custom_id": custom_id, "error": None,
                "response": {"status_code": 200, "request_id": "r", "body": {"choices": choices, "usage": usage}}}

    rows = [
        ok("a", [{"index": 0, "finish_reason": "length",
                  "message": {"role": "assistant", "content": "", "reasoning_content": "adding the digits"}}],
           {"prompt_tokens": 5, "completion_tokens": 96}),
        ok("b", [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "12"}},
                 {"index": 1, "finish_reason": "stop", "message": {"role": "assistant", "content": "13"}}],
           {"prompt_tokens": 5, "completion_tokens": 2}),
        {"id": "batch_req_2", "custom_id": "c", "response": None,
         "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}},
        {"id": "batch_req_3", "custom_id": "d", "error": None,
         "response": {"status_code": 400, "request_id": "r", "body": {"error": {"message": "max_tokens is too large"}}}},
    ]
    path = tmp_path / "batch_output.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    backend = ReplayBackend(path)
    a, b0, b1, c, d = backend.generate(requests(["a"]) + requests(["b"], samples=2) + requests(["c", "d"]))
    assert a.text == "<think>\nadding the digits\n</think>\n\n" and a.finish_reason == "length"
    assert a.thinking_closed and (b0.text, b1.text) == ("12", "13")
    assert backend.length_unit == "words"  # two choices share one completion_tokens count
    assert c.finish_reason == "error" and c.error == (
        "batch error: This request could not be executed before the completion window expired.")
    assert d.error == "batch request failed with status 400: max_tokens is too large"


def test_a_line_of_another_shape_in_a_batch_file_names_the_format(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(BATCH_OUTPUT.read_text() + json.dumps({"id": "x", "output": "y"}) + "\n")
    with pytest.raises(QtestsError) as caught:
        ReplayBackend(path)
    assert str(caught.value) == (f'replay file {path} line 3: "custom_id" is missing or not a string or integer; '
                                 "the file was read as an OpenAI Batch API output file (from its first line)")
