"""Evaluate variants on tasks: which (variant, task) runs, in which order, on which engine.

The only module that sequences engines. Its steps live in their own modules: prompts are rendered by
:mod:`~pytest_qtests.evaluate.rendering`, identities and fingerprints come from
:mod:`~pytest_qtests.evaluate.identity`, records are graded by :mod:`~pytest_qtests.evaluate.grading`,
the canary is measured by :mod:`~pytest_qtests.evaluate.canary_scoring`, and the one engine in memory
is held by :class:`~pytest_qtests.engines.slot.EngineSlot`. Everything is memoized per (variant, task),
so the pytest checks of one variant share a single generation run, and an engine is released before
the next variant's is created (one engine in memory per worker).

Three calls are the seams other features build on: :meth:`Evaluator.prompts` (user messages rendered
as the gate renders them), :meth:`Evaluator.requests` (a task's requests in item order) and
:meth:`Evaluator.generate` (any requests, any subset, through the cache and the per-model lock).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from pytest_qtests.engines.slot import EngineSlot
from pytest_qtests.evaluate.canary import CanaryResult, judge_canary
from pytest_qtests.evaluate.canary_scoring import (ReferenceScores, canary_divergence, canary_requests,
                                                   score_reference_canary)
from pytest_qtests.evaluate.continuation import Extension, extend_run
from pytest_qtests.evaluate.degeneracy import DetectorThresholds
from pytest_qtests.evaluate.grading import calibrated_thresholds, grade_records
from pytest_qtests.evaluate.identity import run_fingerprint, variant_identity
from pytest_qtests.evaluate.looks import SequentialRun, generate_in_looks, reference_extension, reference_head
from pytest_qtests.evaluate.rendering import Message, PromptRenderer
from pytest_qtests.settings import RunConfig
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, QtestsError, VariantSpec
from pytest_qtests.store.cache import GenerationCache, cached_score, cached_stream, request_keys
from pytest_qtests.store.fingerprint import Fingerprint
from pytest_qtests.store.locks import generation_lock
from pytest_qtests.tasks.loaders import TaskData, load_task
from pytest_qtests.tasks.registry import resolve_task_spec, task_spec_name

if TYPE_CHECKING:
    from pytest_qtests.engines.teacher_forcing import TokenScores


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
    sequential: SequentialRun | None = None  # --stop-early: how far the run went and what its looks decided

    @property
    def complete(self) -> bool:
        return self.canary is None or self.canary.passed


class Evaluator:
    """Lazily evaluates (variant, task) pairs for one pytest session or worker."""

    def __init__(self, config: RunConfig):
        self.config = config
        self._tasks: dict[str, TaskData] = {}
        self._runs: dict[tuple[str, str], TaskRun] = {}
        self._failures: dict[str, QtestsError] = {}
        self._thresholds: dict[str, DetectorThresholds] = {}
        self._identities: dict[str, dict[str, Any]] = {}
        self._reference_scores: dict[str, ReferenceScores] = {}
        self._cache = GenerationCache.in_directory(config.cache_dir) if config.cache_dir and config.backend != "replay" else None
        self.engines = EngineSlot(config)
        self.renderer = PromptRenderer(self._cache, config.backend, config.thinking)
        self._adopted = False  # True on an xdist controller: runs come from the workers, engines never load

    # -- tasks and variants ----------------------------------------------------------------------------
    def task_data(self, task_spec: str) -> TaskData:
        if task_spec not in self._tasks:
            task, source = resolve_task_spec(task_spec)
            self._tasks[task_spec] = load_task(task, source, limit=self.config.limit, seed=self.config.sampling.seed)
        return self._tasks[task_spec]

    def preload_tasks(self, tasks: dict[str, TaskData]) -> None:
        """Adopt task data already read (by the preflight checks) so it is not read twice."""
        self._tasks.update(tasks)

    def identity(self, variant: VariantSpec) -> dict[str, Any]:
        """The variant's content identity (:func:`variant_identity`): read once per variant."""
        if variant.label not in self._identities:
            self._identities[variant.label] = variant_identity(self.config, variant)
        return self._identities[variant.label]

    # -- the seams: prompts, requests, cached generation ---------------------------------------------
    def prompts(self, variant: VariantSpec, messages: Sequence[Message], thinking: bool | None = None) -> list[str]:
        """User messages (or chats of role/content messages) rendered for ``variant`` as the gate renders
        them, with the run's thinking switch unless ``thinking`` says (from the cache when it has them)."""
        return self.renderer.prompts(self.identity(variant)["hash"], lambda: self.engines.get(variant), messages,
                                     thinking)

    def requests(self, variant: VariantSpec, task_spec: str) -> list[GenerationRequest]:
        """Every request of the task for ``variant``: each item's ``repeats`` samples, in item order."""
        data = self.task_data(task_spec)
        prompts = self.prompts(variant, [data.task.user_message(item) for item in data.items])
        return [GenerationRequest(item.item_id, sample, prompt, self.config.sampling)
                for item, prompt in zip(data.items, prompts) for sample in range(self.config.repeats)]

    def generate(self, variant: VariantSpec, requests: Sequence[GenerationRequest], what: str) -> list[GenerationRecord]:
        """Records for ``requests`` (any of them, in any order) on ``variant``'s engine (:meth:`stream` to the end)."""
        return list(self.stream(variant, requests, what))

    def stream(self, variant: VariantSpec, requests: Sequence[GenerationRequest], what: str,
               lookahead: int | None = None) -> Iterator[GenerationRecord]:
        """Records for ``requests`` on ``variant``'s engine in request order as they are consumed
        (:func:`cached_stream`): cached ones are read back, the rest generated under the model's lock so
        xdist workers never generate one twice. Closing it early generates nothing more."""
        backend = self.engines.get(variant)
        identity = self.identity(variant)["hash"]
        lock_dir = self.config.cache_dir if self._cache is not None else None
        with _progress(len(requests), f"{variant.label} {what}") as progress, generation_lock(lock_dir, identity):
            yield from cached_stream(self._cache, backend, list(requests), identity, progress, lookahead=lookahead)

    def scorer(self, variant: VariantSpec) -> Callable[[Sequence[str]], list[TokenScores]]:
        """Teacher-forced scores of texts on ``variant``'s engine, through the cache (a re-run loads no model)."""
        return lambda texts: cached_score(self._cache, self.engines.get(variant), texts, self.identity(variant)["hash"])

    def record_keys(self, variant: VariantSpec, requests: Sequence[GenerationRequest]) -> list[str]:
        """Where each request's record lives in the cache, so another process can read the run back."""
        if self._cache is None:
            return []
        return request_keys(self.identity(variant)["hash"], self.engines.get(variant).engine_version(), requests)

    def thresholds(self, task_spec: str) -> DetectorThresholds | None:
        """Degeneracy thresholds calibrated on the live reference's outputs (None: documented defaults)."""
        if self.config.reference is None:
            return None
        self.run(self.config.reference, task_spec)  # calibrates as it grades
        return self._thresholds[task_spec]

    # -- runs ----------------------------------------------------------------------------------------
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
            self.engines.release()
            raise
        return self._runs[key]

    def completed_runs(self) -> dict[tuple[str, str], TaskRun]:
        return dict(self._runs)

    def adopt(self, runs: list[TaskRun]) -> None:
        """Take runs evaluated by other processes (xdist workers) and evaluate nothing from now on."""
        for run in runs:
            self._runs[(run.variant.label, run.task)] = run
        self._adopted = True

    def close(self) -> None:
        self.engines.release()
        if self._cache is not None:
            self._cache.close()

    def _evaluate(self, variant: VariantSpec, task_spec: str) -> TaskRun:
        """The reference first (thresholds, canary scores), then the canary, the full run, the extension."""
        reference = self.config.reference
        is_reference = reference is not None and variant.label == reference.label
        thresholds = None if is_reference else self.thresholds(task_spec)
        started = time.perf_counter()
        # while the reference's engine is still loaded: its scores of its own canary texts
        reference_scores = ("not a canary" if is_reference or not self.config.canary
                            else self.reference_canary_scores(task_spec))
        identity = self.identity(variant)  # static checks of the checkpoint (config.json, safetensors headers) before any engine load
        data = self.task_data(task_spec)
        requests = self.requests(variant, task_spec)
        engine = self.engines.get(variant)
        fingerprint = run_fingerprint(self.config, identity, data,
                                      self.renderer.template_hash(identity["hash"], lambda: engine), engine)
        if self.config.extend_truncated and not engine.capabilities.continuation:
            raise QtestsError(f"--extend-truncated needs an engine that continues partial outputs, and the "
                              f"{engine.name} backend does not: drop --extend-truncated or pick another --backend")
        if is_reference and self._reference_on_demand:
            requests = reference_head(requests, self.config.canary, self.config.sampling.seed)
        canary = None
        asked = [] if is_reference else canary_requests(requests, self.config.canary)
        if asked:
            canary_records = self.generate(variant, asked, "canary")
            canary_outcomes = grade_records(data, canary_records, asked, thresholds)
            reference_outcomes = None if reference is None else self.run(reference, task_spec).outcomes
            canary = judge_canary(canary_outcomes, reference_outcomes,
                                  canary_divergence(engine, reference_scores, self.scorer(variant)), len(requests))
            if not canary.passed:
                return TaskRun(variant, task_spec, canary_records, canary_outcomes, fingerprint, canary,
                               time.perf_counter() - started, record_keys=self.record_keys(variant, asked))
        sequential = None
        if self.config.stop_early and reference is not None and not is_reference:
            requests, records, outcomes, sequential = self._in_looks(variant, task_spec, requests, thresholds)
        else:
            records = self.generate(variant, requests, "generate")
        if is_reference:
            # The reference's own outputs are judged with thresholds calibrated on them, like everyone's.
            thresholds = self._thresholds[task_spec] = calibrated_thresholds(records)
        if sequential is None:
            outcomes = grade_records(data, records, requests, thresholds)
        extension = None
        if self.config.extend_truncated:  # while this variant's engine is still loaded
            extension = extend_run(lambda rests: self.generate(variant, rests, "extend"),
                                   lambda merged, asked: grade_records(data, merged, asked, thresholds),
                                   requests, records, outcomes, self.config.extend_truncated)
        return TaskRun(variant, task_spec, records, outcomes, fingerprint, canary, time.perf_counter() - started,
                       extension=extension, record_keys=self.record_keys(variant, requests), sequential=sequential)

    def _in_looks(self, variant: VariantSpec, task_spec: str, requests: list[GenerationRequest],
                  thresholds: DetectorThresholds | None):
        """``--stop-early``: the variant look by look against the live reference (:mod:`evaluate.looks`).

        Each task's gate gets ``alpha / tasks`` (Bonferroni over the tasks of the variant's family)."""
        assert self.config.reference is not None
        data = self.task_data(task_spec)
        expected = self.config.expectations.for_run(variant.label, task_spec_name(task_spec))
        tolerances = {check: tol for check, tol in self.config.tolerances.items() if check not in expected}
        return generate_in_looks(
            requests, lambda items: self._reference_on(task_spec, items), tolerances,
            self.config.alpha / len(self.config.tasks),
            self.config.gate_mode, self.config.sampling.seed,
            lambda looks: self._look_records(variant, task_spec, looks),
            lambda records, asked: grade_records(data, records, asked, thresholds))

    @property
    def _reference_on_demand(self) -> bool:
        """``--stop-early`` generates the live reference only as far as the variants' looks need it, unless
        its full run is asked for: a baseline saved from it, or its truncated outputs continued."""
        return (self.config.stop_early and self.config.reference is not None and not self.config.save_baseline
                and not self.config.extend_truncated)

    def _reference_on(self, task_spec: str, items: list[str]) -> list[ItemOutcome]:
        """The reference's outcomes on ``items``, generating those it lacks first (:func:`reference_extension`)."""
        assert self.config.reference is not None
        reference = self.config.reference
        run = self.run(reference, task_spec)
        have = {outcome.item_id for outcome in run.outcomes}
        if any(item not in have for item in items):
            every = self.requests(reference, task_spec)
            new = set(reference_extension([r.item_id for r in every], self.config.sampling.seed, have, items))
            asked = [request for request in every if request.item_id in new]
            records = self.generate(reference, asked, "reference look")
            outcomes = grade_records(self.task_data(task_spec), records, asked, self._thresholds[task_spec])
            run = self._runs[(reference.label, task_spec)] = dataclasses.replace(
                run, records=run.records + records, outcomes=run.outcomes + outcomes,
                record_keys=run.record_keys + self.record_keys(reference, asked))
        wanted = set(items)
        return [outcome for outcome in run.outcomes if outcome.item_id in wanted]

    def _look_records(self, variant: VariantSpec, task_spec: str,
                      looks: list[list[GenerationRequest]]) -> Iterator[list[GenerationRecord]]:
        """Each look's records in turn. An engine that streams gets the looks through a rolling window (the
        next look's requests go out while this look's slowest answers run, at most a look and the engine's
        concurrency past what the gate has seen); any other engine one batch per look.

        A stream never spans a growth of the reference on demand: the reference's engine takes the one
        slot, which would close the variant's with requests in flight. So the looks stream in stretches
        the reference already covers, and the reference grows between two stretches (a few times per task).
        """
        if not self.engines.get(variant).capabilities.streams:
            for look in looks:
                yield self.generate(variant, look, "look")
            return
        assert self.config.reference is not None
        start = 0
        while start < len(looks):
            covered = {outcome.item_id for outcome in self.run(self.config.reference, task_spec).outcomes}
            end = start
            while end < len(looks) and all(request.item_id in covered for request in looks[end]):
                end += 1
            if end == start:  # the next look needs reference items not generated yet: grow the reference first
                self._reference_on(task_spec, [request.item_id for request in looks[start]])
                continue
            stretch = looks[start:end]
            asked = [request for look in stretch for request in look]
            with closing(self.stream(variant, asked, "looks", lookahead=max(map(len, stretch)))) as records:
                for look in stretch:
                    yield list(islice(records, len(look)))
            start = end

    def reference_canary_scores(self, task_spec: str) -> ReferenceScores:
        """The reference's canary texts and its scores of them, once per task (:func:`score_reference_canary`).
        Called while the reference's engine is still loaded."""
        if task_spec not in self._reference_scores:
            reference = self.config.reference
            if reference is None:
                self._reference_scores[task_spec] = "no live --reference to score against"
            else:
                engine = self.engines.get(reference)
                run = self.run(reference, task_spec)
                self._reference_scores[task_spec] = score_reference_canary(
                    engine, canary_requests(self.requests(reference, task_spec), self.config.canary), run.records,
                    self.scorer(reference))
        return self._reference_scores[task_spec]


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
