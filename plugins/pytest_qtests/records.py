"""Typed records that flow through qtests, one direction only.

VariantSpec -> Backend.generate(GenerationRequest[]) -> GenerationRecord[] -> Task.grade -> ItemOutcome[]

Every stage is a plain function over these dataclasses, so each stage can be tested, cached and
replayed on its own. Records are JSON-friendly (``to_dict``/``from_dict``) because they are cached,
stored in baselines and written into reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar

FinishReason = Literal["stop", "length", "error"]
R = TypeVar("R", bound="DictRecord")


class QtestsError(Exception):
    """A user-facing error: one line that names the problem and the fix. Never shown with a traceback."""


def known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that name a field of the dataclass ``cls``.

    Records are read back from caches, baselines and worker files that a newer qtests may have written
    with fields this one does not know; those are dropped rather than refused.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


class DictRecord:
    """A dataclass record that round-trips through a JSON-ready dict (``to_dict`` / ``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        return cls(**known_fields(cls, data))


@dataclass(frozen=True)
class VariantSpec:
    """One model to evaluate, as given on the command line: ``[LABEL=]PATH_OR_HUB_ID[@REVISION]``."""

    label: str
    source: str
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class SamplingParams(DictRecord):
    """Decoding settings; part of every fingerprint and cache key."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class TaskItem:
    """One question of a task. ``item_id`` is the data's own id, else the 0-based row index."""

    item_id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to generate: a prompt already rendered with the model's chat template."""

    item_id: str
    sample_index: int
    prompt: str
    sampling: SamplingParams
    continuation: str = ""  # partial output to continue from (truncation forensics)
    # The partial output's own token ids, when the engine returned them: a local engine continues from
    # exactly the tokens it generated (decoding then re-encoding can differ, e.g. a character cut in half).
    continuation_ids: tuple[int, ...] = ()

    @property
    def seed(self) -> int:
        """Per-sample seed so repeats differ but every re-run reproduces the same sample."""
        return self.sampling.seed * 1_000_003 + self.sample_index


@dataclass
class GenerationRecord(DictRecord):
    """What an engine produced for one request; everything later stages need and nothing engine-specific."""

    item_id: str
    sample_index: int
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    thinking_tokens: int = 0
    thinking_closed: bool = True
    latency_s: float = 0.0
    token_ids: list[int] | None = None
    error: str | None = None


@dataclass
class ItemOutcome(DictRecord):
    """The graded result of one sample: the unit every statistic is computed from."""

    item_id: str
    sample_index: int
    correct: bool
    truncated: bool
    output_tokens: int
    thinking_tokens: int
    thinking_closed: bool
    extracted: str | None = None
    degenerate: bool = False
    degenerate_reasons: list[str] = field(default_factory=list)
    error: str | None = None
