"""The model of a run as users' own tests see it: ``qt_model.generate(prompts)`` -> one output per prompt.

Generation goes through the gate's own path (the variant's engine, its chat template rendered exactly
as task prompts are, the generation cache keyed on model, engine, prompt and sampling), so a user's
test and the gate share engines and cached outputs, and a re-run generates nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, TaskItem, VariantSpec
from pytest_qtests.tasks.graders import answer_part
from pytest_qtests.tasks.prompts import prompt_opens_thinking
from pytest_qtests.thinking import split_thinking

if TYPE_CHECKING:
    from pytest_qtests.evaluate.evaluator import Evaluator

Prompt = str | Sequence[dict[str, Any]]  # a user message, or a chat given as role/content messages


@dataclass(frozen=True)
class ModelOutput:
    """One generation. ``text`` is the whole output, thinking included; ``answer`` what follows the
    thinking (empty when the thinking never closed); ``truncated`` as the gate counts it (cut at the
    cap, or thinking never closed); ``error`` set when the engine failed on this prompt."""

    text: str
    thinking: str
    answer: str
    finish_reason: str
    output_tokens: int
    truncated: bool
    error: str | None = None

    @classmethod
    def from_record(cls, record: GenerationRecord, prompt: str) -> ModelOutput:
        opened = prompt_opens_thinking(prompt)
        split = split_thinking(record.text)
        thinking = split.thinking if split.has_thinking else (record.text.strip() if opened else "")
        return cls(text=record.text, thinking=thinking, answer=answer_part(record.text, opened),
                   finish_reason=record.finish_reason, output_tokens=record.output_tokens,
                   truncated=record.finish_reason == "length" or not record.thinking_closed, error=record.error)


class QtModel:
    """One model of the run (a variant or the reference), as given to users' tests."""

    def __init__(self, spec: VariantSpec, is_reference: bool, evaluator: Evaluator):
        self.spec = spec
        self.is_reference = is_reference
        self._evaluator = evaluator

    @property
    def label(self) -> str:
        return self.spec.label

    def __repr__(self) -> str:
        role = "reference" if self.is_reference else "variant"
        return f"QtModel({self.label!r}, {role}, {self.spec.source})"

    def task_items(self, task: str) -> list[TaskItem]:
        """The items of ``task`` (a registered name, or ``NAME=FILE``) exactly as this run gates them
        (``--limit`` applied). A test that generates on them with the run's settings asks for the gate's
        own generations, so the two share the cache instead of generating twice."""
        return list(self._evaluator.task_data(task).items)

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int | None = None, temperature: float | None = None,
                 n: int = 1, thinking: bool | None = None) -> list[ModelOutput] | list[list[ModelOutput]]:
        """One output per prompt (a list of ``n`` per prompt when ``n > 1``), in order.

        A string is one user message; a list of ``{"role", "content"}`` dicts is a whole chat. Both go
        through the model's chat template as the gate renders task prompts. Unset settings are the
        run's (``--max-tokens``, the sampling preset's temperature, ``--thinking``); ``temperature=0``
        is greedy. With temperature above 0, ``n`` samples differ by their sample index, as ``--repeats``.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise QtestsError(f"{self.label}.generate takes a list of prompts, got {type(prompts).__name__}: "
                              "wrap a single prompt as [prompt]")
        if n < 1 or (max_tokens is not None and max_tokens < 1) or (temperature is not None and temperature < 0):
            raise QtestsError(f"{self.label}.generate: n and max_tokens must be >= 1 and temperature >= 0, "
                              f"got n={n}, max_tokens={max_tokens}, temperature={temperature}")
        config = self._evaluator.config
        sampling = config.sampling
        if max_tokens is not None:
            sampling = dataclasses.replace(sampling, max_tokens=max_tokens)
        if temperature is not None:
            sampling = dataclasses.replace(sampling, temperature=temperature)
        rendered = self._evaluator.prompts(self.spec, [_checked(p, self.label) for p in prompts],
                                           thinking=config.thinking if thinking is None else thinking)
        requests = [GenerationRequest(_prompt_id(prompt), sample, prompt, sampling)
                    for prompt in rendered for sample in range(n)]
        records = self._evaluator.generate(self.spec, requests, "qt_model")
        outputs = [ModelOutput.from_record(record, request.prompt) for record, request in zip(records, requests)]
        return outputs if n == 1 else [outputs[i:i + n] for i in range(0, len(outputs), n)]


def _checked(prompt: Any, label: str) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    if (isinstance(prompt, Sequence) and prompt
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in prompt)):
        return list(prompt)
    raise QtestsError(f"{label}.generate: each prompt is a string or a list of {{'role': ..., 'content': ...}} "
                      f"messages, got {str(prompt)[:60]!r}")


def _prompt_id(prompt: str) -> str:
    """A stable item id for a user's prompt, so its record has a name in errors and the cache."""
    return "prompt-" + hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:16]
