"""Stored absolute expectations (vLLM CI style): parsing, precedence, values, and the plugin using them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gsm8k_replays import GSM8K, a_output, b_output, gsm8k_rows, hand_count, write_replay

from pytest_qtests.options import GateOptions, build_config
from pytest_qtests.gate.expectations import (
    DEFAULT_RTOL,
    Expectation,
    expectation_checks,
    observed_value,
    parse_expect_option,
    parse_expect_table,
)
from pytest_qtests.gate.checks import check_absolute
from pytest_qtests.records import ItemOutcome, QtestsError

pytest_plugins = ["pytester"]


def outcome(item: str, sample: int = 0, correct: bool = True, truncated: bool = False, tokens: int = 100):
    return ItemOutcome(item, sample, correct, truncated, tokens, 0, True)


# -------------------------------------------------------------------------------------------------
# Parsing and precedence


def test_command_line_form_for_every_variant_and_for_one():
    every = parse_expect_option("gsm8k:accuracy=0.78,truncation=0.02", default_rtol=None)
    assert every.for_run("any-label", "gsm8k") == {
        "accuracy": Expectation("accuracy", 0.78, DEFAULT_RTOL, "--expect gsm8k:accuracy=0.78,truncation=0.02"),
        "truncation": Expectation("truncation", 0.02, DEFAULT_RTOL, "--expect gsm8k:accuracy=0.78,truncation=0.02"),
    }
    one = parse_expect_option("int4:gsm8k:accuracy=0.75,rtol=0.05", default_rtol=0.1)
    assert one.for_run("int4", "gsm8k")["accuracy"].rtol == 0.05  # its own rtol beats --expect-rtol
    assert one.for_run("nvfp4", "gsm8k") == {} and one.for_run("int4", "aime25") == {}
    assert parse_expect_option("gsm8k:accuracy=0.78", default_rtol=0.1).for_run("x", "gsm8k")["accuracy"].rtol == 0.1


def test_suite_table_variant_values_win_metric_by_metric_and_rtol_is_inherited():
    table = {"rtol": 0.1, "gsm8k": {"accuracy": 0.8, "truncation": 0.05, "rtol": 0.2,
                                    "variants": {"int4": {"accuracy": 0.75}, "nvfp4": {"accuracy": 0.7, "rtol": 0.01}}},
             "aime25": {"accuracy": 0.6}}
    expectations = parse_expect_table(table, default_rtol=None, source="suite.toml: expect")
    int4 = expectations.for_run("int4", "gsm8k")
    assert (int4["accuracy"].value, int4["accuracy"].rtol) == (0.75, 0.2)  # task's rtol inherited
    assert (int4["truncation"].value, int4["truncation"].rtol) == (0.05, 0.2)  # task-wide value kept
    assert int4["accuracy"].source == "suite.toml: expect.gsm8k.variants.int4"
    assert expectations.for_run("nvfp4", "gsm8k")["accuracy"].rtol == 0.01
    assert expectations.for_run("bf16", "aime25")["accuracy"].rtol == 0.1  # the table's default
    overridden = parse_expect_table(table, default_rtol=0.3, source="s")  # --expect-rtol replaces the default
    assert overridden.for_run("bf16", "aime25")["accuracy"].rtol == 0.3
    assert overridden.for_run("int4", "gsm8k")["accuracy"].rtol == 0.2  # a task's own rtol still wins
    command_line = parse_expect_option("int4:gsm8k:accuracy=0.9", default_rtol=None)
    merged = expectations.merged_with(command_line).for_run("int4", "gsm8k")
    assert merged["accuracy"].value == 0.9 and merged["truncation"].value == 0.05


@pytest.mark.parametrize("text, problem", [
    ("gsm8k", "expected [LABEL:]TASK:METRIC=VALUE"),
    ("a:b:c:accuracy=1", "expected [LABEL:]TASK:METRIC=VALUE"),
    ("gsm8k:accuracy", "'accuracy' is not METRIC=VALUE"),
    ("gsm8k:acuracy=0.7", "unknown metric 'acuracy'"),
    ("gsm8k:accuracy=high", "accuracy=high is not a number"),
    ("gsm8k:accuracy=78", "accuracy 78 is not a fraction between 0 and 1 (write 0.78, not 78)"),
    ("gsm8k:length=0", "length 0 must be a positive number of tokens"),
    ("gsm8k:accuracy=0.7,rtol=-1", "rtol must be a non-negative number"),
    ("gsm8k:accuracy=0.7,accuracy=0.8", "accuracy is given twice"),
])
def test_bad_command_line_expectations_are_one_line_errors(text, problem):
    with pytest.raises(QtestsError) as caught:
        parse_expect_option(text, default_rtol=None)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def write_suite(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("expect, problem", [
    ('[expect.gsm8k]\nacuracy = 0.7\n', "expect.gsm8k: Additional properties are not allowed ('acuracy' was unexpected)"),
    ('[expect.gsm8k]\naccuracy = 78\n', "expect.gsm8k.accuracy: 78 is greater than the maximum of 1"),
    ('[expect]\nrtol = -0.1\n', "expect.rtol: -0.1 is less than the minimum of 0"),
    ('[expect.gsm8k.variants.int4]\naccuracy = "high"\n', "expect.gsm8k.variants.int4.accuracy: 'high' is not of type 'number'"),
    ('[expect.gsm8kk]\naccuracy = 0.7\n', "expectation for task 'gsm8kk', which is not among the tasks (gsm8k)"),
    ('[expect.gsm8k.variants.int5]\naccuracy = 0.7\n', "expectation for variant 'int5', which is not among the models"),
])
def test_suite_file_expectations_are_validated_with_the_field_named(tmp_path, expect, problem):
    suite = write_suite(tmp_path / "suite.toml",
                        'models = ["int4=example/int4"]\ntasks = ["gsm8k"]\nbackend = "replay"\n' + expect)
    with pytest.raises(QtestsError) as caught:
        build_config(GateOptions(suite_file=suite))
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_command_line_expectations_must_name_a_task_and_variant_of_the_run(tmp_path):
    with pytest.raises(QtestsError, match=r"--expect aime25:accuracy=0.5: expectation for task 'aime25'"):
        build_config(GateOptions(models=["int4=example/int4"], tasks=["gsm8k"], expect=["aime25:accuracy=0.5"]))
    with pytest.raises(QtestsError, match=r"expectation for variant 'int5'"):
        build_config(GateOptions(models=["int4=example/int4"], tasks=["gsm8k"], expect=["int5:gsm8k:accuracy=0.5"]))
    # a task given with its data file is named by its task name
    config = build_config(GateOptions(models=["int4=example/int4"], tasks=[f"gsm8k={GSM8K}"],
                                      expect=["gsm8k:accuracy=0.5"], expect_rtol=0.2))
    assert config.expectations.for_run("int4", "gsm8k")["accuracy"] == Expectation(
        "accuracy", 0.5, 0.2, "--expect gsm8k:accuracy=0.5")


# -------------------------------------------------------------------------------------------------
# Values and verdicts


def test_observed_values_average_repeats_per_item_first():
    outcomes = [outcome("a", 0, True, tokens=100), outcome("a", 1, True, tokens=300), outcome("a", 2, False, tokens=200),
                outcome("b", 0, False, True, tokens=1000)]
    assert observed_value("accuracy", outcomes) == pytest.approx((2 / 3 + 0) / 2)
    assert observed_value("truncation", outcomes) == 0.5
    assert observed_value("length", outcomes) == pytest.approx((200 + 1000) / 2)  # median of per-item means


def test_expectation_checks_follow_vllm_rtol_and_name_their_source():
    outcomes = [outcome(str(i), correct=i < 15, truncated=i == 0) for i in range(20)]  # accuracy 0.75
    expected = {"accuracy": Expectation("accuracy", 0.8, 0.08, "suite.toml: expect.gsm8k"),
                "truncation": Expectation("truncation", 0.04, 0.08, "suite.toml: expect.gsm8k")}
    accuracy, truncation = expectation_checks(outcomes, expected)
    assert accuracy.passed and accuracy.mode == "absolute" and accuracy.n_items == 20  # 0.75 >= 0.736
    assert accuracy.estimate == pytest.approx(-0.05) and accuracy.margin == pytest.approx(-0.064)
    assert accuracy.details["source"] == "suite.toml: expect.gsm8k"
    assert not truncation.passed  # 0.05 > 0.0432: lower is better for truncation
    assert "truncation 0.05 is above the expected 0.04 + 8% = 0.0432: fails" in truncation.message
    assert truncation.junit_properties()["truncation.rtol"] == 0.08


def test_length_expectation_is_a_ratio_like_the_paired_length_check():
    result = check_absolute("length", 1200.0, 1000.0, 0.25)
    assert result.passed and result.estimate == pytest.approx(1.2) and result.margin == pytest.approx(1.25)


# -------------------------------------------------------------------------------------------------
# Through the plugin (replay backend: no model needed)


@pytest.fixture
def replays(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Replay files of model A and B on the first 100 GSM8K items; returns the hand-counted rates."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = gsm8k_rows(100)
    a_correct, _ = hand_count(rows, write_replay(pytester.path / "a.jsonl", rows, a_output))
    b_correct, b_truncated = hand_count(rows, write_replay(pytester.path / "b.jsonl", rows, b_output))
    return {"a_accuracy": sum(a_correct) / 100, "b_accuracy": sum(b_correct) / 100,
            "b_truncation": sum(b_truncated) / 100}


def run_gate(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "replay",
                                         "--limit", "100", "--qt-report", "report", "-rA", *args, timeout=300)


def checks_of(pytester: pytest.Pytester, variant: str) -> dict:
    document = json.loads((pytester.path / "report" / "results.json").read_text())
    return next(run for run in document["runs"] if run["variant"] == variant)


def test_expectations_alone_gate_a_model_without_reference_like_vllm_ci(pytester, replays):
    assert (replays["b_accuracy"], replays["b_truncation"]) == (0.84, 0.03)
    result = run_gate(pytester, "--tasks", "gsm8k", "--model", "model-b=example/model-b", "--replay", "model-b=b.jsonl",
                      "--expect", "gsm8k:accuracy=0.95,truncation=0.03", "--expect-rtol", "0.05", "--junitxml", "junit.xml")
    output = result.stdout.str()
    assert "Traceback" not in output
    result.assert_outcomes(passed=1, failed=1, skipped=2)  # accuracy fails, truncation passes, 2 have nothing
    assert ("model-b on gsm8k: accuracy 0.84 is below the expected 0.95 - 5% = 0.9025: fails "
            "(absolute expectation, no confidence interval) [expected in --expect gsm8k:accuracy=0.95,truncation=0.03]"
            ) in output
    assert "no --reference and no stored baseline" in output  # length and degenerate: nothing to compare with
    run = checks_of(pytester, "model-b")
    assert run["verdict"] == "FAIL accuracy"
    assert {name: (check["mode"], check["passed"]) for name, check in run["checks"].items()} == {
        "accuracy": ("absolute", False), "truncation": ("absolute", True)}
    assert run["checks"]["accuracy"]["variant_value"] == replays["b_accuracy"]
    properties = {p.get("name"): p.get("value") for case in ET.parse(pytester.path / "junit.xml").iter("testcase")
                  if case.get("name") == "test_accuracy[model-b-gsm8k]" for p in case.iter("property")}
    assert properties["accuracy.mode"] == "absolute" and float(properties["accuracy.rtol"]) == 0.05
    assert float(properties["accuracy.reference"]) == 0.95 and properties["accuracy.passed"] == "False"


def test_suite_file_expectation_replaces_the_paired_check_of_its_metric_only(pytester, replays):
    # Paired with model A, model B's 11-point accuracy drop fails (see test_replayed_gsm8k.py); the team
    # chose an absolute number for accuracy instead, and model B meets its own. Truncation stays paired.
    pytester.path.joinpath("suite.toml").write_text(
        'reference = "model-a=example/model-a"\nmodels = ["model-b=example/model-b"]\ntasks = ["gsm8k"]\n'
        'backend = "replay"\nreplay = {model-a = "a.jsonl", model-b = "b.jsonl"}\n'
        '[expect.gsm8k]\naccuracy = 0.99\n'
        '[expect.gsm8k.variants.model-b]\naccuracy = 0.9\n')
    result = run_gate(pytester, "--qt-config", "suite.toml")
    assert "Traceback" not in result.stdout.str()
    result.assert_outcomes(passed=4, deselected=2)  # test_policy, test_parity: no --policy, no --parity
    checks = checks_of(pytester, "model-b")["checks"]
    assert checks["accuracy"]["mode"] == "absolute" and checks["accuracy"]["passed"]
    assert checks["accuracy"]["limit_text"] == "0.9 - 8% = 0.828"
    assert checks["accuracy"]["variant_value"] == replays["b_accuracy"]
    assert {checks[name]["mode"] for name in ("truncation", "length", "degenerate")} == {"evidence-of-harm"}


def test_a_lone_reference_is_held_to_its_expectations(tmp_path):
    """Only ``--reference`` (a BF16 model's own CI): expectations are its checks; the rest has nothing to pair."""
    from pytest_qtests.report.format import row_verdict
    from pytest_qtests.session import GateSession

    rows = gsm8k_rows(40)
    write_replay(tmp_path / "a.jsonl", rows, a_output)
    config = build_config(GateOptions(reference="bf16=example/bf16", tasks=["gsm8k"], limit=40,
                                      backend="replay", replay=[f"bf16={tmp_path / 'a.jsonl'}"], no_cache=True,
                                      expect=["bf16:gsm8k:accuracy=0.99,rtol=0"]))
    gate = GateSession(config)
    try:
        [reference] = gate.variants
        accuracy = gate.verdict(reference, "gsm8k", "accuracy")
        truncation = gate.verdict(reference, "gsm8k", "truncation")
        [row] = gate.summary_rows()
    finally:
        gate.close()
    assert accuracy.passed is False  # 38/40 = 0.95 < 0.99
    assert accuracy.message == ("bf16 on gsm8k: accuracy 0.95 is below the expected 0.99 - 0% = 0.99: fails "
                                "(absolute expectation, no confidence interval) "
                                "[expected in --expect bf16:gsm8k:accuracy=0.99,rtol=0]")
    assert truncation.skipped and "this is the reference itself" in truncation.message
    assert row["role"] == "reference" and row_verdict(row) == "FAIL accuracy"
