"""``qtests baseline show|diff|validate``: look inside stored baselines without running anything.

``show`` answers "what is in this baseline and how was it made", ``diff`` answers "what changed between
two baselines" (settings first, because a metric delta under other settings means nothing), and
``validate`` is the CI check that every committed baseline still loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_qtests.store.baselines import (
    DEFAULT_BASELINE_DIR,
    Baseline,
    baseline_path,
    list_tasks,
    load_baseline,
    read_baseline_file,
    resolve_baseline,
)
from pytest_qtests.store.fingerprint import diff_fingerprints
from pytest_qtests.options import GateOptions, add_gate_options
from pytest_qtests.records import QtestsError

# Summary metrics shown by show/diff, with how a delta is printed: rates in percentage points,
# lengths as a difference and a ratio.
_RATES = ("accuracy", "truncation_rate", "degenerate_rate", "error_rate")
_LENGTHS = ("mean_output_tokens", "median_output_tokens", "mean_thinking_tokens")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("baseline", help="inspect stored baselines (show, diff, validate)")
    actions = parser.add_subparsers(dest="baseline_command", required=True)

    def add_lookup_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--task", help="task to pick when a name has baselines for several tasks")
        add_gate_options(sub.add_argument, only=("baseline_dir",))

    show = actions.add_parser("show", help="print a baseline's summary and fingerprint")
    show.add_argument("baseline", metavar="NAME_OR_PATH")
    add_lookup_options(show)
    show.set_defaults(func=_show)

    diff = actions.add_parser("diff", help="compare two baselines: settings, metrics and per-item flips")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    add_lookup_options(diff)
    diff.set_defaults(func=_diff)

    validate = actions.add_parser("validate", help="check baseline files against the schema (exit 1 if any is bad)")
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="baseline files or folders of them")
    validate.set_defaults(func=_validate)


def _store(args: argparse.Namespace) -> Path:
    """Where named baselines live: ``--baseline-dir``, as the gate reads it."""
    return Path(GateOptions.from_namespace(args).baseline_dir or DEFAULT_BASELINE_DIR)


def _format_value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _paths_to_show(args: argparse.Namespace) -> list[Path]:
    """A name without ``--task`` shows every task saved for it; anything else names one file."""
    if args.task or Path(args.baseline).exists():
        return [resolve_baseline(args.baseline, _store(args), args.task)]
    tasks = list_tasks(_store(args), args.baseline)
    if len(tasks) <= 1:  # one file, or none: then the lookup's error names what exists
        return [resolve_baseline(args.baseline, _store(args))]
    return [baseline_path(_store(args), args.baseline, task) for task in tasks]


def _show(args: argparse.Namespace) -> int:
    for index, path in enumerate(_paths_to_show(args)):
        baseline = read_baseline_file(path)
        if index:
            print()
        print(f"{baseline.name} / {baseline.task}  ({path}, created {baseline.created_at}, qtests {baseline.qtests_version})")
        print("summary:")
        for key, value in baseline.summary.items():
            print(f"  {key:22} {_format_value(value)}")
        print("fingerprint:")
        for key, value in baseline.fingerprint.compared_fields().items():
            print(f"  {key:22} {value}")
        for key, value in baseline.fingerprint.extra.items():
            print(f"  extra.{key:16} {value}")
    return 0


def _delta(key: str, a: float, b: float) -> str:
    if key in _RATES:
        return f"{(b - a) * 100:+.2f} pp"
    ratio = f" ({b / a:.3f}x)" if a else ""
    return f"{b - a:+.1f}{ratio}"


def flip_counts(a: Baseline, b: Baseline) -> dict[str, int]:
    """Samples matched by (item_id, sample_index): how many changed from correct to wrong and back."""
    correct_a = {(o.item_id, o.sample_index): o.correct for o in a.items}
    correct_b = {(o.item_id, o.sample_index): o.correct for o in b.items}
    paired = correct_a.keys() & correct_b.keys()
    return {
        "paired": len(paired),
        "only_a": len(correct_a.keys() - paired),
        "only_b": len(correct_b.keys() - paired),
        "correct_to_wrong": sum(1 for k in paired if correct_a[k] and not correct_b[k]),
        "wrong_to_correct": sum(1 for k in paired if not correct_a[k] and correct_b[k]),
    }


def _diff(args: argparse.Namespace) -> int:
    a = load_baseline(args.a, _store(args), args.task)
    b = load_baseline(args.b, _store(args), args.task)
    print(f"A: {a.name} / {a.task}  (created {a.created_at})")
    print(f"B: {b.name} / {b.task}  (created {b.created_at})")
    differences = diff_fingerprints(a.fingerprint, b.fingerprint, ignore=())
    print("fingerprint: " + ("; ".join(str(d) for d in differences) if differences else "identical"))
    print(f"{'metric':22} {'A':>10} {'B':>10}  delta")
    for key in ("n_items", "n_samples", *_RATES, *_LENGTHS):
        value_a, value_b = a.summary.get(key), b.summary.get(key)
        if value_a is None or value_b is None:
            continue
        delta = _delta(key, value_a, value_b) if key in _RATES + _LENGTHS else f"{value_b - value_a:+d}"
        print(f"{key:22} {_format_value(value_a):>10} {_format_value(value_b):>10}  {delta}")
    flips = flip_counts(a, b)
    print(
        f"paired samples: {flips['paired']} (only in A: {flips['only_a']}, only in B: {flips['only_b']}); "
        f"flips: correct->wrong {flips['correct_to_wrong']}, wrong->correct {flips['wrong_to_correct']}"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    files: list[Path] = []
    for path in args.paths:
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
            if not found:
                raise QtestsError(f"no baseline files (*.json) under {path}: pass a baseline file or folder")
            files.extend(found)
        else:
            files.append(path)
    failures = 0
    for path in files:
        try:
            baseline = read_baseline_file(path)
        except QtestsError as error:
            failures += 1
            print(f"invalid: {error}")
        else:
            print(f"ok: {path} ({baseline.name} / {baseline.task}, {len(baseline.items)} samples)")
    return 1 if failures else 0
