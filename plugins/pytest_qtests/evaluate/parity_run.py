"""Runs one checkpoint on two engines for :mod:`parity`, one engine in memory at a time.

Separate from ``Evaluator`` because parity bypasses the generation cache and the run's
sampling on purpose: it compares greedy paths and teacher-forced scores, made fresh in each engine.
"""

from __future__ import annotations

import dataclasses

from pytest_qtests.engines.registry import create_backend
from pytest_qtests.evaluate.parity import DEFAULT_PARITY_ITEMS, ParityReport, compare_engines, requests_for
from pytest_qtests.records import VariantSpec
from pytest_qtests.evaluate.canary_scoring import canary_indices
from pytest_qtests.evaluate.evaluator import Evaluator
from pytest_qtests.tasks.graders import grade_output
from pytest_qtests.tasks.prompts import prompt_opens_thinking, render_prompt


def run_parity(evaluator: Evaluator, variant: VariantSpec, task_spec: str, engines: tuple[str, str]) -> ParityReport:
    """``variant`` greedily on both ``engines`` over the canary's items; texts of the second engine scored in both.

    The second engine runs first (its outputs are the texts both engines score), then the first.
    """
    config = evaluator.config
    data = evaluator.task_data(task_spec)
    count = config.canary or DEFAULT_PARITY_ITEMS
    items = [data.items[i] for i in canary_indices(len(data.items), count)] if len(data.items) > count else list(data.items)
    evaluator.engines.release()  # the evaluator's engine makes room
    prompts: list[str] = []
    prompt_tokens: list[int] = []
    texts: list[str] = []
    results = {}
    for name in reversed(engines):
        backend = create_backend(dataclasses.replace(config, backend=name), variant)
        try:
            if not prompts:
                tokenizer = backend.tokenizer
                prompts = [render_prompt(tokenizer, data.task.user_message(item), config.thinking) for item in items]
                prompt_tokens = [len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
            records = backend.generate(requests_for(prompts, items, config.sampling))
            texts = texts or [prompt + record.text for prompt, record in zip(prompts, records)]
            results[name] = (records, backend.score(texts), backend.engine_version())
        finally:
            backend.close()
    correct = {
        name: [grade_output(data.task.grader, r.text, item, prompt_opens_thinking(p)).correct
               for r, item, p in zip(records, items, prompts)]
        for name, (records, _, _) in results.items()
    }
    tested, held_to = engines
    return compare_engines(
        variant.label, data.task.name, engines, (results[tested][2], results[held_to][2]), items,
        (results[tested][0], results[held_to][0]), (results[tested][1], results[held_to][1]), prompt_tokens,
        (correct[tested], correct[held_to]),
    )
