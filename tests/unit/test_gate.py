"""The --fail-on grammar and the gate's verdicts on constructed data, with their messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from pytest_qtests.gate.checks import (
    align_outcomes,
    check_absolute,
    check_accuracy,
    check_length,
    check_rate,
    check_truncation,
    run_checks,
    verdict_message,
)
from pytest_qtests.gate.multiplicity import apply_gatekeeping
from pytest_qtests.gate.verdict import rate_mde
from pytest_qtests.gate.tolerances import (
    CHECK_SPECS,
    parse_fail_on,
    parse_fail_on_mapping,
    parse_gate_mode,
    parse_tolerance,
)
from pytest_qtests.records import ItemOutcome, QtestsError
from pytest_qtests.gate.stats import paired_binary_test


def paired_binary(both: int, lost: int, gained: int, neither: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reference/variant 0-1 outcomes with the given counts of each (reference, variant) pair."""
    reference = np.array([1] * both + [1] * lost + [0] * gained + [0] * neither, dtype=float)
    variant = np.array([1] * both + [0] * lost + [1] * gained + [0] * neither, dtype=float)
    ids = [f"item-{i}" for i in range(reference.size)]
    return reference, variant, ids


ACCURACY_2PP = parse_tolerance("accuracy", "-2pp")
ACCURACY_0PP = parse_tolerance("accuracy", "-0pp")


# -------------------------------------------------------------------------------------------------
# Grammar


def test_parse_fail_on_reads_the_documented_example():
    tolerances = parse_fail_on("accuracy:-2pp,truncation:+5pp,length:1.25x")
    assert list(tolerances) == ["accuracy", "truncation", "length"]
    assert tolerances["accuracy"].value == pytest.approx(-0.02) and not tolerances["accuracy"].relative
    assert tolerances["truncation"].value == pytest.approx(0.05)
    assert tolerances["length"].value == pytest.approx(1.25)


@pytest.mark.parametrize(
    "text, value, relative",
    [
        ("accuracy:-2pp", -0.02, False),
        ("accuracy:2pp", -0.02, False),  # sign optional; it can only mean a drop
        ("accuracy:-0.02", -0.02, False),
        ("accuracy:-2%", -0.02, True),  # relative to the reference accuracy, like pytest-benchmark's %
        (" accuracy : -2.5pp ", -0.025, False),
        ("truncation:+5pp", 0.05, False),
        ("truncation:0.05", 0.05, False),
        ("degenerate:+1pp", 0.01, False),
        ("length:+25%", 1.25, False),
        ("length_p95:1.5x", 1.5, False),
        ("thinking_length:1.3", 1.3, False),
        ("accuracy:0", 0.0, False),
    ],
)
def test_parse_fail_on_accepts_each_form(text, value, relative):
    (tolerance,) = parse_fail_on(text).values()
    assert tolerance.value == pytest.approx(value)
    assert tolerance.relative is relative


