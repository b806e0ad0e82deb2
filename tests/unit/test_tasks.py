"""Task registry, loaders (real files through ``datasets``), prompts and sampling presets.

Hub datasets cannot be downloaded here; the hub tasks are exercised on tiny hand-made files in
``tests/data/tasks`` that use the hub datasets' column names.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_qtests.records import QtestsError, SamplingParams, TaskItem
from pytest_qtests.engines.sampling import sampling_preset
from pytest_qtests.tasks import (
    DataSource,
    FieldMap,
    Task,
    get_task,
    grade_numeric,
    grade_output,
    load_task,
    prompt_opens_thinking,
    register_task,
    render_prompt,
    resolve_task_spec,
    task_names,
)
from pytest_qtests.tasks import registry

REPO = Path(__file__).resolve().parents[2]
HUB_STYLE = REPO / "tests" / "data" / "tasks"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No network, and datasets' cache in a temporary folder so tests never share a stale cache."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Task]:
    """A private copy of the registry, entry points not yet scanned, restored after the test."""
    private = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", private)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    return private


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- registry ------------------------------------------------------------------------------------


def test_builtin_tasks_are_registered() -> None:
    assert {"zoo", "gsm8k", "math500", "aime24", "aime25", "gpqa_diamond", "mmlu_pro"} <= set(task_names())


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(QtestsError, match=r"unknown task 'gsm9k'; known tasks: .*gsm8k"):
        get_task("gsm9k")


def test_register_task_adds_and_refuses_silent_replacement(isolated_registry: dict[str, Task]) -> None:
    mine = Task(name="mine", fields=FieldMap("q", "a"), grader=grade_numeric, user_message=lambda item: item.question)
    register_task(mine)
    register_task(mine)  # the same object again (a hook run twice) is harmless
    assert get_task("mine") is mine
    clash = Task(name="gsm8k", fields=FieldMap("q", "a"), grader=grade_numeric, user_message=str)
    with pytest.raises(QtestsError, match="'gsm8k' is already registered; give yours another name"):
        register_task(clash)
    register_task(clash, replace=True)
    assert get_task("gsm8k") is clash


def test_tasks_are_discovered_from_installed_entry_points(
    isolated_registry: dict[str, Task], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real distribution on sys.path declaring ``qtests.tasks`` entry points, found by importlib.metadata."""
    (tmp_path / "acme_tasks.py").write_text(textwrap.dedent("""
        from pytest_qtests.tasks import FieldMap, Task, grade_numeric

        def _task(name):
            return Task(name=name, fields=FieldMap("q", "a"), grader=grade_numeric,
                        user_message=lambda item: item.question)

        single = _task("acme_single")

        def several():
            return [_task("acme_a"), _task("acme_b")]
    """))
    dist_info = tmp_path / "acme_tasks-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tasks\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[qtests.tasks]\nsingle = acme_tasks:single\nseveral = acme_tasks:several\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"acme_single", "acme_a", "acme_b"} <= set(task_names())
    assert get_task("acme_b").name == "acme_b"


def test_a_broken_entry_point_names_itself(
    isolated_registry: dict[str, Task], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tasks.py").write_text("not_a_task = 42\n")
    dist_info = tmp_path / "broken_tasks-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tasks\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[qtests.tasks]\nbad = broken_tasks:not_a_task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(QtestsError, match="entry point broken_tasks:not_a_task .* must give a Task"):
        task_names()


def test_task_spec_overrides_the_data_source(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "mine.jsonl", [{"id": "a", "question": "1+1", "answer": "2", "digits": 1}])
    for spec in (f"zoo={file}", f"zoo:{file}", f" zoo = {file} "):
        task, source = resolve_task_spec(spec)
        assert (task.name, source) == ("zoo", DataSource(path=file))
    task, source = resolve_task_spec("gsm8k=my-org/gsm8k-mirror")
    assert source == DataSource(hub_id="my-org/gsm8k-mirror", config="main", split="test")
    with pytest.raises(QtestsError, match="names no data; write zoo=PATH"):
        resolve_task_spec("zoo=")


# --- loading real files --------------------------------------------------------------------------


def test_zoo_task_loads_from_the_repository() -> None:
    data = load_task(get_task("zoo"))
    assert data.source.path == REPO / "fixtures/zoo/task/test.jsonl"
    assert len(data.items) == 320
    first = data.items[0]
    assert (first.item_id, first.question, first.answer, first.meta) == ("add-0000", "0+7", "7", {"digits": 1})
    assert get_task("zoo").user_message(first) == "0+7"


def test_missing_zoo_file_says_how_to_point_at_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "REPO_ROOT", tmp_path / "installed")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QtestsError, match=r"task 'zoo' has no data file .*; pass one with --tasks zoo=PATH"):
        resolve_task_spec("zoo")


