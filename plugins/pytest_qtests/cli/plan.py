"""``qtests plan``: the items (and repeats) a CI job needs to catch an accuracy drop, paired vs unpaired.

The arithmetic is :mod:`pytest_qtests.gate.plan`'s; this module reads the command line and prints the table.
"""

from __future__ import annotations

import argparse

from pytest_qtests.gate.plan import Plan, make_plan
from pytest_qtests.gate.tolerances import parse_tolerance
from pytest_qtests.records import QtestsError


def _share(text: str, flag: str) -> float:
    """A share of items written as ``0.8``, ``80%`` or ``80pp``."""
    cleaned = text.strip().lower()
    scale = 1.0
    for suffix in ("pp", "%"):
        if cleaned.endswith(suffix):
            cleaned, scale = cleaned[: -len(suffix)], 0.01
            break
    try:
        value = float(cleaned) * scale
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise QtestsError(f"{flag}: cannot read {text!r}; write a share such as 0.8, 80% or 80pp")
    return value


def format_plan(plan: Plan, args: argparse.Namespace, drop: float, margin: float) -> str:
    lines = [
        f"Items needed to detect a {drop * 100:g} pp accuracy drop from {args.base_accuracy:.0%} "
        f"(one-sided alpha {args.alpha:g}, power {args.power:g}, margin {margin * 100:g} pp):",
        "",
        f"{'repeats':>7}  {'paired items':>12}  {'samples/model':>13}  {'unpaired items':>14}  {'samples/model':>13}",
    ]
    for row in plan.rows:
        lines.append(
            f"{row.repeats:>7}  {row.paired_items:>12,}  {row.paired_items * row.repeats:>13,}  "
            f"{row.unpaired_items:>14,}  {row.unpaired_items * row.repeats:>13,}"
        )
    total = plan.paired.per_item(1)
    within = plan.paired.within_item / total if total > 0 else 0.0
    source = "measured (--discordance)" if args.discordance is not None else (
        f"guessed from item difficulty ~ Beta(mean {args.base_accuracy:g}, concentration {args.concentration:g})"
    )
    lines += [
        "",
        "paired: both models answer the same items, compared item by item (qtests' gate);",
        "unpaired: two accuracies compared as independent samples.",
        f"Assumed: one sample of each model disagrees on {plan.discordance:.1%} of items, {source}; "
        f"{within:.0%} of that is sampling noise that repeats average out"
        + (" (greedy: none)." if args.greedy else "."),
    ]
    lines.append(
        "Paired with one sample per item (or greedy): exact power of the gate's McNemar-type test; "
        "otherwise a normal approximation."
    )
    return "\n".join(lines)


def _accuracy_change(text: str, flag: str, base: float) -> float:
    """A drop written as in ``--fail-on`` (``5pp``, ``0.05``, ``5%`` of the base), as a positive fraction."""
    try:
        return -parse_tolerance("accuracy", text, source=flag).limit(base)
    except QtestsError:
        raise QtestsError(
            f"{flag}: cannot read {text!r}; write 5pp (points), 0.05 (fraction) or 5% (relative to --base-accuracy)"
        ) from None


def _run(args: argparse.Namespace) -> int:
    base = _share(args.base_accuracy_text, "--base-accuracy")
    args.base_accuracy = base
    drop = _accuracy_change(args.drop, "--drop", base)
    margin = _accuracy_change(args.margin, "--margin", base)
    discordance = _share(args.discordance, "--discordance") if args.discordance is not None else None
    try:
        repeats = tuple(int(k) for k in args.repeats.split(","))
    except ValueError:
        raise QtestsError(f"--repeats: cannot read {args.repeats!r}; write counts separated by commas, e.g. 1,4") from None
    plan = make_plan(
        base, drop, margin, args.alpha, args.power, repeats, discordance, args.greedy, args.concentration
    )
    print(format_plan(plan, args, drop, margin))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="items (and repeats) needed to detect an accuracy drop, paired vs unpaired",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--base-accuracy", dest="base_accuracy_text", metavar="SHARE", required=True, help="reference accuracy, e.g. 0.8 or 80%%")
    parser.add_argument("--drop", required=True, help="drop to detect: 5pp, 0.05, or 5%% (relative to the base)")
    parser.add_argument("--margin", default="0pp", help="drop the gate tolerates (its --fail-on accuracy margin), e.g. 2pp; default 0pp")
    parser.add_argument("--power", type=float, default=0.8, help="chance to detect the drop (default 0.8)")
    parser.add_argument("--alpha", type=float, default=0.05, help="one-sided false-alarm rate (default 0.05)")
    parser.add_argument("--repeats", default="1,2,4,8", help="samples per item to tabulate, e.g. 1,4 (default 1,2,4,8)")
    parser.add_argument(
        "--discordance",
        help="share of items where one sample of each model disagreed in an earlier run (e.g. 8%%); default: guessed",
    )
    parser.add_argument("--greedy", action="store_true", help="greedy decoding: no sampling noise, repeats do not help")
    parser.add_argument(
        "--concentration",
        type=float,
        default=1.0,
        help="spread of item difficulty, Beta a+b (small: items mostly always or never solved); default 1.0",
    )
    parser.set_defaults(func=_run)
