"""Graders: numeric extraction order, math-verify equivalence and time limit, multiple-choice letters."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_qtests.records import QtestsError, TaskItem
from pytest_qtests.tasks.deadline import DeadlineExceeded, DeadlineWorker
from pytest_qtests.tasks.graders import (
    Grade,
    answer_part,
    canonical_number,
    extract_choice,
    extract_number,
    grade_choice,
    grade_math,
    grade_numeric,
    grade_output,
)

REPO = Path(__file__).resolve().parents[2]


def item(answer: str, choices: tuple[str, ...] = ()) -> TaskItem:
    return TaskItem(item_id="0", question="q", answer=answer, choices=choices)


# --- numeric -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so it is \\boxed{18}. Answer: 20 #### 21 and 22", "18"),  # boxed beats everything
        ("Answer: 20\nthen 7 more\n#### 21", "20"),  # Answer: beats #### and the last number
        ("5 + 16 = 21\n#### 21\nchecked 3 times", "21"),  # #### beats the last number
        ("she has 3 apples and 4 pears, 7 in all", "7"),  # fallback: last number
        ("\\boxed{1{,}000} dollars", "1000"),
        ("\\boxed{\\$1,234.50}", "1234.5"),
        ("\\boxed{x = 5}", "5"),
        ("Answer: $1,000.00.", "1000"),
        ("#### -10", "-10"),
        ("16-3 gives 13", "13"),
        ("nothing here", None),
        ("\\boxed{no number} so 12", "12"),  # a boxed answer without a number falls through
    ],
)
def test_extract_number_order_and_normalisation(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_canonical_number_ignores_commas_dollars_and_trailing_zero_decimals(value: int) -> None:
    with_commas = f"{value:,}"
    spellings = [str(value), with_commas, f"{with_commas}.0", f"{value}.00"]
    if value >= 0:
        spellings.append(f"${with_commas}")
    assert {canonical_number(spelling) for spelling in spellings} == {str(value)}


def test_grade_numeric_compares_values_not_spellings() -> None:
    assert grade_numeric("The total is \\boxed{1,000.0}", item("1,000")) == Grade(True, "1000")
    assert grade_numeric("Answer: 999", item("1000")) == Grade(False, "999")
    assert grade_numeric("I do not know", item("1000")) == Grade(False, None)


def test_grade_numeric_rejects_a_non_numeric_gold_with_the_fix() -> None:
    with pytest.raises(QtestsError, match="not a number; give this task a non-numeric grader"):
        grade_numeric("Answer: 3", item("\\frac{1}{2}"))


def test_every_gsm8k_reference_solution_grades_correct_against_its_own_answer() -> None:
    """The must-show: the bundled real GSM8K test split, 1319/1319 reference solutions correct."""
    rows = [json.loads(line) for line in (REPO / "fixtures/data/gsm8k/test.jsonl").open()]
    grades = [
        grade_numeric(row["answer"], item(row["answer"].rsplit("####", 1)[1].strip())) for row in rows
    ]
    wrong = [index for index, grade in enumerate(grades) if not grade.correct]
    assert (len(rows), wrong) == (1319, [])


# --- thinking ------------------------------------------------------------------------------------


def test_only_the_answer_after_think_is_graded() -> None:
    output = "<think>maybe 41? Answer: 41</think>\nAnswer: 42"
    assert grade_output(grade_numeric, output, item("42")) == Grade(True, "42")
    assert grade_output(grade_numeric, output, item("41")) == Grade(False, "42")


def test_unclosed_thinking_is_an_empty_answer_graded_wrong() -> None:
    truncated = "<think>7+5+0=12\nAnswer: 42 so far"
    assert answer_part(truncated) == ""
    assert grade_output(grade_numeric, truncated, item("42")) == Grade(False, None)


def test_template_opened_thinking_without_close_is_unfinished() -> None:
    """With ``<think>`` pre-filled by the template, output without ``</think>`` is all thinking."""
    output = "7+5+0=12\nAnswer: 42"
    assert grade_output(grade_numeric, output, item("42"), prompt_opens_thinking=True) == Grade(False, None)
    assert grade_output(grade_numeric, output, item("42"), prompt_opens_thinking=False) == Grade(True, "42")
    closed = "7+5+0=12\n</think>\nAnswer: 42"
    assert grade_output(grade_numeric, closed, item("42"), prompt_opens_thinking=True) == Grade(True, "42")


# --- math-verify ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "output", "correct"),
    [
        ("\\frac{1}{2}", "The answer is \\boxed{0.5}", True),
        ("0.5", "so $\\frac{1}{2}$", True),
        ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", True),
        ("\\frac{1}{2}", "\\boxed{0.6}", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}", False),
        ("70", "Therefore the sum is $\\boxed{70}$.", True),
        ("70", "\\boxed{07}", False),
    ],
)
def test_math_verify_equivalence(gold: str, output: str, correct: bool) -> None:
    assert grade_math(output, item(gold)).correct is correct


def test_math_grade_reports_what_it_read() -> None:
    assert grade_math("no maths at all", item("1")) == Grade(False, None)
    assert grade_math("\\boxed{x^2+1}", item("x^2 + 1")) == Grade(True, "x^2+1")


@pytest.mark.parametrize(
    "pathological",
    [
        "$\\boxed{" + "9^{" * 300 + "9" + "}" * 300 + "}$",  # a power tower: parsing never ends
        "$\\boxed{" + "\\sqrt{" * 500 + "2" + "}" * 500 + "}$",
        "$\\boxed{12345678^{987654321}}$",  # parses at once; comparing evaluates a huge power
        "$\\boxed{\\int_0^1 e^{-x^{2}}\\sin(x^{9}) dx}$",  # symbolic integral in the comparison
    ],
    ids=["power-tower", "sqrt-tower", "huge-power", "integral"],
)
def test_pathological_latex_times_out_as_wrong_instead_of_hanging(pathological: str) -> None:
    started = time.monotonic()
    grade = grade_math(pathological, item("1"), time_limit_s=1)
    elapsed = time.monotonic() - started
    assert grade.correct is False
    # one parse and at most a few comparisons, each capped at 1 s
    assert elapsed < 8, f"grading took {elapsed:.1f} s"


def test_unparsable_gold_is_a_data_error() -> None:
    with pytest.raises(QtestsError, match="item 0: math-verify cannot parse the gold answer ''"):
        grade_math("\\boxed{1}", item(""))


def test_math_grading_works_off_the_main_thread() -> None:
    """math-verify's signal timeout refuses non-main threads; the worker process has no such limit."""
    grades: list[Grade] = []
    worker = threading.Thread(target=lambda: grades.append(grade_math("\\boxed{0.5}", item("\\frac{1}{2}"))))
    worker.start()
    worker.join(timeout=120)
    assert grades == [Grade(True, "\\frac{1}{2}")]


