"""Answer graders: pure functions from a model's output text and a task item to a :class:`Grade`.

Grading looks only at the *answer* part after ``</think>``. Reasoning text is full of intermediate
numbers and candidate letters; grading it would reward a generation that was cut off mid-thought,
which is exactly the failure (truncation) a quantized model shows more often. A thinking block that
never closed therefore leaves an empty answer, graded wrong.

Three graders cover the registered tasks:

* :func:`grade_numeric` — exact match of one number (GSM8K, the zoo). Extraction order
  ``\\boxed{}`` → ``Answer:`` → ``####`` → last number in the text, so an explicit final answer always
  beats a number mentioned on the way.
* :func:`grade_math` — ``math-verify`` equivalence for LaTeX answers (MATH-500, AIME), with its own
  per-operation time limit so a pathological expression cannot hang a run.
* :func:`grade_choice` — a multiple-choice letter (GPQA, MMLU-Pro).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Callable

from pytest_qtests.records import QtestsError, TaskItem
from pytest_qtests.thinking import THINK_CLOSE, split_thinking
from pytest_qtests.tasks.deadline import DeadlineExceeded, DeadlineWorker

MATH_VERIFY_TIME_LIMIT_S = 3
"""Seconds math-verify may spend on one parse or one comparison (its own signal-based timeout)."""
MATH_VERIFY_STEPS = 6
"""Timed steps of one grade: two parses and up to 2x2 comparisons (math-verify returns two readings)."""

CHOICE_LETTERS = "ABCDEFGHIJ"

# The child process that runs math-verify; started on the first math grade, sympy imported up front.
_MATH_WORKER = DeadlineWorker(preload=("math_verify", __name__))

# math-verify logs every timeout as a warning quoting the whole (possibly huge) input; the wrong grade
# it turns into already says what happened.
for _logger_name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger_name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class Grade:
    """Whether the answer was right, and what was read from it (``None``: nothing answer-like found)."""

    correct: bool
    extracted: str | None


Grader = Callable[[str, TaskItem], Grade]
"""A grader takes the answer text (thinking already removed) and the item holding the gold answer."""


def answer_part(output: str, prompt_opens_thinking: bool = False) -> str:
    """The final answer of a generation: text after ``</think>``; empty when thinking never closed.

    ``prompt_opens_thinking`` is true when the chat template pre-filled ``<think>`` in the prompt
    (Qwen3.5, QwQ): then the output has no opening tag, and text without ``</think>`` is an unfinished
    thought rather than an answer.
    """
    if prompt_opens_thinking and THINK_CLOSE not in output:
        return ""
    split = split_thinking(output)
    return split.answer if split.closed else ""


def grade_output(grader: Grader, output: str, item: TaskItem, prompt_opens_thinking: bool = False) -> Grade:
    """Grade a full generation (thinking included) with ``grader``; an unfinished thought is wrong."""
    answer = answer_part(output, prompt_opens_thinking)
    if not answer:
        return Grade(correct=False, extracted=None)
    return grader(answer, item)


# --- numbers -----------------------------------------------------------------------------------

# A number as people and models write it: optional sign and dollar sign, thousands commas, decimals.
# The look-behind keeps "16-3" from reading as "-3" and "x2" from reading as "2".
_NUMBER = re.compile(r"(?<![\w.])(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![\d])")
_ANSWER_MARKER = re.compile(r"answer\s*[:：]", re.IGNORECASE)
_HASH_MARKER = "####"
# LaTeX spellings of thousands separators and currency that hide a plain number.
_LATEX_NOISE = (("{,}", ","), ("\\,", ""), ("\\!", ""), ("\\$", "$"), ("\\%", ""), ("%", ""))


def canonical_number(text: str) -> str | None:
    """``"$1,000.00"`` → ``"1000"``; ``"-0.50"`` → ``"-0.5"``; ``None`` when ``text`` is not one number."""
    match = _NUMBER.fullmatch(text.strip().rstrip("."))
    if match is None:
        return None
    return _format_decimal(match)


def _format_decimal(match: re.Match[str]) -> str | None:
    try:
        value = Decimal(match.group(1) + match.group(2).replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid decimals
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [number for match in _NUMBER.finditer(text) if (number := _format_decimal(match)) is not None]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; ``None`` if absent."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for index in range(start, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:index]
    return None


def _without_latex_noise(text: str) -> str:
    for old, new in _LATEX_NOISE:
        text = text.replace(old, new)
    return re.sub(r"\\text\{([^{}]*)\}", r" \1 ", text)


def extract_number(answer: str) -> str | None:
    """The final number of an answer text, canonicalised; ``None`` when there is none.

    The first source that holds a number wins: the last ``\\boxed{}`` (its last number, so
    ``\\boxed{x = 5}`` reads 5), the line after the last ``Answer:``, the line after the last ``####``,
    and finally the last number anywhere in the text.
    """
    boxed = last_boxed(answer)
    if boxed is not None and (numbers := _numbers(_without_latex_noise(boxed))):
        return numbers[-1]
    for marker_end in (_last_answer_marker_end(answer), _last_hash_marker_end(answer)):
        if marker_end is not None:
            line = answer[marker_end:].lstrip().split("\n", 1)[0]
            if numbers := _numbers(_without_latex_noise(line)):
                return numbers[0]
    numbers = _numbers(_without_latex_noise(answer))
    return numbers[-1] if numbers else None


def _last_answer_marker_end(text: str) -> int | None:
    ends = [m.end() for m in _ANSWER_MARKER.finditer(text)]
    return ends[-1] if ends else None


def _last_hash_marker_end(text: str) -> int | None:
    at = text.rfind(_HASH_MARKER)
    return at + len(_HASH_MARKER) if at >= 0 else None


def grade_numeric(answer: str, item: TaskItem) -> Grade:
    """Exact numeric match: ``1,000``, ``$1000`` and ``1000.0`` all equal a gold ``1000``."""
    gold = canonical_number(item.answer)
    if gold is None:
        raise QtestsError(
            f"item {item.item_id}: gold answer {item.answer!r} is not a number; "
            "give this task a non-numeric grader (math or choice) or fix the data's answer field"
        )
    extracted = extract_number(answer)
    return Grade(correct=extracted == gold, extracted=extracted)


# --- LaTeX math through math-verify ------------------------------------------------------------


def grade_math(answer: str, item: TaskItem, time_limit_s: int = MATH_VERIFY_TIME_LIMIT_S) -> Grade:
    """Mathematical equivalence by ``math-verify`` (``\\frac{1}{2}`` = ``0.5``; sets, intervals, ...).

    The gold is wrapped in ``\\boxed{}`` so math-verify reads all of it; the prediction is searched
    the way math-verify's own evaluations do (boxed first, then any LaTeX or plain expression).
    ``time_limit_s`` bounds each parse and each comparison with math-verify's own timeout; the whole
    call also runs in a child process killed at a hard deadline (see ``deadline.py``), so a
    pathological answer is graded wrong and never hangs the run, from any thread.
    """
    hard_deadline_s = MATH_VERIFY_STEPS * time_limit_s + 2.0
    try:
        correct, extracted = _MATH_WORKER.call(_math_verify, (item.answer, answer, time_limit_s), hard_deadline_s)
    except DeadlineExceeded:
        return Grade(correct=False, extracted=None)
    except _UnparsableGold:
        raise QtestsError(
            f"item {item.item_id}: math-verify cannot parse the gold answer {item.answer!r}; "
            "fix the data's answer field or grade this task numerically"
        ) from None
    return Grade(correct=correct, extracted=extracted)


class _UnparsableGold(Exception):
    """Raised in the child; the parent turns it into a QtestsError naming the item."""


def _math_verify(gold_text: str, answer: str, time_limit_s: int) -> tuple[bool, str | None]:
    """Runs in the worker process: parse both sides, compare, each step under math-verify's timeout."""
    from math_verify import parse, verify

    gold = parse(f"$\\boxed{{{gold_text}}}$", parsing_timeout=time_limit_s)
    if not gold:
        raise _UnparsableGold(gold_text)
    predicted = parse(answer, parsing_timeout=time_limit_s)
    if not predicted:
        return False, None
    return bool(verify(gold, predicted, timeout_seconds=time_limit_s)), str(predicted[-1])


