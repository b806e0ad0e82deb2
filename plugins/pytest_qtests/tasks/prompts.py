"""Render a task's user message into a prompt with the model's *own* chat template.

Quantized and reference models are compared on identical prompts, and a reasoning model only reasons
the way it was trained when its template (including the thinking switch) is applied; a hand-written
prompt format would measure a different model.
"""

from __future__ import annotations

from typing import Any

from pytest_qtests.records import QtestsError
from pytest_qtests.thinking import THINK_CLOSE, THINK_OPEN


def render_prompt(tokenizer: Any, user_message: str | list[dict[str, Any]], thinking: bool) -> str:
    """One user turn (or a whole chat of role/content messages) through ``tokenizer.apply_chat_template``,
    generation prompt added.

    ``enable_thinking`` is passed to every template; templates without a thinking switch ignore it.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise QtestsError(
            f"tokenizer {name} has no chat template; use the model's instruct/chat checkpoint or add a "
            "chat_template to its tokenizer_config.json"
        )
    messages = [{"role": "user", "content": user_message}] if isinstance(user_message, str) else user_message
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=thinking,
    )


def prompt_opens_thinking(prompt: str) -> bool:
    """True when the template pre-filled an open ``<think>`` (Qwen3.5, QwQ): the output then starts
    inside the thinking block and has no opening tag of its own."""
    opened = prompt.rfind(THINK_OPEN)
    return opened >= 0 and prompt.find(THINK_CLOSE, opened) < 0
