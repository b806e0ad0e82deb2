"""``qtests quantize MODEL --scheme S --recipe R -o OUT``: an auto-round checkpoint under a named recipe.

Prints the audit of the result (what really got quantized) and where its provenance file is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_qtests.build.provenance import PROVENANCE_FILE
from pytest_qtests.build.quantize import audit_recipe, check_request, quantize
from pytest_qtests.build.recipes import FORMATS, RECIPES, SCHEMES, QuantizeSettings


def add_quantize_options(parser: argparse.ArgumentParser) -> None:
    """The auto-round options ``quantize`` and ``sweep`` share."""
    parser.add_argument("--format", dest="export_format", default="auto_round", choices=FORMATS,
                        help="export format (default auto_round)")
    parser.add_argument("--calibration", metavar="TASK_OR_JSONL",
                        help="calibration data: a task name (its items with their answers, chat-formatted) or a "
                             "JSONL file of {\"text\": ...} lines; default auto-round's own (needs the hub)")
    parser.add_argument("--iters", type=int, default=0,
                        help="auto-round tuning steps per block (default 0: RTN, seconds; 200 is auto-round's default)")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration samples (default 128)")
    parser.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration sample (default 2048)")
    parser.add_argument("--group-size", type=int, help="weight group size for W*A16 schemes (default the scheme's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for auto-round and calibration sampling")


def settings_from(args: argparse.Namespace, scheme: str, recipe: str) -> QuantizeSettings:
    return QuantizeSettings(scheme=scheme, recipe=recipe, export_format=args.export_format, iters=args.iters,
                            nsamples=args.nsamples, seqlen=args.seqlen, group_size=args.group_size, seed=args.seed)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize", help="quantize a model with auto-round under a named recipe, with a provenance file",
        description=__doc__.splitlines()[0])
    parser.add_argument("model", help="BF16 model: local directory or hub id")
    parser.add_argument("--scheme", required=True, choices=SCHEMES, help="weight scheme")
    parser.add_argument("--recipe", default="default", choices=tuple(RECIPES),
                        help="layers kept 16-bit: " + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()))
    parser.add_argument("-o", "--output", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_quantize_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pytest_qtests.cli.audit import format_report

    settings = settings_from(args, args.scheme, args.recipe)
    recipe = check_request(settings)  # fail in a second, before any model is loaded
    provenance = quantize(args.model, args.output, settings, args.calibration, overwrite=args.overwrite)
    report, results = audit_recipe(args.output, recipe)
    print(format_report(report, results), end="")
    print(f"{len(provenance['kept_modules'])} modules kept 16-bit by recipe {recipe.name}; "
          f"provenance: {args.output / PROVENANCE_FILE}")
    return 0
