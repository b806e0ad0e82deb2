"""``--stop-early`` against the fixed run: the zoo demo and the 1319-item replayed GSM8K pairs.

Usage (from anywhere; each part prints a table and a final JSON line):

    python benchmarks/stop_early.py zoo        # `pytest qtests` (the repo's zoo suite) twice, cold caches
    python benchmarks/stop_early.py gsm8k      # replayed GSM8K pairs over all 1319 bundled items

zoo: the `make demo` command with and without ``--stop-early``, each on a fresh cache directory.
``tests/generation_log.py`` (loaded with ``-p generation_log``) logs every real ``generate`` call with
the tokens it produced, so the totals count generation that was actually done (canaries included, cache
hits never); ``results.json`` of each run gives the verdicts per check, the items and tokens each
variant used to reach its decision and the look each check was decided at.

gsm8k: replay files built from the real GSM8K solutions (``tests/gsm8k_replays.py``): model A (every 25th
item wrong), model B (every 8th wrong, every 40th cut off while thinking: a mixed pair with gains and
losses), model C (model A plus every 9th item wrong: a pair that only loses) and A again (a model against
itself). Each pair runs through the plugin with the replay backend and ``--stop-early``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import zoo_bench

sys.path.insert(0, str(zoo_bench.REPO / "tests"))
from gsm8k_replays import GSM8K, MAX_TOKENS, a_output, b_output, c_output, gsm8k_rows, write_replay  # noqa: E402


def results(report: Path) -> dict:
    return json.loads((report / "results.json").read_text())


def run_pytest(arguments: list[str], report: Path) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rxXfE", "--qt-report", str(report),
               *arguments]
    return zoo_bench.timed(lambda: subprocess.run(command, capture_output=True, text=True))


def per_variant(document: dict) -> dict[str, dict]:
    """Items, tokens and verdicts per (variant, task) run of a results.json."""
    out = {}
    for run in document["runs"]:
        out[run["variant"]] = {
            "role": run["role"], "items_planned": run["items_planned"], "items_evaluated": run["items_evaluated"],
            "tokens": run["tokens_generated"]["variant"], "reference_tokens": run["tokens_generated"]["reference"],
            "verdicts": {name: check.get("verdict") for name, check in run["checks"].items()},
            "passed": {name: check["passed"] for name, check in run["checks"].items()},
            "decided_looks": (run["sequential"] or {}).get("decided_looks"), "verdict": run["verdict"],
        }
    return out


def generation_log(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Tokens actually generated (cache misses) and model loads per model, from ``tests/generation_log.py``."""
    tokens: dict[str, int] = {}
    loads: dict[str, int] = {}
    for entry in map(json.loads, path.read_text().splitlines() if path.exists() else []):
        if "generate" in entry:
            tokens[entry["generate"]] = tokens.get(entry["generate"], 0) + entry["tokens"]
        if "load" in entry:
            loads[entry["load"]] = loads.get(entry["load"], 0) + 1
    return tokens, loads


