"""Degeneracy detectors on generated text: ordinary output passes, loops and broken output are flagged.

Ordinary text comes from two grammars: the zoo's arithmetic chains (highly repetitive in form, which
is what makes fixed thresholds misfire) and English-ish prose. Broken text is what broken NVFP4
checkpoints were seen to return: ``!!!!``, ``++++``, nothing, character soup, U+FFFD.
"""

from __future__ import annotations

import math
import random
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pytest_qtests.evaluate.degeneracy import (
    CALIBRATION,
    DetectorThresholds,
    assess,
    calibrate,
    script_of,
    summarize,
    tail_loop,
)
from pytest_qtests.records import QtestsError

# Every property runs with deadline=None: the test machine is shared, so timings say nothing.

ZOO_ALPHABET = string.digits + string.ascii_letters + " \n+-=:.,?!"
CONTENT_DETECTORS = {
    "loop", "ngram_repetition", "longest_run", "compression_ratio", "char_entropy_low",
    "char_entropy_high", "token_entropy_low", "replacement_chars", "unexpected_script",
}
THINK_TOKENS = {"<think>": 1000, "</think>": 1001}


def zoo_chain(x: int, y: int, wrong_steps: frozenset[int] = frozenset()) -> str:
    """The zoo's output format: one ``a+b+carry=sum`` line per digit, optional error + ``wait`` + redo."""
    xs, ys = str(x)[::-1], str(y)[::-1]
    carry, lines = 0, []
    for i in range(max(len(xs), len(ys))):
        a = int(xs[i]) if i < len(xs) else 0
        b = int(ys[i]) if i < len(ys) else 0
        total = a + b + carry
        if i in wrong_steps:  # a misread operand digit, then "wait" and the redone step
            wrong_a = (a + 1 + (7 * i) % 9) % 10
            lines.append(f"{wrong_a}+{b}+{carry}={wrong_a + b + carry}\nwait\n")
        lines.append(f"{a}+{b}+{carry}={total}\n")
        carry = total // 10
    return "<think>\n" + "".join(lines) + "</think>\nAnswer: " + str(x + y)


def zoo_token_ids(text: str) -> list[int]:
    """Char-level ids with the think tags as single tokens, as the zoo tokenizer does."""
    ids, i = [], 0
    while i < len(text):
        tag = next((t for t in THINK_TOKENS if text.startswith(t, i)), None)
        ids.append(THINK_TOKENS[tag] if tag else ord(text[i]))
        i += len(tag) if tag else 1
    return ids


@st.composite
def zoo_outputs(draw) -> str:
    digits = draw(st.integers(1, 8))
    x = draw(st.integers(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1))
    y = draw(st.integers(0, 10 ** draw(st.integers(1, digits)) - 1))
    wrong = draw(st.frozensets(st.integers(0, digits - 1), max_size=2))
    return zoo_chain(x, y, wrong)


NOUNS = ["model", "layer", "weight", "expert", "router", "token", "answer", "kernel", "engine", "batch",
         "result", "cache", "prompt", "sample", "student", "teacher", "river", "city", "garden", "letter"]
VERBS = ["reads", "writes", "moves", "changes", "checks", "breaks", "keeps", "finds", "sends", "builds"]
ADJECTIVES = ["small", "large", "quiet", "broken", "careful", "early", "late", "red", "strange", "simple"]
ADVERBS = ["slowly", "again", "today", "twice", "carefully", "never", "often", "quickly"]


@st.composite
def sentences(draw) -> str:
    subject = f"the {draw(st.sampled_from(ADJECTIVES))} {draw(st.sampled_from(NOUNS))}"
    obj = f"{draw(st.integers(2, 999))} {draw(st.sampled_from(NOUNS))}s"
    tail = draw(st.sampled_from(ADVERBS + [""]))
    return f"{subject} {draw(st.sampled_from(VERBS))} {obj} {tail}".strip().capitalize() + "."


prose = st.lists(sentences(), min_size=1, max_size=25, unique=True).map(" ".join)
ordinary_text = st.one_of(zoo_outputs(), prose)


