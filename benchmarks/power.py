"""Power and false alarms of qtests' paired gate vs the rules other gates use, on simulated runs.

Usage: ``PYTHONPATH=plugins python benchmarks/power.py [--runs 1000] [--false-alarm-runs 200]``
(about 30 s on 2 cores); ``--sequential`` runs the sequential gate's simulation instead (see
:func:`sequential_main`; ``--workers`` spreads its runs over processes).

Simulation (the item model ``qtests plan`` assumes):

- Each run draws a fresh set of n items; item i has a success probability ``p_i ~ Beta`` with mean
  0.80 (concentration a+b = 1: many items are almost always or almost never solved, as on real
  benchmarks).
- The variant's probability is ``p_i`` shifted down on the logit scale by the amount that loses exactly
  5 pp on those items, so it hurts borderline items most and shares every item's difficulty with the
  reference (which is what makes their outcomes correlated).
- *Sampled decoding*: reference and variant outcomes are independent Bernoulli draws given the item
  (sampling noise in every run). *Greedy decoding*: each model's answer to an item is fixed; the
  variant loses 6.5% of items and gains 1.5% (8% discordance, a typical quantization footprint).

Rules, applied to the same simulated data:

- qtests paired: ``check_accuracy`` with ``accuracy:-0pp`` and ``accuracy:-2pp`` (fails only on
  evidence, one-sided alpha 0.05).
- unpaired: one-sided pooled two-proportion z-test at alpha 0.05 (ignores that the items are shared).
- rtol 0.08: vLLM CI's rule, the variant passes when its accuracy >= (1 - 0.08) x the reference's.

False alarms: the same rules on re-runs of one model against itself (sampling noise only).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import norm

from pytest_qtests.gate.checks import check_accuracy, check_ratio, check_rate
from pytest_qtests.gate.tolerances import CHECK_SPECS as CHECKS, parse_fail_on, parse_tolerance
from pytest_qtests.gate.gatekeeping import check_weights, weighted_holm
from pytest_qtests.gate.sequential import (
    SequentialCheck,
    SequentialGate,
    look_ends,
    paired_differences,
    share_of_ratio,
)
from pytest_qtests.gate.stats import (
    degrade,
    difficulty_model_variances,
    discordance_rate,
    holm_adjust,
    logit_shift_for_drop,
    mcnemar_power,
    wilson_interval,
)

BASE_ACCURACY = 0.80
CONCENTRATION = 1.0
DROP = 0.05
ALPHA = 0.05
RTOL = 0.08
SIZES = (200, 500, 1000)
GREEDY_LOST, GREEDY_GAINED = 0.065, 0.015
TOLERANCES = {"qtests paired 0pp": parse_tolerance("accuracy", "-0pp"), "qtests paired -2pp": parse_tolerance("accuracy", "-2pp")}
RULES = (*TOLERANCES, "unpaired z-test", "rtol 0.08")


def sampled_run(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """One run with sampling noise on a fresh item set; ``drop=0`` re-runs the reference itself."""
    p = rng.beta(BASE_ACCURACY * CONCENTRATION, (1 - BASE_ACCURACY) * CONCENTRATION, n)
    q = degrade(p, logit_shift_for_drop(lambda f: float(np.mean(f(p))), drop)) if drop > 0 else p
    return rng.random(n) < p, rng.random(n) < q


def greedy_run(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One run of fixed answers: the variant flips a few items, mostly from right to wrong."""
    reference = rng.random(n) < BASE_ACCURACY
    flip = rng.random(n)
    lost = reference & (flip < GREEDY_LOST / BASE_ACCURACY)
    gained = ~reference & (flip < GREEDY_GAINED / (1 - BASE_ACCURACY))
    return reference, (reference & ~lost) | gained


