"""Replay backend: grade and compare outputs that were generated elsewhere (any engine, any cluster).

The file is given as the model itself (``--backend replay --model LABEL=OUTPUTS.jsonl``) or named
beside a model spec (``--replay LABEL=OUTPUTS.jsonl``). Three shapes are read (see ``replay_formats``):
qtests' own JSONL, one output per line::

    {"id": "0", "output": "<think>...</think> The answer is \\boxed{18}.", "finish_reason": "stop",
     "output_tokens": 412, "prompt_tokens": 96, "sample_index": 0}

an lm-evaluation-harness ``samples_*.jsonl`` (``--log_samples``) and an OpenAI Batch API output file.

``id`` is the item's id in the task (the data's own id field, else its 0-based row index; a JSON number
is read as its decimal string). A requested item with no replayed output becomes an error record
(reported, never filled in); ids in the file that are not items of the task are counted and reported as
a warning by :meth:`ReplayBackend.unmatched_ids`.

Lengths: token counts in the file are used as they are. When any line lacks ``output_tokens``, every
length of the file is counted with the tokenizer when one is given (``--tokenizer``), else in
whitespace-separated words; ``length_unit`` says which, so the gate never compares words with tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pytest_qtests.engines.base import EngineCapabilities, ProgressCallback, make_record
from pytest_qtests.engines.replay_formats import ReplayedOutput, parse_replay_file
from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, VariantSpec

if TYPE_CHECKING:
    from pytest_qtests.engines.teacher_forcing import TokenScores
    from pytest_qtests.settings import RunConfig

TOKENS, WORDS = "tokens", "words"


def replay_path(config: RunConfig, variant: VariantSpec) -> str:
    """The outputs file of ``variant``: named by ``--replay LABEL=FILE``, else the model spec itself when
    it is a file (``--model LABEL=FILE``)."""
    if variant.label in config.replay:
        return config.replay[variant.label]
    if Path(variant.source).is_file():
        return variant.source
    raise QtestsError(f"--backend replay needs outputs for {variant.label}: pass --model {variant.label}=OUTPUTS.jsonl "
                      f"or --replay {variant.label}=OUTPUTS.jsonl")


class ReplayBackend:
    name = "replay"

    def __init__(self, path: Path | str, tokenizer: Any = None):
        self.path = Path(path)
        self.tokenizer = tokenizer
        # stored outputs only: nothing to score with and nothing to continue
        self.capabilities = EngineCapabilities(renders_prompts=tokenizer is not None)
        data = _read_bytes(self.path)
        self._digest = hashlib.sha256(data).hexdigest()
        self.format, outputs = parse_replay_file(data, self.path)
        self._outputs = {(o.item_id, o.sample_index): o for o in outputs}
        counted = all(o.output_tokens is not None for o in outputs)
        self.length_unit = TOKENS if counted or tokenizer is not None else WORDS

    def engine_version(self) -> str:
        """The same for every replay file: the file is the model (its hash is the model's identity, see
        ``fingerprint.replay_identity``), so replays of two models compare like any two models."""
        return "replay"

    def device_info(self) -> dict[str, Any]:
        """Recorded in the fingerprint's ``extra``: the file's format and the unit its lengths are in."""
        return {"replay_format": self.format, "length_unit": self.length_unit}

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        records = [self._record(request) for request in requests]
        if progress:
            progress(len(requests))
        return records

    def _record(self, request: GenerationRequest) -> GenerationRecord:
        replayed = self._outputs.get((request.item_id, request.sample_index))
        if replayed is None or request.continuation or replayed.error:
            sample = f" sample {request.sample_index}" if request.sample_index else ""
            reason = (f"no replayed output for item {request.item_id}{sample}" if replayed is None
                      else replayed.error or "a replay cannot continue a partial output")
            record = make_record(request, "", self._prompt_length(request, None), None, "error", 0.0, None,
                                 output_tokens=0)
            return dataclasses.replace(record, error=reason)
        return make_record(request, replayed.output, self._prompt_length(request, replayed), None,
                           replayed.finish_reason, 0.0, None, output_tokens=self._output_length(replayed))

    def _count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return len(text.split())

    def _output_length(self, replayed: ReplayedOutput) -> int:
        if self.length_unit == TOKENS and replayed.output_tokens is not None:
            return replayed.output_tokens
        return self._count(replayed.output)

    def _prompt_length(self, request: GenerationRequest, replayed: ReplayedOutput | None) -> int:
        if self.length_unit == TOKENS and replayed is not None and replayed.prompt_tokens is not None:
            return replayed.prompt_tokens
        return self._count(request.prompt + request.continuation)

    def unmatched_ids(self, item_ids: Iterable[str]) -> list[str]:
        """Ids in the file that are not items of the task (in file order); warns with their count,
        since a replay of another task, split or ``--limit`` would otherwise go unnoticed."""
        known = set(item_ids)
        extra = list(dict.fromkeys(o.item_id for o in self._outputs.values() if o.item_id not in known))
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            warnings.warn(f"replay file {self.path}: {len(extra)} replayed ids are not items of the task "
                          f"({shown}); they are ignored", UserWarning, stacklevel=2)
        return extra

    def score(self, texts: Sequence[str]) -> list[TokenScores]:
        raise QtestsError("the replay backend cannot score tokens: use --backend transformers or vllm")

    def close(self) -> None:
        """Nothing to release: the outputs are plain data."""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise QtestsError(f"replay file {path} does not exist; pass the JSONL of outputs to replay") from None
    except OSError as error:
        raise QtestsError(f"replay file {path} cannot be read ({error.strerror}); check the path") from None