def test_deadline_worker_kills_a_call_no_signal_could_stop_and_recovers() -> None:
    """The hard backstop: a call blocked past its deadline is killed; the next call gets a fresh child."""
    worker = DeadlineWorker()
    try:
        assert worker.call(math.factorial, (5,), deadline_s=60) == 120  # also waits out the child's start
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="sleep ran past 1 s"):
            worker.call(time.sleep, (600,), deadline_s=1)
        assert time.monotonic() - started < 5
        assert worker.call(math.factorial, (6,), deadline_s=60) == 720
        with pytest.raises(ValueError, match="invalid literal"):
            worker.call(int, ("x",), deadline_s=60)
    finally:
        worker.close()


# --- multiple choice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so it must be photon.\nAnswer: C", "C"),
        ("**Answer:** (B)", "B"),
        ("The answer is (D).", "D"),
        ("I pick (A) over (B)... final: (C)", "C"),
        ("\\boxed{C}", "C"),
        ("\\boxed{\\text{B}} even though Answer: A", "B"),  # boxed comes first
        ("Answer: C, not (A)", "C"),  # Answer: beats a bare (A)
        ("Answer: a lot of thought went into (B)", "B"),  # lowercase 'a' is not a choice
        ("Answer: E", None),  # only four options: E is not a choice
        ("no letter", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, n_choices=4) == expected


def test_extract_choice_knows_ten_options() -> None:
    assert extract_choice("Answer: J", n_choices=10) == "J"
    assert extract_choice("Answer: J", n_choices=9) is None


def test_grade_choice() -> None:
    four = ("w", "x", "y", "z")
    assert grade_choice("Answer: C", item("C", four)) == Grade(True, "C")
    assert grade_choice("Answer: B", item("C", four)) == Grade(False, "B")
    assert grade_output(grade_choice, "<think>(C)?", item("C", four)) == Grade(False, None)
