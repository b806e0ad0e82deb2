"""Must-show: replayed generations of two models on real GSM8K items, through the real plugin.

Two replay files over the first 200 items of the bundled GSM8K test split are built from the real
reference solutions (see ``gsm8k_replays.py``). The suite runs in a pytest subprocess, the way a user
runs it (``--backend replay``), and the test checks the harness against numbers counted here from the
files alone: the accuracies, the truncation rate, the discordant items and the exact McNemar p-value
``scipy.stats.binomtest`` gives on them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from gsm8k_replays import (GSM8K, MAX_TOKENS, N_ITEMS, a_output, b_output, c_output, d_output, gold_of,
                           gsm8k_rows, hand_count, with_final_answer, write_replay)
from scipy.stats import binomtest

pytest_plugins = ["pytester"]


def test_replayed_gsm8k_accuracies_and_mcnemar_match_a_hand_count(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = gsm8k_rows()
    a_outputs = write_replay(pytester.path / "a.jsonl", rows, a_output)
    b_outputs = write_replay(pytester.path / "b.jsonl", rows, b_output)

    a_correct, a_truncated = hand_count(rows, a_outputs)
    b_correct, b_truncated = hand_count(rows, b_outputs)
    reference_only = sum(a and not b for a, b in zip(a_correct, b_correct))
    variant_only = sum(b and not a for a, b in zip(a_correct, b_correct))
    assert (sum(a_correct), sum(b_correct), reference_only, variant_only) == (192, 170, 28, 6)  # the design above
    mcnemar_p = binomtest(reference_only, reference_only + variant_only, 0.5, alternative="greater").pvalue

    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "replay", "--tasks", f"gsm8k={GSM8K}",
        "--limit", str(N_ITEMS), "--max-tokens", str(MAX_TOKENS),
        "--reference", "model-a=example/model-a", "--model", "model-b=example/model-b",
        "--replay", "model-a=a.jsonl", "--replay", "model-b=b.jsonl",
        "--qt-report", "report", "--junitxml", "junit.xml", "-rf", timeout=300)

    output = result.stdout.str()
    assert "Traceback" not in output
    result.assert_outcomes(passed=3, failed=1, deselected=2)  # accuracy fails; no --policy, no --parity
    assert f"FAILED qtests/test_gate.py::test_accuracy[model-b-gsm8k={GSM8K}]" in output
    assert "28 items lost, 6 gained" in output

    document = json.loads((pytester.path / "report" / "results.json").read_text())
    runs = {run["variant"]: run for run in document["runs"]}
    assert runs["model-a"]["summary"]["accuracy"] == sum(a_correct) / N_ITEMS
    assert runs["model-b"]["summary"]["accuracy"] == sum(b_correct) / N_ITEMS
    assert runs["model-b"]["summary"]["truncation"] == sum(b_truncated) / N_ITEMS
    assert runs["model-a"]["summary"]["truncation"] == sum(a_truncated) / N_ITEMS == 0
    accuracy = runs["model-b"]["checks"]["accuracy"]
    assert (accuracy["reference_value"], accuracy["variant_value"]) == (sum(a_correct) / N_ITEMS,
                                                                          sum(b_correct) / N_ITEMS)
    assert accuracy["n_items"] == N_ITEMS and not accuracy["passed"]
    assert accuracy["discordant"] == {"reference_only": reference_only, "variant_only": variant_only,
                                      "mcnemar_exact_p": mcnemar_p}
    assert runs["model-b"]["flips"] == {"lost": reference_only, "gained": variant_only}

    properties = {(case.get("name"), prop.get("name")): prop.get("value")
                  for case in ET.parse(pytester.path / "junit.xml").iter("testcase")
                  for prop in case.iter("property")}
    accuracy_case = f"test_accuracy[model-b-gsm8k={GSM8K}]"
    assert float(properties[(accuracy_case, "accuracy.mcnemar_exact_p")]) == mcnemar_p
    assert int(properties[(accuracy_case, "accuracy.reference_only")]) == reference_only
    assert int(properties[(accuracy_case, "accuracy.variant_only")]) == variant_only
    assert float(properties[(accuracy_case, "accuracy.variant")]) == sum(b_correct) / N_ITEMS
    assert float(properties[(accuracy_case, "accuracy.reference")]) == sum(a_correct) / N_ITEMS


def test_with_repeats_items_are_the_unit_through_the_plugin(pytester: pytest.Pytester, monkeypatch):
    """``--repeats 3``: three replayed samples per item that disagree; the gate averages per item first,
    so the check counts 40 items (not 120 samples) and uses the paired sign-flip test over items."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_items, repeats = 40, 3
    rows = gsm8k_rows(n_items)

    def sometimes_wrong(every: int):
        def make(index: int, solution: str, sample: int) -> tuple[str, str]:
            if (index + sample) % every == 0:
                return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 1)), "stop"
            return solution, "stop"
        return make

    a_correct, _ = hand_count(rows, write_replay(pytester.path / "a.jsonl", rows, sometimes_wrong(5), repeats))
    b_correct, _ = hand_count(rows, write_replay(pytester.path / "b.jsonl", rows, sometimes_wrong(3), repeats))
    a_per_item = [sum(a_correct[i * repeats:(i + 1) * repeats]) / repeats for i in range(n_items)]
    b_per_item = [sum(b_correct[i * repeats:(i + 1) * repeats]) / repeats for i in range(n_items)]

    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "replay", "--tasks", "gsm8k",
        "--limit", str(n_items), "--repeats", str(repeats), "--canary", "0",
        "--reference", "model-a=example/model-a", "--model", "model-b=example/model-b",
        "--replay", "model-a=a.jsonl", "--replay", "model-b=b.jsonl", "--qt-report", "report", timeout=300)
    assert "Traceback" not in result.stdout.str()

    run = {r["variant"]: r for r in json.loads((pytester.path / "report" / "results.json").read_text())["runs"]}
    summary, accuracy = run["model-b"]["summary"], run["model-b"]["checks"]["accuracy"]
    assert (summary["n_items"], summary["n_samples"]) == (n_items, n_items * repeats)
    assert accuracy["n_items"] == n_items
    assert accuracy["method"].startswith("paired sign-flip test over items")
    assert "3 samples per item" in accuracy["message"] and accuracy["discordant"] is None
    assert accuracy["reference_value"] == pytest.approx(sum(a_per_item) / n_items)
    assert accuracy["variant_value"] == pytest.approx(sum(b_per_item) / n_items)
    assert accuracy["estimate"] == pytest.approx(sum(b - a for a, b in zip(a_per_item, b_per_item)) / n_items)


