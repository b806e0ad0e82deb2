"""Power and false alarms of qtests' paired gate vs the rules other gates use, on simulated runs.

Usage: ``PYTHONPATH=plugins python benchmarks/power.py [--runs 1000] [--false-alarm-runs 200]``
(about 30 s on 2 cores).

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
import time

import numpy as np
from scipy.stats import norm

from pytest_qtests.gate.checks import check_accuracy
from pytest_qtests.gate.tolerances import parse_tolerance
from pytest_qtests.gate.stats import (
    degrade,
    difficulty_model_variances,
    discordance_rate,
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
