"""The task registry: what a task is, the built-in tasks, and how users add their own.

A :class:`Task` is pure description: where its rows come from, which columns hold the question and the
answer, how the user message is worded and which grader scores it. Loading (``loaders.py``) and
prompting (``prompts.py``) read this description; nothing here touches disk or network.

Users add tasks without forking, the two ways pytest users already know:

* a package declares an entry point in the ``qtests.tasks`` group whose object is a :class:`Task`, or a
  callable returning one task or a list of them; :func:`get_task` discovers them on first use;
* code that runs before the tasks are looked up (a ``conftest.py`` at import, a plugin) calls
  :func:`register_task`.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Iterable

from pytest_qtests.records import QtestsError, TaskItem
from pytest_qtests.tasks.graders import CHOICE_LETTERS, Grader, grade_choice, grade_math, grade_numeric

ENTRY_POINT_GROUP = "qtests.tasks"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

# tasks/registry.py -> tasks -> pytest_qtests -> plugins -> repository root (in a checkout or editable install)
REPO_ROOT = Path(__file__).resolve().parents[3]
ZOO_TASK_FILE = Path("fixtures/zoo/task/test.jsonl")
GSM8K_BUNDLED_FILE = Path("fixtures/data/gsm8k/test.jsonl")


@dataclass(frozen=True)
class DataSource:
    """Where rows come from: a local JSONL/JSON/Parquet file, or a hub dataset (id, config, split)."""

    path: Path | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str = "test"
    revision: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("a DataSource is either a local path or a hub id, exactly one of them")

    def describe(self) -> str:
        """Human-readable origin, used in error messages and recorded in fingerprints."""
        if self.path is not None:
            return str(self.path)
        config = f" config {self.config}" if self.config else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"hub dataset {self.hub_id}{revision}{config} split {self.split}"


@dataclass(frozen=True)
class FieldMap:
    """Which columns of a row make a :class:`TaskItem`.

    ``id``: the data's own id column; without one an item's id is its 0-based row index, so replayed
    outputs can name items either way. Multiple choice comes in two shapes: ``options`` names a list
    column and ``answer`` already holds the letter (MMLU-Pro); ``distractors`` names columns of wrong
    answers, ``answer`` holds the correct text, and the choices are shuffled per item by the seed
    (GPQA, whose correct answer would otherwise always be first). ``answer_after`` keeps only the text
    after the last marker (GSM8K's ``#### 18``). ``meta`` columns are copied for per-item reports.
    """

    question: str
    answer: str
    id: str | None = None
    options: str | None = None
    distractors: tuple[str, ...] = ()
    answer_after: str | None = None
    meta: tuple[str, ...] = ()

    def required(self) -> list[str]:
        """Every column a row must have."""
        names = [self.question, self.answer, *self.distractors, *self.meta]
        return names + [name for name in (self.id, self.options) if name is not None]


@dataclass(frozen=True)
class Task:
    """A named evaluation: data location, column mapping, user message and grader."""

    name: str
    fields: FieldMap
    grader: Grader
    user_message: Callable[[TaskItem], str]
    hub: DataSource | None = None
    bundled: tuple[Path, ...] = ()  # relative to the repository root, else to the working directory
    description: str = ""

    def code_identity(self) -> dict[str, str]:
        """Which grader and prompt builder this task runs, by name and a hash of their source: part of
        the fingerprint, so a baseline graded by another version of a user's grader is not compared."""
        return {"grader": _code_identity(self.grader), "user_message": _code_identity(self.user_message)}

    def default_source(self) -> DataSource:
        """The first bundled file that exists, else the hub dataset; a clear error when neither is there.

        A bundled copy wins over the hub so runs are reproducible offline; the content hash in the
        fingerprint still tells whether two runs saw the same items.
        """
        candidates = list(dict.fromkeys(base / path for path in self.bundled for base in (REPO_ROOT, Path.cwd())))
        for candidate in candidates:
            if candidate.is_file():
                return DataSource(path=candidate)
        if self.hub is not None:
            return self.hub
        looked = ", ".join(str(path) for path in candidates) or "nowhere"
        raise QtestsError(
            f"task {self.name!r} has no data file (looked at {looked}); "
            f"pass one with --tasks {self.name}=PATH/TO/FILE.jsonl"
        )


def _code_identity(function: Callable) -> str:
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):  # built in C, or defined where no source is kept: the name must do
        return name
    return f"{name} {hashlib.sha256(source.encode()).hexdigest()[:12]}"