def test_gsm8k_defaults_to_the_bundled_copy_with_row_index_ids() -> None:
    data = load_task(get_task("gsm8k"))
    assert data.source.path == REPO / "fixtures/data/gsm8k/test.jsonl"
    assert len(data.items) == 1319
    assert [item.item_id for item in data.items[:3]] == ["0", "1", "2"]
    assert data.items[0].answer == "18"  # the part after ####
    assert "2,125" in {item.answer for item in data.items}  # kept as written; the grader normalises
    message = get_task("gsm8k").user_message(data.items[0])
    assert message.startswith("Janet")
    assert message.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")


def test_gsm8k_items_graded_through_the_task_match_their_reference_solutions() -> None:
    """Loader and grader together: the task's gold answers agree with all 1319 reference solutions."""
    task = get_task("gsm8k")
    data = load_task(task)
    solutions = [json.loads(line)["answer"] for line in (REPO / "fixtures/data/gsm8k/test.jsonl").open()]
    correct = sum(task.grader(solution, item).correct for solution, item in zip(solutions, data.items))
    assert correct == 1319


def test_limit_and_content_hash(tmp_path: Path) -> None:
    task = get_task("gsm8k")
    full, again, first_ten = load_task(task), load_task(task), load_task(task, limit=10)
    assert full.content_hash == again.content_hash
    assert len(first_ten.items) == 10 and first_ten.content_hash != full.content_hash
    rows = [json.loads(line) for line in (REPO / "fixtures/data/gsm8k/test.jsonl").open()][:10]
    copy = write_jsonl(tmp_path / "copy.jsonl", rows)
    assert load_task(task, DataSource(path=copy)).content_hash == first_ten.content_hash
    rows[3]["answer"] = rows[3]["answer"].replace("####", "#### 1")
    edited = write_jsonl(tmp_path / "edited.jsonl", rows)
    assert load_task(task, DataSource(path=edited)).content_hash != first_ten.content_hash
    with pytest.raises(QtestsError, match="--limit must be at least 1"):
        load_task(task, limit=0)


def test_parquet_and_jsonl_give_the_same_items(tmp_path: Path) -> None:
    import pyarrow
    import pyarrow.parquet

    rows = [json.loads(line) for line in (HUB_STYLE / "mmlu_pro.jsonl").open()]
    parquet = tmp_path / "mmlu_pro.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), parquet)
    task = get_task("mmlu_pro")
    from_parquet = load_task(task, DataSource(path=parquet))
    from_jsonl = load_task(task, DataSource(path=HUB_STYLE / "mmlu_pro.jsonl"))
    assert from_parquet.items == from_jsonl.items
    assert from_parquet.content_hash == from_jsonl.content_hash


# --- load errors: one line, naming the fix -------------------------------------------------------


