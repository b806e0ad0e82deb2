"""Evaluate variants on tasks: prompts -> (cached) generation -> grading -> outcomes, and the canary.

The only module that sequences engines. Everything is memoized per (variant, task), so the pytest
checks of one variant share a single generation run, and an engine is released before the next
variant's is created (one engine in memory per worker).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pytest_qtests.engines.registry import create_backend
from pytest_qtests.engines.replay_backend import replay_path
from pytest_qtests.store.cache import GenerationCache, cached_generate, rendering_key, request_keys
from pytest_qtests.evaluate.canary import CanaryDivergence, CanaryResult, judge_canary
from pytest_qtests.options import RunConfig
from pytest_qtests.evaluate.degeneracy import DetectorThresholds, assess, calibrate
from pytest_qtests.evaluate.divergence import pool
from pytest_qtests.evaluate.continuation import Extension, extend_run
from pytest_qtests.store.fingerprint import Fingerprint, model_identity, replay_identity
from pytest_qtests.packages import installed_version
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, QtestsError, TaskItem, VariantSpec
from pytest_qtests.engines.teacher_forcing import TokenScores, compare_scores
from pytest_qtests.tasks.graders import grade_output
from pytest_qtests.tasks.loaders import TaskData, load_task
from pytest_qtests.tasks.prompts import prompt_opens_thinking, render_prompt
from pytest_qtests.tasks.registry import resolve_task_spec


@dataclass
class TaskRun:
    """One variant on one task: its records, graded outcomes and the fingerprint that produced them."""

    variant: VariantSpec
    task: str
    records: list[GenerationRecord]
    outcomes: list[ItemOutcome]
    fingerprint: Fingerprint
    canary: CanaryResult | None = None
    wall_s: float = 0.0
    extension: Extension | None = None  # the truncated samples continued (--extend-truncated)
    record_keys: list[str] = field(default_factory=list)  # cache key of each record (empty without a cache)

    @property
    def complete(self) -> bool:
        return self.canary is None or self.canary.passed


class Evaluator:
    """Lazily evaluates (variant, task) pairs for one pytest session or worker."""

    def __init__(self, config: RunConfig, hooks: Any = None):
        self.config = config
        self._hooks = hooks  # pytest_qtests_make_backend implementations get the first word on engines
        self._tasks: dict[str, TaskData] = {}
        self._runs: dict[tuple[str, str], TaskRun] = {}
        self._failures: dict[str, QtestsError] = {}
        self._backend: Any = None
        self._backend_label: str | None = None
        self._thresholds: dict[str, DetectorThresholds] = {}
        self._identities: dict[str, dict[str, Any]] = {}
        self._reference_scores: dict[str, tuple[list[str], list[TokenScores]] | str] = {}
        self._cache = GenerationCache.in_directory(config.cache_dir) if config.cache_dir and config.backend != "replay" else None
        self._adopted = False  # True on an xdist controller: runs come from the workers, engines never load

    # -- tasks and engines ---------------------------------------------------------------------------
    def task_data(self, task_spec: str) -> TaskData:
        if task_spec not in self._tasks:
            task, source = resolve_task_spec(task_spec)
            self._tasks[task_spec] = load_task(task, source, limit=self.config.limit, seed=self.config.sampling.seed)
        return self._tasks[task_spec]

    def preload_tasks(self, tasks: dict[str, TaskData]) -> None:
        """Adopt task data already read (by the preflight checks) so it is not read twice."""
        self._tasks.update(tasks)

    def backend(self, variant: VariantSpec) -> Any:
        """The engine for ``variant``; the previous variant's engine is released first."""
        if self._backend_label != variant.label:
            self.release()
            self._backend = create_backend(self.config, variant, self._hooks)
            self._backend_label = variant.label
        return self._backend

    def release(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend, self._backend_label = None, None

    def close(self) -> None:
        self.release()
        if self._cache is not None:
            self._cache.close()

    # -- requests ----------------------------------------------------------------------------------
    def requests(self, variant: VariantSpec, task_spec: str) -> list[GenerationRequest]:
        data = self.task_data(task_spec)
        prompts = self.prompts(variant, [data.task.user_message(item) for item in data.items])
        return [GenerationRequest(item.item_id, sample, prompt, self.config.sampling)
                for item, prompt in zip(data.items, prompts) for sample in range(self.config.repeats)]

    def prompts(self, variant: VariantSpec, messages: list[Any], thinking: bool | None = None) -> list[str]:
        """Each user message (or chat of role/content messages) through the variant's chat template (as
        is when the backend has no tokenizer), with the run's thinking switch unless ``thinking`` says.

        Renderings are kept in the generation cache, so a fully cached re-run loads no tokenizer: with
        the vLLM backend that saves importing transformers and torch, most of such a run's time.
        """
        thinking = self.config.thinking if thinking is None else thinking
        keys = [self._rendering_key(variant, {"message": message, "thinking": thinking})
                for message in messages] if self._cache is not None else []
        found = self._cache.get_renderings(keys) if keys else {}
        if keys and all(key in found for key in keys):
            return [found[key] for key in keys]
        tokenizer = getattr(self.backend(variant), "tokenizer", None)
        if tokenizer is None:
            if not all(isinstance(m, str) for m in messages):
                raise QtestsError(f"the {self.config.backend} backend has no chat template to render a list of "
                                  "chat messages with; pass each prompt as one string")
            return list(messages)
        prompts = [render_prompt(tokenizer, message, thinking) for message in messages]
        if self._cache is not None:
            self._cache.put_renderings(zip(keys, prompts))
        return prompts

    def template_hash(self, variant: VariantSpec) -> str:
        """sha256 of the chat template the prompts were rendered with ("" hashed when there is none)."""
        key = self._rendering_key(variant, {"chat_template": True}) if self._cache is not None else None
        if key is not None and (found := self._cache.get_renderings([key])):
            return found[key]
        template = getattr(getattr(self.backend(variant), "tokenizer", None), "chat_template", None) or ""
        digest = hashlib.sha256(template.encode()).hexdigest()
        if key is not None:
            self._cache.put_renderings([(key, digest)])
        return digest

    def _rendering_key(self, variant: VariantSpec, what: dict[str, Any]) -> str:
        renderer = f"{self.config.backend}, transformers {installed_version('transformers')}"
        return rendering_key(self.identity(variant)["hash"], renderer, what)

    def identity(self, variant: VariantSpec) -> dict[str, Any]:
        """The model's content identity (hashes config, tokenizer and safetensors headers): once per variant."""
        if variant.label not in self._identities:
            if self.config.backend == "replay":
                self._identities[variant.label] = replay_identity(replay_path(self.config, variant))
            else:
                self._identities[variant.label] = model_identity(variant)
        return self._identities[variant.label]

    def fingerprint(self, variant: VariantSpec, task_spec: str) -> Fingerprint:
        backend = self.backend(variant)
        data = self.task_data(task_spec)
        extra = backend.device_info() if hasattr(backend, "device_info") else {}
        return Fingerprint.for_run(
            model=self.identity(variant),
            task=data.task.name,
            dataset_hash=data.content_hash,
            prompt_template_hash=self.template_hash(variant),
            sampling=self.config.sampling,
            thinking=self.config.thinking,
            repeats=self.config.repeats,
            engine=self.config.backend,
            engine_version=backend.engine_version(),
            task_code=data.task.code_identity(),
            extra=extra,
        )

    # -- generation and grading -------------------------------------------------------------------------
    def generate(self, variant: VariantSpec, requests: list[GenerationRequest], what: str) -> list[GenerationRecord]:
        backend = self.backend(variant)
        identity = self.identity(variant)["hash"]
        with _progress(len(requests), f"{variant.label} {what}") as progress, self._generation_lock(identity):
            return cached_generate(self._cache, backend, requests, identity, progress)

    def grade(self, task_spec: str, records: list[GenerationRecord], requests: list[GenerationRequest],
              thresholds: DetectorThresholds | None) -> list[ItemOutcome]:
        data = self.task_data(task_spec)
        items: dict[str, TaskItem] = {item.item_id: item for item in data.items}
        outcomes = []
        for record, request in zip(records, requests):
            if record.finish_reason == "error":
                outcomes.append(ItemOutcome(record.item_id, record.sample_index, False, False, record.output_tokens,
                                            record.thinking_tokens, record.thinking_closed, error=record.error))
                continue
            opened = prompt_opens_thinking(request.prompt)
            grade = grade_output(data.task.grader, record.text, items[record.item_id], opened)
            truncated = record.finish_reason == "length" or not record.thinking_closed
            # Only a cut at the cap excuses a missing answer; a model that stops by itself inside its
            # thinking (``<think>w``, as broken weights do) is degenerate, not truncated.
            verdict = assess(record.text, None, thresholds or DetectorThresholds(),
                             answer_found=grade.extracted is not None, truncated=record.finish_reason == "length")
            outcomes.append(ItemOutcome(
                record.item_id, record.sample_index, grade.correct, truncated, record.output_tokens,
                record.thinking_tokens, record.thinking_closed, grade.extracted, verdict.degenerate,
                list(verdict.reasons)))
        return outcomes

    def thresholds(self, task_spec: str) -> DetectorThresholds | None:
        """Degeneracy thresholds calibrated on the live reference's outputs (None: documented defaults)."""
        if self.config.reference is None:
            return None
        self.run(self.config.reference, task_spec)  # calibrates as it grades
        return self._thresholds[task_spec]

    def completed_runs(self) -> dict[tuple[str, str], TaskRun]:
        return dict(self._runs)

    def adopt(self, runs: list[TaskRun]) -> None:
        """Take runs evaluated by other processes (xdist workers) and evaluate nothing from now on."""
        for run in runs:
            self._runs[(run.variant.label, run.task)] = run
        self._adopted = True

    def record_keys(self, variant: VariantSpec, requests: list[GenerationRequest]) -> list[str]:
        """Where each request's record lives in the cache, so another process can read the run back."""
        if self._cache is None:
            return []
        return request_keys(self.identity(variant)["hash"], self.backend(variant).engine_version(), requests)

    # -- the run -----------------------------------------------------------------------------------
    def run(self, variant: VariantSpec, task_spec: str) -> TaskRun:
        """Evaluate ``variant`` on ``task_spec`` once; a failure is remembered and re-raised per check."""
        key = (variant.label, task_spec)
        if key in self._runs:
            return self._runs[key]
        if variant.label in self._failures:
            raise self._failures[variant.label]
        if self._adopted:
            raise QtestsError(f"{variant.label} on {task_spec} was not evaluated by any xdist worker; "
                              "see that worker's error above")
        try:
            self._runs[key] = self._evaluate(variant, task_spec)
        except QtestsError as error:
            self._failures[variant.label] = error
            self.release()
            raise
        return self._runs[key]

    def _evaluate(self, variant: VariantSpec, task_spec: str) -> TaskRun:
        import time

        is_reference = self.config.reference is not None and variant.label == self.config.reference.label
        thresholds = None if is_reference else self.thresholds(task_spec)
        started = time.perf_counter()
        # while the reference's engine is still loaded: its scores of its own canary texts
        reference_scores = ("not a canary" if is_reference or not self.config.canary
                            else self.reference_canary_scores(task_spec))
        self.identity(variant)  # static checks of the checkpoint (config.json, safetensors headers) before any engine load
        requests = self.requests(variant, task_spec)
        fingerprint = self.fingerprint(variant, task_spec)
        canary = None
        records: list[GenerationRecord] = []
        if not is_reference and self.config.canary and len(requests) > self.config.canary:
            picked = canary_indices(len(requests), self.config.canary)
            canary_requests = [requests[i] for i in picked]
            canary_records = self.generate(variant, canary_requests, "canary")
            canary_outcomes = self.grade(task_spec, canary_records, canary_requests, thresholds)
            reference_outcomes = None if self.config.reference is None else self.run(self.config.reference, task_spec).outcomes
            divergence = self.canary_divergence(variant, reference_scores)
            canary = judge_canary(canary_outcomes, reference_outcomes, divergence, len(requests))
            if not canary.passed:
                return TaskRun(variant, task_spec, canary_records, canary_outcomes, fingerprint, canary,
                               time.perf_counter() - started,
                               record_keys=self.record_keys(variant, canary_requests))
        records = self.generate(variant, requests, "generate")
        if is_reference:
            # The reference's own outputs are judged with thresholds calibrated on them, like everyone's.
            thresholds = self._thresholds[task_spec] = calibrate(
                [r.text for r in records if r.finish_reason != "error"])
        outcomes = self.grade(task_spec, records, requests, thresholds)
        extension = None
        if self.config.extend_truncated:  # while this variant's engine is still loaded
            extension = extend_run(self, variant, task_spec, requests, records, outcomes, thresholds,
                                   self.config.extend_truncated)
        return TaskRun(variant, task_spec, records, outcomes, fingerprint, canary, time.perf_counter() - started,
                       extension=extension, record_keys=self.record_keys(variant, requests))

    # -- the canary's teacher-forced divergence -----------------------------------------------------
    def reference_canary_scores(self, task_spec: str) -> tuple[list[str], list[TokenScores]] | str:
        """The reference's canary texts (prompt + its own output) and its scores of them, once per task;
        a string says why there are none. Called while the reference's engine is still loaded."""
        if task_spec not in self._reference_scores:
            reference = self.config.reference
            if reference is None:
                found: tuple[list[str], list[TokenScores]] | str = "no live --reference to score against"
            elif not hasattr(self.backend(reference), "score"):
                found = f"the {self.config.backend} backend cannot score tokens"
            else:
                run = self.run(reference, task_spec)
                requests = self.requests(reference, task_spec)
                picked = canary_indices(len(requests), self.config.canary) if len(requests) > self.config.canary else []
                texts = [requests[i].prompt + run.records[i].text for i in picked
                         if run.records[i].finish_reason != "error"]
                found = (texts, self.backend(reference).score(texts)) if texts else "no reference canary outputs to score"
            self._reference_scores[task_spec] = found
        return self._reference_scores[task_spec]

    def canary_divergence(self, variant: VariantSpec,
                          reference_scores: tuple[list[str], list[TokenScores]] | str) -> CanaryDivergence:
        """The variant scores the reference's canary texts; pooled divergence from the reference's scores."""
        if isinstance(reference_scores, str):
            return CanaryDivergence(None, reference_scores)
        texts, reference = reference_scores
        try:
            reports = [compare_scores(r, v) for r, v in zip(reference, self.backend(variant).score(texts))]
        except QtestsError as error:  # e.g. a variant shipped with a different tokenizer
            return CanaryDivergence(None, str(error))
        return CanaryDivergence(pool(reports))

    @contextmanager
    def _generation_lock(self, identity: str) -> Iterator[None]:
        """One generator per model across xdist workers: others wait, then read the cache."""
        if self._cache is None or self.config.cache_dir is None:
            yield
            return
        lock_dir = Path(self.config.cache_dir) / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{identity[:32]}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def canary_indices(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over the run, so the canary sees easy and hard items alike."""
    step = total / count
    return sorted({min(total - 1, math.floor(i * step)) for i in range(count)})


@contextmanager
def _progress(total: int, description: str) -> Iterator[Any]:
    """A tqdm bar on the real stderr (pytest captures sys.stderr during tests)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit="gen", file=sys.__stderr__, leave=False, mininterval=1.0,
               dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()
