"""Runs published by xdist workers, so the controller can report on work it never did.

Under ``pytest -n``, every evaluation happens on a worker; the controller, which prints the terminal
summary and owns ``--qt-report`` and ``--save-baseline``, holds no run. Each worker therefore
publishes its finished runs into the generation cache file it already shares with the other workers:
one row per (session, variant, task) holding the graded outcomes, the fingerprint, the canary and the
cache key of every record. The records themselves are not copied (they are already in the cache); only
engine-error records, which the cache never stores, travel inline. The controller reads the rows of
its own session back without loading any engine. The rows stay in the cache afterwards: they tell
which worker and which devices served each run (``benchmarks/gpu_records.py`` prints them).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pytest_qtests.store.cache import BUSY_TIMEOUT_MS, GenerationCache
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.records import GenerationRecord, ItemOutcome, QtestsError, VariantSpec
from pytest_qtests.evaluate.canary import CanaryResult
from pytest_qtests.evaluate.evaluator import TaskRun

if TYPE_CHECKING:
    from pytest_qtests.session import GateSession

FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS published_runs (
    run_id TEXT NOT NULL,
    worker TEXT NOT NULL,
    variant TEXT NOT NULL,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, worker, variant, task)
) WITHOUT ROWID
"""


def run_payload(run: TaskRun) -> dict[str, Any]:
    """A run as JSON: outcomes in full, records as cache keys (inline only where the cache has none)."""
    if len(run.record_keys) != len(run.records):
        raise QtestsError(f"{run.variant.label} on {run.task} has no cache keys: publishing runs needs the cache")
    records = []
    for key, record in zip(run.record_keys, run.records):
        if record.finish_reason == "error":
            records.append({"inline": record.to_dict()})
        else:
            records.append({"key": key, "item_id": record.item_id, "sample_index": record.sample_index})
    return {
        "format": FORMAT,
        "variant": run.variant.label,
        "task": run.task,
        "fingerprint": run.fingerprint.to_dict(),
        "outcomes": [outcome.to_dict() for outcome in run.outcomes],
        "canary": None if run.canary is None else asdict(run.canary),
        "wall_s": run.wall_s,
        "records": records,
    }


def run_from_payload(payload: Mapping[str, Any], variant: VariantSpec, cache: GenerationCache) -> TaskRun:
    """Rebuild a published run; its records come from ``cache``."""
    wanted = [entry["key"] for entry in payload["records"] if "key" in entry]
    found = cache.get_many(wanted)
    records: list[GenerationRecord] = []
    for entry in payload["records"]:
        if "inline" in entry:
            records.append(GenerationRecord.from_dict(entry["inline"]))
            continue
        if entry["key"] not in found:
            raise QtestsError(f"generation cache {cache.path} lost records of {variant.label} on {payload['task']} "
                              "during the run; rerun without -n or with a fresh --cache-dir")
        records.append(replace(found[entry["key"]], item_id=entry["item_id"], sample_index=entry["sample_index"]))
    canary = payload["canary"]
    return TaskRun(
        variant=variant,
        task=payload["task"],
        records=records,
        outcomes=[ItemOutcome.from_dict(outcome) for outcome in payload["outcomes"]],
        fingerprint=Fingerprint.from_dict(payload["fingerprint"]),
        canary=None if canary is None else CanaryResult.from_dict(canary),
        wall_s=payload["wall_s"],
        record_keys=[entry.get("key", "") for entry in payload["records"]],
    )


class RunStore:
    """The ``published_runs`` table of a generation cache file (its own connections, same WAL file)."""

    def __init__(self, cache_dir: Path):
        self.cache = GenerationCache.in_directory(cache_dir)
        self._connection = sqlite3.connect(self.cache.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._connection.execute(_SCHEMA)

    def publish(self, run_id: str, worker: str, runs: list[TaskRun]) -> None:
        """Store this worker's runs in one transaction. A run several workers evaluated (the reference)
        is stored by each: the same cached records, each worker's own devices."""
        rows = [(run_id, worker, run.variant.label, run.task, json.dumps(run_payload(run), ensure_ascii=False),
                 time.time()) for run in runs]
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            self._connection.executemany("INSERT OR REPLACE INTO published_runs VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._connection.execute("COMMIT")
        except BaseException:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise

    def load(self, run_id: str, variants: list[VariantSpec], tasks: list[str]) -> list[TaskRun]:
        """The runs published under ``run_id``, one per (variant, task), ordered as ``variants`` x ``tasks``
        (others are skipped)."""
        by_label = {variant.label: variant for variant in variants}
        order = {(label, task): index for index, (label, task) in
                 enumerate((label, task) for label in by_label for task in tasks)}
        rows = self._connection.execute(
            "SELECT variant, task, payload FROM published_runs WHERE run_id = ? ORDER BY worker", (run_id,)).fetchall()
        first = {}
        for label, task, payload in rows:
            if (label, task) in order:
                first.setdefault((label, task), payload)
        return [run_from_payload(json.loads(first[key]), by_label[key[0]], self.cache)
                for key in sorted(first, key=order.__getitem__)]

    def close(self) -> None:
        self._connection.close()
        self.cache.close()


def publish_session_runs(gate: GateSession, run_id: str, worker: str) -> None:
    """On an xdist worker: hand every run this worker evaluated to the controller."""
    runs = list(gate.evaluator.completed_runs().values())
    if not runs or gate.config.cache_dir is None:
        return
    store = RunStore(gate.config.cache_dir)
    try:
        store.publish(run_id, worker, runs)
    finally:
        store.close()


def adopt_published_runs(gate: GateSession, run_id: str) -> None:
    """On the xdist controller: take the workers' runs as this session's, and compute every variant's
    paired and absolute checks (on a worker they were computed as its tests ran; here the summary needs
    them again)."""
    if gate.config.cache_dir is None:
        return
    store = RunStore(gate.config.cache_dir)
    try:
        reference = [gate.config.reference] if gate.config.reference not in (None, *gate.variants) else []
        evaluated = reference + gate.variants  # the reference is evaluated (on every worker) without being a test variant
        gate.evaluator.adopt(store.load(run_id, evaluated, gate.config.tasks))
    finally:
        store.close()
    for variant in gate.variants:
        try:
            gate.checks(variant)
            for task in gate.config.tasks:
                gate.absolute_checks(variant, task)
        except QtestsError:
            pass  # that variant failed on its worker, where its tests reported why
