"""Backends by name (engines/registry.py) and what the evaluator does with their declared capabilities.

The backend here is a test double on purpose: the registry and the evaluator's sequencing are under
test, and an engine that adds the zoo's two numbers is what makes every graded outcome predictable.
Task loading, model identities, the generation cache, grading and the canary verdict are the real ones.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence

import pytest

from conftest import REPO, ZOO
from pytest_qtests.engines.base import EngineCapabilities, make_record
from pytest_qtests.engines.registry import BACKENDS, backend_names, create_backend
from pytest_qtests.evaluate.evaluator import Evaluator
from pytest_qtests.settings import RunConfig
from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, SamplingParams, VariantSpec

REFERENCE = VariantSpec("bf16", str(ZOO / "tiny-qwen3next"))
VARIANT = VariantSpec("int4", str(ZOO / "int4-default"))
TASK = f"zoo={ZOO / 'task' / 'test.jsonl'}"


class Adder:
    """A third-party engine: answers "a+b" prompts with their sum; generation only unless told otherwise."""

    name = "adder"
    tokenizer = None

    def __init__(self, label: str, capabilities: EngineCapabilities = EngineCapabilities()):
        self.label = label
        self.capabilities = capabilities
        self.prompts: list[str] = []  # every prompt it was asked to generate
        self.closed = False

    def engine_version(self) -> str:
        return "adder 1.0"

    def device_info(self) -> dict:
        return {"device": "abacus"}

    def generate(self, requests: Sequence[GenerationRequest], progress=None) -> list[GenerationRecord]:
        self.prompts += [request.prompt for request in requests]
        records = []
        for request in requests:
            a, b = request.prompt.rsplit("\n", 1)[-1].split("+")
            text = f"<think>{a}+{b}</think>\nAnswer: {int(a) + int(b)}"
            records.append(make_record(request, text, 3, None, "stop", 0.0, None, output_tokens=len(text)))
        if progress:
            progress(len(requests))
        return records

    def score(self, texts):
        raise AssertionError("never called: the adder declares no teacher-forced scoring")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def adders(register_backend):
    """Registers the adder as ``--backend adder``; the engines it built, by variant label, in build order."""
    built: list[Adder] = []

    def factory(config: RunConfig, variant: VariantSpec) -> Adder:
        built.append(Adder(variant.label))
        return built[-1]

    register_backend("adder", factory)
    return built


def config(tmp_path, **overrides) -> RunConfig:
    settings = dict(reference=REFERENCE, models=[VARIANT], tasks=[TASK], backend="adder", limit=8, canary=0,
                    sampling=SamplingParams(max_tokens=32), cache_dir=tmp_path / "cache")
    return RunConfig(**{**settings, **overrides})


def run(cfg: RunConfig, variant: VariantSpec = VARIANT):
    evaluator = Evaluator(cfg)
    try:
        return evaluator.run(variant, TASK)
    finally:
        evaluator.close()


def test_a_registered_third_party_backend_is_used_for_its_name(tmp_path, adders):
    result = run(config(tmp_path))
    assert [engine.label for engine in adders] == ["bf16", "int4"]  # the reference first, one engine at a time
    assert adders[0].closed and adders[1].closed
    assert adders[1].prompts == adders[0].prompts  # same prompts for both variants
    assert adders[1].prompts[:2] == ["0+7", "5+4"]  # no tokenizer declared: user messages go in as they are
    assert [o.correct for o in result.outcomes] == [True] * 8 and [o.extracted for o in result.outcomes][:2] == ["7", "9"]
    assert result.fingerprint.engine == "adder" and result.fingerprint.engine_version == "adder 1.0"
    assert result.fingerprint.extra == {"device": "abacus"}
    assert "adder" in backend_names() and "adder" not in BACKENDS  # BACKENDS: the built-ins


def test_a_fully_cached_rerun_builds_engines_but_generates_nothing(tmp_path, adders):
    first = run(config(tmp_path))
    again = run(config(tmp_path))
    assert [len(engine.prompts) for engine in adders] == [8, 8, 0, 0]
    assert again.records == first.records and again.record_keys == first.record_keys


def test_registering_a_taken_name_is_refused_unless_replaced(tmp_path, register_backend):
    with pytest.raises(QtestsError, match="backend 'vllm' is already registered: pick another name, or pass replace=True"):
        register_backend("vllm", lambda config, variant: Adder(variant.label))
    register_backend("vllm", lambda config, variant: Adder(variant.label), replace=True)
    assert isinstance(create_backend(config(tmp_path, backend="vllm"), VARIANT), Adder)


def test_an_unknown_backend_names_every_registered_one(tmp_path, adders):
    with pytest.raises(QtestsError, match="unknown backend 'adderr': choose one of transformers, vllm, openai, replay, adder"):
        create_backend(config(tmp_path, backend="adderr"), VARIANT)


def test_a_backend_that_cannot_score_leaves_the_canary_divergence_unmeasured(tmp_path, adders):
    result = run(config(tmp_path, canary=4))
    assert result.canary is not None and result.canary.passed and result.canary.n_items == 4
    assert result.canary.divergence.message == "teacher-forced divergence not measured (the adder backend cannot score tokens)"


def test_extending_on_a_backend_that_cannot_continue_is_refused_before_generating(tmp_path, adders):
    with pytest.raises(QtestsError, match="--extend-truncated needs an engine that continues partial outputs, and "
                                          "the adder backend does not: drop --extend-truncated or pick another --backend"):
        run(config(tmp_path, extend_truncated=2.0), REFERENCE)
    assert adders[0].prompts == []


def test_a_slice_of_a_tasks_requests_in_a_seeded_order_is_read_back_from_the_cache(tmp_path, adders):
    """The sequential gate's look: any subset of ``requests()``, in any order, through ``generate()``."""
    import random

    evaluator = Evaluator(config(tmp_path))
    try:
        full = evaluator.run(REFERENCE, TASK)
        requests = evaluator.requests(REFERENCE, TASK)
        order = random.Random(7).sample(range(len(requests)), len(requests))
        look = [requests[i] for i in order[:3]]
        records = evaluator.generate(REFERENCE, look, "look 1")
    finally:
        evaluator.close()
    assert records == [full.records[i] for i in order[:3]]
    assert len(adders) == 1 and len(adders[0].prompts) == 8  # the look generated nothing new


def test_messages_rendered_as_the_gate_renders_them_generate_through_the_cache(tmp_path, adders):
    """A user's own prompts on any variant: ``prompts()`` then ``generate()``, cached like a gate run."""
    def generate_twice():
        evaluator = Evaluator(config(tmp_path))
        try:
            prompts = evaluator.prompts(VARIANT, ["2+2", "40+2"])
            requests = [GenerationRequest(f"prompt-{i}", 0, p, evaluator.config.sampling) for i, p in enumerate(prompts)]
            return evaluator.generate(VARIANT, requests, "prompts")
        finally:
            evaluator.close()

    first, again = generate_twice(), generate_twice()
    assert [r.text.rsplit(" ", 1)[-1] for r in first] == ["4", "42"] and again == first
    assert [len(engine.prompts) for engine in adders] == [2, 0]


def test_importing_the_plugin_and_the_registry_imports_no_engine():
    code = ("import sys, pytest_qtests.plugin, pytest_qtests.engines.registry, pytest_qtests.evaluate.evaluator\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'vllm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