def test_relative_accuracy_margin_scales_with_the_reference():
    tolerance = parse_tolerance("accuracy", "-2%")
    assert tolerance.limit(0.85) == pytest.approx(-0.017)
    assert tolerance.describe(0.85) == "-2% (-1.7 pp)"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("acc:-2pp", "unknown check 'acc'"),
        ("accuracy:-2p", "cannot read 'accuracy:-2p'"),
        ("accuracy:+2pp", "tolerates a rise"),
        ("truncation:-5pp", "tolerates a drop"),
        ("accuracy:1.2x", "is a ratio"),
        ("length:5pp", "uses points"),
        ("length:0.8x", "no longer than the reference"),
        ("length:-10%", "no longer than the reference"),
        ("accuracy:-200pp", "exceeds 100%"),
        ("accuracy:-2pp,,length:1.2x", "empty entry"),
        ("accuracy", "has no value"),
        ("accuracy:-2pp,accuracy:-1pp", "given twice"),
    ],
)
def test_parse_fail_on_errors_are_one_line_naming_the_token_and_the_form(text, fragment):
    with pytest.raises(QtestsError) as error:
        parse_fail_on(text)
    message = str(error.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith("--fail-on:")


def test_value_errors_show_the_expected_form():
    with pytest.raises(QtestsError, match=r"expected a drop such as accuracy:-2pp .*accuracy:-10% \(relative"):
        parse_fail_on("accuracy:lots")
    with pytest.raises(QtestsError, match=r"expected a ratio such as length:1.25x or length:\+25%"):
        parse_fail_on("length:long")


def test_suite_file_mapping_takes_strings_and_numbers():
    tolerances = parse_fail_on_mapping({"accuracy": -0.02, "truncation": "+5pp", "length": 1.25})
    assert tolerances["accuracy"].value == pytest.approx(-0.02)
    assert tolerances["truncation"].value == pytest.approx(0.05)
    assert tolerances["length"].value == pytest.approx(1.25)
    with pytest.raises(QtestsError, match="^suite file fail_on: unknown check 'speed'"):
        parse_fail_on_mapping({"speed": "2x"})
    with pytest.raises(QtestsError, match="expected a mapping"):
        parse_fail_on_mapping(["accuracy:-2pp"])  # type: ignore[arg-type]
    with pytest.raises(QtestsError, match="cannot read"):
        parse_fail_on_mapping({"accuracy": True})


def test_gate_mode_is_validated():
    assert parse_gate_mode("non-inferiority") == "non-inferiority"
    with pytest.raises(QtestsError, match="choose one of evidence-of-harm, non-inferiority"):
        parse_gate_mode("strict")


# -------------------------------------------------------------------------------------------------
# Accuracy


def test_clear_drop_fails_with_a_message_stating_estimate_interval_margin_and_p():
    reference, variant, ids = paired_binary(both=140, lost=31, gained=9, neither=20)
    result = check_accuracy(reference, variant, ids, ACCURACY_2PP)
    assert not result.passed
    assert result.reference_value == pytest.approx(171 / 200)
    assert result.variant_value == pytest.approx(149 / 200)
    assert result.estimate == pytest.approx(-0.11)
    assert result.ci_high < -0.02  # the whole interval lies beyond the margin
    assert result.p_value < 0.05
    assert result.details["mcnemar_exact_p"] == scipy_stats.binomtest(31, 40, 0.5, alternative="greater").pvalue
    assert result.message.startswith("accuracy 0.745 vs 0.855 reference (Δ -11.0 pp, 90% CI [")
    assert result.verdict == "FAIL" and "FAIL, shown worse than the -2 pp margin (p=0.00" in result.message
    assert "31 items lost, 9 gained; McNemar exact p=0.00034" in result.message


def test_small_drop_within_noise_is_inconclusive_passes_with_a_warning_and_names_its_mde():
    reference, variant, ids = paired_binary(both=150, lost=6, gained=4, neither=40)
    result = check_accuracy(reference, variant, ids, ACCURACY_2PP)
    assert result.passed and result.verdict == "INCONCLUSIVE"
    assert result.ci_low < -0.02 < result.ci_high
    # The smallest drop 200 items with 5% discordance could see at power 0.8: the plan's arithmetic inverted.
    assert result.mde == pytest.approx(rate_mde(200, 0.02, float(np.var(np.asarray(variant) - np.asarray(reference))), 0.05))
    assert 0.02 < result.mde < 0.1
    assert f"could detect a {result.mde * 100:.1f} pp change with power 0.8" in result.message
    assert "passes with a warning (evidence-of-harm)" in result.message


def test_too_few_items_never_fail_even_when_every_disagreement_is_a_loss():
    reference, variant, ids = paired_binary(both=5, lost=3, gained=0, neither=2)
    result = check_accuracy(reference, variant, ids, ACCURACY_0PP)
    assert result.passed  # 3 of 3 discordant lost: exact McNemar p = 1/8
    assert result.details["mcnemar_exact_p"] == pytest.approx(0.125)


def test_identical_outcomes_pass_every_check():
    reference, _, ids = paired_binary(both=150, lost=0, gained=0, neither=50)
    result = check_accuracy(reference, reference, ids, ACCURACY_0PP)
    assert result.passed and result.estimate == 0.0 and result.p_value == 1.0


def test_verdict_is_decided_by_the_one_sided_test_at_alpha():
    reference, variant, ids = paired_binary(both=150, lost=12, gained=4, neither=34)
    test = paired_binary_test(12, 4, 200, 0.0, "less", 0.05)
    assert 0.01 < test.p_value < 0.05  # a case where alpha decides
    assert not check_accuracy(reference, variant, ids, ACCURACY_0PP, alpha=0.05).passed
    assert check_accuracy(reference, variant, ids, ACCURACY_0PP, alpha=0.01).passed


def test_non_inferiority_mode_needs_positive_evidence():
    small_ref, _, small_ids = paired_binary(both=40, lost=0, gained=0, neither=10)
    strict = check_accuracy(small_ref, small_ref, small_ids, ACCURACY_2PP, mode="non-inferiority")
    assert not strict.passed and strict.verdict == "INCONCLUSIVE"  # 50 identical items cannot show the drop is under 2 pp
    assert "fails (non-inferiority needs it shown within the margin)" in strict.message and "qtests plan" in strict.message
    large_ref, large_var, large_ids = paired_binary(both=800, lost=5, gained=5, neither=190)
    shown = check_accuracy(large_ref, large_var, large_ids, ACCURACY_2PP, mode="non-inferiority")
    assert shown.passed and shown.ci_low > -0.02 and shown.verdict == "PASS"
    assert "PASS, shown within the -2 pp margin" in shown.message


def test_relative_margin_is_judged_against_the_reference_accuracy():
    # Drop of 5 pp from 0.5: beyond 8% relative (4 pp) but within 12% (6 pp), with strong evidence.
    reference, variant, ids = paired_binary(both=4500, lost=500, gained=0, neither=5000)
    assert not check_accuracy(reference, variant, ids, parse_tolerance("accuracy", "-8%")).passed
    within = check_accuracy(reference, variant, ids, parse_tolerance("accuracy", "-12%"))
    assert within.passed and within.margin == pytest.approx(-0.06)


def test_repeats_average_per_item_and_agreeing_repeats_keep_the_exact_test():
    reference, variant, ids = paired_binary(both=140, lost=31, gained=9, neither=20)
    once = check_accuracy(reference, variant, ids, ACCURACY_2PP)
    thrice = check_accuracy(np.repeat(reference, 3), np.repeat(variant, 3), np.repeat(ids, 3), ACCURACY_2PP)
    assert thrice.n_items == 200  # items, not 600 samples: repeats of one item are not independent
    assert (thrice.p_value, thrice.ci_low, thrice.ci_high) == (once.p_value, once.ci_low, once.ci_high)


def test_sampled_repeats_use_the_paired_sign_flip_test_over_items():
    rng = np.random.default_rng(4)
    p = rng.beta(0.8, 0.2, 300)
    ids = np.repeat([f"q{i}" for i in range(300)], 4)
    reference = rng.random(1200) < np.repeat(p, 4)
    variant = rng.random(1200) < np.repeat(np.clip(p - 0.15, 0, 1), 4)
    result = check_accuracy(reference, variant, ids, ACCURACY_2PP)
    assert result.method.startswith("paired sign-flip test over items")
    assert result.n_items == 300
    assert not result.passed and result.ci_high < -0.02
    assert "4 samples per item" in result.message


def test_misaligned_arrays_are_a_user_error():
    with pytest.raises(QtestsError, match="must be aligned per \\(item, sample\\)"):
        check_accuracy([1, 0, 1], [1, 0], ["a", "b", "c"], ACCURACY_2PP)


# -------------------------------------------------------------------------------------------------
# Truncation, degenerate, length


def test_truncation_fails_on_a_rise_and_not_on_a_fall():
    tolerance = parse_tolerance("truncation", "+5pp")
    # Truncated is the "1": the variant newly truncates 40 items and recovers 2.
    reference, variant, ids = paired_binary(both=10, lost=2, gained=40, neither=148)
    rise = check_truncation(reference, variant, ids, tolerance)
    assert not rise.passed
    assert "truncation rate 0.250 vs 0.060 reference" in rise.message
    assert "2 items no longer truncated, 40 newly truncated" in rise.message
    fall = check_truncation(variant, reference, ids, tolerance)
    assert fall.passed


def test_degenerate_rate_uses_the_same_paired_rule():
    reference, variant, ids = paired_binary(both=0, lost=0, gained=30, neither=170)
    result = check_rate("degenerate", reference, variant, ids, parse_tolerance("degenerate", "+1pp"))
    assert not result.passed and "30 newly degenerate" in result.message


def test_length_inflation_beyond_the_ratio_fails_and_within_passes():
    rng = np.random.default_rng(0)
    reference = rng.gamma(4.0, 80.0, 300)
    ids = [f"q{i}" for i in range(300)]
    limit = parse_tolerance("length", "1.25x")
    inflated = check_length(reference, reference * rng.lognormal(np.log(1.45), 0.2, 300), ids, limit)
    assert not inflated.passed and inflated.ci_low > 1.25
    assert inflated.message.startswith("median output tokens ")
    assert "FAIL, shown worse than the x1.25 limit (p<0.0005; paired bootstrap over items, 2000 resamples)" in inflated.message
    mild = check_length(reference, reference * rng.lognormal(np.log(1.05), 0.2, 300), ids, limit)
    assert mild.passed and mild.verdict == "PASS" and mild.ci_high < 1.25


def test_p95_check_sees_a_longer_tail_the_median_misses():
    rng = np.random.default_rng(1)
    reference = rng.gamma(4.0, 80.0, 400)
    variant = reference.copy()
    tail = reference > np.quantile(reference, 0.85)
    variant[tail] *= 2.0  # only the longest 15% of answers double
    ids = [f"q{i}" for i in range(400)]
    limit = parse_tolerance("length", "1.25x")
    assert check_length(reference, variant, ids, limit).passed
    p95 = check_length(reference, variant, ids, parse_tolerance("length_p95", "1.25x"), check="length_p95")
    assert not p95.passed and p95.message.startswith("p95 output tokens")


def test_zero_reference_length_is_a_user_error():
    with pytest.raises(QtestsError, match="length ratio is undefined"):
        check_length([0, 0, 0], [3, 4, 5], ["a", "b", "c"], parse_tolerance("length", "1.25x"))


# -------------------------------------------------------------------------------------------------
# Holm, absolute mode, JUnit


def test_family_shares_alpha_accuracy_first_and_prints_the_interval_of_the_level_used():
    reference, variant, ids = paired_binary(both=150, lost=12, gained=4, neither=34)
    first = check_accuracy(reference, variant, ids, ACCURACY_0PP)
    second = check_truncation(variant, reference, ids, parse_tolerance("truncation", "0pp"))
    assert not first.passed and not second.passed and 0.025 < first.p_value < 0.05
    recompute = [lambda level: check_accuracy(reference, variant, ids, ACCURACY_0PP, alpha=level),
                 lambda level: check_truncation(variant, reference, ids, parse_tolerance("truncation", "0pp"), alpha=level)]
    adjusted = apply_gatekeeping([first, second], lambda i, level: recompute[i](level))
    levels = [0.04, 0.01] if first.p_value >= 0.04 else [0.04, 0.05]  # a FAIL hands its share on
    assert [r.alpha for r in adjusted] == pytest.approx(levels)
    for before, after in zip((first, second), adjusted):
        assert after.passed == (before.p_value >= after.alpha)  # the verdict is the test at its level...
        beyond = after.ci_high < 0 if after.check == "accuracy" else after.ci_low > 0
        assert beyond == (after.verdict == "FAIL")  # ...and so is the printed interval
        assert after.adjusted_p_value == pytest.approx(min(1.0, before.p_value * 0.05 / after.alpha))
    assert "accuracy-first weighted Holm over 2 checks: tested at 0.04" in adjusted[0].message


def test_family_fails_the_int2_default_case_that_holm_over_four_checks_passed():
    """Issue 18: 160 items, 9 lost, 0 gained against a -2 pp margin, three other checks unchanged."""
    reference, variant, ids = paired_binary(both=151, lost=9, gained=0, neither=0)
    unchanged = np.zeros(160)
    checks = [lambda level: check_accuracy(reference, variant, ids, ACCURACY_2PP, alpha=level)] + [
        lambda level, name=name, tol=tol: check_rate(name, unchanged, unchanged, ids, parse_tolerance(name, tol), alpha=level)
        for name, tol in (("truncation", "+5pp"), ("degenerate", "+2pp"), ("truncation", "+5pp"))]
    family = [check(0.05) for check in checks]
    out = apply_gatekeeping(family, lambda i, level: checks[i](level))
    assert not out[0].passed and out[0].verdict == "FAIL" and out[0].ci_high < -0.02
    assert all(r.passed for r in out[1:])


def test_gatekeeping_leaves_non_inferiority_and_absolute_checks_alone():
    reference, variant, ids = paired_binary(both=140, lost=31, gained=9, neither=20)
    strong = check_accuracy(reference, variant, ids, ACCURACY_2PP)
    noninferior = check_accuracy(reference, reference, ids, ACCURACY_2PP, mode="non-inferiority")
    absolute = check_absolute("accuracy", 0.7, 0.8, 0.08)
    out = apply_gatekeeping([strong, noninferior, absolute],
                            lambda i, level: check_accuracy(reference, variant, ids, ACCURACY_2PP, alpha=level))
    assert not out[0].passed and out[0].adjusted_p_value == pytest.approx(strong.p_value)
    assert out[1] == noninferior and out[2] == absolute


def test_absolute_expectation_mode_like_vllm_ci():
    below = check_absolute("accuracy", 0.52, 0.58, 0.08)
    assert not below.passed
    assert below.message == (
        "accuracy 0.52 is below the expected 0.58 - 8% = 0.5336: fails (absolute expectation, no confidence interval)"
    )
    assert check_absolute("accuracy", 0.54, 0.58, 0.08).passed
    assert check_absolute("truncation", 0.10, 0.10, 0.2, direction="lower").passed
    assert not check_absolute("truncation", 0.13, 0.10, 0.2, direction="lower").passed
    with pytest.raises(QtestsError):
        check_absolute("accuracy", 0.5, 0.6, -0.1)


def test_junit_properties_carry_metric_delta_interval_and_p():
    reference, variant, ids = paired_binary(both=140, lost=31, gained=9, neither=20)
    result = check_accuracy(reference, variant, ids, ACCURACY_2PP)
    props = apply_gatekeeping([result], lambda i, level: result)[0].junit_properties()
    for key in ("estimate", "ci_low", "ci_high", "margin", "p_value", "adjusted_p_value", "passed", "verdict", "mde",
                "n_items"):
        assert f"accuracy.{key}" in props
    assert props["accuracy.estimate"] == pytest.approx(-0.11)
    assert all(value is not None for value in props.values())


# -------------------------------------------------------------------------------------------------
# From outcomes


def outcome(item: str, sample: int, correct: bool, truncated: bool = False, tokens: int = 100) -> ItemOutcome:
    return ItemOutcome(item, sample, correct, truncated, tokens, tokens // 2, not truncated)


def test_run_checks_on_identical_outcomes_passes_everything():
    rng = np.random.default_rng(2)
    outcomes = [
        outcome(f"q{i}", s, bool(rng.random() < 0.8), bool(rng.random() < 0.1), int(rng.integers(50, 500)))
        for i in range(100)
        for s in range(2)
    ]
    tolerances = parse_fail_on("accuracy:-0pp,truncation:+0pp,length:1.0x,length_p95:1.0x,thinking_length:1.0x")
    names = list(tolerances)
    results = apply_gatekeeping(
        run_checks(outcomes, list(reversed(outcomes)), tolerances),
        lambda i, level: run_checks(outcomes, list(reversed(outcomes)), {names[i]: tolerances[names[i]]}, level)[0])
    assert [r.check for r in results] == list(tolerances)
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]


def test_run_checks_reads_each_outcome_field():
    reference = [outcome(f"q{i}", 0, True, False, 100) for i in range(300)]
    variant = [outcome(f"q{i}", 0, i >= 60, i < 60, 200 if i < 60 else 100) for i in range(300)]
    results = {r.check: r for r in run_checks(reference, variant, parse_fail_on("accuracy:-2pp,truncation:+5pp,length_p95:1.25x"))}
    assert not results["accuracy"].passed and results["accuracy"].details["down"] == 60
    assert not results["truncation"].passed and results["truncation"].details["up"] == 60
    assert not results["length_p95"].passed and results["length_p95"].estimate == pytest.approx(2.0)


def test_runs_over_different_samples_are_refused():
    reference = [outcome("a", 0, True), outcome("b", 0, True)]
    variant = [outcome("a", 0, True), outcome("c", 0, True)]
    with pytest.raises(QtestsError, match=r"1 only in the reference, 1 only in the variant, e\.g\. item 'b' sample 0"):
        align_outcomes(reference, variant)
    with pytest.raises(QtestsError, match="duplicate"):
        align_outcomes(reference + reference[:1], variant)


def test_every_check_key_reads_a_real_outcome_field():
    fields = set(ItemOutcome.__dataclass_fields__)
    assert all(spec.outcome_field in fields for spec in CHECK_SPECS.values())


# -------------------------------------------------------------------------------------------------
# Properties of the checks, whatever the data

PROPERTIES = settings(max_examples=40, deadline=None)
MODES = st.sampled_from(["evidence-of-harm", "non-inferiority"])


@st.composite
def paired_rates(draw, max_items: int = 60):
    """Per-sample 0/1 outcomes of both models, aligned by (item, sample), with 1, 2 or 4 samples per item.

    Powers of two keep per-item means and their complements exact in floating point, so mirrored data
    give bit-for-bit mirrored differences (the sign-flip test counts ties at the bound exactly).
    """
    n_items = draw(st.integers(1, max_items))
    repeats = draw(st.sampled_from([1, 2, 4]))
    size = n_items * repeats
    reference = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=float)
    variant = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=float)
    return reference, variant, np.repeat([f"q{i}" for i in range(n_items)], repeats)


