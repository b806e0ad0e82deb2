"""How many items (and repeats) a CI job needs to catch a given accuracy drop (``qtests plan``'s arithmetic).

Sizing the job before running it is the only way to know whether a green gate means "no harm" or
"too few items to tell" (an evidence-of-harm gate never fails without evidence). The numbers are for
the paired design qtests uses and, side by side, for an unpaired comparison of two accuracies, so the
saving from pairing is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_qtests.records import QtestsError
from pytest_qtests.gate.stats import (
    DesignVariance,
    difficulty_model_variances,
    discordance_rate,
    mcnemar_required_items,
    required_items,
    with_discordance,
)


@dataclass(frozen=True)
class PlanRow:
    repeats: int
    paired_items: int
    unpaired_items: int


@dataclass(frozen=True)
class Plan:
    """Items needed per repeat count, with the variances they came from (for the assumptions line)."""

    rows: list[PlanRow]
    paired: DesignVariance
    unpaired: DesignVariance
    discordance: float


def make_plan(
    base_accuracy: float,
    drop: float,
    margin: float = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
    repeats: tuple[int, ...] = (1,),
    discordance: float | None = None,
    greedy: bool = False,
    concentration: float = 1.0,
) -> Plan:
    """Items needed for each repeat count, paired and unpaired (see :mod:`pytest_qtests.gate.stats`).

    ``discordance`` (share of items where one sample of each model disagrees, from an earlier run)
    overrides the item-difficulty model's guess. ``greedy``: outcomes are fixed per item, so there is
    no sampling noise and repeats cannot help; a measured discordance is then required.
    """
    if not 0 < base_accuracy < 1:
        raise QtestsError(f"--base-accuracy must lie strictly between 0 and 1, got {base_accuracy}")
    if not 0 < drop < base_accuracy:
        raise QtestsError(f"--drop must be positive and below the base accuracy, got {drop}")
    if not 0 <= margin < drop:
        raise QtestsError(f"--margin ({margin}) must be smaller than the drop to detect ({drop})")
    if not 0 < alpha < 0.5 or not 0 < power < 1:
        raise QtestsError("--alpha must lie in (0, 0.5) and --power in (0, 1)")
    if any(k < 1 for k in repeats):
        raise QtestsError("--repeats values must be at least 1")
    paired, unpaired = difficulty_model_variances(base_accuracy, drop, concentration)
    if greedy:
        if discordance is None:
            raise QtestsError(
                "with --greedy give --discordance: the share of items on which the two models disagreed "
                "in an earlier run, e.g. --discordance 8%"
            )
        paired = DesignVariance(paired.per_item(1), 0.0)
        unpaired = DesignVariance(unpaired.per_item(1), 0.0)
    if discordance is not None:
        try:
            paired = with_discordance(paired, drop, discordance)
        except ValueError as error:
            raise QtestsError(f"--discordance: {error}") from None
    one_sample_discordance = discordance_rate(paired, drop)

    def paired_items(k: int) -> int:
        # One 0/1 sample per item (or greedy repeats, which agree): the gate's exact binary test.
        if k == 1 or greedy:
            return mcnemar_required_items(drop, margin, one_sample_discordance, alpha, power)
        return required_items(drop, margin, paired.per_item(k), alpha, power)

    rows = [
        PlanRow(k, paired_items(k), required_items(drop, margin, unpaired.per_item(k), alpha, power)) for k in repeats
    ]
    return Plan(rows, paired, unpaired, one_sample_discordance)