# --- multiple choice ---------------------------------------------------------------------------

_ANSWER_LETTER = re.compile(r"answer\s*(?:is\s*)?[:：]?[\s*]*\(?\s*([A-J])\s*\)?(?![A-Za-z])", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(([A-J])\)")


def extract_choice(answer: str, n_choices: int) -> str | None:
    """The chosen letter: last ``\\boxed{C}``, else last ``Answer: C``, else last ``(C)``; ``None`` if absent.

    Only the first ``n_choices`` letters count, so an ``(E)`` in a four-option question is ignored.
    """
    valid = CHOICE_LETTERS[:n_choices]
    boxed = last_boxed(answer)
    if boxed is not None:
        letter = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", boxed).strip().strip("()").strip()
        if len(letter) == 1 and letter.upper() in valid:
            return letter.upper()
    for pattern in (_ANSWER_LETTER, _PAREN_LETTER):
        letters = [m.group(1) for m in pattern.finditer(answer) if m.group(1) in valid]
        if letters:
            return letters[-1]
    return None


def grade_choice(answer: str, item: TaskItem) -> Grade:
    """Multiple choice: the extracted letter must equal the gold letter."""
    extracted = extract_choice(answer, len(item.choices))
    return Grade(correct=extracted == item.answer.strip().upper(), extracted=extracted)