@st.composite
def paired_lengths(draw, max_items: int = 40):
    n_items = draw(st.integers(2, max_items))
    lengths = st.lists(st.integers(1, 4000), min_size=n_items, max_size=n_items)
    return (np.array(draw(lengths), dtype=float), np.array(draw(lengths), dtype=float),
            [f"q{i}" for i in range(n_items)])


@PROPERTIES
@given(paired_rates(), st.integers(0, 20), MODES)
def test_accuracy_and_the_truncation_of_the_complement_are_one_check_mirrored(data, points, mode):
    """A drop in a "higher is better" rate is a rise in its complement: the direction is wired both ways alike."""
    reference, variant, ids = data
    accuracy = check_rate("accuracy", reference, variant, ids, parse_tolerance("accuracy", f"-{points}pp"),
                          mode=mode, n_resamples=200)
    truncation = check_rate("truncation", 1 - reference, 1 - variant, ids,
                            parse_tolerance("truncation", f"+{points}pp"), mode=mode, n_resamples=200)
    assert truncation.estimate == pytest.approx(-accuracy.estimate, abs=1e-12)
    assert truncation.p_value == pytest.approx(accuracy.p_value, rel=1e-9, abs=1e-12)
    assert truncation.passed == accuracy.passed
    assert (truncation.ci_low, truncation.ci_high) == pytest.approx((-accuracy.ci_high, -accuracy.ci_low), abs=1e-6)


