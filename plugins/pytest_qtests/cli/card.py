"""``qtests card RESULTS_DIR -o OUT_DIR``: the model card section of one gated variant.

Reads the gate's ``results.json`` (``--qt-report DIR``) and writes or updates ``OUT_DIR/README.md``
(usually the checkpoint folder about to be published); see :mod:`pytest_qtests.report.card`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_qtests.report.card import write_card


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "card", help="write a Hugging Face model card section (and model-index metadata) from a gate's results",
        description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, metavar="RESULTS_DIR", help="folder holding results.json (--qt-report)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT_DIR",
                        help="folder whose README.md gets the card (created, or updated between the qtests markers)")
    parser.add_argument("--variant", metavar="LABEL", help="variant to card when the run gated several")
    parser.add_argument("--checkpoint", metavar="DIR_OR_HUB_ID",
                        help="checkpoint to audit (default: the variant's path recorded in results.json)")
    parser.add_argument("--model-name", help="model-index name (default: an existing card's, else the variant label)")
    parser.add_argument("--allow-failed", action="store_true",
                        help="write the card of a variant that failed the gate; the card then says it failed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = write_card(args.results, args.output, variant=args.variant, checkpoint=args.checkpoint,
                      allow_failed=args.allow_failed, model_name=args.model_name)
    print(f"model card: {path}")
    return 0
