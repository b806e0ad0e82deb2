"""``qtests card``: the model card of a gated variant, read back the way the hub reads it.

The results come from a real replayed gate run (``replayed_report`` in tests/conftest.py); the audit and
the recipe from the zoo's ``int4-keep-fragile`` checkpoint (made by ``qtests quantize``). The metadata is
parsed back with ``huggingface_hub``'s own ``ModelCard``, and its numbers compared with ``results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pytest_qtests.audit.checkpoint import audit
from pytest_qtests.cli.main import main
from pytest_qtests.report.card import BEGIN, END, SOURCE_NAME

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
CHECKPOINT = ZOO / "int4-keep-fragile"


def card(report: Path, out: Path, *extra: str) -> int:
    return main(["card", str(report), "-o", str(out), "--checkpoint", str(CHECKPOINT), *extra])


def qtests_results(readme: Path) -> dict[str, EvalResult]:
    results = ModelCard.load(readme).data.eval_results or []
    return {r.metric_type: r for r in results if r.source_name == SOURCE_NAME}


def test_card_metadata_parses_back_with_the_numbers_of_results_json(replayed_report, tmp_path):
    assert card(replayed_report, tmp_path, "--variant", "same") == 0
    readme = tmp_path / "README.md"
    run = next(r for r in json.loads((replayed_report / "results.json").read_text())["runs"] if r["variant"] == "same")
    parsed = ModelCard.load(readme)
    assert parsed.data.model_name == "same" and "qtests" in parsed.data.tags
    results = qtests_results(readme)
    assert set(results) == {"accuracy", "accuracy_delta", "truncation_delta", "length_ratio", "degenerate_delta"}
    assert results["accuracy"].metric_value == run["summary"]["accuracy"]
    assert results["accuracy"].dataset_name == "zoo" and results["accuracy"].metric_args["n_items"] == 8
    for metric_type, check in (("accuracy_delta", "accuracy"), ("truncation_delta", "truncation"),
                               ("length_ratio", "length"), ("degenerate_delta", "degenerate")):
        expected = run["checks"][check]
        args = results[metric_type].metric_args
        assert results[metric_type].metric_value == expected["estimate"]
        assert args["interval"] == [expected["ci_low"], expected["ci_high"]]
        assert (args["reference_value"], args["variant_value"], args["tolerance"], args["passed"]) == (
            expected["reference_value"], expected["variant_value"], expected["limit_text"], True)

    text = parsed.text
    assert text.count(BEGIN) == text.count(END) == 1
    assert "**Verdict: PASS.**" in text and "| accuracy | 100.0% | 100.0% | +0.0 pp |" in text
    report = audit(CHECKPOINT)
    assert f"({report.footprint_bytes} bytes of tensors)" in text
    assert "| shared_expert | 12 | bf16 | 12 |" in text and "| routed_experts | 96 | int4 | 0 |" in text
    assert "Recipe `recommended`" in text  # from qtests_provenance.json
    assert "max tokens 2048, repeats 1, items 8 (first 8)" in text and f"dataset {run['fingerprint']['dataset_hash'][:16]}" in text


EXISTING = """---
license: apache-2.0
base_model: Qwen/Qwen3-Next-80B-A3B-Instruct
model-index:
- name: my-int4
  results:
  - task:
      type: text-generation
    dataset:
      name: MMLU
      type: cais/mmlu
    metrics:
    - type: accuracy
      value: 0.71
    source:
      name: lm-eval
      url: https://github.com/EleutherAI/lm-evaluation-harness
---
# my-int4

An INT4 build of the model, written by hand.

## Usage

Load it with vLLM.
"""


def test_existing_readme_keeps_its_content_and_the_section_is_replaced_not_appended(replayed_report, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(EXISTING)
    assert card(replayed_report, tmp_path, "--variant", "same") == 0
    first = readme.read_text()
    data = ModelCard.load(readme).data
    assert (data.license, data.base_model, data.model_name) == ("apache-2.0", "Qwen/Qwen3-Next-80B-A3B-Instruct", "my-int4")
    others = [r for r in data.eval_results if r.source_name != SOURCE_NAME]
    assert [(r.dataset_type, r.metric_value, r.source_name) for r in others] == [("cais/mmlu", 0.71, "lm-eval")]
    body = ModelCard.load(readme).text
    assert body.startswith("# my-int4\n\nAn INT4 build of the model, written by hand.\n\n## Usage\n\nLoad it with vLLM.\n")
    assert body.index("Load it with vLLM.") < body.index(BEGIN)

    assert card(replayed_report, tmp_path, "--variant", "same") == 0
    assert readme.read_text() == first  # the same card again: nothing added

    readme.write_text(first.replace(END, END + "\n\n## Citation\n\nPlease cite us."))
    assert card(replayed_report, tmp_path, "--variant", "worse", "--allow-failed") == 0
    text = readme.read_text()
    assert text.count(BEGIN) == 1 and "**Verdict: FAILED.**" in text and "(`--allow-failed`)" in text
    assert "**Verdict: PASS.**" not in text and text.rstrip().endswith("Please cite us.")
    results = qtests_results(readme)
    assert results["accuracy"].metric_value == 0.0 and results["accuracy_delta"].metric_args["passed"] is False
    assert len(ModelCard.load(readme).data.eval_results) == len(data.eval_results)  # replaced, not added


def test_card_is_callable_from_python(replayed_report, tmp_path):
    from pytest_qtests.report.card import write_card

    path = write_card(replayed_report, tmp_path, variant="same", checkpoint=CHECKPOINT, model_name="org/same-int4")
    assert ModelCard.load(path).data.model_name == "org/same-int4"
    assert isinstance(ModelCard.load(path).data, ModelCardData)
