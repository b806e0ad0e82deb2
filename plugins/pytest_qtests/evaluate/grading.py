"""Records -> graded outcomes: correctness, truncation and the degeneracy verdict of each sample.

Degeneracy is judged against thresholds calibrated on the reference's own outputs
(:func:`calibrated_thresholds`), so a verbose but healthy reference does not make its variants look
broken; without a live reference the documented default thresholds apply.
"""

from __future__ import annotations

from typing import Sequence

from pytest_qtests.evaluate.degeneracy import DetectorThresholds, assess, calibrate
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, TaskItem
from pytest_qtests.tasks.graders import grade_output
from pytest_qtests.tasks.loaders import TaskData
from pytest_qtests.tasks.prompts import prompt_opens_thinking


def grade_records(data: TaskData, records: Sequence[GenerationRecord], requests: Sequence[GenerationRequest],
                  thresholds: DetectorThresholds | None) -> list[ItemOutcome]:
    """One outcome per record (``requests[i]`` made ``records[i]``); an engine error is an incorrect outcome
    that carries the error."""
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


def calibrated_thresholds(reference_records: Sequence[GenerationRecord]) -> DetectorThresholds:
    """Degeneracy thresholds calibrated on the reference's outputs (its engine errors left out)."""
    return calibrate([record.text for record in reference_records if record.finish_reason != "error"])
