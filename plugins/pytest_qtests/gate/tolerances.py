"""The ``--fail-on`` grammar: which checks exist, which way each gets worse, and the tolerated margins.

In the spirit of pytest-benchmark's ``--benchmark-compare-fail``:
``accuracy:-2pp,truncation:+5pp,length:1.25x``. Rates take ``pp`` (percentage points), a bare fraction
(``-0.02``) or ``%`` (relative to the reference's value, like pytest-benchmark's ``min:5%`` and vLLM's
rtol: ``accuracy:-2%`` tolerates a drop of 2% *of the reference accuracy*). Length ratios take ``1.25x``
or ``+25%``. The sign may be omitted; when given it must point the worse way.

The registry of check specs lives here, beside the grammar, because reading a tolerance needs what
the check measures (a rate or a ratio) and which way is worse; the checks themselves
(:mod:`pytest_qtests.gate.checks`) only consume parsed :class:`Tolerance` objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from pytest_qtests.records import QtestsError

GateMode = Literal["evidence-of-harm", "non-inferiority"]
GATE_MODES: tuple[str, ...] = ("evidence-of-harm", "non-inferiority")
FAIL_ON_EXAMPLE = "accuracy:-2pp,truncation:+5pp,length:1.25x"


@dataclass(frozen=True)
class CheckSpec:
    """What a ``--fail-on`` key measures and which way is worse."""

    kind: Literal["rate", "ratio"]
    outcome_field: str  # ItemOutcome attribute the check reads
    worse: Literal["lower", "higher"]
    description: str
    down_word: str = ""  # rates: what an item that goes 1 -> 0 is called
    up_word: str = ""  # rates: what an item that goes 0 -> 1 is called
    quantile: float = 0.5  # ratios: which quantile of the per-item lengths


CHECK_SPECS: dict[str, CheckSpec] = {
    "accuracy": CheckSpec("rate", "correct", "lower", "accuracy", "lost", "gained"),
    "truncation": CheckSpec(
        "rate", "truncated", "higher", "truncation rate", "no longer truncated", "newly truncated"
    ),
    "degenerate": CheckSpec(
        "rate", "degenerate", "higher", "degenerate-output rate", "no longer degenerate", "newly degenerate"
    ),
    "length": CheckSpec("ratio", "output_tokens", "higher", "median output tokens", quantile=0.5),
    "length_p95": CheckSpec("ratio", "output_tokens", "higher", "p95 output tokens", quantile=0.95),
    "thinking_length": CheckSpec("ratio", "thinking_tokens", "higher", "median thinking tokens", quantile=0.5),
}


def is_ratio(check: str) -> bool:
    """Whether ``check`` is judged as a variant/reference ratio (lengths); unknown checks read as rates."""
    return check in CHECK_SPECS and CHECK_SPECS[check].kind == "ratio"


@dataclass(frozen=True)
class Tolerance:
    """One parsed tolerance. ``value`` is signed the worse way (accuracy ``-0.02``, truncation ``+0.05``).

    For rates ``relative`` means ``value`` is a share of the reference's own rate; for ratios ``value``
    is the largest tolerated variant/reference ratio.
    """

    check: str
    value: float
    relative: bool
    text: str

    def limit(self, reference_value: float) -> float:
        """The bound on the estimate (rate difference or ratio) this tolerance allows."""
        if self.relative:
            return self.value * reference_value
        return self.value

    def describe(self, reference_value: float) -> str:
        """The margin as a reader wants it, e.g. ``-2 pp`` or ``-2% (-1.7 pp)`` or ``x1.25``."""
        if CHECK_SPECS[self.check].kind == "ratio":
            return f"x{self.value:g}"
        if self.relative:
            return f"{self.value * 100:+g}% ({self.limit(reference_value) * 100:+.2g} pp)"
        return f"{self.value * 100:+g} pp"


_NUMBER = re.compile(r"^(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>pp|%|x)?$")


def _expected_form(check: str) -> str:
    spec = CHECK_SPECS[check]
    if spec.kind == "ratio":
        return f"a ratio such as {check}:1.25x or {check}:+25%"
    sign = "-" if spec.worse == "lower" else "+"
    what = "drop" if spec.worse == "lower" else "rise"
    return (
        f"a {what} such as {check}:{sign}2pp (points), {check}:{sign}0.02 (fraction) "
        f"or {check}:{sign}10% (relative to the reference)"
    )


def parse_tolerance(check: str, value: str | float | int, source: str = "--fail-on") -> Tolerance:
    """Parse one tolerance value for ``check`` (a string like ``-2pp`` or, from a suite file, a number)."""
    if check not in CHECK_SPECS:
        raise QtestsError(f"{source}: unknown check {check!r}; known checks: {', '.join(sorted(CHECK_SPECS))}")
    spec = CHECK_SPECS[check]
    shown = f"{check}:{value}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QtestsError(f"{source}: cannot read {shown!r}; expected {_expected_form(check)}")
    text = str(value).strip() if isinstance(value, str) else repr(value)
    match = _NUMBER.match(text.replace(" ", ""))
    if match is None:
        raise QtestsError(f"{source}: cannot read {shown!r}; expected {_expected_form(check)}")
    sign, unit = match["sign"], match["unit"]
    magnitude = float(match["number"])

    if spec.kind == "ratio":
        if unit == "pp":
            raise QtestsError(f"{source}: {shown!r} uses points, but {check} is a ratio; expected {_expected_form(check)}")
        if unit == "%":
            if sign == "-":
                raise QtestsError(
                    f"{source}: {shown!r} would fail a variant no longer than the reference; "
                    f"expected {_expected_form(check)}"
                )
            ratio = 1.0 + magnitude / 100.0
        else:
            if sign == "-":
                raise QtestsError(f"{source}: {shown!r} is negative; expected {_expected_form(check)}")
            ratio = magnitude
        if ratio < 1.0:
            raise QtestsError(
                f"{source}: {shown!r} would fail a variant no longer than the reference; "
                f"expected {_expected_form(check)}"
            )
        return Tolerance(check, ratio, False, text)

    if unit == "x":
        raise QtestsError(f"{source}: {shown!r} is a ratio, but {check} is a rate; expected {_expected_form(check)}")
    bad_sign = "+" if spec.worse == "lower" else "-"
    if sign == bad_sign and magnitude != 0:
        direction = "rise" if spec.worse == "lower" else "drop"
        raise QtestsError(
            f"{source}: {shown!r} tolerates a {direction}, but {check} gets worse the other way; "
            f"expected {_expected_form(check)}"
        )
    fraction = magnitude / 100.0 if unit in ("pp", "%") else magnitude
    if fraction > 1.0:
        raise QtestsError(f"{source}: {shown!r} exceeds 100%; expected {_expected_form(check)}")
    signed = -fraction if spec.worse == "lower" else fraction
    return Tolerance(check, signed, unit == "%", text)


def parse_fail_on(text: str, source: str = "--fail-on") -> dict[str, Tolerance]:
    """Parse ``accuracy:-2pp,truncation:+5pp,length:1.25x`` into one :class:`Tolerance` per check."""
    tolerances: dict[str, Tolerance] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise QtestsError(
                f"{source}: empty entry in {text!r}; expected KEY:VALUE entries separated by commas, "
                f"e.g. {FAIL_ON_EXAMPLE}"
            )
        key, colon, value = entry.partition(":")
        key = key.strip()
        if not colon or not value.strip():
            raise QtestsError(f"{source}: {entry!r} has no value; expected KEY:VALUE, e.g. {FAIL_ON_EXAMPLE}")
        if key in tolerances:
            raise QtestsError(f"{source}: {key!r} is given twice in {text!r}; keep one")
        tolerances[key] = parse_tolerance(key, value, source)
    return tolerances


def parse_fail_on_mapping(mapping: Mapping[str, Any], source: str = "suite file fail_on") -> dict[str, Tolerance]:
    """The suite-file form: ``{"accuracy": "-2pp", "length": 1.25}`` (numbers: fractions or ratios)."""
    if not isinstance(mapping, Mapping):
        raise QtestsError(f"{source}: expected a mapping of check to tolerance, e.g. {{accuracy: -2pp, length: 1.25x}}")
    return {str(key): parse_tolerance(str(key), value, source) for key, value in mapping.items()}


def parse_gate_mode(text: str) -> GateMode:
    """``--gate-mode``: which reading of the margin decides (see :mod:`pytest_qtests.gate.checks`)."""
    if text not in GATE_MODES:
        raise QtestsError(f"--gate-mode: unknown mode {text!r}; choose one of {', '.join(GATE_MODES)}")
    return text  # type: ignore[return-value]
