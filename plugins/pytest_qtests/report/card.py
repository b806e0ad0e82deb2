"""A Hugging Face model card section for one gated variant, from the gate's ``results.json``.

Quantized checkpoints on the hub report their recovery against BF16 each in its own way, rarely with an
interval, the truncation rate or the settings that produced the numbers. This writes what the gate
measured, in one shape: every gated metric against the reference with its difference, interval and
tolerance, the footprint and the layers kept 16-bit (from the audit), the recipe (from
``qtests_provenance.json``) and the settings. The numbers also go into the card's metadata as
``model-index`` eval results, written with ``huggingface_hub``'s own card classes so the hub reads them.

An existing ``README.md`` is updated, never replaced: its front matter is merged (qtests' eval results
replace only earlier qtests results), and only the text between :data:`BEGIN` and :data:`END` is
rewritten. A variant that failed the gate gets no card unless the caller allows it, and then the card
says so first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from pytest_qtests.audit.checkpoint import AuditReport, audit
from pytest_qtests.audit.storage import is_quantized_format
from pytest_qtests.build.provenance import describe_provenance, read_provenance
from pytest_qtests.gate.checks import CheckResult
from pytest_qtests.gate.tolerances import CHECK_SPECS, is_ratio
from pytest_qtests.gate.verdict import format_mde
from pytest_qtests.records import QtestsError
from pytest_qtests.report.files import results_problem
from pytest_qtests.store.atomic import atomic_write
from pytest_qtests.report.format import cell_estimate, cell_footprint, cell_interval, cell_p

BEGIN = "<!-- qtests:card:begin (written by `qtests card`; edits between these markers are replaced) -->"
END = "<!-- qtests:card:end -->"
SOURCE_NAME = "qtests"  # marks the eval results this module owns in the card's model-index
SOURCE_URL = "https://pypi.org/project/pytest-qtests/"  # the hub wants a URL with every source name
CARD_FILE = "README.md"
METRIC_ORDER = ("accuracy", "truncation", "length", "length_p95", "thinking_length", "degenerate")


@dataclass(frozen=True)
class CardRun:
    """One task of the carded variant as ``results.json`` has it, with its checks as :class:`CheckResult`."""

    run: dict[str, Any]
    checks: list[CheckResult]

    @property
    def task(self) -> str:
        return self.run["task"]


def read_results(directory: Path) -> dict[str, Any]:
    """``DIRECTORY/results.json``, validated against its schema (a card must not rest on a misread file)."""
    path = Path(directory) / "results.json"
    if not path.is_file():
        raise QtestsError(f"no results.json in {directory}: pass the folder a gate run wrote with --qt-report DIR")
    try:
        document = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise QtestsError(f"{path} is not valid JSON ({error}); re-run the gate with --qt-report") from None
    problem = results_problem(document)
    if problem:
        raise QtestsError(f"{path} does not match the results schema ({problem}); re-run the gate with --qt-report")
    return document


def pick_variant(document: dict[str, Any], variant: str | None) -> str:
    """The variant to card: the one named, or the only compared variant of the run."""
    labels = list(dict.fromkeys(run["variant"] for run in document["runs"] if run["role"] == "variant"))
    if variant is not None:
        if variant not in labels:
            raise QtestsError(f"results.json has no variant {variant!r} (variants: {', '.join(labels) or 'none'}); "
                              "pass --variant with one of them")
        return variant
    if len(labels) != 1:
        raise QtestsError(f"results.json holds {len(labels)} variants ({', '.join(labels) or 'none'}); "
                          "name the one to card with --variant LABEL")
    return labels[0]


def _check_result(document: dict[str, Any], alpha: float) -> CheckResult:
    """A ``results.json`` check back as a :class:`CheckResult`, so the reports' own formatting applies."""
    names = {f.name for f in fields(CheckResult)}
    return CheckResult(**{key: value for key, value in document.items() if key in names}, alpha=alpha)


