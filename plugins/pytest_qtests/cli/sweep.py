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

from pytest_qtests.build.quantize import RECIPES, SCHEMES
from pytest_qtests.cli.quantize import add_quantize_options, settings_from
from pytest_qtests.report.files import atomic_write
from pytest_qtests.build.sweep import SweepPoint, SweepRow, run_sweep, smallest_passing, sweep_points
from pytest_qtests.report.sweep import json_document, markdown_table, rich_table

# sweep flag -> the plugin's option name
GATE_FLAGS = {name: f"qt_{name}" for name in ("tasks", "limit", "max_tokens", "backend", "fail_on", "cache_dir",
                                             "sampling", "batch_size", "dtype")} | {"qt_config": "qt_config"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="quantize every scheme x recipe, gate each against the model, print the Pareto table",
        description=__doc__.splitlines()[0])
    parser.add_argument("model", help="BF16 reference model: local directory or hub id")
    parser.add_argument("--schemes", required=True, help=f"comma-separated, from {','.join(SCHEMES)}")
    parser.add_argument("--recipes", default="default", help=f"comma-separated, from {','.join(RECIPES)}")
    parser.add_argument("-o", "--output", required=True, type=Path, help="directory for checkpoints and tables")
    gate = parser.add_argument_group("gate (as for pytest qtests)")
    gate.add_argument("--qt-config", metavar="FILE", help="suite file for sampling, tolerances, cap (flags override)")
    gate.add_argument("--tasks", metavar="A,B", help="tasks (name, or name=PATH)")
    gate.add_argument("--limit", type=int, metavar="N", help="first N items of each task")
    gate.add_argument("--max-tokens", type=int, metavar="N", help="output cap")
    gate.add_argument("--backend", choices=("transformers", "vllm"), help="engine (default transformers)")
    gate.add_argument("--fail-on", metavar="RULES", help="tolerances, as pytest's --fail-on")
    gate.add_argument("--sampling", metavar="PRESET", help="qwen-thinking (default), qwen-instruct, greedy")
    gate.add_argument("--batch-size", type=int, help="transformers generate batch size")
    gate.add_argument("--dtype", help="engine dtype")
    gate.add_argument("--cache-dir", metavar="DIR", help="generation cache (default .qtests/cache)")
    add_quantize_options(parser)
    parser.add_argument("--card", action="store_true",
                        help="write the model card (qtests card) into the smallest passing variant's folder")
    parser.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
    points = sweep_points(_split(args.schemes), _split(args.recipes), args.output)
    base = settings_from(args, points[0].scheme, points[0].recipe)
    gate = {option: getattr(args, flag) for flag, option in GATE_FLAGS.items()}
    started = time.perf_counter()
    rows, phases = run_sweep(args.model, points, base, args.calibration, gate, args.output / "report",
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    wall = time.perf_counter() - started
    print(rich_table(rows), end="")
    timing = (f"{len(points)} variants: quantize {phases['quantize_s']:.0f} s, evaluate {phases['evaluate_s']:.0f} s, "
              f"total {wall:.0f} s")
    print(timing)
    meta = {"model": args.model, "schemes": _split(args.schemes), "recipes": _split(args.recipes),
            "format": args.export_format, "calibration": args.calibration, "wall_s": round(wall, 1),
            **{key: round(value, 1) for key, value in phases.items()}}
    atomic_write(args.output / "sweep.json", json_document(rows, meta))
    atomic_write(args.output / "sweep.md", markdown_table(rows, f"qtests sweep of {args.model}") + f"\n{timing}\n")
    print(f"tables: {args.output / 'sweep.md'}, {args.output / 'sweep.json'}; gate report: {args.output / 'report'}")
    if args.card:
        _write_card(rows, points, args.output / "report")
    return 0 if any(row.verdict == "PASS" for row in rows) else 1