@PROPERTIES
@given(paired_rates(), st.integers(0, 20), st.sampled_from([0.01, 0.05, 0.2]))
def test_no_rate_data_show_both_harm_and_non_inferiority(data, points, alpha):
    """The two modes read one margin from opposite sides: data cannot fail the lenient and pass the strict."""
    reference, variant, ids = data
    tolerance = parse_tolerance("accuracy", f"-{points}pp")
    lenient = check_rate("accuracy", reference, variant, ids, tolerance, alpha, "evidence-of-harm", 200)
    strict = check_rate("accuracy", reference, variant, ids, tolerance, alpha, "non-inferiority", 200)
    assert lenient.passed or not strict.passed
    assert strict.passed <= lenient.passed


@PROPERTIES
@given(paired_lengths(), st.sampled_from(["length", "length_p95"]), st.sampled_from(["1.0x", "1.25x", "2x"]))
def test_no_length_data_show_both_harm_and_non_inferiority(data, check, limit):
    reference, variant, ids = data
    tolerance = parse_tolerance(check, limit)
    lenient = check_length(reference, variant, ids, tolerance, check=check, n_resamples=200)
    strict = check_length(reference, variant, ids, tolerance, check=check, mode="non-inferiority", n_resamples=200)
    assert strict.passed <= lenient.passed