def card_runs(document: dict[str, Any], variant: str, allow_failed: bool) -> list[CardRun]:
    """The variant's runs; refused when one lacks a comparison, or failed and ``allow_failed`` is off."""
    alpha = document["settings"]["alpha"]
    runs = [run for run in document["runs"] if run["variant"] == variant]
    for run in runs:
        if not run["checks"] and run["verdict"] != "FAIL (canary)":
            raise QtestsError(f"{variant} on {run['task']} has no comparison with a reference ({run['verdict']}): "
                              "a card reports recovery against BF16; gate it with --reference or --baseline")
    failed = [f"{run['task']}: {run['verdict']}" for run in runs if run["passed"] is not True]
    if failed and not allow_failed:
        raise QtestsError(f"{variant} failed the gate ({'; '.join(failed)}): refusing to write its model card; "
                          "pass --allow-failed to write one that says it failed")
    order = {name: index for index, name in enumerate(METRIC_ORDER)}
    return [CardRun(run, sorted((_check_result(c, alpha) for c in run["checks"].values()),
                                key=lambda c: order.get(c.check, len(order))))
            for run in runs]


# ---------------------------------------------------------------------------------------------------
# The Markdown section


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _value(result: CheckResult, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} tokens" if is_ratio(result.check) else _rate(value)


def _metric_name(result: CheckResult, max_tokens: int) -> str:
    if result.check == "truncation":
        return f"truncation rate (cap {max_tokens} tokens)"
    spec = CHECK_SPECS.get(result.check)
    return spec.description if spec else result.check


def _metrics_table(card_run: CardRun, max_tokens: int) -> list[str]:
    lines = ["| metric | this checkpoint | reference | difference | interval | tolerance | p (Holm) | check |",
             "|---|---:|---:|---:|---|---|---:|---|"]
    for result in card_run.checks:
        lines.append(" | ".join([
            f"| {_metric_name(result, max_tokens)}", _value(result, result.variant_value),
            _value(result, result.reference_value), cell_estimate(result), cell_interval(result),
            result.limit_text or "-", cell_p(result.adjusted_p_value), _check_cell(result) + " |"]))
    return lines


def _check_cell(result: CheckResult) -> str:
    """pass, **FAIL**, or inconclusive with the smallest change the run could have detected."""
    if result.verdict == "INCONCLUSIVE":
        detectable = format_mde(result.mde, is_ratio(result.check))
        return f"inconclusive (could detect {detectable}){'' if result.passed else ' **FAIL**'}"
    return "pass" if result.passed else "**FAIL**"


def _task_section(card_run: CardRun, max_tokens: int) -> list[str]:
    run, summary = card_run.run, card_run.run["summary"]
    ci = summary["accuracy_ci"]
    accuracy = _rate(summary["accuracy"]) + (f" (95% CI {_rate(ci[0])} to {_rate(ci[1])})" if ci else "")
    lines = [f"### {run['task']}: {run['verdict']}", "",
             f"{summary['n_items']} items, {summary['n_samples']} samples; accuracy {accuracy}; "
             + (f"paired with {run['reference_source']}." if run["reference_source"] else "not paired.")]
    if card_run.checks:
        lines += [""] + _metrics_table(card_run, max_tokens)
    if run["canary"] is not None and not run["canary"]["passed"]:
        lines += ["", f"Canary: {run['canary']['message']}"]
    lines += ["", f"Flipped items: {run['flips']['lost']} lost, {run['flips']['gained']} gained against the reference."]
    return lines


def kept_16bit(report: AuditReport) -> dict[str, list[str]]:
    """Module class -> the unquantized formats of its linear layers, for a checkpoint that quantized any."""
    if not any(m.quantized for m in report.modules):
        return {}
    kept: dict[str, list[str]] = {}
    for module in report.modules:
        if module.is_linear and module.format != "none" and not is_quantized_format(module.format):
            kept.setdefault(module.module_class, []).append(module.format)
    return kept


def _footprint_section(report: AuditReport | None, footprint_bytes: int | None) -> list[str]:
    lines = ["### Footprint and layers kept 16-bit", ""]
    if report is None:
        return lines + [f"Footprint {cell_footprint(footprint_bytes)} (no checkpoint to audit)."]
    lines.append(f"Footprint {cell_footprint(report.footprint_bytes)} ({report.footprint_bytes} bytes of tensors), "
                 f"{report.bits_per_param:.2f} bits/param, {report.relative_to_bf16:.0%} of the same parameters in "
                 f"BF16; {report.quant_method}: {report.quant_summary}.")
    kept = kept_16bit(report)
    lines += ["", "| module class | linear layers | stored as | kept 16-bit |", "|---|---:|---|---:|"]
    for summary in report.classes:
        linear = sum(m.is_linear for m in report.modules_in(summary.module_class))
        if linear:
            lines.append(f"| {summary.module_class} | {linear} | {summary.format} | "
                         f"{len(kept.get(summary.module_class, []))} |")
    return lines