_REGISTRY: dict[str, Task] = {}
_entry_points_loaded = False


def register_task(task: Task, replace: bool = False) -> None:
    """Add ``task`` to the registry (entry points and users' own calls end up here)."""
    if not isinstance(task, Task):
        raise QtestsError(f"register_task expects a pytest_qtests.tasks.Task, got {type(task).__name__}")
    if not isinstance(task.fields, FieldMap):
        raise QtestsError(f"task {task.name!r}: fields must be a FieldMap naming the question and answer columns")
    for part, signature in (("grader", "grader(answer, item) -> Grade"), ("user_message", "user_message(item) -> str")):
        if not callable(getattr(task, part)):
            raise QtestsError(f"task {task.name!r} has no {part}: pass {part}=a function {signature}")
    if task.name in _REGISTRY and not replace and _REGISTRY[task.name] is not task:
        raise QtestsError(
            f"task {task.name!r} is already registered; give yours another name or pass replace=True"
        )
    _REGISTRY[task.name] = task


def register_user_task(task: Task) -> None:
    """What the ``pytest_qtests_register_tasks`` hook's ``register`` does: a conftest's task, which may be
    registered again (a conftest imported anew, pytester runs), but never in place of a built-in one."""
    if isinstance(task, Task) and task.name in {builtin.name for builtin in BUILTIN_TASKS}:
        raise QtestsError(f"task {task.name!r} is built in; give yours another name")
    register_task(task, replace=True)


def get_task(name: str) -> Task:
    """The registered task called ``name``; unknown names list the known ones."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QtestsError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None


def task_names() -> list[str]:
    """Names of every registered task, entry points included, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def _load_entry_points() -> None:
    """Register tasks from installed packages' ``qtests.tasks`` entry points, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            provided = entry_point.load()
        except Exception as error:  # a broken third-party package must say which one it is
            raise QtestsError(
                f"entry point {entry_point.name!r} ({entry_point.value}) in group {ENTRY_POINT_GROUP} "
                f"failed to load: {error}; fix or uninstall that package"
            ) from error
        for task in _tasks_from(provided, entry_point.value):
            register_task(task)


def _tasks_from(provided: object, origin: str) -> Iterable[Task]:
    if callable(provided) and not isinstance(provided, Task):
        provided = provided()
    tasks = [provided] if isinstance(provided, Task) else provided
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(task, Task) for task in tasks):
        raise QtestsError(
            f"entry point {origin} in group {ENTRY_POINT_GROUP} must give a Task, a list of Tasks, "
            "or a callable returning either"
        )
    return tasks


def _spec_separator(spec: str) -> str | None:
    return "=" if "=" in spec else ":" if ":" in spec else None


def task_spec_name(spec: str) -> str:
    """The task name of a ``--tasks`` entry (``gsm8k=data.jsonl`` -> ``gsm8k``), without loading anything."""
    separator = _spec_separator(spec)
    return (spec.split(separator, 1)[0] if separator else spec).strip()


def resolve_task_spec(spec: str) -> tuple[Task, DataSource]:
    """Parse ``NAME``, ``NAME=SOURCE`` or ``NAME:SOURCE`` into a task and its data source.

    ``SOURCE`` is a local ``.jsonl``/``.json``/``.parquet`` file (relative to the working directory)
    or a hub dataset id, read with the task's usual config and split.
    """
    separator = _spec_separator(spec)
    if separator is None:
        task = get_task(spec.strip())
        return task, task.default_source()
    name, value = (part.strip() for part in spec.split(separator, 1))
    task = get_task(name)
    if not value:
        raise QtestsError(f"task spec {spec!r} names no data; write {name}=PATH/TO/FILE.jsonl")
    path = Path(value).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        return task, DataSource(path=path.resolve())
    hub = task.hub or DataSource(hub_id=value)
    return task, DataSource(hub_id=value, config=hub.config, split=hub.split)


# --- user messages -----------------------------------------------------------------------------

STEP_BY_STEP_BOXED = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def bare_question(item: TaskItem) -> str:
    """The question alone: the zoo model was trained on nothing else."""
    return item.question


def reason_and_box(item: TaskItem) -> str:
    """Qwen's own math evaluation prompt (GSM8K, MATH-500, AIME)."""
    return item.question + STEP_BY_STEP_BOXED