@PROPERTIES
@given(paired_lengths(), st.integers(-8, 8), MODES)
def test_length_ratio_does_not_depend_on_the_unit_of_length(data, exponent, mode):
    """Scaling every length by a power of two (exact in floating point) leaves the ratio check unchanged."""
    reference, variant, ids = data
    tolerance = parse_tolerance("length", "1.25x")
    plain = check_length(reference, variant, ids, tolerance, mode=mode, n_resamples=200)
    scaled = check_length(reference * 2.0**exponent, variant * 2.0**exponent, ids, tolerance, mode=mode,
                          n_resamples=200)
    assert (scaled.estimate, scaled.ci_low, scaled.ci_high, scaled.p_value, scaled.passed) == (
        plain.estimate, plain.ci_low, plain.ci_high, plain.p_value, plain.passed)


@st.composite
def check_families(draw):
    """A family as a session builds it: paired checks in either mode, and absolute checks without a p-value."""
    family = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["evidence-of-harm", "non-inferiority", "absolute"]))
        if kind == "absolute":
            family.append(check_absolute("accuracy", draw(st.floats(0, 1)), draw(st.floats(0.01, 1)), 0.08))
            continue
        both, lost, gained, neither = (draw(st.integers(0, 40)) for _ in range(4))
        if both + lost + gained + neither == 0:
            neither = 1
        reference, variant, ids = paired_binary(both, lost, gained, neither)
        family.append(check_accuracy(reference, variant, ids, ACCURACY_0PP, mode=kind))
    return family