def _recipe_section(provenance: dict[str, Any] | None) -> list[str]:
    if provenance is None:
        return []
    recipe = provenance.get("recipe", {})
    kept = ", ".join(recipe.get("kept_classes", [])) or "auto-round's own choice"
    return ["### How it was made", "", describe_provenance(provenance) + ".",
            f"Recipe `{recipe.get('name')}`: {recipe.get('description', '')} (kept 16-bit: {kept}).",
            "Calibration and model hashes, settings and library versions: `qtests_provenance.json`."]


def _sampling_text(sampling: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sampling.items() if key != "max_tokens")


def _settings_section(document: dict[str, Any], runs: Sequence[CardRun]) -> list[str]:
    settings = document["settings"]
    fingerprint = runs[0].run["fingerprint"]
    tolerances = ", ".join(f"{check} {text}" for check, text in settings["fail_on"].items())
    items = sorted({str(run.run["summary"]["n_items"]) for run in runs})
    engine = fingerprint["engine_version"]
    lines = ["### Settings that produced these numbers", "",
             f"- engine: {engine if engine.startswith(fingerprint['engine']) else fingerprint['engine'] + ' ' + engine}",
             f"- sampling: {_sampling_text(fingerprint['sampling'])}; thinking {'on' if fingerprint['thinking'] else 'off'}",
             f"- max tokens {fingerprint['max_tokens']}, repeats {fingerprint['repeats']}, items {'/'.join(items)}"
             + (f" (first {settings['limit']})" if settings["limit"] else ""),
             f"- gate: {settings['gate_mode']}, alpha {settings['alpha']} per variant (accuracy-first weighted Holm), tolerances {tolerances}",
             f"- qtests {document['qtests_version']}, run {document['created_at']}"]
    for run in runs:
        stamp = run.run["fingerprint"]
        lines.append(f"- fingerprint ({run.task}): model {stamp['model'].get('hash', '?')[:16]}, dataset "
                     f"{stamp['dataset_hash'][:16]}, prompt template {stamp['prompt_template_hash'][:16]}, "
                     f"seed {stamp['seed']}")
    return lines


def card_markdown(document: dict[str, Any], variant: str, runs: Sequence[CardRun],
                  report: AuditReport | None, provenance: dict[str, Any] | None) -> str:
    """The card section between the markers: verdict, metrics per task, footprint, recipe, settings."""
    passed = all(run.run["passed"] is True for run in runs)
    inconclusive = sorted({c.check for run in runs for c in run.checks if c.verdict == "INCONCLUSIVE"})
    reference = document["settings"]["reference"] or document["settings"]["baseline"]
    lines = [BEGIN, "## Quantization quality (qtests)", ""]
    if passed:
        lines.append(f"**Verdict: PASS.** `{variant}` was gated against the BF16 reference `{reference}` item by item "
                     "on every metric below; no check showed a loss beyond its tolerance.")
        if inconclusive:
            lines.append(f"Not every check could be shown within its tolerance: {', '.join(inconclusive)} "
                         "inconclusive (too few items to tell; the gate's evidence-of-harm mode passes them). "
                         "The table gives the smallest change this run could have detected.")
    else:
        lines.append(f"**Verdict: FAILED.** `{variant}` failed the qtests gate against the BF16 reference `{reference}`; "
                     "this card was written anyway (`--allow-failed`). Read the failed checks below before using it.")
    lines += ["", "Differences are variant minus reference (ratios: variant over reference) with the gate's two-sided "
              "interval; a check fails only when the data show a loss beyond the tolerance.", ""]
    max_tokens = document["settings"]["max_tokens"]
    for run in runs:
        lines += _task_section(run, max_tokens) + [""]
    footprint = runs[0].run["summary"]["footprint_bytes"]
    for section in (_footprint_section(report, footprint), _recipe_section(provenance), _settings_section(document, runs)):
        if section:
            lines += section + [""]
    lines.append(END)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# The metadata (model-index) and the README