def lm_eval_samples_line(doc_id: int, row: dict, output: str) -> dict:
    """A line of lm-evaluation-harness 0.4's ``--log_samples`` file for GSM8K, with every field the real
    file has (tests/data/replay/lm_eval_samples_qtests_zoo.jsonl, written by lm-eval 0.4.13)."""
    return {"doc_id": doc_id, "doc": row, "target": row["answer"],
            "arguments": {"gen_args_0": {"arg_0": row["question"], "arg_1": {"until": [], "max_gen_toks": 512}}},
            "resps": [[output]], "filtered_resps": [gold_of(output)], "filter": "strict-match",
            "metrics": ["exact_match"], "doc_hash": "", "prompt_hash": "", "target_hash": "", "exact_match": 1.0}


def test_gold_answers_replayed_as_the_model_and_as_lm_eval_samples_grade_alike(pytester: pytest.Pytester,
                                                                                 monkeypatch):
    """``--model gold=FILE`` with lines of only ``id`` and ``output`` (the bundled GSM8K solutions) grades
    1.000; the same items as an lm-eval samples file give the same accuracy; and a baseline saved from
    one replay file gates the other without ``--allow-mismatch`` (the file is the model, not the engine)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    (pytester.path / "gold.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "output": row["answer"]}) + "\n" for i, row in enumerate(rows)))
    (pytester.path / "samples_gsm8k.jsonl").write_text(
        "".join(json.dumps(lm_eval_samples_line(i, row, row["answer"])) + "\n" for i, row in enumerate(rows)))

    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "replay", "--tasks", "gsm8k",
        "--model", "gold=gold.jsonl", "--model", "lmeval=samples_gsm8k.jsonl", "--save-baseline",
        "--qt-report", "report", timeout=300)
    output = result.stdout.str()
    assert "Traceback" not in output and result.ret == 0, output[-3000:]
    runs = {run["variant"]: run for run in json.loads((pytester.path / "report" / "results.json").read_text())["runs"]}
    assert runs["gold"]["summary"]["n_items"] == runs["lmeval"]["summary"]["n_items"] == len(rows) == 1319
    assert runs["gold"]["summary"]["accuracy"] == runs["lmeval"]["summary"]["accuracy"] == 1.0
    assert runs["lmeval"]["fingerprint"]["extra"] == {"replay_format": "an lm-evaluation-harness samples file",
                                                       "length_unit": "words"}
    assert "gold on gsm8k: lengths counted in words" in output

    gated = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "replay", "--tasks", "gsm8k",
        "--model", "lmeval=samples_gsm8k.jsonl", "--baseline", "gold", "-rA", timeout=300)
    assert gated.ret == 0, gated.stdout.str()[-3000:]
    assert "PASSED qtests/test_gate.py::test_accuracy[lmeval-gsm8k]" in gated.stdout.str()


def _stop_early_gsm8k(pytester: pytest.Pytester, variant: str, make) -> tuple[pytest.RunResult, dict[str, dict], int]:
    """``--stop-early`` over all 1319 GSM8K items, model A (replayed) the live reference: the run, its runs by
    model, and the items model A gets right and the variant does not, net (counted from the files)."""
    rows = gsm8k_rows(1319)
    a_correct, _ = hand_count(rows, write_replay(pytester.path / "a.jsonl", rows, a_output))
    v_correct, _ = hand_count(rows, write_replay(pytester.path / "v.jsonl", rows, make))
    result = pytester.runpytest_subprocess(
        "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "replay", "--tasks", f"gsm8k={GSM8K}",
        "--limit", "1319", "--max-tokens", str(MAX_TOKENS), "--stop-early", "--canary", "0",
        "--reference", "model-a=example/model-a", "--model", f"{variant}=example/{variant}",
        "--replay", "model-a=a.jsonl", "--replay", f"{variant}=v.jsonl", "--qt-report", "report", "-rs", timeout=300)
    assert "Traceback" not in result.stdout.str()
    runs = {r["variant"]: r for r in json.loads((pytester.path / "report" / "results.json").read_text())["runs"]}
    return result, runs, sum(a_correct) - sum(v_correct)


@pytest.mark.parametrize(("variant", "make", "fails"), [("model-b", b_output, True), ("model-c", c_output, True),
                                                        ("model-a-again", a_output, False)])
def test_stop_early_decides_a_10_point_loss_within_a_fifth_of_gsm8k_and_passes_a_model_against_itself(
        pytester: pytest.Pytester, monkeypatch, variant, make, fails):
    """Must-show of ``--stop-early`` on real outputs: over all 1319 GSM8K items, a variant 10+ points worse
    than model A is decided FAIL after at most 20% of the items; model A against itself raises no false
    alarm and stops long before the end (no FAIL within reach). The reference generates its head only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result, runs, lost = _stop_early_gsm8k(pytester, variant, make)
    assert lost / 1319 >= (0.10 if fails else 0.0) - 1e-9  # the pairs are what their names say
    output = result.stdout.str()
    assert result.ret == (1 if fails else 0), output[-3000:]
    run = runs[variant]
    sequential, accuracy = run["sequential"], run["checks"]["accuracy"]
    assert run["items_planned"] == sequential["items_planned"] == 1319
    assert run["items_evaluated"] == sequential["items_evaluated"] <= 4 * 66  # four looks of 5% (66 items): 20.0%
    # the reference generated its head (the looks up to the first a variant may stop at without a FAIL), no more
    assert runs["model-a"]["items_evaluated"] == 4 * 66
    if fails:
        assert accuracy["verdict"] == "FAIL" and sequential["stopped"] == "a check failed"
        assert accuracy["decided_look"] <= 4 and "anytime-valid" in accuracy["method"]
        # the checks left open at the FAIL are skipped as not judged (as after a failed canary), not passed
        open_checks = [name for name, check in run["checks"].items() if check["decided_look"] is None]
        assert open_checks and result.parseoutcomes()["skipped"] == len(open_checks)
        assert f"{open_checks[0]} not judged: --stop-early stopped after {run['items_evaluated']} of 1319" in output
    else:
        assert {check["verdict"] for check in run["checks"].values()} <= {"PASS", "INCONCLUSIVE"}
        assert sequential["stopped"] == "no FAIL within reach of the open checks"
        assert all(chance < 0.05 for chance in sequential["fail_chances"].values())


def test_stop_early_extends_the_reference_only_as_far_as_a_variant_needs_it(pytester: pytest.Pytester, monkeypatch):
    """Model D (5 points lost, a 2 pp margin) needs more looks than the reference's head of 264 items: the
    reference grows once, to twice its prefix (528 items), and never generates the other 791."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result, runs, _ = _stop_early_gsm8k(pytester, "model-d", d_output)
    assert result.ret == 1
    variant, reference = runs["model-d"], runs["model-a"]
    assert 4 * 66 < variant["items_evaluated"] <= reference["items_evaluated"] == 2 * 4 * 66 < 1319
    assert variant["tokens_generated"]["reference"] < reference["tokens_generated"]["variant"]
