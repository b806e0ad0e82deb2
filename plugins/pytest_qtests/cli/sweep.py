"""``qtests sweep MODEL --schemes A,B --recipes X,Y -o DIR``: build, audit and gate every combination.

Prints the Pareto table and writes it as ``DIR/sweep.md`` and ``DIR/sweep.json``; the gate's usual
report files (results.json, summary.md, report.html) go to ``DIR/report``. Exit status 0 when at
least one variant passed, 1 when none did.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pytest_qtests.build.recipes import RECIPES, SCHEMES
from pytest_qtests.cli.quantize import add_quantize_options, settings_from
from pytest_qtests.options import GateOptions, add_gate_options, split_commas
from pytest_qtests.store.atomic import atomic_write
from pytest_qtests.build.sweep import SweepPoint, SweepRow, run_sweep, smallest_passing, sweep_points
from pytest_qtests.report.sweep import json_document, markdown_table, rich_table

# The gate options a sweep takes, as pytest takes them. Not: the variants and reference (the sweep names
# them), baselines, replay and OpenAI endpoints (a sweep evaluates the checkpoints it builds), --seed
# (the quantizer's flag here), the report directory (DIR/report).
SWEEP_GATE_OPTIONS = ("suite_file", "tasks", "limit", "max_tokens", "repeats", "thinking", "sampling", "temperature",
                      "backend", "dtype", "batch_size", "engine_args", "fail_on", "gate_mode", "alpha", "policies",
                      "canary", "no_cache", "cache_dir")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="quantize every scheme x recipe, gate each against the model, print the Pareto table",
        description=__doc__.splitlines()[0])
    parser.add_argument("model", help="BF16 reference model: local directory or hub id")
    parser.add_argument("--schemes", required=True, action="append", metavar="SCHEME",
                        help=f"from {','.join(SCHEMES)}; repeatable, or comma-separated")
    parser.add_argument("--recipes", action="append", metavar="RECIPE",
                        help=f"from {','.join(RECIPES)} (default default); repeatable, or comma-separated")
    parser.add_argument("-o", "--output", required=True, type=Path, help="directory for checkpoints and tables")
    gate = parser.add_argument_group("gate (as for pytest qtests)")
    add_gate_options(gate.add_argument, only=SWEEP_GATE_OPTIONS)
    add_quantize_options(parser)
    parser.add_argument("--card", action="store_true",
                        help="write the model card (qtests card) into the smallest passing variant's folder")
    parser.set_defaults(func=run)


def _write_card(rows: list[SweepRow], points: list[SweepPoint], report_dir: Path) -> None:
    """The card of the smallest variant that passed on every task, into its own checkpoint folder."""
    from pytest_qtests.report.card import write_card

    label = smallest_passing(rows)
    if label is None:
        print("no variant passed the gate: no model card written")
        return
    folder = next(point.path for point in points if point.label == label)
    print(f"model card: {write_card(report_dir, folder, variant=label)}")


def run(args: argparse.Namespace) -> int:
    schemes, recipes = split_commas(args.schemes), split_commas(args.recipes or ["default"])
    points = sweep_points(schemes, recipes, args.output)
    base = settings_from(args, points[0].scheme, points[0].recipe)
    started = time.perf_counter()
    rows, phases = run_sweep(args.model, points, base, args.calibration, GateOptions.from_namespace(args),
                             args.output / "report",
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    wall = time.perf_counter() - started
    print(rich_table(rows), end="")
    timing = (f"{len(points)} variants: quantize {phases['quantize_s']:.0f} s, evaluate {phases['evaluate_s']:.0f} s, "
              f"total {wall:.0f} s")
    print(timing)
    meta = {"model": args.model, "schemes": schemes, "recipes": recipes,
            "format": args.export_format, "calibration": args.calibration, "wall_s": round(wall, 1),
            **{key: round(value, 1) for key, value in phases.items()}}
    atomic_write(args.output / "sweep.json", json_document(rows, meta))
    atomic_write(args.output / "sweep.md", markdown_table(rows, f"qtests sweep of {args.model}") + f"\n{timing}\n")
    print(f"tables: {args.output / 'sweep.md'}, {args.output / 'sweep.json'}; gate report: {args.output / 'report'}")
    if args.card:
        _write_card(rows, points, args.output / "report")
    return 0 if any(row.verdict == "PASS" for row in rows) else 1