def eval_results(document: dict[str, Any], runs: Sequence[CardRun]) -> list[Any]:
    """One ``EvalResult`` per task x metric: the variant's value, and the difference from the reference."""
    from huggingface_hub import EvalResult

    settings = document["settings"]
    found = []
    for run in runs:
        summary = run.run["summary"]
        args = {"max_tokens": settings["max_tokens"], "repeats": settings["repeats"], "n_items": summary["n_items"],
                "sampling": run.run["fingerprint"]["sampling"]}
        common = dict(task_type="text-generation", dataset_type=run.task, dataset_name=run.task,
                      source_name=SOURCE_NAME, source_url=SOURCE_URL, metric_args=args)
        if summary["accuracy"] is not None:
            found.append(EvalResult(metric_type="accuracy", metric_name="accuracy", metric_value=summary["accuracy"],
                                    **common))
        for result in run.checks:
            ratio = is_ratio(result.check)
            # 0.92 rather than 0.9199999999999999: 1 - alpha x weight is float arithmetic
            confidence = None if result.confidence is None else round(result.confidence, 6)
            found.append(EvalResult(
                metric_type=f"{result.check}_{'ratio' if ratio else 'delta'}",
                metric_name=f"{result.check} {'ratio to' if ratio else 'difference from'} BF16",
                metric_value=result.estimate,
                **{**common, "metric_args": {**args, "interval": [result.ci_low, result.ci_high],
                                             "confidence": confidence, "tolerance": result.limit_text,
                                             "reference_value": result.reference_value,
                                             "variant_value": result.variant_value, "passed": result.passed}}))
    return found


def merge_card(existing: str | None, section: str, results: list[Any], model_name: str) -> str:
    """The README text: ``existing`` with its qtests eval results and its section between the markers replaced."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(existing if existing and existing.startswith("---") else "---\n\n---\n" + (existing or ""))
    except ValueError as error:
        raise QtestsError(f"the existing {CARD_FILE} has metadata huggingface_hub cannot read ({error}); "
                          "fix its front matter first") from None
    data = card.data
    kept = [result for result in (data.eval_results or []) if result.source_name != SOURCE_NAME]
    data.eval_results = kept + results
    data.model_name = data.model_name or model_name
    data.tags = list(dict.fromkeys([*(data.tags or []), "qtests", "quantized"]))
    text = card.text
    begin, end = text.find(BEGIN), text.find(END)
    if (begin < 0) != (end < 0) or end < begin:
        raise QtestsError(f"the existing {CARD_FILE} has only one of the qtests markers, or them out of order; "
                          f"restore both ({BEGIN!r} before {END!r}) or delete the stray one")
    if begin < 0:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section
    else:
        text = text[:begin] + section.rstrip("\n") + text[end + len(END):]
    card.text = text
    return card.content


def write_card(results_dir: Path, out_dir: Path, variant: str | None = None, checkpoint: str | Path | None = None,
               allow_failed: bool = False, model_name: str | None = None) -> Path:
    """Write (or update) ``OUT_DIR/README.md`` with the card of ``variant`` from ``RESULTS_DIR/results.json``.

    ``checkpoint`` is what to audit and read the provenance of; by default the variant's local path
    recorded in its fingerprint, else ``out_dir`` when it holds a checkpoint.
    """
    document = read_results(results_dir)
    label = pick_variant(document, variant)
    runs = card_runs(document, label, allow_failed)
    source, revision = (str(checkpoint), None) if checkpoint else _checkpoint_of(runs[0].run, Path(out_dir))
    report = audit(source, revision) if source is not None else None
    provenance = read_provenance(source) if source is not None else None
    section = card_markdown(document, label, runs, report, provenance)
    path = Path(out_dir) / CARD_FILE
    existing = path.read_text("utf-8") if path.is_file() else None
    atomic_write(path, merge_card(existing, section, eval_results(document, runs), model_name or label))
    return path


def _checkpoint_of(run: dict[str, Any], out_dir: Path) -> tuple[str | None, str | None]:
    """Where the carded weights are: the fingerprint's local path or hub id and commit, else ``out_dir``."""
    model = run["fingerprint"]["model"]
    if model.get("kind") == "local" and Path(model.get("path", "")).is_dir():
        return model["path"], None
    if model.get("kind") == "hub":
        return model["id"], model.get("commit") or model.get("revision")
    return (str(out_dir), None) if (out_dir / "config.json").is_file() else (None, None)
