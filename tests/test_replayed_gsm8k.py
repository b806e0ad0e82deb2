"""Must-show: replayed generations of two models on real GSM8K items, through the real plugin.

Two replay files over the first 200 items of the bundled GSM8K test split are built from the real
reference solutions: model A answers with the solutions verbatim except for a few changed final
answers; model B changes the final answer of other items and runs out of tokens on a few (thinking
that never closes, ``finish_reason: length``). The suite runs in a pytest subprocess, the way a user
runs it (``--backend replay``), and the test checks the harness against numbers counted here from the
files alone: the accuracies, the truncation rate, the discordant items and the exact McNemar p-value
``scipy.stats.binomtest`` gives on them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from scipy.stats import binomtest

pytest_plugins = ["pytester"]

GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "gsm8k" / "test.jsonl"
N_ITEMS = 200
MAX_TOKENS = 512


def gold_of(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip()


def with_final_answer(solution: str, answer: str) -> str:
    return solution.rsplit("####", 1)[0] + f"#### {answer}"


def a_output(index: int, solution: str) -> tuple[str, str]:
    """Model A: the reference solution verbatim; every 25th item (from 7) ends on a wrong number."""
    if index % 25 == 7:
        return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 1)), "stop"
    return solution, "stop"


def b_output(index: int, solution: str) -> tuple[str, str]:
    """Model B: every 8th item (from 3) off by ten; every 40th (from 17) cut off while still thinking."""
    if index % 40 == 17:
        return "<think>\n" + solution[: len(solution) // 2], "length"
    if index % 8 == 3:
        return with_final_answer(solution, str(int(gold_of(solution).replace(",", "")) + 10)), "stop"
    return solution, "stop"


def hand_count(rows: list[dict], outputs: list[dict]) -> tuple[list[bool], list[bool]]:
    """(correct, truncated) per item from the files alone: correct = finished and ``####`` = the gold."""
    correct = [out["finish_reason"] == "stop" and gold_of(out["output"]) == gold_of(row["answer"])
               for row, out in zip(rows, outputs)]
    truncated = [out["finish_reason"] == "length" for out in outputs]
    return correct, truncated


def write_replay(path: Path, rows: list[dict], make) -> list[dict]:
    outputs = []
    for index, row in enumerate(rows):
        text, finish = make(index, row["answer"])
        tokens = MAX_TOKENS if finish == "length" else len(text.split()) * 2
        outputs.append({"id": str(index), "output": text, "finish_reason": finish, "output_tokens": tokens,
                        "prompt_tokens": 120})
    path.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    return outputs


def test_replayed_gsm8k_accuracies_and_mcnemar_match_a_hand_count(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:N_ITEMS]]
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
    result.assert_outcomes(passed=3, failed=1, skipped=1)  # accuracy fails; test_policy: no --policy
    assert f"FAILED test_gate.py::test_accuracy[model-b-gsm8k={GSM8K}]" in output
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
