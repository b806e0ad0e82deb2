"""Degenerate-output detectors: loops, runs, collapsed or exploded entropy, broken characters, no answer.

A broken quantized checkpoint (NVFP4 MoE on some kernels) exits 0 and returns ``!!!!``, ``++++``, empty
text or character soup. Each detector here is a pure function of one output's text (and token ids
where the engine gives them) that returns a :class:`Finding` with a readable reason.

Why thresholds are calibrated on the reference: normal output differs a lot between models. The zoo's
arithmetic reasoner writes ``5+8+0=13`` lines from a 15-symbol alphabet, so its entropy is low and its
long chains compress well; prose does neither. A fixed constant would either flag the zoo's normal
thinking or miss prose gone wrong, so :func:`calibrate` derives every threshold from the reference's
own outputs (a high quantile with a safety margin) and clamps it between two documented bounds:

* the *tightest* bound keeps a very regular reference from producing a hair-trigger threshold that
  flags ordinary variation (measured on zoo-like chains: legitimate outputs reach a zlib ratio of 3.1
  and repeat a line up to 8 times when the operands repeat a digit);
* the *loosest* bound keeps a reference that itself degenerates from excusing the same failure in the
  variant: an output that is 90% one loop is degenerate whatever the reference does.

The repetition detectors are built so that repetitive *form* is not repetition: the loop detector only
looks at the end of the output (a degenerate generation never escapes its loop, while a normal one ends
with an answer) and the n-gram detector uses 20-character spans, longer than two zoo steps, whose
digits differ from line to line.
"""

from __future__ import annotations

import json
import math
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pytest_qtests.records import QtestsError, known_fields
from pytest_qtests.thinking import THINK_CLOSE, split_thinking

REPLACEMENT_CHARACTER = "\ufffd"
COMMON_SCRIPT = "COMMON"  # digits, punctuation, symbols, spaces and marks: shared by every script

WINDOW_CHARS = 1024  # compression and repeated spans are measured per window of this many characters
NGRAM_CHARS = 20  # longer than two zoo steps ("5+8+0=13\n" is 9 characters) and ~5 BPE tokens of prose
MAX_LOOP_PERIOD = 512  # characters; a loop of whole paragraphs still shows up
MIN_LOOP_REPEATS = 3  # a unit seen twice is a coincidence, three times in a row at the end is a loop
MIN_LOOP_CHARS = 16  # "111" at the end of "Answer: 111" is an answer, not a loop
MIN_ENTROPY_CHARS = 32  # the entropy of a few characters says nothing about the distribution

DETECTORS = (
    "loop",
    "ngram_repetition",
    "longest_run",
    "compression_ratio",
    "char_entropy_low",
    "char_entropy_high",
    "token_entropy_low",
    "replacement_chars",
    "unexpected_script",
    "empty_answer",
    "thinking_unclosed",
    "answer_absent",
)


@dataclass(frozen=True)
class Finding:
    """One detector's measurement on one output.

    ``threshold`` is an upper limit (flagged when ``value > threshold``) for every detector except the
    ``*_entropy_low`` ones, which are lower limits (flagged when ``value < threshold``). Boolean
    detectors report ``value`` 1.0 when the condition holds, with threshold 0.0.
    """

    detector: str
    value: float
    threshold: float
    flagged: bool
    reason: str