def assert_one_line(error: pytest.ExceptionInfo[QtestsError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_field_names_the_field_the_file_and_the_fields_there(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "typo.jsonl", [{"question": "1+1", "anwser": "2"}])
    with pytest.raises(QtestsError) as error:
        load_task(get_task("gsm8k"), DataSource(path=file))
    message = assert_one_line(error)
    assert f"{file} has no field 'answer' (its fields: question, anwser)" in message
    assert "rename the column" in message


@pytest.mark.parametrize("content", ["", "\n\n", "[]"], ids=["zero-bytes", "blank-lines", "empty-list"])
def test_empty_file_is_reported_as_empty(tmp_path: Path, content: str) -> None:
    file = tmp_path / "empty.jsonl"
    file.write_text(content)
    with pytest.raises(QtestsError) as error:
        load_task(get_task("zoo"), DataSource(path=file))
    assert assert_one_line(error) == f"task file {file} is empty; it needs at least one item"


def test_empty_parquet_is_reported_as_empty(tmp_path: Path) -> None:
    import pyarrow
    import pyarrow.parquet

    file = tmp_path / "empty.parquet"
    schema = pyarrow.schema([("question", pyarrow.string()), ("answer", pyarrow.string())])
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([], schema=schema), file)
    with pytest.raises(QtestsError, match="is empty; it needs at least one item"):
        load_task(get_task("gsm8k"), DataSource(path=file))


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(QtestsError, match=r"task file .*nope.jsonl not found; check the path"):
        load_task(*resolve_task_spec(f"zoo={tmp_path / 'nope.jsonl'}"))
    csv = tmp_path / "items.csv"
    csv.write_text("question,answer\n1+1,2\n")
    with pytest.raises(QtestsError, match="unknown format; use .jsonl, .json or .parquet"):
        load_task(get_task("zoo"), DataSource(path=csv))


def test_malformed_jsonl_is_unreadable_not_a_traceback(tmp_path: Path) -> None:
    file = tmp_path / "broken.jsonl"
    file.write_text('{"question": "1+1", "answer": "2"}\n{"question": oops\n')
    with pytest.raises(QtestsError) as error:
        load_task(get_task("gsm8k"), DataSource(path=file))
    assert assert_one_line(error).startswith(f"cannot read task file {file}")


def test_hub_unreachable_offline_suggests_a_local_copy() -> None:
    with pytest.raises(QtestsError) as error:
        load_task(get_task("math500"))
    message = assert_one_line(error)
    assert message.startswith("cannot load hub dataset HuggingFaceH4/MATH-500 split test (ConnectionError")
    assert "pass a local copy with --tasks NAME=FILE.jsonl" in message


def test_gsm8k_row_without_marker_and_duplicate_ids(tmp_path: Path) -> None:
    no_marker = write_jsonl(tmp_path / "no_marker.jsonl", [{"question": "1+1", "answer": "2"}])
    with pytest.raises(QtestsError, match="item 0: answer has no '####' marker"):
        load_task(get_task("gsm8k"), DataSource(path=no_marker))
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"id": "x", "question": "1+1", "answer": "2", "digits": 1}] * 2)
    with pytest.raises(QtestsError, match="item id 'x' appears twice"):
        load_task(get_task("zoo"), DataSource(path=twice))


# --- hub tasks on files with the hub datasets' columns --------------------------------------------


