"""Replay backend: grade and compare outputs that were generated elsewhere (any engine, any cluster).

The file is JSONL, one output per line::

    {"id": "0", "output": "<think>...</think> The answer is \\boxed{18}.", "finish_reason": "stop",
     "output_tokens": 412, "prompt_tokens": 96, "sample_index": 0}

``id`` is the item's id in the task (the data's own id field, else its 0-based row index; a JSON number
is read as its decimal string). ``finish_reason`` (``stop`` or ``length``) defaults to ``stop``;
``sample_index`` defaults to 0; token counts missing from the file are counted with the tokenizer, and
without a tokenizer they are an error: length metrics are never guessed. A requested item with no
replayed output becomes an error record (reported, never filled in); ids in the file that are not
items of the task are counted and reported as a warning by :meth:`ReplayBackend.unmatched_ids`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError
from pytest_qtests.engines.base import EngineCapabilities, ProgressCallback, make_record

if TYPE_CHECKING:
    from pytest_qtests.engines.teacher_forcing import TokenScores

FINISH_REASONS = ("stop", "length")
LINE_FORMAT = ('each line must be a JSON object with "id" and "output" (optional: "finish_reason" stop|length, '
               '"output_tokens", "prompt_tokens", "sample_index")')


@dataclass(frozen=True)
class ReplayedOutput:
    """One line of a replay file, validated."""

    item_id: str
    sample_index: int
    output: str
    finish_reason: str
    output_tokens: int | None
    prompt_tokens: int | None
    line: int


class ReplayBackend:
    name = "replay"

    def __init__(self, path: Path | str, tokenizer: Any = None):
        self.path = Path(path)
        self.tokenizer = tokenizer
        # stored outputs only: nothing to score with and nothing to continue
        self.capabilities = EngineCapabilities(renders_prompts=tokenizer is not None)
        data = _read_bytes(self.path)
        self._digest = hashlib.sha256(data).hexdigest()
        self._outputs = {(o.item_id, o.sample_index): o for o in parse_replay_lines(data, self.path)}
        if tokenizer is None:
            uncounted = next((o for o in self._outputs.values() if None in (o.output_tokens, o.prompt_tokens)), None)
            if uncounted is not None:
                raise QtestsError(
                    f"replay file {self.path} line {uncounted.line} has no output_tokens/prompt_tokens and no "
                    "tokenizer was given to count them; add both counts to every line or give the model's tokenizer"
                )

    def engine_version(self) -> str:
        """The file's content hash: an edited replay file is a different engine run for the cache."""
        return f"replay {self._digest[:12]}"

    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        records = [self._record(request) for request in requests]
        if progress:
            progress(len(requests))
        return records

    def _record(self, request: GenerationRequest) -> GenerationRecord:
        replayed = self._outputs.get((request.item_id, request.sample_index))
        if replayed is None or request.continuation:
            sample = f" sample {request.sample_index}" if request.sample_index else ""
            reason = ("a replay cannot continue a partial output" if replayed is not None
                      else f"no replayed output for item {request.item_id}{sample}")
            record = make_record(request, "", self._prompt_tokens(request, None), None, "error", 0.0, None,
                                 output_tokens=0)
            return dataclasses.replace(record, error=reason)
        output_tokens = replayed.output_tokens
        if output_tokens is None:
            output_tokens = len(self.tokenizer.encode(replayed.output, add_special_tokens=False))
        return make_record(request, replayed.output, self._prompt_tokens(request, replayed), None,
                           replayed.finish_reason, 0.0, None, output_tokens=output_tokens)

    def _prompt_tokens(self, request: GenerationRequest, replayed: ReplayedOutput | None) -> int:
        if replayed is not None and replayed.prompt_tokens is not None:
            return replayed.prompt_tokens
        if self.tokenizer is None:
            return 0  # only for error records: every replayed line has its counts when there is no tokenizer
        return len(self.tokenizer.encode(request.prompt + request.continuation, add_special_tokens=False))

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

    def device_info(self) -> dict[str, Any]:
        """Nothing known: the outputs were generated elsewhere."""
        return {}

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


def parse_replay_lines(data: bytes, path: Path) -> list[ReplayedOutput]:
    """Every non-blank line validated; the first bad one is a QtestsError naming file and line."""
    outputs: list[ReplayedOutput] = []
    first_line_of: dict[tuple[str, int], int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        output = _parse_line(raw, number, path)
        key = (output.item_id, output.sample_index)
        if key in first_line_of:
            raise QtestsError(
                f"replay file {path} line {number}: item {output.item_id} sample {output.sample_index} was already "
                f"replayed on line {first_line_of[key]}; keep one output per item and sample_index"
            )
        first_line_of[key] = number
        outputs.append(output)
    if not outputs:
        raise QtestsError(f"replay file {path} holds no outputs; {LINE_FORMAT}")
    return outputs


def _parse_line(raw: bytes, number: int, path: Path) -> ReplayedOutput:
    def bad(problem: str) -> QtestsError:
        return QtestsError(f"replay file {path} line {number}: {problem}; {LINE_FORMAT}")

    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise bad(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise bad(f"a JSON {type(row).__name__}, not an object")
    item_id = row.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise bad('"id" is missing or not a string or integer')
    output = row.get("output")
    if not isinstance(output, str):
        raise bad('"output" is missing or not a string')
    finish_reason = row.get("finish_reason", "stop")
    if finish_reason not in FINISH_REASONS:
        raise bad(f'"finish_reason" is {finish_reason!r}, not one of {", ".join(FINISH_REASONS)}')
    counts = {name: row.get(name) for name in ("output_tokens", "prompt_tokens", "sample_index")}
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise bad(f'"{name}" is {value!r}, not a non-negative integer')
    return ReplayedOutput(item_id=str(item_id), sample_index=counts["sample_index"] or 0, output=output,
                          finish_reason=finish_reason, output_tokens=counts["output_tokens"],
                          prompt_tokens=counts["prompt_tokens"], line=number)