def zoo_reference(count: int = 80, seed: int = 7) -> list[str]:
    """Reference outputs as the zoo's reference model writes them: random problems of 1-8 digits."""
    rng = random.Random(seed)
    outputs = []
    for _ in range(count):
        digits = rng.randint(1, 8)
        x = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)
        y = rng.randint(0, 10 ** rng.randint(1, digits) - 1)
        wrong = frozenset(i for i in range(digits) if rng.random() < 0.1)
        outputs.append(zoo_chain(x, y, wrong))
    return outputs


ZOO_REFERENCE = zoo_reference()
ZOO_THRESHOLDS = calibrate(ZOO_REFERENCE)
ZOO_TOKEN_THRESHOLDS = calibrate(ZOO_REFERENCE, [zoo_token_ids(t) for t in ZOO_REFERENCE])


def flagged(text: str, thresholds: DetectorThresholds, answer_found: bool = True, **kwargs) -> set[str]:
    token_ids = zoo_token_ids(text) if thresholds.token_level else None
    verdict = assess(text, token_ids, thresholds, answer_found, **kwargs)
    assert verdict.degenerate == bool(verdict.reasons)
    return {f.detector for f in verdict.findings if f.flagged}


# --- ordinary text passes ----------------------------------------------------------------------------


@given(digits=st.integers(20, 400), wait_share=st.floats(0.0, 0.9), seed=st.integers(0, 2**32 - 1),
       cap=st.integers(200, 20_000))
@settings(max_examples=40, deadline=None)
def test_a_variant_that_thinks_far_longer_is_not_flagged_against_a_short_reference(digits, wait_share, seed, cap):
    """Quantized models think longer. Long chains with many redone steps, cut at the cap, are ordinary."""
    rng = random.Random(seed)
    wrong = frozenset(i for i in range(digits) if rng.random() < wait_share)
    text = zoo_chain(rng.randint(10 ** (digits - 1), 10**digits - 1), rng.randint(0, 10**digits - 1), wrong)
    assert flagged(text[:cap], ZOO_THRESHOLDS, answer_found=False, truncated=True) == set()
    assert flagged(text[:cap], ZOO_TOKEN_THRESHOLDS, answer_found=False, truncated=True) == set()


@given(ordinary_text)
@settings(deadline=None)
def test_ordinary_text_stays_below_the_default_repetition_thresholds(text):
    findings = {f.detector: f for f in assess(text, None, DetectorThresholds(), True).findings}
    for name in ("loop", "ngram_repetition"):
        assert not findings[name].flagged, findings[name].reason
        assert findings[name].value <= findings[name].threshold


@given(zoo_outputs())
@settings(deadline=None)
def test_calibration_on_zoo_outputs_accepts_fresh_zoo_outputs(text):
    assert flagged(text, ZOO_THRESHOLDS) == set()
    assert flagged(text, ZOO_TOKEN_THRESHOLDS) == set()


def test_zoo_reference_is_repetitive_in_form_yet_not_flagged():
    """The reference's own outputs pass its calibration, including the most regular chain there is."""
    eight_identical_steps = zoo_chain(11111111, 11111111)
    assert all(not assess(t, None, ZOO_THRESHOLDS, True).degenerate for t in ZOO_REFERENCE)
    assert flagged(eight_identical_steps, ZOO_THRESHOLDS) == set()


PROSE_REFERENCE = [
    "The careful model reads 12 tokens again. The early router sends 340 batches twice. "
    "The strange expert changes 77 weights often. The simple cache keeps 5 answers.",
    "The quiet engine builds 901 kernels slowly. The red garden finds 42 letters today. "
    "The large teacher checks 18 samples carefully. The late city moves 3 rivers.",
    "The broken layer writes 256 results quickly. The small student sends 64 prompts never.",
]
PROSE_THRESHOLDS = calibrate(PROSE_REFERENCE)


@given(prose)
@settings(deadline=None)
def test_calibration_on_prose_accepts_fresh_prose(text):
    assert flagged(text, PROSE_THRESHOLDS) & CONTENT_DETECTORS == set()


# --- loops are flagged -------------------------------------------------------------------------------


@st.composite
def planted_tail_loops(draw) -> tuple[str, float]:
    """Ordinary text followed by a loop that fills at least 60% of the output and runs to its end."""
    prefix = draw(ordinary_text)
    unit = draw(st.one_of(st.text(ZOO_ALPHABET, min_size=1, max_size=40),
                          st.sampled_from(["!", "+", "5+8+0=13\n", "wait\n", "the answer is "])))
    minimum = max(3, math.ceil(16 / len(unit)), math.ceil(1.5 * len(prefix) / len(unit)))
    repeats = draw(st.integers(minimum, minimum + 30))
    cut = draw(st.integers(0, len(unit) - 1))  # generation stopped mid-unit at the cap
    text = prefix + unit * repeats + unit[:cut]
    return text, (len(unit) * repeats + cut) / len(text)


