"""The transformers backend on the real zoo reference (CPU): records and teacher-forced scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_qtests.engines.base import EngineLoadError
from pytest_qtests.engines.transformers_backend import TransformersBackend
from pytest_qtests.records import GenerationRequest, SamplingParams, VariantSpec
from pytest_qtests.engines.teacher_forcing import compare_scores
from pytest_qtests.tasks.prompts import render_prompt

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"


@pytest.fixture(scope="module")
def backend():
    engine = TransformersBackend(VariantSpec("bf16", str(ZOO / "tiny-qwen3next")))
    yield engine
    engine.close()


def test_generates_records_with_thinking_and_finish_reasons(backend):
    prompt = render_prompt(backend.tokenizer, "12345+678", thinking=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    full, cut = backend.generate([
        GenerationRequest("a", 0, prompt, greedy),
        GenerationRequest("b", 0, prompt, SamplingParams(temperature=0.0, max_tokens=5)),
    ])
    assert full.finish_reason == "stop" and full.text.endswith("Answer: 13023")
    assert full.thinking_closed and 0 < full.thinking_tokens < full.output_tokens == len(full.token_ids)
    assert cut.finish_reason == "length" and cut.output_tokens == 5 and not cut.thinking_closed


def test_scores_every_token_after_the_first_and_agrees_with_itself(backend):
    text = render_prompt(backend.tokenizer, "12+34", thinking=True) + "<think>\n2+4+0=6\n1+3+0=4\n</think>\nAnswer: 46"
    (scores,) = backend.score([text])
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert scores.token_ids == ids[1:] and len(scores.logprobs) == len(ids) - 1
    assert all(lp <= 0 for lp in scores.logprobs)
    report = compare_scores(scores, scores)
    assert report.mean_abs_logprob_delta == 0 and report.top1_agreement == 1 and report.first_divergence is None


def test_unloadable_checkpoint_is_one_engine_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EngineLoadError, match=r"^transformers could not load bad \("):
        TransformersBackend(VariantSpec("bad", str(tmp_path))).generate([])


def test_a_model_loaded_after_an_auto_round_checkpoint_still_generates_correctly():
    """auto-round re-registers transformers' MoE conversion mapping while loading its checkpoint; the
    backend restores it, so the BF16 reference loaded afterwards in the same process is still itself."""
    prompt_of = lambda engine: render_prompt(engine.tokenizer, "12345+678", thinking=True)  # noqa: E731
    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    for name in ("int4-default", "tiny-qwen3next"):
        engine = TransformersBackend(VariantSpec(name, str(ZOO / name)))
        (record,) = engine.generate([GenerationRequest("a", 0, prompt_of(engine), greedy)])
        engine.close()
        assert record.text.endswith("Answer: 13023"), (name, record.text)
