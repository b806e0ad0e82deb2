"""Harness overhead and harness memory: qtests against raw ``vllm.LLM.generate``, one engine, one process.

Usage: ``python benchmarks/overhead.py [--limit 320] [--repeats 3]`` (about 3 minutes on 2 cores).

Both sides use the same loaded engine (so engine start is excluded from both), the same rendered
prompts and the same per-request sampling parameters and seeds:

- raw: ``llm.generate(token_prompts, params)`` with prompts tokenized and parameters built beforehand
  (the strictest baseline: the engine's own generation time and nothing else);
- qtests: a fresh :class:`Evaluator` (``--no-cache``) running the reference on the task: task loading,
  prompt rendering, model identity hashing, generation through :class:`VLLMBackend`, grading, the
  degeneracy detector and its calibration. That is everything qtests adds to a run before statistics.

The two alternate (raw first on even repeats, qtests first on odd ones) so drift on a shared machine
hits both; the overhead ratio is the median of qtests times over the median of raw times. Output
tokens of both are printed: equal counts show the same work was done.

Memory: vLLM-CPU runs the model in a child process (engine core); the harness is this process. Its
peak RSS while qtests runs, minus its RSS after the engine started and the raw run finished, is what
qtests itself holds (records, outcomes, task data, grader state).
"""

from __future__ import annotations

import argparse
import json

import zoo_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=320, help="items of the zoo task (320 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    zoo_bench.prepare()

    from pytest_qtests.engines.registry import register_backend
    from pytest_qtests.evaluate.evaluator import Evaluator
    from pytest_qtests.engines.vllm_backend import VLLMBackend, _sampling_params
    from pytest_qtests.options import GateOptions, build_config

    config = build_config(GateOptions(
        reference=f"bf16={zoo_bench.REFERENCE}", tasks=[zoo_bench.TASK], limit=args.limit,
        max_tokens=zoo_bench.MAX_TOKENS, sampling=zoo_bench.SAMPLING, backend="vllm",
        engine_args=[f"{k}={v}" for k, v in zoo_bench.ENGINE_ARGS.items()], no_cache=True,
        canary=0,
    ))
    reference = config.reference
    rss_start = zoo_bench.rss_mb()
    backend = VLLMBackend(reference, config.engine_args, dtype="bfloat16")
    load_s, llm = zoo_bench.timed(backend._load)
    register_backend("vllm", lambda _config, _variant: backend, replace=True)  # every Evaluator below shares this engine

    from vllm import TokensPrompt

    requests = Evaluator(config).requests(reference, zoo_bench.TASK)
    tokenizer = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=tokenizer.encode(r.prompt, add_special_tokens=False)) for r in requests]
    params = [_sampling_params(r) for r in requests]
    llm.generate(prompts[:16], params[:16], use_tqdm=False)  # warm-up: first-call allocations on both sides' engine

    def raw() -> int:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    def qtests() -> int:
        run = Evaluator(config).run(reference, zoo_bench.TASK)
        return sum(r.output_tokens for r in run.records)

    raw_times, qt_times, raw_tokens, qt_tokens = [], [], [], []
    rss_engine = zoo_bench.rss_mb()
    peak = 0.0
    for repeat in range(args.repeats):
        order = ("raw", "qtests") if repeat % 2 == 0 else ("qtests", "raw")
        for side in order:
            if side == "raw":
                seconds, tokens = zoo_bench.timed(raw)
                raw_times.append(seconds), raw_tokens.append(tokens)
            else:
                with zoo_bench.PeakRss() as sampler:
                    seconds, tokens = zoo_bench.timed(qtests)
                peak = max(peak, sampler.peak_mb)
                qt_times.append(seconds), qt_tokens.append(tokens)
        print(f"repeat {repeat + 1}: raw {raw_times[-1]:.2f} s, qtests {qt_times[-1]:.2f} s", flush=True)

    ratio = zoo_bench.median(qt_times) / zoo_bench.median(raw_times)
    result = {
        "machine": zoo_bench.machine(), "requests": len(requests), "max_tokens": zoo_bench.MAX_TOKENS,
        "engine_load_s": round(load_s, 2), "raw_s": [round(t, 3) for t in raw_times],
        "qtests_s": [round(t, 3) for t in qt_times], "raw_output_tokens": raw_tokens, "qtests_output_tokens": qt_tokens,
        "overhead_ratio": round(ratio, 4),
        "rss_mb": {"before_engine": round(rss_start, 1), "after_engine": round(rss_engine, 1),
                   "peak_during_qtests": round(peak, 1), "harness_beyond_engine": round(peak - rss_engine, 1),
                   "engine_core_children": round(zoo_bench.children_rss_mb(), 1)},
    }
    zoo_bench.print_table(
        f"qtests vs raw vllm.LLM.generate: {len(requests)} requests, max_tokens {zoo_bench.MAX_TOKENS}, same engine",
        ["side", "median s", "min s", "output tokens"],
        [["raw LLM.generate", zoo_bench.median(raw_times), min(raw_times), raw_tokens[-1]],
         ["qtests Evaluator", zoo_bench.median(qt_times), min(qt_times), qt_tokens[-1]]])
    print(f"\noverhead ratio (median qtests / median raw): {ratio:.3f}x  (target <= 1.10x)")
    memory = result["rss_mb"]
    print(f"harness RSS: {memory['after_engine']:.0f} MB after engine start -> peak {memory['peak_during_qtests']:.0f} MB "
          f"while qtests ran: +{memory['harness_beyond_engine']:.0f} MB beyond the engine (target < 500 MB); "
          f"engine core process {memory['engine_core_children']:.0f} MB")
    print(json.dumps(result))
    backend.close()


if __name__ == "__main__":
    main()