@PROPERTIES
@given(check_families())
def test_gatekeeping_only_raises_p_values_of_evidence_of_harm_checks_and_leaves_the_rest(family):
    adjusted = apply_gatekeeping(family, lambda i, level: family[i])
    harm = [r for r in family if r.mode == "evidence-of-harm"]
    assert len(adjusted) == len(family)
    for before, after in zip(family, adjusted):
        if before.mode != "evidence-of-harm":
            assert after == before
            continue
        assert after.adjusted_p_value >= before.p_value * (1 - 1e-12)
        assert after.details["family_size"] == len(harm)
        assert after.message == verdict_message(after)
        assert f"weighted Holm over {len(harm)} checks" in after.message
        if len(harm) == 1:
            assert after.adjusted_p_value == pytest.approx(before.p_value) and after.passed == before.passed


@st.composite
def outcome_runs(draw):
    """Two runs over the same (item, sample) keys, with any correctness, truncation and length."""
    keys = [(f"q{i}", s) for i in range(draw(st.integers(2, 25))) for s in range(draw(st.sampled_from([1, 2])))]
    def run():
        return [ItemOutcome(item, sample, draw(st.booleans()), draw(st.booleans()), draw(st.integers(1, 500)),
                            draw(st.integers(0, 200)), True, degenerate=draw(st.booleans()))
                for item, sample in keys]
    return run(), run()