@given(planted_tail_loops())
@settings(deadline=None)
def test_planted_tail_loops_are_always_flagged(case):
    text, coverage = case
    assert coverage >= 0.6
    for thresholds in (DetectorThresholds(), ZOO_THRESHOLDS, ZOO_TOKEN_THRESHOLDS):
        assert "loop" in flagged(text, thresholds, truncated=True)
    finding = next(f for f in assess(text, None, ZOO_THRESHOLDS, True).findings if f.detector == "loop")
    assert finding.value >= coverage - 1e-9  # the loop found covers at least what was planted
    assert "repeats" in finding.reason and "% of output" in finding.reason


@given(ordinary_text, st.text(ZOO_ALPHABET, min_size=1, max_size=20), st.data())
@settings(deadline=None)
def test_loops_inside_the_output_are_caught_by_ngram_repetition(prefix, unit, data):
    """A loop the model escapes from (then answers) is not at the end; repeated spans still show it."""
    answer = "\n</think>\nAnswer: 42"
    repeats = max(10, math.ceil(4 * (len(prefix) + len(answer)) / len(unit)), math.ceil(100 / len(unit)))
    repeats = data.draw(st.integers(repeats, repeats + 20))
    text = prefix + unit * repeats + answer
    assert len(unit) * repeats / len(text) >= 0.8
    assert "ngram_repetition" in flagged(text, ZOO_THRESHOLDS)


def test_tail_loop_reports_unit_period_and_partial_last_unit():
    loop = tail_loop("<think>\n5+8+0=13\n" + "4+7+1=12\n" * 20 + "4+7+")
    assert loop.period == 9
    assert loop.span >= 9 * 20 + 4
    assert sorted(loop.unit) == sorted("4+7+1=12\n")  # some rotation of the repeated line


# --- broken outputs are flagged with the right reason -------------------------------------------------


@pytest.mark.parametrize("thresholds", [ZOO_THRESHOLDS, ZOO_TOKEN_THRESHOLDS, DetectorThresholds()],
                         ids=["zoo-chars", "zoo-tokens", "defaults"])
@given(char=st.sampled_from("!+"), length=st.integers(64, 1024))
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_single_character_floods_are_flagged_as_loop_and_run(thresholds, char, length):
    verdict = assess(char * length, [ord(char)] * length, thresholds, answer_found=False, truncated=True)
    names = {f.detector for f in verdict.findings if f.flagged}
    assert {"loop", "longest_run", "compression_ratio", "char_entropy_low"} <= names
    assert any(r.startswith("loop:") and f"\"{char}\" repeats {length}x" in r for r in verdict.reasons)
    if thresholds.token_level:
        assert "token_entropy_low" in names


@pytest.mark.parametrize("text", ["", "   \n", "<think>\n5+8+0=13\n</think>\n"])
def test_empty_answers_are_flagged_as_empty(text):
    verdict = assess(text, None, ZOO_THRESHOLDS, answer_found=False)
    assert "empty_answer" in {f.detector for f in verdict.findings if f.flagged}
    assert verdict.reasons[0].startswith("empty:")


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(150, 600))
@settings(deadline=None)
def test_random_characters_are_flagged_as_high_entropy(seed, length):
    rng = random.Random(seed)
    soup = "".join(rng.choice(ZOO_ALPHABET) for _ in range(length))
    assert "char_entropy_high" in flagged(soup, ZOO_THRESHOLDS, truncated=True)


@given(zoo_outputs(), st.floats(0.05, 0.9), st.integers(0, 2**32 - 1))
@settings(deadline=None)
def test_replacement_characters_are_flagged(text, share, seed):
    rng = random.Random(seed)
    broken = "".join("\ufffd" if rng.random() < share else c for c in text)
    assume(broken.count("\ufffd") / len(broken) > 0.02)
    assert "replacement_chars" in flagged(broken, ZOO_THRESHOLDS)