def lettered_choices(item: TaskItem) -> str:
    """The question, its lettered options, and the ``Answer: X`` line the choice grader reads."""
    letters = CHOICE_LETTERS[: len(item.choices)]
    options = "\n".join(f"{letter}) {choice}" for letter, choice in zip(letters, item.choices))
    return (
        f"{item.question}\n\n{options}\n\n"
        f"Think step by step, then finish with a line of the form \"Answer: X\" where X is one of "
        f"{', '.join(letters)}."
    )


# --- built-in tasks ----------------------------------------------------------------------------

BUILTIN_TASKS = (
    Task(
        name="zoo",
        description="multi-digit addition worked digit by digit: the embedded zoo's task",
        fields=FieldMap(question="question", answer="answer", id="id", meta=("digits",)),
        grader=grade_numeric,
        user_message=bare_question,
        bundled=(ZOO_TASK_FILE,),
    ),
    Task(
        name="gsm8k",
        description="GSM8K test split (1,319 grade-school word problems), numeric answers",
        fields=FieldMap(question="question", answer="answer", answer_after="####"),
        grader=grade_numeric,
        user_message=reason_and_box,
        hub=DataSource(hub_id="openai/gsm8k", config="main", split="test"),
        bundled=(GSM8K_BUNDLED_FILE,),
    ),
    Task(
        name="math500",
        description="MATH-500 (HuggingFaceH4/MATH-500), LaTeX answers graded by math-verify",
        fields=FieldMap(question="problem", answer="answer", id="unique_id", meta=("subject", "level")),
        grader=grade_math,
        user_message=reason_and_box,
        hub=DataSource(hub_id="HuggingFaceH4/MATH-500", split="test"),
    ),
    Task(
        name="aime24",
        description="AIME 2024 (HuggingFaceH4/aime_2024), integer answers graded by math-verify",
        fields=FieldMap(question="problem", answer="answer", id="id"),
        grader=grade_math,
        user_message=reason_and_box,
        hub=DataSource(hub_id="HuggingFaceH4/aime_2024", split="train"),
    ),
    Task(
        name="aime25",
        description="AIME 2025 (math-ai/aime25), integer answers graded by math-verify",
        fields=FieldMap(question="problem", answer="answer", id="id"),
        grader=grade_math,
        user_message=reason_and_box,
        hub=DataSource(hub_id="math-ai/aime25", split="test"),
    ),
    Task(
        name="gpqa_diamond",
        description="GPQA Diamond (Idavidrein/gpqa, gated), four choices shuffled per item by the seed",
        fields=FieldMap(
            question="Question",
            answer="Correct Answer",
            id="Record ID",
            distractors=("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
        ),
        grader=grade_choice,
        user_message=lettered_choices,
        hub=DataSource(hub_id="Idavidrein/gpqa", config="gpqa_diamond", split="train"),
    ),
    Task(
        name="mmlu_pro",
        description="MMLU-Pro (TIGER-Lab/MMLU-Pro), up to ten choices A-J",
        fields=FieldMap(question="question", answer="answer", id="question_id", options="options",
                        meta=("category",)),
        grader=grade_choice,
        user_message=lettered_choices,
        hub=DataSource(hub_id="TIGER-Lab/MMLU-Pro", split="test"),
    ),
)

for _task in BUILTIN_TASKS:
    register_task(_task)