@PROPERTIES
@given(outcome_runs(), st.randoms(use_true_random=False), MODES)
def test_run_checks_pair_samples_by_key_not_by_position(runs, random, mode):
    reference, variant = runs
    tolerances = parse_fail_on("accuracy:-2pp,truncation:+5pp,degenerate:0,length:1.25x,length_p95:1.5x")
    ordered = run_checks(reference, variant, tolerances, mode=mode, n_resamples=200)
    shuffled_reference, shuffled_variant = random.sample(reference, len(reference)), random.sample(variant, len(variant))
    assert run_checks(shuffled_reference, shuffled_variant, tolerances, mode=mode, n_resamples=200) == ordered
    assert [r.check for r in ordered] == list(tolerances)


@PROPERTIES
@given(st.sampled_from(sorted(CHECK_SPECS)), st.integers(0, 100), st.sampled_from(["pp", "%", ""]))
def test_the_worse_sign_may_be_left_out(check, magnitude, unit):
    """``accuracy:2pp`` reads as ``accuracy:-2pp``: a tolerance can only point the worse way."""
    spec = CHECK_SPECS[check]
    if spec.kind == "ratio":
        unit = "%" if unit == "%" else "x"
        number = str(magnitude) if unit == "%" else str(1 + magnitude / 10)
        worse_sign = "+"
    else:
        number = str(magnitude) if unit else str(magnitude / 100)
        worse_sign = "-" if spec.worse == "lower" else "+"
    signed = parse_tolerance(check, f"{worse_sign}{number}{unit}")
    bare = parse_tolerance(check, f"{number}{unit}")
    assert (signed.value, signed.relative) == (bare.value, bare.relative)
    assert signed.value <= 0 if spec.worse == "lower" and spec.kind == "rate" else signed.value >= 0