@pytest.mark.parametrize("foreign, script", [("привет мир это тест", "CYRILLIC"),
                                             ("这是一个测试答案", "CJK")])
def test_scripts_never_seen_in_the_reference_are_flagged_by_name(foreign, script):
    verdict = assess(f"<think>\n{foreign}\n</think>\nAnswer: 5", None, ZOO_THRESHOLDS, True)
    assert any(r.startswith("unexpected script:") and script in r for r in verdict.reasons)
    assert not assess(f"Answer: {foreign}", None, calibrate([f"Answer: {foreign} 12"]), True).degenerate


def test_script_of_classifies_letters_and_shares_digits_and_punctuation():
    assert [script_of(c) for c in "aЖ漢é7+ ²"] == ["LATIN", "CYRILLIC", "CJK", "LATIN", "COMMON", "COMMON",
                                                   "COMMON", "COMMON"]


def test_thinking_that_never_closes_is_degenerate_only_when_the_model_stopped_by_itself():
    text = "<think>\n5+8+0=13\n4+7+1=12\n"
    assert flagged(text, ZOO_THRESHOLDS, answer_found=False) == {"thinking_unclosed", "answer_absent"}
    assert flagged(text, ZOO_THRESHOLDS, answer_found=False, truncated=True) == set()


def test_answer_absent_follows_the_task_extractor():
    text = zoo_chain(13, 29)
    assert flagged(text, ZOO_THRESHOLDS, answer_found=False) == {"answer_absent"}
    assert flagged(text, ZOO_THRESHOLDS, answer_found=True) == set()


# --- calibration --------------------------------------------------------------------------------------


def test_calibration_follows_the_reference_within_documented_bounds():
    # A reference that draws separator lines allows longer runs than one that never does.
    separated = [f"Step {i}\n{'-' * 16}\nresult {i * 7}" for i in range(5)]
    assert calibrate(separated).longest_run == 32 > ZOO_THRESHOLDS.longest_run
    looping_reference = ["!" * 300, "+" * 300, "ab" * 200]
    loose = calibrate(looping_reference)
    # A reference that degenerates itself cannot excuse the variant beyond the loosest bound.
    assert loose.loop_coverage == CALIBRATION["loop_coverage"].loosest
    assert loose.compression_ratio == CALIBRATION["compression_ratio"].loosest
    assert loose.char_entropy_low == CALIBRATION["char_entropy_low"].loosest
    assert "loop" in flagged("!" * 600, loose, truncated=True)
    for name, rule in CALIBRATION.items():
        value = getattr(ZOO_THRESHOLDS, name)
        assert min(rule.tightest, rule.loosest) <= value <= max(rule.tightest, rule.loosest), name


def test_thresholds_round_trip_through_json_friendly_dicts():
    assert DetectorThresholds.from_dict(ZOO_TOKEN_THRESHOLDS.to_dict()) == ZOO_TOKEN_THRESHOLDS


def test_calibration_errors_name_the_problem():
    with pytest.raises(QtestsError, match="no reference outputs"):
        calibrate([])
    with pytest.raises(QtestsError, match="one list per reference output"):
        calibrate(["a", "b"], [[1]])
    with pytest.raises(QtestsError, match="calibrated on token ids"):
        assess("Answer: 5", None, ZOO_TOKEN_THRESHOLDS, True)


# --- summary ------------------------------------------------------------------------------------------


def test_summary_counts_rate_and_keeps_one_example_per_reason():
    outputs = ["!" * 200, "+" * 120, "", zoo_chain(5, 8), zoo_chain(123, 456)]
    verdicts = [assess(t, None, ZOO_THRESHOLDS, answer_found=bool(t) and t[0] == "<", truncated=False)
                for t in outputs]
    summary = summarize(verdicts)
    assert (summary.total, summary.degenerate, summary.rate) == (5, 3, 0.6)
    by_name = {r.detector: r for r in summary.top_reasons}
    assert by_name["loop"].count == 2
    assert "\"!\" repeats 200x" in by_name["loop"].example_reason
    assert by_name["loop"].example_excerpt.startswith('"!!!')
    assert [r.count for r in summary.top_reasons] == sorted((r.count for r in summary.top_reasons), reverse=True)
    assert len(summarize(verdicts, top=2).top_reasons) == 2
    assert math.isnan(summarize([]).rate)
