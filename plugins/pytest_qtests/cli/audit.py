"""``qtests audit PATH``: print a checkpoint audit as a table (``--json`` for machines).

``--policy`` rules are checked too; the exit status is 1 when one fails or the audit finds an export
defect (``audit/defects.py``). The footprint claim is shown as a warning when the variant saves too
little over the next larger format.
"""

from __future__ import annotations

import argparse
import io
import json
import sys

from pytest_qtests.audit.checkpoint import AuditReport, audit
from pytest_qtests.audit.policies import FootprintClaim, PolicyResult, evaluate_policy, footprint_claim, parse_policy
from pytest_qtests.build.provenance import describe_provenance, read_provenance
from pytest_qtests.options import GateOptions, add_gate_options
from pytest_qtests.report.format import format_bytes

COLUMNS = ("class", "modules", "format", "bits", "group", "params", "bytes", "bits/param")
MAX_LISTED = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="which layers a checkpoint really quantized, and its real size")
    parser.add_argument("checkpoint", help="checkpoint directory or hub id (headers and per-tensor scales, never weights)")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--modules", action="store_true", help="include every module (JSON) or list them (table)")
    add_gate_options(parser.add_argument, only=("policies",))
    parser.add_argument("--min-saving", type=float, default=0.25, metavar="FRACTION",
                        help="warn when the variant saves less than this over the next larger format")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rules = [parse_policy(text) for text in GateOptions.from_namespace(args).policies or []]  # fail before the audit
    report = audit(args.checkpoint, revision=args.revision)
    results = [evaluate_policy(report, rule) for rule in rules]
    claim = footprint_claim(report, args.min_saving)
    provenance = read_provenance(args.checkpoint)
    if args.json:
        data = report.to_dict(with_modules=args.modules)
        data["provenance"] = provenance
        data["policies"] = [vars(r) | {"offending_modules": list(r.offending_modules)} for r in results]
        data["footprint_claim"] = vars(claim)
        print(json.dumps(data, indent=2))
    else:
        print(format_report(report, results, claim, with_modules=args.modules), end="")
        if provenance is not None:
            print(describe_provenance(provenance))
    return 0 if all(r.passed for r in results) and not report.defects else 1


def format_report(
    report: AuditReport, results: list[PolicyResult] = (), claim: FootprintClaim | None = None,
    with_modules: bool = False, use_rich: bool | None = None,
) -> str:
    """The human report: header, per-class table, totals, disagreements, notes, verdicts."""
    rows = [_row(c) for c in report.classes]
    totals = ("total", str(len(report.modules)), "", "", "", _count(report.params),
              format_bytes(report.footprint_bytes), f"{report.bits_per_param:.2f}")
    lines_after = [
        f"footprint {report.footprint_bytes:,} bytes ({format_bytes(report.footprint_bytes)}), "
        f"{report.bits_per_param:.2f} bits/param, {report.relative_to_bf16:.1%} of BF16 "
        f"({format_bytes(report.bf16_bytes)})",
    ]
    if report.disagreements:
        lines_after.append(f"{len(report.disagreements)} config/tensor disagreements:")
        lines_after += [f"  {d.message}" for d in report.disagreements[:MAX_LISTED]]
        if len(report.disagreements) > MAX_LISTED:
            lines_after.append(f"  ... and {len(report.disagreements) - MAX_LISTED} more (--json lists all)")
    else:
        lines_after.append("config and tensors agree on every module")
    lines_after += [f"note: {n}" for n in report.notes]
    lines_after += [f"DEFECT {finding.message}" for finding in report.defects]
    if claim is not None and not claim.passed:
        lines_after.append(f"WARNING footprint claim: {claim.message}")
    lines_after += [f"{'PASS' if r.passed else 'FAIL'} {r.message}" for r in results]
    if with_modules:
        lines_after += [f"  {m.name}  {m.module_class}  {m.format} {m.granularity}  {m.params:,} params  "
                        f"{m.nbytes:,} B" for m in report.modules]
    title = (f"{report.source}  [{report.architecture}]  {report.quant_summary}  "
             f"({report.shards} shard{'s' if report.shards != 1 else ''})")
    table = _rich_table(rows, totals) if _want_rich(use_rich) else _plain_table(rows, totals)
    return title + "\n" + table + "\n".join(lines_after) + "\n"


def _row(summary) -> tuple[str, ...]:
    return (summary.module_class, str(summary.modules), summary.format,
            "/".join(map(str, summary.bits)), ",".join(summary.granularities) or "-",
            _count(summary.params), format_bytes(summary.nbytes), f"{summary.bits_per_param:.2f}")


def _want_rich(use_rich: bool | None) -> bool:
    if use_rich is not None:
        return use_rich
    import importlib.util

    return importlib.util.find_spec("rich") is not None


def _rich_table(rows: list[tuple[str, ...]], totals: tuple[str, ...]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if index in (0, 2, 4) else "right")
    for row in rows:
        table.add_row(*row)
    table.add_section()
    table.add_row(*totals, style="bold")
    buffer = io.StringIO()
    width = 160 if not sys.stdout.isatty() else None
    Console(file=buffer, width=width, force_terminal=sys.stdout.isatty()).print(table)
    return buffer.getvalue()


def _plain_table(rows: list[tuple[str, ...]], totals: tuple[str, ...]) -> str:
    body = [COLUMNS, *rows, totals]
    widths = [max(len(r[i]) for r in body) for i in range(len(COLUMNS))]
    lines = []
    for index, row in enumerate(body):
        if index in (1, len(body) - 1):
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(cell.ljust(w) if i in (0, 2, 4) else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    return "\n".join(lines) + "\n"


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
