"""Baselines: one model's per-sample outcomes on one task, stored once and compared item by item later.

A baseline keeps every sample's outcome (not only the accuracy) because the gate's paired statistics
need to know *which* items the reference got right. It is a JSON document validated by a JSON Schema
shipped in ``schemas/``; a file that does not match is refused with one line pointing at the field,
because a silently misread baseline would make the gate lie.

Layout: ``<baseline dir>/<name>/<task>.json``; names are sanitized and the written path must stay
inside the baseline directory, so a label or a symlink cannot make qtests write elsewhere.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import jsonschema
from jsonschema.exceptions import best_match

from pytest_qtests.version import __version__
from pytest_qtests.store.atomic import atomic_write
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.records import ItemOutcome, QtestsError

SCHEMA_VERSION = 1
DEFAULT_BASELINE_DIR = Path("baselines")
_RESAVE_HINT = "fix the file or re-save it with --save-baseline"


@dataclass
class Baseline:
    """One model (``name``, its label) on one task: fingerprint, summary metrics and per-sample outcomes."""

    name: str
    task: str
    fingerprint: Fingerprint
    summary: dict[str, Any]
    items: list[ItemOutcome]
    created_at: str
    qtests_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_outcomes(
        cls, name: str, task: str, fingerprint: Fingerprint, outcomes: Sequence[ItemOutcome]
    ) -> Baseline:
        """A new baseline for freshly graded outcomes, stamped with the current UTC time."""
        return cls(
            name=name,
            task=task,
            fingerprint=fingerprint,
            summary=summarize_outcomes(outcomes),
            items=list(outcomes),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "task": self.task,
            "created_at": self.created_at,
            "qtests_version": self.qtests_version,
            "fingerprint": self.fingerprint.to_dict(),
            "summary": dict(self.summary),
            "items": [outcome.to_dict() for outcome in self.items],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        return cls(
            name=data["name"],
            task=data["task"],
            fingerprint=Fingerprint.from_dict(data["fingerprint"]),
            summary=dict(data["summary"]),
            items=[ItemOutcome.from_dict(item) for item in data["items"]],
            created_at=data["created_at"],
            qtests_version=data["qtests_version"],
            schema_version=data["schema_version"],
        )


def summarize_outcomes(outcomes: Sequence[ItemOutcome]) -> dict[str, Any]:
    """Summary metrics of one model on one task.

    Rates and means average each item's samples first, then average over items, so with ``--repeats``
    an item counts once however many samples it has (the statistics use items as the unit too). The
    median output length is taken over all samples: it describes the length distribution itself.
    """
    if not outcomes:
        raise QtestsError("no outcomes to summarize: the task produced no items; check the dataset and --limit")
    by_item: dict[str, list[ItemOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_item[outcome.item_id].append(outcome)

    def item_mean(value: Any) -> float:
        return statistics.fmean(statistics.fmean(value(o) for o in samples) for samples in by_item.values())

    return {
        "n_items": len(by_item),
        "n_samples": len(outcomes),
        "accuracy": item_mean(lambda o: o.correct),
        "truncation_rate": item_mean(lambda o: o.truncated),
        "mean_output_tokens": item_mean(lambda o: o.output_tokens),
        "median_output_tokens": float(statistics.median(o.output_tokens for o in outcomes)),
        "mean_thinking_tokens": item_mean(lambda o: o.thinking_tokens),
        "degenerate_rate": item_mean(lambda o: o.degenerate),
        "error_rate": item_mean(lambda o: o.error is not None),
    }


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema_text = resources.files("pytest_qtests").joinpath("schemas/baseline.schema.json").read_text("utf-8")
    return jsonschema.Draft202012Validator(json.loads(schema_text))


def _field_path(path: Iterable[Any]) -> str:
    """``["items", 3, "correct"]`` -> ``items[3].correct``: how a user finds the field in the file."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _schema_problem(data: Any) -> str | None:
    """One line naming the most relevant schema violation, or ``None`` when the document is valid."""
    errors = list(_validator().iter_errors(data))
    if not errors:
        return None
    error = best_match(errors)
    more = f" (and {len(errors) - 1} more schema errors)" if len(errors) > 1 else ""
    return f"{_field_path(error.absolute_path)}: {error.message}{more}"


def _duplicate_problem(items: list[dict[str, Any]]) -> str | None:
    """Paired statistics match samples by (item_id, sample_index): duplicates would be matched twice."""
    seen: set[tuple[str, int]] = set()
    for index, item in enumerate(items):
        key = (item["item_id"], item["sample_index"])
        if key in seen:
            return f"items[{index}]: duplicate sample (item_id {key[0]!r}, sample_index {key[1]})"
        seen.add(key)
    return None


def _version_problem(data: Any) -> str | None:
    """A document of another schema version gets its own message: the fix is an upgrade, not an edit."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        return (
            f"written by schema version {version}; this qtests reads version {SCHEMA_VERSION}: "
            "upgrade qtests or re-save the baseline with --save-baseline"
        )
    return None


def validate_document(data: Any) -> str | None:
    """Why ``data`` is not a baseline this qtests can read, in one line; ``None`` when it is."""
    return _version_problem(data) or _schema_problem(data) or _duplicate_problem(data["items"])


def sanitize_name(name: str) -> str:
    """A label or task name made safe as one path component: no separators, no leading dots."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not safe:
        raise QtestsError(
            f"baseline name {name!r} has no usable characters: use letters, digits, '.', '_' or '-'"
        )
    return safe


