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