@pytest.mark.parametrize(
    ("name", "ids", "golds"),
    [
        ("math500", ["test/precalculus/807.json", "test/prealgebra/1.json", "test/algebra/2.json"],
         ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{3}{4}", "\\frac{1}{2}"]),
        ("aime24", ["60", "61"], ["24", "1001"]),
        ("aime25", ["0", "1"], ["70", "243"]),
    ],
)
def test_math_tasks_map_fields_and_grade_with_math_verify(name: str, ids: list[str], golds: list[str]) -> None:
    task, source = resolve_task_spec(f"{name}={HUB_STYLE / (name + '.jsonl')}")
    data = load_task(task, source)
    assert [item.item_id for item in data.items] == ids
    assert [item.answer for item in data.items] == golds
    for item in data.items:
        assert task.user_message(item).endswith("put your final answer within \\boxed{}.")
        right = f"<think>work</think>\nSo the answer is $\\boxed{{{item.answer}}}$."
        assert grade_output(task.grader, right, item).correct
        assert not grade_output(task.grader, "<think>work</think>\n$\\boxed{9999}$", item).correct


def test_math500_accepts_equivalent_forms() -> None:
    task, source = resolve_task_spec(f"math500={HUB_STYLE / 'math500.jsonl'}")
    by_id = {item.item_id: item for item in load_task(task, source).items}
    assert task.grader("\\boxed{0.75}", by_id["test/prealgebra/1.json"]).correct
    assert task.grader("\\boxed{(3, \\frac{\\pi}{2})}", by_id["test/precalculus/807.json"]).correct


def test_gpqa_choices_are_shuffled_deterministically_by_seed() -> None:
    task, source = resolve_task_spec(f"gpqa_diamond={HUB_STYLE / 'gpqa_diamond.jsonl'}")
    rows = {row["Record ID"]: row for row in map(json.loads, (HUB_STYLE / "gpqa_diamond.jsonl").open())}
    seed0, seed0_again = load_task(task, source, seed=0), load_task(task, source, seed=0)
    assert seed0.items == seed0_again.items and seed0.content_hash == seed0_again.content_hash
    loads = [load_task(task, source, seed=seed).items for seed in range(8)]
    for items in loads:
        for item in items:
            row = rows[item.item_id]
            assert item.choices["ABCD".index(item.answer)] == row["Correct Answer"]
            wrong = [row[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
            assert sorted(item.choices) == sorted([row["Correct Answer"], *wrong])
    assert len({tuple(item.choices for item in items) for items in loads}) > 1  # the seed moves choices
    assert len({item.answer for items in loads for item in items}) > 1  # the gold is not always "A"


def test_gpqa_prompt_lists_letters_and_the_grader_reads_them() -> None:
    task, source = resolve_task_spec(f"gpqa_diamond={HUB_STYLE / 'gpqa_diamond.jsonl'}")
    item = load_task(task, source, seed=3).items[0]
    message = task.user_message(item)
    for letter, choice in zip("ABCD", item.choices):
        assert f"\n{letter}) {choice}" in message
    assert message.endswith('finish with a line of the form "Answer: X" where X is one of A, B, C, D.')
    assert grade_output(task.grader, f"<think>hmm</think>\nAnswer: {item.answer}", item).correct
    wrong = next(letter for letter in "ABCD" if letter != item.answer)
    assert not grade_output(task.grader, f"<think>hmm</think>\nAnswer: {wrong}", item).correct


def test_mmlu_pro_keeps_up_to_ten_options_and_letter_answers() -> None:
    task, source = resolve_task_spec(f"mmlu_pro={HUB_STYLE / 'mmlu_pro.jsonl'}")
    items = load_task(task, source).items
    assert [(item.item_id, len(item.choices), item.answer) for item in items] == [
        ("70", 10, "C"), ("71", 4, "C"), ("72", 10, "J")]
    assert items[2].choices[9] == "Paris" and items[2].meta == {"category": "other"}
    assert "\nJ) Paris\n" in task.user_message(items[2])
    assert grade_output(task.grader, "</think>Answer: J", items[2]).correct


def test_mmlu_pro_answer_outside_the_options_is_a_data_error(tmp_path: Path) -> None:
    row = {"question_id": 1, "question": "?", "options": ["a", "b", "c"], "answer": "D", "category": "x"}
    file = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(QtestsError, match="item 1: answer 'D' is not one of its 3 option letters"):
        load_task(get_task("mmlu_pro"), DataSource(path=file))


# --- prompts -------------------------------------------------------------------------------------

QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
# Qwen3.5 / QwQ style: the template itself opens the thinking block.
OPENS_THINKING_TEMPLATE = QWEN3_TEMPLATE.replace(
    "{%- endif %}{%- endif %}", "{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}"
)


def make_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template,
                                   name_or_path="tiny/test-model")


def test_render_prompt_uses_the_models_template_and_thinking_switch() -> None:
    tokenizer = make_tokenizer(QWEN3_TEMPLATE)
    on = render_prompt(tokenizer, "12+30", thinking=True)
    off = render_prompt(tokenizer, "12+30", thinking=False)
    assert on == "<|im_start|>user\n12+30<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"
    assert not prompt_opens_thinking(on) and not prompt_opens_thinking(off)


def test_prompt_opens_thinking_for_templates_that_prefill_think() -> None:
    tokenizer = make_tokenizer(OPENS_THINKING_TEMPLATE)
    on = render_prompt(tokenizer, "12+30", thinking=True)
    assert on.endswith("assistant\n<think>\n") and prompt_opens_thinking(on)
    assert not prompt_opens_thinking(render_prompt(tokenizer, "12+30", thinking=False))
    item = TaskItem("0", "12+30", "42")
    # the model's output then continues the thought: without </think> it is unfinished
    assert not grade_output(grade_numeric, "2+0=2\nAnswer: 42", item, prompt_opens_thinking(on)).correct
    assert grade_output(grade_numeric, "2+0=2\n</think>\nAnswer: 42", item, prompt_opens_thinking(on)).correct


def test_tokenizer_without_chat_template_is_a_clear_error() -> None:
    with pytest.raises(QtestsError) as error:
        render_prompt(make_tokenizer(None), "hi", thinking=True)
    assert assert_one_line(error).startswith("tokenizer tiny/test-model has no chat template;")


# --- sampling presets ----------------------------------------------------------------------------


def test_sampling_presets() -> None:
    assert sampling_preset("qwen-thinking", max_tokens=4096, seed=7) == SamplingParams(
        temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, max_tokens=4096, seed=7)
    assert sampling_preset("qwen-instruct", max_tokens=512) == SamplingParams(
        temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, max_tokens=512, seed=0)
    assert sampling_preset("greedy", max_tokens=64).temperature == 0.0
    with pytest.raises(QtestsError, match="unknown sampling preset 'hot'; choose one of qwen-thinking"):
        sampling_preset("hot", max_tokens=64)
    with pytest.raises(QtestsError, match="max tokens must be at least 1"):
        sampling_preset("greedy", max_tokens=0)