def baseline_path(directory: Path | str, name: str, task: str) -> Path:
    """Where the baseline of ``name`` on ``task`` lives; refuses any path that resolves outside ``directory``."""
    root = Path(directory).resolve()
    path = root / sanitize_name(name) / f"{sanitize_name(task)}.json"
    if not path.resolve().is_relative_to(root):
        raise QtestsError(
            f"baseline path for {name!r} resolves to {path.resolve()}, outside the baseline directory {root}: "
            "remove the symlink or choose another --baseline-dir"
        )
    return path


def save_baseline(baseline: Baseline, directory: Path | str = DEFAULT_BASELINE_DIR) -> Path:
    """Validate, then write ``<directory>/<name>/<task>.json`` atomically; returns the path written.

    The document is checked against the schema *before* anything touches disk, and written atomically,
    so a crash or Ctrl-C leaves either the old baseline or the new one, never half of one.
    """
    document = baseline.to_dict()
    problem = validate_document(document)
    if problem:
        raise QtestsError(f"refusing to save baseline {baseline.name}/{baseline.task}: {problem}")
    try:
        text = json.dumps(document, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    except ValueError as error:  # NaN or infinity would make the file unreadable by strict JSON parsers
        raise QtestsError(
            f"refusing to save baseline {baseline.name}/{baseline.task}: {error}; "
            "a NaN or infinite setting or metric cannot be compared later, check the run's settings"
        ) from None
    path = baseline_path(directory, baseline.name, baseline.task)
    atomic_write(path, text)
    return path


def read_baseline_file(path: Path) -> Baseline:
    """Load and validate one baseline file; every problem becomes one :class:`QtestsError` line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QtestsError(f"baseline file {path} not found: check the path or create it with --save-baseline") from None
    except OSError as error:
        raise QtestsError(f"cannot read baseline {path}: {error.strerror}; check its permissions") from None
    except UnicodeDecodeError as error:
        raise QtestsError(f"baseline {path} is not UTF-8 text ({error.reason} at byte {error.start}); {_RESAVE_HINT}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise QtestsError(
            f"baseline {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); {_RESAVE_HINT}"
        ) from None
    version_problem = _version_problem(data)
    if version_problem:
        raise QtestsError(f"baseline {path} was {version_problem}")
    problem = validate_document(data)
    if problem:
        raise QtestsError(f"baseline {path} is invalid: {problem}; {_RESAVE_HINT}")
    return Baseline.from_dict(data)


def list_tasks(directory: Path | str, name: str) -> list[str]:
    """Tasks that have a baseline for ``name`` (file stems under ``<directory>/<name>/``)."""
    folder = Path(directory) / sanitize_name(name)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def list_names(directory: Path | str) -> list[str]:
    """Model names that have at least one baseline in ``directory``."""
    root = Path(directory)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.json"))) if root.is_dir() else []


def resolve_baseline(name_or_path: str, directory: Path | str = DEFAULT_BASELINE_DIR, task: str | None = None) -> Path:
    """The file ``--baseline NAME_OR_PATH`` means: an existing file, a folder holding ``<task>.json``, or
    a name looked up in ``directory``. Without ``task`` a name must have exactly one task."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    if given.is_dir():
        folder_tasks = sorted(p.stem for p in given.glob("*.json"))
        return given / f"{_pick_task(str(given), folder_tasks, task)}.json"
    if given.suffix == ".json":
        raise QtestsError(f"baseline file {given} not found: check the path or create it with --save-baseline")
    tasks = list_tasks(directory, name_or_path)
    if not tasks:
        names = list_names(directory)
        available = f"available: {', '.join(names)}" if names else "it holds no baselines"
        raise QtestsError(
            f"no baseline named {name_or_path} in {directory} ({available}); "
            "create it with --save-baseline or pass --baseline PATH"
        )
    return baseline_path(directory, name_or_path, _pick_task(name_or_path, tasks, task))


def _pick_task(where: str, tasks: list[str], task: str | None) -> str:
    if task is None:
        if len(tasks) == 1:
            return tasks[0]
        raise QtestsError(f"{where} has baselines for several tasks ({', '.join(tasks)}): pass --task")
    if sanitize_name(task) not in tasks:
        listed = ", ".join(tasks) if tasks else "none"
        raise QtestsError(
            f"no baseline for task {task} in {where} (tasks there: {listed}); "
            "create it with --save-baseline or pick another --task"
        )
    return sanitize_name(task)


def load_baseline(
    name_or_path: str, directory: Path | str = DEFAULT_BASELINE_DIR, task: str | None = None
) -> Baseline:
    """Load the baseline ``--baseline NAME_OR_PATH`` names for ``task``, validated against the schema."""
    path = resolve_baseline(name_or_path, directory, task)
    baseline = read_baseline_file(path)
    if task is not None and baseline.task != task:
        raise QtestsError(
            f"baseline {path} is for task {baseline.task}, not {task}: pass the baseline saved for {task}"
        )
    return baseline
