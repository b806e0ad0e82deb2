"""Load a task's items through ``datasets``: hub datasets for users, local JSONL/JSON/Parquet files.

Every load ends in a :class:`TaskData`: the items in data order and their content hash
(:func:`fingerprint.dataset_hash` of ids, questions, answers, choices). The hash goes into
fingerprints and baselines, so a comparison against a baseline computed on different data (another
revision, an edited file, another ``--limit``) is detected rather than trusted.
Every way a load can fail is turned into one :class:`QtestsError` line that names the fix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pytest_qtests.store.fingerprint import dataset_hash
from pytest_qtests.records import QtestsError, TaskItem
from pytest_qtests.tasks.graders import CHOICE_LETTERS
from pytest_qtests.tasks.registry import DataSource, FieldMap, Task

_FORMAT_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class TaskData:
    """The items of one task as evaluated, with where they came from and a hash of their content."""

    task: Task
    source: DataSource
    items: tuple[TaskItem, ...]
    content_hash: str


def load_task(task: Task, source: DataSource | None = None, limit: int | None = None, seed: int = 0) -> TaskData:
    """Load ``task`` from ``source`` (default: the task's own), keep the first ``limit`` items.

    ``seed`` only matters for tasks whose choices are shuffled (GPQA): the same seed gives the same
    letters, so paired comparisons see identical prompts.
    """
    source = source or task.default_source()
    rows = _load_rows(source)
    origin = source.describe()
    _check_columns(rows.column_names, task.fields, origin)
    if limit is not None:
        if limit < 1:
            raise QtestsError(f"--limit must be at least 1, got {limit}")
        rows = rows.select(range(min(limit, rows.num_rows)))
    items = tuple(rows_to_items(rows, task.fields, seed, origin))
    return TaskData(task=task, source=source, items=items, content_hash=dataset_hash(items))


def _load_rows(source: DataSource) -> Any:
    import datasets

    datasets.disable_progress_bars()  # the plugin draws its own progress bar; datasets' would interleave
    if source.path is not None:
        return _load_local(source.path)
    try:
        rows = datasets.load_dataset(source.hub_id, source.config, split=source.split, revision=source.revision)
    except (ConnectionError, OSError, ValueError) as error:  # offline, gated, unknown split/config
        raise QtestsError(
            f"cannot load {source.describe()} ({type(error).__name__}: {_first_line(error)}); "
            "run once online to cache it, or pass a local copy with --tasks NAME=FILE.jsonl"
        ) from error
    return _non_empty(rows, source.describe())


def _load_local(path: Path) -> Any:
    import datasets

    if not path.is_file():
        raise QtestsError(f"task file {path} not found; check the path given with --tasks NAME=FILE")
    builder = _FORMAT_BY_SUFFIX.get(path.suffix)
    if builder is None:
        raise QtestsError(f"task file {path} has an unknown format; use .jsonl, .json or .parquet")
    if _has_no_rows(path, builder):
        raise QtestsError(f"task file {path} is empty; it needs at least one item")
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as error:  # datasets raises many types for malformed files; all mean "unreadable"
        raise QtestsError(f"cannot read task file {path} ({type(error).__name__}: {_first_line(error)}); "
                          f"fix the file so it is valid {path.suffix[1:].upper()}") from error
    return _non_empty(rows, str(path))


def _has_no_rows(path: Path, builder: str) -> bool:
    """Spot an empty file before ``datasets`` does: it reports one with an obscure generation error."""
    if builder == "parquet":
        import pyarrow.parquet

        try:
            return pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0
        except Exception:  # not valid parquet: let datasets' read report it
            return False
    return path.stat().st_size < 4096 and path.read_bytes().strip() in (b"", b"[]")


def _non_empty(rows: Any, origin: str) -> Any:
    if rows.num_rows == 0:
        raise QtestsError(f"{origin} has no items; point the task at a file or split with at least one row")
    return rows


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _check_columns(columns: Sequence[str], fields: FieldMap, origin: str) -> None:
    missing = [name for name in fields.required() if name not in columns]
    if missing:
        raise QtestsError(
            f"{origin} has no field {', '.join(map(repr, missing))} (its fields: {', '.join(columns)}); "
            "rename the column in the data or register the task with a FieldMap naming the right one"
        )


def rows_to_items(rows: Any, fields: FieldMap, seed: int, origin: str) -> list[TaskItem]:
    """Turn rows (mappings) into items; ids are the id column, else the 0-based row index."""
    items = [_row_to_item(row, index, fields, seed, origin) for index, row in enumerate(rows)]
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen:
            raise QtestsError(f"{origin}: item id {item.item_id!r} appears twice; ids in {fields.id!r} must be unique")
        seen.add(item.item_id)
    return items


def _row_to_item(row: Mapping[str, Any], index: int, fields: FieldMap, seed: int, origin: str) -> TaskItem:
    item_id = str(row[fields.id]) if fields.id is not None else str(index)
    question = str(row[fields.question])
    answer = str(row[fields.answer]).strip()
    if fields.answer_after is not None:
        if fields.answer_after not in answer:
            raise QtestsError(
                f"{origin}: item {item_id}: answer has no {fields.answer_after!r} marker before the final "
                "answer; fix the row or map the answer field to a column holding just the answer"
            )
        answer = answer.rsplit(fields.answer_after, 1)[1].strip()
    choices: tuple[str, ...] = ()
    if fields.options is not None:
        choices = tuple(str(option) for option in row[fields.options])
        answer = answer.upper()
        _check_letter(answer, choices, item_id, origin)
    elif fields.distractors:
        choices, answer = _shuffled_choices(answer, [str(row[name]).strip() for name in fields.distractors],
                                            random.Random(f"{seed}:{item_id}"))
    meta = {name: row[name] for name in fields.meta}
    return TaskItem(item_id=item_id, question=question, answer=answer, choices=choices, meta=meta)


def _check_letter(letter: str, choices: tuple[str, ...], item_id: str, origin: str) -> None:
    if not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise QtestsError(f"{origin}: item {item_id} has {len(choices)} options; "
                          f"multiple choice needs 2 to {len(CHOICE_LETTERS)}")
    if letter not in CHOICE_LETTERS[: len(choices)]:
        raise QtestsError(f"{origin}: item {item_id}: answer {letter!r} is not one of its "
                          f"{len(choices)} option letters; the answer field must hold the letter")


def _shuffled_choices(correct: str, wrong: list[str], rng: random.Random) -> tuple[tuple[str, ...], str]:
    """All options in a seeded order, and the letter the correct one landed on."""
    options = [correct, *wrong]
    order = list(range(len(options)))
    rng.shuffle(order)
    choices = tuple(options[position] for position in order)
    return choices, CHOICE_LETTERS[order.index(0)]
