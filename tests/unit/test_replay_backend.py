"""The replay backend: outputs produced elsewhere, graded as if generated here (bundled GSM8K)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_qtests.engines.replay_backend import ReplayBackend
from pytest_qtests.records import GenerationRequest, QtestsError, SamplingParams
from pytest_qtests.tasks.graders import grade_output
from pytest_qtests.tasks.loaders import load_task
from pytest_qtests.tasks.prompts import render_prompt
from pytest_qtests.tasks.registry import get_task

REPO = Path(__file__).resolve().parents[2]
ZOO_REFERENCE = REPO / "fixtures" / "zoo" / "tiny-qwen3next"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ZOO_REFERENCE)


@pytest.fixture(scope="module")
def gsm8k():
    """The first five bundled GSM8K items: ids "0".."4" (row indices; GSM8K has no id field)."""
    task = get_task("gsm8k")
    return task, load_task(task, limit=5).items


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def requests_for(task, items, tokenizer, samples: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest(item.item_id, index, render_prompt(tokenizer, task.user_message(item), thinking=True),
                              SamplingParams(max_tokens=512))
            for item in items for index in range(samples)]


def test_replayed_gsm8k_outputs_become_graded_records(tmp_path, tokenizer, gsm8k):
    task, items = gsm8k
    assert [item.item_id for item in items] == ["0", "1", "2", "3", "4"]
    assert items[0].answer == "18"
    path = write_jsonl(tmp_path / "outputs.jsonl", [
        {"id": "0", "output": "<think>\n16-3-4=9, 9*2=18\n</think>\nShe makes \\boxed{18} dollars.",
         "finish_reason": "stop", "output_tokens": 41, "prompt_tokens": 250},
        {"id": "1", "output": f"<think>\nhalf of 2 is 1\n</think>\n\\boxed{{{items[1].answer}}}"},
        {"id": "2", "output": "<think>\nthe house costs 80000 plus 50000 and then", "finish_reason": "length",
         "output_tokens": 512},
        {"id": 3, "output": f"<think>\nsprints\n</think>\nThe answer is \\boxed{{{items[3].answer}}}."},
        {"id": "999", "output": "an item of another split"},
    ])
    backend = ReplayBackend(path, tokenizer=tokenizer)
    requests = requests_for(task, items, tokenizer)
    progressed: list[int] = []
    records = backend.generate(requests, progressed.append)

    assert [r.item_id for r in records] == ["0", "1", "2", "3", "4"] and progressed == [5]
    assert [r.finish_reason for r in records] == ["stop", "stop", "length", "stop", "error"]
    assert (records[0].output_tokens, records[0].prompt_tokens) == (41, 250)  # the file's counts win
    counted = tokenizer.encode(records[1].text, add_special_tokens=False)
    assert records[1].output_tokens == len(counted)  # missing counts come from the tokenizer
    assert records[1].prompt_tokens == len(tokenizer.encode(requests[1].prompt, add_special_tokens=False))
    assert records[2].thinking_closed is False and records[0].thinking_closed is True
    assert records[4].error == "no replayed output for item 4" and records[4].text == ""
    graded = [grade_output(task.grader, r.text, item).correct for r, item in zip(records[:4], items)]
    assert graded == [True, True, False, True]

    with pytest.warns(UserWarning, match=r"1 replayed ids are not items of the task \(999\)"):
        assert backend.unmatched_ids(item.item_id for item in items) == ["999"]


def test_the_files_hash_is_the_models_identity_not_the_engines(tmp_path):
    """Two replay files are two models on one engine: a baseline saved from one compares with the other."""
    from pytest_qtests.store.fingerprint import replay_identity

    row = {"id": "0", "output": "x", "output_tokens": 1, "prompt_tokens": 3}
    first, second = write_jsonl(tmp_path / "a.jsonl", [row]), write_jsonl(tmp_path / "b.jsonl", [{**row, "output": "y"}])
    assert ReplayBackend(first).engine_version() == ReplayBackend(second).engine_version() == "replay"
    assert replay_identity(first)["hash"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert replay_identity(first)["hash"] != replay_identity(second)["hash"]


def test_samples_are_matched_by_sample_index(tmp_path):
    counts = {"output_tokens": 1, "prompt_tokens": 1}
    path = write_jsonl(tmp_path / "k.jsonl", [{"id": "7", "output": "a", **counts},
                                              {"id": "7", "sample_index": 1, "output": "b", **counts}])
    sampling = SamplingParams()
    records = ReplayBackend(path).generate([GenerationRequest("7", index, "p", sampling) for index in (1, 0, 2)])
    assert [r.text for r in records] == ["b", "a", ""]
    assert records[2].error == "no replayed output for item 7 sample 2"
    assert ReplayBackend(path).unmatched_ids(["7"]) == []


def test_a_continuation_request_is_an_error_not_the_full_output(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "0", "output": "full", "output_tokens": 1, "prompt_tokens": 1}])
    [record] = ReplayBackend(path).generate([GenerationRequest("0", 0, "p", SamplingParams(), continuation="fu")])
    assert record.finish_reason == "error" and "cannot continue" in record.error


@pytest.mark.parametrize("line, problem", [
    ('{"id": "0", "output": "x"', "line 2: not valid JSON"),
    ('["0", "x"]', "line 2: a JSON list, not an object"),
    ('{"output": "x"}', 'line 2: "id" is missing'),
    ('{"id": true, "output": "x"}', 'line 2: "id" is missing or not a string or integer'),
    ('{"id": "1"}', 'line 2: "output" is missing'),
    ('{"id": "1", "output": "x", "finish_reason": "eos"}',
     "line 2: \"finish_reason\" is 'eos', not one of stop, length"),
    ('{"id": "1", "output": "x", "output_tokens": -1}', 'line 2: "output_tokens" is -1'),
    ('{"id": "1", "output": "x", "sample_index": 1.5}', 'line 2: "sample_index" is 1.5'),
    ('{"id": 0, "output": "again"}', "line 2: item 0 sample 0 was already replayed on line 1"),
])
def test_malformed_lines_name_file_and_line(tmp_path, tokenizer, line, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "0", "output": "fine"}, line])
    with pytest.raises(QtestsError) as caught:
        ReplayBackend(path, tokenizer=tokenizer)
    message = str(caught.value)
    assert f"replay file {path} {problem}" in message and "\n" not in message


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'\n{"id": "0", "output": "caf\xe9"}\n')
    with pytest.raises(QtestsError, match=r"line 2: not UTF-8 text"):
        ReplayBackend(path)


@pytest.mark.parametrize("content, problem", [("", "holds no outputs"), (None, "does not exist")])
def test_empty_or_missing_file(tmp_path, content, problem):
    path = tmp_path / "outputs.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(QtestsError, match=problem):
        ReplayBackend(path)


def test_lines_without_counts_are_measured_in_words_for_the_whole_file(tmp_path):
    """One line without ``output_tokens`` makes every length of the file words: never a mix of units."""
    path = write_jsonl(tmp_path / "n.jsonl", [{"id": "0", "output": "one two three", "output_tokens": 40},
                                              {"id": "1", "output": "four five"}])
    backend = ReplayBackend(path)
    records = backend.generate([GenerationRequest(i, 0, "how much is it", SamplingParams()) for i in ("0", "1")])
    assert backend.length_unit == "words" and backend.device_info()["length_unit"] == "words"
    assert [r.output_tokens for r in records] == [3, 2] and records[0].prompt_tokens == 4


def test_a_tokenizer_counts_tokens_where_the_file_has_none(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "n.jsonl", [{"id": "0", "output": "one two three", "output_tokens": 40},
                                              {"id": "1", "output": "four five"}])
    backend = ReplayBackend(path, tokenizer=tokenizer)
    records = backend.generate([GenerationRequest(i, 0, "p", SamplingParams()) for i in ("0", "1")])
    assert backend.length_unit == "tokens"
    assert [r.output_tokens for r in records] == [40, len(tokenizer.encode("four five", add_special_tokens=False))]


def test_estimated_thinking_tokens_are_counted_in_output_tokens(tmp_path):
    thought = "<think>\n" + "x" * 400 + "\n</think>\nok"
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "0", "output": thought, "output_tokens": 10, "prompt_tokens": 1}])
    [record] = ReplayBackend(path).generate([GenerationRequest("0", 0, "p", SamplingParams())])
    assert 0 < record.thinking_tokens <= record.output_tokens == 10
