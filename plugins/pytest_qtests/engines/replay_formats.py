"""The shapes of output files the replay backend reads, recognised by their first line.

Teams already have generations in one of three shapes; each becomes the same :class:`ReplayedOutput`:

* **qtests JSONL**: ``{"id", "output", "finish_reason"?, "output_tokens"?, "prompt_tokens"?, "sample_index"?}``.
* **lm-evaluation-harness samples** (``--log_samples``, 0.4 format: ``doc_id``, ``doc``, ``resps``,
  ``filtered_resps``, ``target``, ...): the raw generations of ``resps`` (not the filtered answers),
  one per repeat. The item id is the doc's own ``id`` field when it has one, else ``doc_id`` (the row
  index, which is the item id of tasks without an id column, GSM8K's among them). lm-eval records
  neither token counts nor why a generation stopped: ``finish_reason`` is ``stop`` and an output cut
  inside its thinking still counts as truncated (its ``</think>`` never came).
* **OpenAI Batch API output** (``{"custom_id", "response": {"status_code", "body"}, "error"}``): the
  ``custom_id`` is the item id, each choice a sample, token counts from ``usage`` (per choice only when
  there is one choice), a chat message's ``reasoning_content`` (vLLM, DeepSeek) put back inside
  ``<think>...</think>``; a failed request becomes an error record carrying the batch's error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pytest_qtests.records import QtestsError
from pytest_qtests.thinking import THINK_CLOSE

FINISH_REASONS = ("stop", "length")
LINE_FORMAT = ('each line must be a JSON object with "id" and "output" (optional: "finish_reason" stop|length, '
               '"output_tokens", "prompt_tokens", "sample_index"), or a line of an lm-evaluation-harness '
               'samples file or of an OpenAI Batch API output file')


@dataclass(frozen=True)
class ReplayedOutput:
    """One replayed generation, validated. ``error`` is set when the source says the request failed."""

    item_id: str
    sample_index: int
    output: str
    finish_reason: str
    output_tokens: int | None
    prompt_tokens: int | None
    line: int
    error: str | None = None


class LineError(ValueError):
    """A line that does not have its format's shape; the caller adds file, line and the format's help."""


def parse_replay_file(data: bytes, path: Path) -> tuple[str, list[ReplayedOutput]]:
    """The file's format name and every output in it; the first bad line is a QtestsError naming file and line."""
    lines = [(number, raw) for number, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    if not lines:
        raise QtestsError(f"replay file {path} holds no outputs; {LINE_FORMAT}")
    rows = [(number, _json_object(raw, number, path)) for number, raw in lines]
    name, parse = _format_of(rows[0][1])
    outputs: list[ReplayedOutput] = []
    first_line_of: dict[tuple[str, int], int] = {}
    for number, row in rows:
        try:
            parsed = parse(row, number)
        except LineError as error:
            help_text = LINE_FORMAT if name == "qtests" else f"the file was read as {name} (from its first line)"
            raise QtestsError(f"replay file {path} line {number}: {error}; {help_text}") from None
        for output in parsed:
            key = (output.item_id, output.sample_index)
            if key in first_line_of:
                raise QtestsError(
                    f"replay file {path} line {number}: item {output.item_id} sample {output.sample_index} was "
                    f"already replayed on line {first_line_of[key]}; keep one output per item and sample_index")
            first_line_of[key] = number
            outputs.append(output)
    return name, outputs


def _json_object(raw: bytes, number: int, path: Path) -> dict[str, Any]:
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
    return row


def _format_of(first: dict[str, Any]) -> tuple[str, Callable[[dict[str, Any], int], list[ReplayedOutput]]]:
    if "doc_id" in first and "resps" in first:
        return "an lm-evaluation-harness samples file", _lm_eval_line
    if "custom_id" in first and "response" in first:
        return "an OpenAI Batch API output file", _batch_line
    return "qtests", _qtests_line


def _item_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LineError(f'"{name}" is missing or not a string or integer')
    return str(value)


def _count(row: dict[str, Any], name: str) -> int | None:
    value = row.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise LineError(f'"{name}" is {value!r}, not a non-negative integer')
    return value


def _qtests_line(row: dict[str, Any], number: int) -> list[ReplayedOutput]:
    item_id = _item_id(row.get("id"), "id")
    output = row.get("output")
    if not isinstance(output, str):
        raise LineError('"output" is missing or not a string')
    finish_reason = row.get("finish_reason", "stop")
    if finish_reason not in FINISH_REASONS:
        raise LineError(f'"finish_reason" is {finish_reason!r}, not one of {", ".join(FINISH_REASONS)}')
    return [ReplayedOutput(item_id, _count(row, "sample_index") or 0, output, finish_reason,
                           _count(row, "output_tokens"), _count(row, "prompt_tokens"), number)]


def _lm_eval_line(row: dict[str, Any], number: int) -> list[ReplayedOutput]:
    doc = row.get("doc")
    own_id = doc.get("id") if isinstance(doc, dict) else None
    item_id = _item_id(own_id if isinstance(own_id, (str, int)) and not isinstance(own_id, bool)
                       else row.get("doc_id"), "doc_id")
    resps = row.get("resps")
    # generate_until: one request per doc, whose response list holds one generation per repeat
    if (not isinstance(resps, list) or len(resps) != 1 or not isinstance(resps[0], list) or not resps[0]
            or not all(isinstance(text, str) for text in resps[0])):
        raise LineError('"resps" is not [[generation, ...]] (one generate_until request per doc): '
                        "only generative tasks can be replayed, not log-likelihood ones")
    return [ReplayedOutput(item_id, index, text, "stop", None, None, number) for index, text in enumerate(resps[0])]


def _batch_line(row: dict[str, Any], number: int) -> list[ReplayedOutput]:
    item_id = _item_id(row.get("custom_id"), "custom_id")
    response = row.get("response")
    failure = _batch_failure(row.get("error"), response)
    if failure is not None:
        return [ReplayedOutput(item_id, 0, "", "error", 0, None, number, error=failure)]
    body = response["body"]
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LineError('"response.body.choices" is missing or empty')
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens = _count(usage, "prompt_tokens")
    one_choice_tokens = _count(usage, "completion_tokens") if len(choices) == 1 else None
    outputs = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise LineError(f"choice {position} is not an object")
        index = choice.get("index", position)
        reason = choice.get("finish_reason")
        if reason not in FINISH_REASONS:
            outputs.append(ReplayedOutput(item_id, index, "", "error", 0, prompt_tokens, number,
                                          error=f"batch finish_reason={reason!r}"))
            continue
        outputs.append(ReplayedOutput(item_id, index, _choice_text(choice), reason, one_choice_tokens,
                                      prompt_tokens, number))
    return outputs


def _batch_failure(error: Any, response: Any) -> str | None:
    """Why a batch request failed (its ``error`` object or a non-200 response), else None."""
    if error:
        return f"batch error: {error.get('message', error) if isinstance(error, dict) else error}"
    if not isinstance(response, dict) or not isinstance(response.get("body"), dict):
        raise LineError('"response.body" is missing: neither a response nor an error')
    if response.get("status_code", 200) != 200:
        detail = response["body"].get("error")
        message = detail.get("message") if isinstance(detail, dict) else detail
        return f"batch request failed with status {response['status_code']}" + (f": {message}" if message else "")
    return None


def _choice_text(choice: dict[str, Any]) -> str:
    """The whole output of a chat or completions choice, the server's separated reasoning put back in front."""
    if "message" in choice:
        message = choice["message"] if isinstance(choice["message"], dict) else {}
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if not isinstance(content, str) or (reasoning is not None and not isinstance(reasoning, str)):
            raise LineError("a choice's message content is not text")
        return f"<think>\n{reasoning}\n{THINK_CLOSE}\n\n{content}" if reasoning else content
    text = choice.get("text")
    if not isinstance(text, str):
        raise LineError('a choice has neither "message" nor "text"')
    return text