def verdicts(reference: np.ndarray, variant: np.ndarray, item_ids: list[str]) -> dict[str, bool]:
    """``True`` where a rule fails the variant."""
    n = reference.size
    failed = {name: not check_accuracy(reference, variant, item_ids, tol, ALPHA).passed for name, tol in TOLERANCES.items()}
    ref_acc, var_acc = reference.mean(), variant.mean()
    pooled = (ref_acc + var_acc) / 2
    spread = np.sqrt(pooled * (1 - pooled) * 2 / n)
    failed["unpaired z-test"] = bool(spread > 0 and norm.cdf((var_acc - ref_acc) / spread) < ALPHA)
    failed["rtol 0.08"] = bool(var_acc < (1 - RTOL) * ref_acc)
    return failed


def failure_rates(make_run, runs: int, n: int, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Share of runs each rule failed, with the 95% Wilson half-width of that share."""
    item_ids = [f"q{i}" for i in range(n)]
    counts = dict.fromkeys(RULES, 0)
    for _ in range(runs):
        for rule, failed in verdicts(*make_run(rng, n), item_ids).items():
            counts[rule] += failed
    out = {}
    for rule, count in counts.items():
        low, high = wilson_interval(count, runs)
        out[rule] = (count / runs, (high - low) / 2)
    return out


def print_table(title: str, rows: dict[int, dict[str, tuple[float, float]]], extra: dict[int, float] | None = None) -> None:
    header = f"{'n':>6}" + "".join(f"{rule:>20}" for rule in RULES) + (f"{'plan predicts 0pp':>20}" if extra else "")
    print(title)
    print(header)
    widest = 0.0
    for n, rates in rows.items():
        line = f"{n:>6}" + "".join(f"{rates[rule][0]:>20.3f}" for rule in RULES)
        if extra:
            line += f"{extra[n]:>20.3f}"
        print(line)
        widest = max(widest, *(half for _, half in rates.values()))
    print(f"{'':>6}(95% Wilson half-width at most {widest:.3f})\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated runs per n for detection rates")
    parser.add_argument("--false-alarm-runs", type=int, default=200, help="identical-model re-runs per n")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--sequential", action="store_true", help="simulate the sequential gate instead")
    parser.add_argument("--drop-sizes", default="1000", help="--sequential: item counts of the power table")
    parser.add_argument("--workers", type=int, default=1, help="--sequential: processes")
    args = parser.parse_args()
    if args.sequential:
        sequential_main(args)
        return
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    paired_variance, _ = difficulty_model_variances(BASE_ACCURACY, DROP, CONCENTRATION)
    discordance = discordance_rate(paired_variance, DROP)
    print(
        f"True {DROP * 100:g} pp accuracy drop from {BASE_ACCURACY:.0%}; one-sided alpha {ALPHA}; "
        f"fresh items every run. Cells: share of runs the rule FAILED the variant.\n"
    )
    sampled = {n: failure_rates(lambda r, k: sampled_run(r, k, DROP), args.runs, n, rng) for n in SIZES}
    predicted = {n: mcnemar_power(n, DROP, 0.0, discordance, ALPHA) for n in SIZES}
    print_table(
        f"Detection, sampled decoding (item difficulty Beta(mean {BASE_ACCURACY}, a+b={CONCENTRATION:g}), "
        f"discordance {discordance:.1%}; {args.runs} runs per n)",
        sampled,
        predicted,
    )
    greedy = {n: failure_rates(greedy_run, args.runs, n, rng) for n in SIZES}
    print_table(
        f"Detection, greedy decoding ({GREEDY_LOST:.1%} of items lost, {GREEDY_GAINED:.1%} gained; "
        f"{args.runs} runs per n)",
        greedy,
    )
    identical = {n: failure_rates(lambda r, k: sampled_run(r, k, 0.0), args.false_alarm_runs, n, rng) for n in SIZES}
    print_table(
        f"False alarms: the reference re-run against itself, sampling noise only ({args.false_alarm_runs} re-runs per n)",
        identical,
    )
    print(f"({time.perf_counter() - started:.0f} s)")


# --------------------------------------------------------------------------------------------------
# The sequential gate against the fixed-n paired rule, the whole family of four checks.
#
# Each simulated item has, besides its accuracy (the Beta difficulty model above, sampled decoding),
# a truncation chance (Beta, mean 5%), a degenerate-output chance (Beta, mean 1%) and a typical length
# (log-normal); each model's outputs are fresh samples given the item, lengths with log-normal noise
# (sd 0.25). The variant differs from the reference in accuracy only, so truncation, length and
# degenerate are checks that "did not move".

ZERO_MARGINS = "accuracy:-0pp,truncation:+0pp,length:1.0x,degenerate:+0pp"
DEFAULT_MARGINS = "accuracy:-2pp,truncation:+5pp,length:1.25x,degenerate:+2pp"
FAMILY = ("accuracy", "truncation", "length", "degenerate")
DROPS = (0.0, 0.02, 0.05, 0.10, 0.20)


def family_run(rng: np.random.Generator, n: int, drop: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-item (reference, variant) outcomes of the four checks on a fresh item set."""
    reference, variant = sampled_run(rng, n, drop)
    truncation = rng.beta(0.05, 0.95, n)
    degenerate = rng.beta(0.01, 0.99, n)
    length = rng.lognormal(4.0, 0.6, n)
    return {
        "accuracy": (reference.astype(float), variant.astype(float)),
        "truncation": ((rng.random(n) < truncation).astype(float), (rng.random(n) < truncation).astype(float)),
        "length": (np.round(length * rng.lognormal(0, 0.25, n)), np.round(length * rng.lognormal(0, 0.25, n))),
        "degenerate": ((rng.random(n) < degenerate).astype(float), (rng.random(n) < degenerate).astype(float)),
    }


def fixed_p_values(data, tolerances, item_ids) -> list[float]:
    """The gate's fixed-n evidence-of-harm p-value of each check on all items."""
    out = []
    for check in FAMILY:
        ref, var = data[check]
        if CHECKS[check].kind == "rate":
            out.append(check_rate(check, ref, var, item_ids, tolerances[check]).p_value)
        else:
            out.append(check_ratio(check, ref, var, item_ids, tolerances[check], n_resamples=1000).p_value)
    return out


def sequential_checks(data, tolerances) -> list[SequentialCheck]:
    """The family as the sequential gate sees it (margins in difference units; rates absolute here)."""
    return [
        SequentialCheck(c, CHECKS[c].worse, share_of_ratio(tolerances[c].value) if CHECKS[c].kind == "ratio"
                        else tolerances[c].limit(float(np.mean(data[c][0]))))
        for c in FAMILY
    ]


def simulate_one(task: tuple[int, int, float, str]) -> dict[str, object]:
    """One run: verdicts of the fixed-n rules (weighted Holm, plain Holm) and of the sequential gate."""
    seed, n, drop, margins = task
    rng = np.random.default_rng(seed)
    data = family_run(rng, n, drop)
    tolerances = parse_fail_on(margins)
    item_ids = np.array([f"q{i}" for i in range(n)])
    p_values = fixed_p_values(data, tolerances, item_ids)
    weights = check_weights(FAMILY)
    weighted = weighted_holm(lambda j, level: p_values[j] <= level, weights, ALPHA)
    holm = [p <= ALPHA for p in holm_adjust(p_values)]

    gate = SequentialGate(sequential_checks(data, tolerances), ALPHA, items_planned=n)
    differences = [paired_differences(CHECKS[c].kind, *data[c]) for c in FAMILY]
    start = 0
    for end in look_ends(n):
        gate.observe([d[start:end] for d in differences])
        start = end
        if gate.settled:
            break
    verdicts = [state.verdict or "INCONCLUSIVE" for state in gate.states]  # open at an early stop: INCONCLUSIVE
    if not gate.decided:
        levels = gate.finish(lambda j, level: p_values[j] <= level)  # the fixed-n test only at the end of the items
        for j, level in enumerate(levels):
            if level is not None:
                verdicts[j] = "FAIL" if p_values[j] <= level else "INCONCLUSIVE"
    return {
        "n": n, "drop": drop, "margins": margins,
        "fixed_weighted_fail": any(weighted.rejected), "fixed_holm_fail": any(holm),
        "fixed_accuracy_fail": weighted.rejected[0],
        "sequential_fail": "FAIL" in verdicts, "sequential_accuracy": verdicts[0],
        "items_used": gate.items, "stopped": gate.stop_reason,
    }


def _rate(values: list[bool]) -> str:
    low, high = wilson_interval(sum(values), len(values))
    return f"{sum(values) / len(values):.3f} ±{(high - low) / 2:.3f}"


def sequential_main(args: argparse.Namespace) -> None:
    """False alarms with looks (identical models) and power / items used for true drops."""
    started = time.perf_counter()
    seeds = iter(np.random.SeedSequence(args.seed).generate_state(100_000))
    tasks = [(int(next(seeds)), n, 0.0, margins) for margins in (ZERO_MARGINS, DEFAULT_MARGINS)
             for n in SIZES for _ in range(args.false_alarm_runs)]
    drop_sizes = [int(n) for n in args.drop_sizes.split(",")]
    tasks += [(int(next(seeds)), n, drop, DEFAULT_MARGINS) for n in drop_sizes for drop in DROPS for _ in range(args.runs)]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(simulate_one, tasks, chunksize=4))
    identical, dropped = results[: 2 * len(SIZES) * args.false_alarm_runs], results[2 * len(SIZES) * args.false_alarm_runs:]

    print(f"Identical models, four checks, one-sided alpha {ALPHA}, a look every 5% of the items; "
          f"share of runs that FAILED the variant (95% Wilson half-width):\n")
    print(f"{'margins':<58}{'n':>6}{'runs':>6}{'sequential':>16}{'fixed, weighted':>18}{'fixed, Holm':>16}"
          f"{'items used':>12}")
    for margins in (ZERO_MARGINS, DEFAULT_MARGINS):
        for n in SIZES:
            rows = [r for r in identical if r["margins"] == margins and r["n"] == n]
            used = np.mean([r["items_used"] / n for r in rows])
            print(f"{margins:<58}{n:>6}{len(rows):>6}{_rate([r['sequential_fail'] for r in rows]):>16}"
                  f"{_rate([r['fixed_weighted_fail'] for r in rows]):>18}{_rate([r['fixed_holm_fail'] for r in rows]):>16}"
                  f"{used:>12.2f}")
    print(f"\nTrue accuracy drops from {BASE_ACCURACY:.0%} (sampled decoding), default margins {DEFAULT_MARGINS}; "
          f"{args.runs} runs each. Share of runs that FAILED the variant, and the sequential gate's "
          f"average share of items generated:\n")
    print(f"{'n':>6}{'drop pp':>8}{'sequential':>16}{'fixed, weighted':>18}{'fixed, Holm':>16}{'items used':>12}"
          f"{'futility stops':>16}{'seq. acc. inconclusive':>24}")
    for n in drop_sizes:
        for drop in DROPS:
            rows = [r for r in dropped if r["n"] == n and r["drop"] == drop]
            used = np.mean([r["items_used"] / n for r in rows])
            inconclusive = np.mean([r["sequential_accuracy"] == "INCONCLUSIVE" for r in rows])
            futile = np.mean([r["stopped"] == "no FAIL within reach of the open checks" for r in rows])
            print(f"{n:>6}{drop * 100:>8g}{_rate([r['sequential_fail'] for r in rows]):>16}"
                  f"{_rate([r['fixed_weighted_fail'] for r in rows]):>18}{_rate([r['fixed_holm_fail'] for r in rows]):>16}"
                  f"{used:>12.2f}{futile:>16.2f}{inconclusive:>24.2f}")
    print(f"\n({time.perf_counter() - started:.0f} s, {args.workers} workers)")
    print(json.dumps({"runs": args.runs, "false_alarm_runs": args.false_alarm_runs, "results": len(results)}))


if __name__ == "__main__":
    main()
