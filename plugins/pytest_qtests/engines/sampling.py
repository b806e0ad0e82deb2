"""Named sampling presets, so a suite says ``qwen-thinking`` instead of four numbers.

Reasoning models are evaluated with the sampling their authors recommend: greedy decoding makes
Qwen3's thinking mode loop and truncate, which would be blamed on quantization.
"""

from __future__ import annotations

from pytest_qtests.records import QtestsError, SamplingParams

PRESETS: dict[str, dict[str, float | int]] = {
    # Qwen3 model cards: thinking mode T=0.6, top-p 0.95, top-k 20, min-p 0 (never greedy).
    "qwen-thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0},
    # Qwen3 model cards: non-thinking mode T=0.7, top-p 0.8, top-k 20, min-p 0.
    "qwen-instruct": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},
    "greedy": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0},
}


def sampling_preset(name: str, max_tokens: int, seed: int = 0) -> SamplingParams:
    """The preset ``name`` with the run's output cap and seed filled in."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise QtestsError(f"unknown sampling preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    if max_tokens < 1:
        raise QtestsError(f"max tokens must be at least 1, got {max_tokens}")
    return SamplingParams(max_tokens=max_tokens, seed=seed, **preset)
