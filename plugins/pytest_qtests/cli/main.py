"""The ``qtests`` console command: subcommands for work that is not a test run.

Each subcommand module exposes ``register(subparsers)``; user errors (:class:`QtestsError`) print one
line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pytest_qtests.records import QtestsError

# Modules providing a ``register(subparsers)`` function, each adding one subcommand.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "pytest_qtests.cli.baseline",
    "pytest_qtests.cli.plan",
    "pytest_qtests.cli.audit",
    "pytest_qtests.cli.diagnose",
    "pytest_qtests.cli.quantize",
    "pytest_qtests.cli.sweep",
    "pytest_qtests.cli.card",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="qtests", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QtestsError as error:
        print(f"qtests: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