def zoo() -> None:
    work = Path(tempfile.mkdtemp(prefix="qtests-stop-early-"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(zoo_bench.REPO / "tests"), os.environ["PYTHONPATH"]])
    found = {}
    for name, flags in (("fixed", ["--no-stop-early"]), ("stop-early", ["--stop-early"])):
        os.environ["QT_TEST_LOG"] = str(work / f"{name}.jsonl")
        seconds, completed = run_pytest(["qtests", "-p", "generation_log", "--cache-dir", str(work / f"cache-{name}"),
                                         *flags], work / name)
        print(completed.stdout[-3000:], flush=True)
        tokens, loads = generation_log(work / f"{name}.jsonl")
        found[name] = {"seconds": seconds, "exit": completed.returncode, "runs": per_variant(results(work / name)),
                       "generated_tokens": tokens, "loads": loads}
    fixed, early = found["fixed"], found["stop-early"]
    totals = {name: sum(data["generated_tokens"].values()) for name, data in found.items()}
    reference = next(label for label, run in fixed["runs"].items() if run["role"] == "reference")
    variants = [label for label in fixed["runs"] if label != reference]
    # what the reference had to generate for the variants: its tokens on the items the furthest variant used
    needed = max((early["runs"][label]["reference_tokens"] or 0) for label in variants)
    print(f"{'model':<20}{'fixed items':>12}{'fixed gen.':>11}{'early items':>12}{'to decision':>12}{'early gen.':>11}"
          "  verdict fixed | early  (looks each check was decided at)")
    for label in [reference, *variants]:
        f, e = fixed["runs"][label], early["runs"][label]
        print(f"{label:<20}{f['items_evaluated']:>12}{fixed['generated_tokens'].get(label, 0):>11}"
              f"{e['items_evaluated']:>12}{e['tokens']:>12}{early['generated_tokens'].get(label, 0):>11}"
              f"  {f['verdict']} | {e['verdict']}  {e['decided_looks'] or ''}")
    same, differing = compare(fixed["runs"], early["runs"], variants)
    print(f"tokens generated in all (reference + variants, cache misses): fixed {totals['fixed']}, stop-early "
          f"{totals['stop-early']} ({totals['stop-early'] / totals['fixed']:.0%}; target <= 50%)")
    print(f"the reference generated {early['generated_tokens'].get(reference, 0)} tokens with --stop-early; the "
          f"furthest variant needed its outputs on items worth {needed} tokens")
    print(f"identical variant verdicts (pass/fail): {same}; checks labelled differently: {differing or 'none'}")
    print(f"model loads fixed {fixed['loads']}, stop-early {early['loads']}; "
          f"wall {fixed['seconds']:.0f} s vs {early['seconds']:.0f} s")
    print(json.dumps({"zoo": found, "totals": totals, "reference_needed_tokens": needed, "identical": same,
                      "machine": zoo_bench.machine()}))


def compare(fixed: dict, early: dict, variants: list[str]) -> tuple[bool, list[str]]:
    """Whether every variant got the same verdict (PASS or FAIL) in both modes, and which checks were labelled
    differently (``check: fixed -> stop-early``; a check left open at an early FAIL counts as not judged)."""
    same = all(fixed[v]["verdict"].split(",")[0].split(" ")[0] == early[v]["verdict"].split(",")[0].split(" ")[0]
               for v in variants)
    differing = [f"{v} {check}: {verdict} -> {early[v]['verdicts'].get(check)}"
                 for v in variants for check, verdict in fixed[v]["verdicts"].items()
                 if early[v]["verdicts"].get(check) != verdict]
    return same, differing


def gsm8k() -> None:
    work = Path(tempfile.mkdtemp(prefix="qtests-stop-early-gsm8k-"))
    rows = gsm8k_rows(1319)
    for name, make in (("a", a_output), ("b", b_output), ("c", c_output)):
        write_replay(work / f"{name}.jsonl", rows, make)
    summary = {}
    for label, replay in (("model-b", "b"), ("model-c", "c"), ("model-a-again", "a")):
        arguments = ["--pyargs", "qtests", "--backend", "replay", "--tasks", f"gsm8k={GSM8K}", "--limit", "1319",
                     "--max-tokens", str(MAX_TOKENS), "--reference", "model-a=example/model-a",
                     "--model", f"{label}=example/{label}", "--replay", f"model-a={work / 'a.jsonl'}",
                     "--replay", f"{label}={work / (replay + '.jsonl')}", "--stop-early", "--canary", "0"]
        _, completed = run_pytest(arguments, work / label)
        document = results(work / label)
        run = next(r for r in document["runs"] if r["variant"] == label)
        accuracy = run["checks"]["accuracy"]
        summary[label] = {"accuracy_reference": accuracy["reference_value"], "accuracy_variant": accuracy["variant_value"],
                          "accuracy_verdict": accuracy["verdict"], "accuracy_decided_look": accuracy["decided_look"],
                          "accuracy_decided_items": _items_at(accuracy["message"]),
                          "items_evaluated": run["items_evaluated"], "items_planned": run["items_planned"],
                          "verdicts": {n: c["verdict"] for n, c in run["checks"].items()}, "verdict": run["verdict"],
                          "exit": completed.returncode}
        print(label, json.dumps(summary[label]))
    print(json.dumps({"gsm8k": summary, "machine": zoo_bench.machine()}))


def _items_at(message: str) -> int | None:
    """The item count a sequence decision names ("decided after N of M items")."""
    marker = "decided after "
    return int(message.split(marker, 1)[1].split(" ", 1)[0]) if marker in message else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("zoo", "gsm8k"))
    args = parser.parse_args()
    zoo_bench.prepare()
    {"zoo": zoo, "gsm8k": gsm8k}[args.part]()


if __name__ == "__main__":
    main()
