"""The gate on simulated re-runs: no false alarms beyond alpha on noise, real drops detected.

Items have a fixed difficulty (success probability ~ Beta, the model ``qtests plan`` assumes); every
re-run draws fresh samples for both the reference and the variant, so the only difference between
two runs of the same model is sampling noise. Seeds are fixed, so the measured rates are the same on
every run of this file.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_qtests.gate.checks import check_accuracy, check_length, check_truncation
from pytest_qtests.gate.multiplicity import apply_gatekeeping
from pytest_qtests.gate.tolerances import parse_fail_on
from pytest_qtests.gate.stats import (
    degrade,
    difficulty_model_variances,
    discordance_rate,
    logit_shift_for_drop,
    mcnemar_required_items,
)

ALPHA = 0.05
RERUNS = 200


class SimulatedModel:
    """Per-item success, truncation and length behaviour of one model on a fixed item set."""

    def __init__(self, rng: np.random.Generator, n_items: int, base_accuracy: float = 0.8, concentration: float = 1.0):
        self.correct_p = rng.beta(base_accuracy * concentration, (1 - base_accuracy) * concentration, n_items)
        self.truncate_p = rng.beta(0.15 * 2, 0.85 * 2, n_items)
        self.mean_tokens = rng.gamma(4.0, 80.0, n_items)
        self.item_ids = np.array([f"q{i}" for i in range(n_items)])

    def sample(self, rng: np.random.Generator, correct_p: np.ndarray | None = None, repeats: int = 1):
        """One run: per-sample arrays in (item, sample) order, plus the matching item ids."""
        p = self.correct_p if correct_p is None else correct_p
        correct = rng.random((p.size, repeats)) < p[:, None]
        truncated = rng.random((p.size, repeats)) < self.truncate_p[:, None]
        tokens = rng.lognormal(np.log(self.mean_tokens)[:, None], 0.3, (p.size, repeats))
        return correct.ravel(), truncated.ravel(), tokens.ravel(), np.repeat(self.item_ids, repeats)


def false_alarm_rates(tolerance_text: str, n_items: int, repeats: int, seed: int) -> tuple[float, float]:
    """(accuracy-alone, whole-family (accuracy-first weighted Holm)) false-alarm rates over RERUNS identical-model re-runs."""
    rng = np.random.default_rng(seed)
    model = SimulatedModel(rng, n_items)
    tolerances = parse_fail_on(tolerance_text)
    accuracy_alarms = family_alarms = 0
    for _ in range(RERUNS):
        ref_correct, ref_trunc, ref_tokens, ids = model.sample(rng, repeats=repeats)
        var_correct, var_trunc, var_tokens, _ = model.sample(rng, repeats=repeats)
        checks = [
            lambda a: check_accuracy(ref_correct, var_correct, ids, tolerances["accuracy"], a, n_resamples=1000),
            lambda a: check_truncation(ref_trunc, var_trunc, ids, tolerances["truncation"], a, n_resamples=1000),
            lambda a: check_length(ref_tokens, var_tokens, ids, tolerances["length"], a, n_resamples=1000),
        ]
        family = [check(ALPHA) for check in checks]
        accuracy_alarms += not family[0].passed
        family_alarms += not all(r.passed for r in apply_gatekeeping(family, lambda i, level: checks[i](level)))
    return accuracy_alarms / RERUNS, family_alarms / RERUNS


@pytest.mark.parametrize(
    "tolerance_text",
    [
        "accuracy:-0pp,truncation:+0pp,length:1.0x",  # strictest margins: any evidence of harm fails
        "accuracy:-2pp,truncation:+5pp,length:1.25x",
    ],
)
def test_identical_model_false_alarm_rate_is_at_most_alpha(tolerance_text):
    accuracy_rate, family_rate = false_alarm_rates(tolerance_text, n_items=300, repeats=1, seed=20261126)
    print(f"\n{tolerance_text}: false alarms over {RERUNS} re-runs: "
          f"accuracy {accuracy_rate:.3f}, any of 3 checks (weighted Holm) {family_rate:.3f}")
    assert accuracy_rate <= ALPHA
    assert family_rate <= ALPHA


def test_identical_model_with_sampled_repeats_stays_at_alpha():
    # Sampled repeats use the sign-flip test, which is exact rather than conservative: its expected
    # false-alarm rate is alpha itself, so 200 re-runs can land a little above it by chance. Assert
    # the rate is within sampling error of alpha, which still catches a test bolder than nominal.
    accuracy_rate, family_rate = false_alarm_rates(
        "accuracy:-0pp,truncation:+0pp,length:1.0x", n_items=300, repeats=3, seed=20261126
    )
    print(f"\nrepeats=3: false alarms over {RERUNS} re-runs: accuracy {accuracy_rate:.3f}, "
          f"any of 3 checks (weighted Holm) {family_rate:.3f}")
    tolerance = ALPHA + 1.96 * (ALPHA * (1 - ALPHA) / RERUNS) ** 0.5
    assert accuracy_rate <= tolerance
    assert family_rate <= tolerance


def test_a_real_drop_is_detected_in_most_runs():
    # Guards the test above against passing vacuously: the same simulation does catch harm.
    rng = np.random.default_rng(7)
    model = SimulatedModel(rng, 300)
    shift = logit_shift_for_drop(lambda f: float(np.mean(f(model.correct_p))), 0.10)
    worse = degrade(model.correct_p, shift)
    tolerance = parse_fail_on("accuracy:-0pp")["accuracy"]
    detected = 0
    for _ in range(RERUNS):
        ref_correct, _, _, ids = model.sample(rng)
        var_correct, _, _, _ = model.sample(rng, correct_p=worse)
        detected += not check_accuracy(ref_correct, var_correct, ids, tolerance, alpha=ALPHA).passed
    assert detected / RERUNS >= 0.9


def test_plan_sample_size_delivers_the_planned_power():
    # qtests plan's model draws items from a population, so every simulated run gets a fresh item set.
    base, drop, concentration = 0.8, 0.05, 1.0
    paired, _ = difficulty_model_variances(base, drop, concentration)
    n_items = mcnemar_required_items(drop, 0.0, discordance_rate(paired, drop), ALPHA, 0.8)
    rng = np.random.default_rng(11)
    tolerance = parse_fail_on("accuracy:-0pp")["accuracy"]
    ids = [f"q{i}" for i in range(n_items)]
    detected = 0
    for _ in range(RERUNS):
        p = rng.beta(base * concentration, (1 - base) * concentration, n_items)
        q = degrade(p, logit_shift_for_drop(lambda f: float(np.mean(f(p))), drop))
        detected += not check_accuracy(rng.random(n_items) < p, rng.random(n_items) < q, ids, tolerance).passed
    print(f"\nplanned {n_items} items for 80% power; detected in {detected / RERUNS:.3f} of {RERUNS} runs")
    assert 0.7 <= detected / RERUNS <= 0.9