@dataclass(frozen=True)
class DetectorThresholds:
    """Limits for each detector. The defaults serve uncalibrated use; :func:`calibrate` is the normal path.

    The defaults lie inside the calibration bounds (see ``CALIBRATION``): they accept zoo-like
    arithmetic chains and ordinary prose, and flag loops covering most of an output.
    ``token_level`` records whether run length and token entropy were calibrated on token ids; when it
    is false, runs are counted in characters and token entropy is not checked.
    ``allowed_scripts`` are the Unicode scripts (first word of a letter's Unicode name: LATIN, CYRILLIC,
    CJK, ...) seen in the reference; digits, punctuation, symbols and marks are always allowed.
    """

    loop_coverage: float = 0.5
    ngram_repeat_share: float = 0.6
    longest_run: float = 16.0
    compression_ratio: float = 5.0
    char_entropy_low: float = 1.5
    char_entropy_high: float = 6.0
    token_entropy_low: float = 1.5
    replacement_share: float = 0.01
    unexpected_script_share: float = 0.05
    allowed_scripts: frozenset[str] = frozenset({"LATIN"})
    token_level: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["allowed_scripts"] = sorted(self.allowed_scripts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorThresholds:
        values = known_fields(cls, data)
        values["allowed_scripts"] = frozenset(values.get("allowed_scripts", ("LATIN",)))
        return cls(**values)


@dataclass(frozen=True)
class CalibrationRule:
    """How one threshold follows the reference.

    Upper limits: ``clip(quantile(ref) * scale + offset, tightest, loosest)`` with the 99th percentile.
    Lower limits: ``clip(quantile(ref) * scale - offset, loosest, tightest)`` with the 1st percentile.
    The quantile (rather than the maximum) keeps a reference's own rare degenerate output from
    loosening the threshold; the margin keeps the reference's legitimate tail from flagging a variant.
    """

    quantile: float
    scale: float
    offset: float
    tightest: float
    loosest: float


CALIBRATION: dict[str, CalibrationRule] = {
    # Fraction of the output covered by the loop at its end. Normal outputs end with an answer (~0-10%).
    "loop_coverage": CalibrationRule(0.99, 2.0, 0.0, tightest=0.5, loosest=0.9),
    # Share of 20-character spans repeating an earlier span in a window. Zoo chains whose operands
    # repeat a digit reach 0.47 (eight identical steps), hence the 0.6 floor.
    "ngram_repeat_share": CalibrationRule(0.99, 1.5, 0.0, tightest=0.6, loosest=0.9),
    # Longest run of one token (or character). Answers such as 10000000 reach 7-8.
    "longest_run": CalibrationRule(0.99, 2.0, 0.0, tightest=12.0, loosest=64.0),
    # zlib ratio per window. Zoo chains reach 2.7 however long they get (3.1 when 90% of steps are
    # redone), prose ~2.5; a loop fills a window 19-40x.
    "compression_ratio": CalibrationRule(0.99, 1.5, 0.0, tightest=4.0, loosest=10.0),
    # Bits per character. 1.5 bits below the reference is a 2.8x smaller effective alphabet.
    "char_entropy_low": CalibrationRule(0.01, 1.0, 1.5, tightest=2.5, loosest=0.5),
    # 0.75 bits above the reference: random characters from the zoo's 74 symbols reach ~6 bits.
    "char_entropy_high": CalibrationRule(0.99, 1.0, 0.75, tightest=4.5, loosest=7.0),
    "token_entropy_low": CalibrationRule(0.01, 1.0, 1.5, tightest=2.5, loosest=0.5),
    # Share of U+FFFD. One stray replacement (a multi-byte character cut at the cap) stays below 1%.
    "replacement_share": CalibrationRule(0.99, 2.0, 0.0, tightest=0.01, loosest=0.1),
}


@dataclass(frozen=True)
class DegeneracyVerdict:
    """All findings on one output; ``degenerate`` when any detector flagged it."""

    degenerate: bool
    reasons: list[str]
    findings: list[Finding]
    excerpt: str


@dataclass(frozen=True)
class ReasonCount:
    """How many outputs one detector flagged, with one example for the report."""

    detector: str
    count: int
    example_reason: str
    example_excerpt: str


@dataclass(frozen=True)
class DegeneracySummary:
    total: int
    degenerate: int
    rate: float
    top_reasons: list[ReasonCount] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Raw measurements (pure functions of one output)


@dataclass(frozen=True)
class TailLoop:
    period: int  # characters in the repeated unit; 0 when there is no loop
    span: int  # characters covered by the loop, ending at the end of the output
    unit: str

    @property
    def repeats(self) -> float:
        return self.span / self.period if self.period else 0.0


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def tail_loop(text: str, max_period: int = MAX_LOOP_PERIOD) -> TailLoop:
    """The longest suffix of ``text`` that repeats one unit at least ``MIN_LOOP_REPEATS`` times.

    A suffix is a loop of period p when every character equals the one p places later; a partial
    last unit (generation cut at the cap) still counts. The smallest period wins among equal spans.
    """
    codes = _codes(text)
    n = len(codes)
    best = TailLoop(0, 0, "")
    for period in range(1, min(max_period, n // MIN_LOOP_REPEATS) + 1):
        probe = codes[n - MIN_LOOP_REPEATS * period:]
        if not np.array_equal(probe[:-period], probe[period:]):
            continue  # the last three units already differ: no loop of this period (cheap check)
        mismatches = np.flatnonzero(codes[:-period] != codes[period:])
        start = int(mismatches[-1]) + 1 if len(mismatches) else 0
        if n - start > best.span and n - start >= MIN_LOOP_CHARS:
            best = TailLoop(period, n - start, text[start:start + period])
            if start == 0:
                break  # the whole output is one loop; a longer period cannot cover more
    return best


def windows(text: str, size: int = WINDOW_CHARS) -> list[str]:
    """Consecutive ``size``-character windows aligned to the end of ``text`` (the first may be shorter).

    Compressibility and repeated spans grow with length even in normal text (a long zoo chain repeats
    its steps and compresses 5x at 17,000 characters, under 3x per 1,024), so they are measured per window
    and the worst window counts: a long output is then held to the same limit as a short reference.
    """
    return [text[max(0, end - size):end] for end in range(len(text), 0, -size)] or [""]


def ngram_repetition(text: str, size: int = NGRAM_CHARS) -> tuple[float, str, int]:
    """(share of ``size``-character spans that repeat an earlier span, most repeated span, its count).

    Measured per window (see :func:`windows`); the window with the highest share is reported.
    """
    best = (0.0, "", 0)
    for window in windows(text):
        total = len(window) - size + 1
        if total <= 0:
            continue
        counts = Counter(window[i:i + size] for i in range(total))
        gram, count = counts.most_common(1)[0]
        best = max(best, (1.0 - len(counts) / total, gram, count))
    return best


def longest_run(units: Sequence[int] | np.ndarray) -> tuple[int, int]:
    """(length, unit) of the longest run of one repeated unit (token id or code point)."""
    values = np.asarray(units)
    if values.size == 0:
        return 0, 0
    ends = np.flatnonzero(np.diff(values) != 0)
    boundaries = np.concatenate(([-1], ends, [values.size - 1]))
    lengths = np.diff(boundaries)
    index = int(np.argmax(lengths))
    return int(lengths[index]), int(values[boundaries[index] + 1])


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes in the most compressible window (see :func:`windows`).

    Loops compress far better than any real text: 20-40x per 1,024-character window against at most
    ~3 for zoo chains and ~2.5 for prose.
    """
    ratios = [len(raw) / len(zlib.compress(raw, 9)) for raw in (w.encode("utf-8") for w in windows(text)) if raw]
    return max(ratios, default=0.0)


def entropy_bits(units: Sequence[int] | np.ndarray | str) -> float:
    """Shannon entropy (bits per unit) of the empirical unit distribution."""
    values = _codes(units) if isinstance(units, str) else np.asarray(units)
    if values.size == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    p = counts / values.size
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0 for display


def script_of(char: str) -> str:
    """The Unicode script of a letter, as the first word of its name (LATIN, CYRILLIC, CJK, ...).

    Digits, punctuation, symbols, spaces and combining marks are COMMON. Unassigned, private-use and
    surrogate code points are OTHER, never seen in a sane reference.
    """
    if char.isascii():
        return "LATIN" if char.isalpha() else COMMON_SCRIPT
    category = unicodedata.category(char)
    if category in ("Cn", "Co", "Cs"):
        return "OTHER"
    if not category.startswith("L"):
        return COMMON_SCRIPT
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else "OTHER"


def script_counts(text: str) -> Counter[str]:
    """Characters per script, U+FFFD excluded (it has its own detector)."""
    return Counter(script_of(c) for c in text if c != REPLACEMENT_CHARACTER)


# ---------------------------------------------------------------------------------------------------
# Calibration


def _calibrated(values: Sequence[float], rule: CalibrationRule, upper: bool, default: float) -> float:
    if not values:
        return default
    raw = float(np.quantile(np.asarray(values, dtype=float), rule.quantile)) * rule.scale
    raw = raw + rule.offset if upper else raw - rule.offset
    low, high = sorted((rule.tightest, rule.loosest))
    return float(min(max(raw, low), high))


def calibrate(
    reference_texts: Sequence[str], reference_token_ids: Sequence[Sequence[int]] | None = None
) -> DetectorThresholds:
    """Thresholds derived from the reference's own outputs (see ``CALIBRATION`` for each rule).

    Give the token ids too when the variant's engine will report them: run length and token entropy
    are then measured in tokens, which is where a broken model's repetition shows most directly.
    """
    if not reference_texts:
        raise QtestsError("calibrate() got no reference outputs; generate the reference's canary items first")
    if reference_token_ids is not None and len(reference_token_ids) != len(reference_texts):
        raise QtestsError(
            f"calibrate() got {len(reference_token_ids)} token-id lists for {len(reference_texts)} texts; "
            "pass one list per reference output or none"
        )
    defaults = DetectorThresholds()
    texts = list(reference_texts)
    long_texts = [t for t in texts if len(t) >= MIN_ENTROPY_CHARS]
    token_level = reference_token_ids is not None
    run_units = [list(ids) for ids in reference_token_ids] if token_level else [_codes(t) for t in texts]
    scripts: set[str] = set()
    for text in texts:
        scripts.update(script_counts(text))
    scripts.discard(COMMON_SCRIPT)

    def upper(name: str, values: Sequence[float]) -> float:
        return _calibrated(values, CALIBRATION[name], True, getattr(defaults, name))

    def lower(name: str, values: Sequence[float]) -> float:
        return _calibrated(values, CALIBRATION[name], False, getattr(defaults, name))

    return DetectorThresholds(
        loop_coverage=upper("loop_coverage", [tail_loop(t).span / len(t) for t in texts if t]),
        ngram_repeat_share=upper("ngram_repeat_share", [ngram_repetition(t)[0] for t in texts]),
        longest_run=upper("longest_run", [longest_run(u)[0] for u in run_units]),
        compression_ratio=upper("compression_ratio", [compression_ratio(t) for t in texts if t]),
        char_entropy_low=lower("char_entropy_low", [entropy_bits(t) for t in long_texts]),
        char_entropy_high=upper("char_entropy_high", [entropy_bits(t) for t in long_texts]),
        token_entropy_low=lower(
            "token_entropy_low",
            [entropy_bits(u) for u in run_units if len(u) >= MIN_ENTROPY_CHARS] if token_level else [],
        ),
        replacement_share=upper(
            "replacement_share", [t.count(REPLACEMENT_CHARACTER) / len(t) for t in texts if t]
        ),
        unexpected_script_share=defaults.unexpected_script_share,
        allowed_scripts=frozenset(scripts) or defaults.allowed_scripts,
        token_level=token_level,
    )


# ---------------------------------------------------------------------------------------------------
# Assessment


def _show(text: str, limit: int = 24) -> str:
    """A quoted, escaped, shortened rendering of a piece of output for reason strings."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    return json.dumps(shown, ensure_ascii=False)


def _excerpt(text: str, width: int = 60) -> str:
    if len(text) <= 2 * width:
        return json.dumps(text, ensure_ascii=False)
    return json.dumps(text[:width], ensure_ascii=False) + " … " + json.dumps(text[-width:], ensure_ascii=False)


def _upper(detector: str, value: float, limit: float, reason: str) -> Finding:
    return Finding(detector, value, limit, value > limit, reason)


def _lower(detector: str, value: float, limit: float, reason: str) -> Finding:
    return Finding(detector, value, limit, value < limit, reason)


def _boolean(detector: str, present: bool, reason: str) -> Finding:
    return Finding(detector, 1.0 if present else 0.0, 0.0, present, reason)


def _repetition_findings(text: str, thresholds: DetectorThresholds) -> list[Finding]:
    loop = tail_loop(text)
    coverage = loop.span / len(text)
    share, gram, count = ngram_repetition(text)
    return [
        _upper(
            "loop", coverage, thresholds.loop_coverage,
            f"loop: {loop.period}-char unit {_show(loop.unit)} repeats {loop.repeats:.0f}x at the end, "
            f"covering {coverage:.0%} of output (limit {thresholds.loop_coverage:.0%})"
            if loop.period else "loop: no repeated unit at the end of the output",
        ),
        _upper(
            "ngram_repetition", share, thresholds.ngram_repeat_share,
            f"repetition: {share:.0%} of {NGRAM_CHARS}-char spans repeat earlier ones"
            f"{' in a window' if len(text) > WINDOW_CHARS else ''}, most often "
            f"{_show(gram)} ({count}x) (limit {thresholds.ngram_repeat_share:.0%})",
        ),
    ]


def _unit_findings(text: str, token_ids: Sequence[int] | None, thresholds: DetectorThresholds) -> list[Finding]:
    if thresholds.token_level:
        if token_ids is None:
            raise QtestsError(
                "degeneracy thresholds were calibrated on token ids but this output has none; "
                "have the backend return token ids, or calibrate on text only"
            )
        length, unit = longest_run(token_ids)
        run_text = f"token id {unit} repeated {length}x in a row"
    else:
        length, unit = longest_run(_codes(text))
        run_text = f"character {_show(chr(unit))} repeated {length}x in a row"
    ratio = compression_ratio(text)
    scope = "a window of the" if len(text) > WINDOW_CHARS else "the"
    findings = [
        _upper("longest_run", length, thresholds.longest_run,
               f"run: {run_text} (limit {thresholds.longest_run:.0f})"),
        _upper("compression_ratio", ratio, thresholds.compression_ratio,
               f"compression: zlib shrinks {scope} output {ratio:.1f}x (limit {thresholds.compression_ratio:.1f}x)"),
    ]
    if len(text) >= MIN_ENTROPY_CHARS:
        bits = entropy_bits(text)
        findings.append(_lower("char_entropy_low", bits, thresholds.char_entropy_low,
                               f"low entropy: {bits:.2f} bits/char (limit {thresholds.char_entropy_low:.2f})"))
        findings.append(_upper("char_entropy_high", bits, thresholds.char_entropy_high,
                               f"high entropy: {bits:.2f} bits/char, character soup "
                               f"(limit {thresholds.char_entropy_high:.2f})"))
    if thresholds.token_level and len(token_ids) >= MIN_ENTROPY_CHARS:
        bits = entropy_bits(token_ids)
        findings.append(_lower("token_entropy_low", bits, thresholds.token_entropy_low,
                               f"low token entropy: {bits:.2f} bits/token "
                               f"(limit {thresholds.token_entropy_low:.2f})"))
    return findings


def _character_findings(text: str, thresholds: DetectorThresholds) -> list[Finding]:
    replacements = text.count(REPLACEMENT_CHARACTER)
    share = replacements / len(text)
    scripts = script_counts(text)
    foreign = {s: c for s, c in scripts.items() if s != COMMON_SCRIPT and s not in thresholds.allowed_scripts}
    foreign_share = sum(foreign.values()) / len(text)
    allowed = ", ".join(sorted(thresholds.allowed_scripts))
    return [
        _upper("replacement_chars", share, thresholds.replacement_share,
               f"replacement characters: {replacements} U+FFFD, {share:.0%} of output "
               f"(limit {thresholds.replacement_share:.0%})"),
        _upper("unexpected_script", foreign_share, thresholds.unexpected_script_share,
               f"unexpected script: {foreign_share:.0%} of characters are "
               f"{', '.join(sorted(foreign, key=foreign.get, reverse=True)) or 'none'}, "
               f"reference wrote {allowed} (limit {thresholds.unexpected_script_share:.0%})"),
    ]


def _structure_findings(text: str, answer_found: bool, truncated: bool) -> list[Finding]:
    """Empty answer, unclosed thinking, no extractable answer.

    An output cut at the output cap also lacks a closed thinking block and an answer, but that is
    truncation, which has its own metric; flagging it here would count a model that thinks longer as
    gibberish. So these three only flag outputs the model ended by itself.
    """
    split = split_thinking(text)
    unclosed = split.has_thinking and not split.closed
    if truncated:
        cut = "not judged, cut at the output cap (counted as truncation)"
        return [_boolean("empty_answer", False, f"empty: {cut}"),
                _boolean("thinking_unclosed", False, f"thinking never closed: {cut}"),
                _boolean("answer_absent", False, f"answer absent: {cut}")]
    if split.answer:
        empty_reason = "empty: the answer has text"
    elif not text.strip():
        empty_reason = "empty: the output is empty"
    elif unclosed:
        empty_reason = "empty: not judged, thinking never closed"
    else:
        empty_reason = f"empty: nothing after {THINK_CLOSE}" if split.has_thinking else "empty: blank answer"
    return [
        _boolean("empty_answer", not split.answer and not unclosed, empty_reason),
        _boolean("thinking_unclosed", unclosed,
                 f"thinking never closed: the model stopped without {THINK_CLOSE} after {len(text)} characters"
                 if unclosed else "thinking closed"),
        _boolean("answer_absent", not answer_found,
                 "answer absent: the task's extractor found no answer" if not answer_found
                 else "answer found"),
    ]


def assess(
    text: str,
    token_ids: Sequence[int] | None,
    thresholds: DetectorThresholds,
    answer_found: bool,
    *,
    truncated: bool = False,
) -> DegeneracyVerdict:
    """Run every detector on one output; degenerate when any of them flags it.

    ``answer_found`` is the task's own extraction result (graders stay out of this module).
    ``truncated`` is true when the engine stopped at the output cap (``finish_reason == "length"``):
    the structural detectors then stay silent, while a loop running into the cap is still flagged.
    Token ids are used only when ``thresholds.token_level`` (calibrated on tokens); they are then
    required. Statistical detectors are skipped on empty text, where only the structural ones speak.
    """
    findings = _structure_findings(text, answer_found, truncated)
    if text:
        findings = (
            _repetition_findings(text, thresholds)
            + _unit_findings(text, token_ids, thresholds)
            + _character_findings(text, thresholds)
            + findings
        )
    reasons = [f.reason for f in findings if f.flagged]
    return DegeneracyVerdict(bool(reasons), reasons, findings, _excerpt(text))


def summarize(verdicts: Sequence[DegeneracyVerdict], top: int = 5) -> DegeneracySummary:
    """Degenerate rate and the most frequent reasons, each with the first output it flagged."""
    flagged = [v for v in verdicts if v.degenerate]
    counts: Counter[str] = Counter()
    examples: dict[str, tuple[str, str]] = {}
    for verdict in flagged:
        for finding in verdict.findings:
            if finding.flagged:
                counts[finding.detector] += 1
                examples.setdefault(finding.detector, (finding.reason, verdict.excerpt))
    ranked = sorted(counts, key=lambda name: (-counts[name], DETECTORS.index(name)))[:top]
    return DegeneracySummary(
        total=len(verdicts),
        degenerate=len(flagged),
        rate=len(flagged) / len(verdicts) if verdicts else math.nan,
        top_reasons=[ReasonCount(name, counts[name], *examples[name]) for name in ranked],
    )
