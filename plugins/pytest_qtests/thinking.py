"""Split a reasoning model's output into its thinking block and its final answer.

Qwen-style models write ``<think> ... </think>`` before the answer. A thinking block that never closes
is the signature of a generation cut off while still reasoning, so it counts as truncated even when
the engine reports ``finish_reason == "stop"``.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ThinkingSplit:
    thinking: str
    answer: str
    closed: bool
    has_thinking: bool


def split_thinking(text: str) -> ThinkingSplit:
    """Return (thinking, answer, closed). Text without any think tag is all answer.

    The opening tag may be absent because chat templates often pre-fill it in the prompt; a closing
    tag alone therefore still marks the end of thinking.
    """
    close_at = text.find(THINK_CLOSE)
    if close_at >= 0:
        thinking = text[:close_at]
        open_at = thinking.find(THINK_OPEN)
        if open_at >= 0:
            thinking = thinking[open_at + len(THINK_OPEN):]
        return ThinkingSplit(thinking.strip(), text[close_at + len(THINK_CLOSE):].strip(), True, True)
    open_at = text.find(THINK_OPEN)
    if open_at >= 0:
        return ThinkingSplit(text[open_at + len(THINK_OPEN):].strip(), "", False, True)
    return ThinkingSplit("", text.strip(), True, False)


def thinking_extent(
    text: str, token_ids: list[int] | None, close_token_id: int | None, opened_in_prompt: bool,
    output_tokens: int | None = None,
) -> tuple[int, bool]:
    """(thinking tokens, thinking closed) of one output.

    Counted on token ids when the engine returned them and the tokenizer has a ``</think>`` token
    (exact); otherwise estimated as the share of characters before the close tag. An output with no
    think tags at all has no thinking, unless the prompt itself opened the block (then all of it is
    unfinished thinking).
    """
    split = split_thinking(text)
    in_thinking = split.has_thinking or opened_in_prompt
    if not in_thinking:
        return 0, True
    closed = THINK_CLOSE in text
    if token_ids is not None and close_token_id is not None:
        if close_token_id in token_ids:
            return token_ids.index(close_token_id), True
        return len(token_ids), False
    total = len(token_ids) if token_ids is not None else output_tokens if output_tokens is not None else len(text)
    if not closed:
        return total, False
    share = text.find(THINK_CLOSE) / max(1, len(text))
    return round(total * share), True
