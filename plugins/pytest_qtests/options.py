"""One run's settings: the suite file (``--qt-config``, YAML or TOML) overlaid by command-line flags.

Validated up front with the suite JSON Schema, so a typo in a CI config fails the job in the first
second with the field named, not after an hour of generation.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
from jsonschema.exceptions import best_match

from pytest_qtests.store.cache import DEFAULT_CACHE_DIR
from pytest_qtests.gate.expectations import Expectations, build_expectations
from pytest_qtests.evaluate.continuation import extended_cap
from pytest_qtests.store.fingerprint import mismatch_field_names
from pytest_qtests.gate.checks import Tolerance, parse_fail_on, parse_fail_on_mapping, parse_gate_mode
from pytest_qtests.evaluate.parity import parse_parity
from pytest_qtests.records import QtestsError, SamplingParams, VariantSpec
from pytest_qtests.engines.sampling import sampling_preset
from pytest_qtests.tasks.registry import task_spec_name
from pytest_qtests.variants import check_unique_labels, parse_variant

DEFAULT_FAIL_ON = "accuracy:-2pp,truncation:+5pp,length:1.25x,degenerate:+2pp"
DEFAULT_MAX_TOKENS = 2048
DEFAULT_CANARY = 16


@dataclass
class RunConfig:
    reference: VariantSpec | None
    models: list[VariantSpec]
    tasks: list[str]
    backend: str = "transformers"
    engine_args: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    base_urls: list[str] = field(default_factory=list)
    replay: dict[str, str] = field(default_factory=dict)
    tokenizer: str | None = None  # replay: counts lengths the files do not give
    sampling: SamplingParams = field(default_factory=SamplingParams)
    limit: int | None = None
    repeats: int = 1
    thinking: bool = True
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    gate_mode: str = "evidence-of-harm"
    alpha: float = 0.05
    policies: list[str] = field(default_factory=list)
    canary: int = DEFAULT_CANARY
    parity: tuple[str, str] | None = None  # (engine under test, engine it is held to)
    baseline: str | None = None
    baseline_dir: Path = Path("baselines")
    save_baseline: bool = False
    allow_mismatch: list[str] = field(default_factory=list)
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    report_dir: Path | None = None
    batch_size: int = 64
    expectations: Expectations = field(default_factory=Expectations)
    extend_truncated: float | None = None  # continue truncated samples to this factor x the cap


def read_suite_file(path: Path) -> dict[str, Any]:
    """Parse and validate a suite file; errors name the file and the offending field."""
    if not path.is_file():
        raise QtestsError(f"suite file {path} does not exist: check --qt-config")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise QtestsError(f"suite file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise QtestsError(f"suite file {path} is not valid {path.suffix[1:].upper()}: {error}; fix the syntax there") from None
    except Exception as error:  # yaml.YAMLError and friends
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QtestsError(f"suite file {path} is not valid YAML: {first}; fix the syntax there") from None
    schema = json.loads(resources.files(__package__).joinpath("schemas/suite.schema.json").read_text())
    problem = best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if problem is not None:
        where = ".".join(str(p) for p in problem.absolute_path) or "(top level)"
        raise QtestsError(f"suite file {path}: {where}: {problem.message}")
    return data


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def parse_engine_args(pairs: list[str]) -> dict[str, str]:
    """``key=value`` strings to a dict; the vLLM backend types the values (numbers, bools, JSON)."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise QtestsError(f"--engine-arg {pair!r} must be KEY=VALUE, e.g. --engine-arg tensor_parallel_size=2")
        parsed[key.strip()] = raw.strip()
    return parsed


def build_config(options: Mapping[str, Any]) -> RunConfig:
    """Merge flags over the suite file. ``options`` holds the plugin's option values (None = not given)."""
    suite_path = options.get("qt_config")
    suite = read_suite_file(Path(suite_path)) if suite_path else {}
    base = Path(suite_path).resolve().parent if suite_path else Path.cwd()
    trusted = set(suite.get("trust_remote_code", [])) | set(options.get("qt_trust_remote_code") or [])

    def spec(text: str, where: Path | None) -> VariantSpec:
        parsed = parse_variant(text, where)
        return VariantSpec(parsed.label, parsed.source, parsed.revision, parsed.label in trusted)

    reference_text = options.get("qt_reference") or suite.get("reference")
    reference = spec(reference_text, None if options.get("qt_reference") else base) if reference_text else None
    model_texts = options.get("qt_models") or []
    models = [spec(t, None) for t in model_texts] or [spec(t, base) for t in suite.get("models", [])]
    if not models and reference is None:
        raise QtestsError("no model to test: pass --model [LABEL=]PATH_OR_HUB_ID (or --qt-config SUITE_FILE)")
    check_unique_labels(([reference] if reference else []) + models)

    tasks_text = options.get("qt_tasks")
    tasks = [t.strip() for t in tasks_text.split(",") if t.strip()] if tasks_text else suite.get("tasks", ["gsm8k"])
    if not tasks:
        raise QtestsError("--tasks is empty: name at least one task, e.g. --tasks gsm8k")

    max_tokens = _first(options.get("qt_max_tokens"), suite.get("max_tokens"), DEFAULT_MAX_TOKENS)
    limit = _first(options.get("qt_limit"), suite.get("limit"))
    repeats = _first(options.get("qt_repeats"), suite.get("repeats"), 1)
    batch_size = _first(options.get("qt_batch_size"), suite.get("batch_size"), 64)
    for name, value in (("--max-tokens", max_tokens), ("--limit", limit), ("--repeats", repeats),
                        ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise QtestsError(f"{name} must be a positive integer, got {value}: pass {name} N with N >= 1")
    seed = _first(options.get("qt_seed"), suite.get("seed"), 0)
    preset = _first(options.get("qt_sampling"), suite.get("sampling"), "qwen-thinking")
    sampling = sampling_preset(preset, max_tokens=max_tokens, seed=seed)
    temperature = _first(options.get("qt_temperature"), suite.get("temperature"))
    if temperature is not None:
        sampling = SamplingParams(temperature, sampling.top_p, sampling.top_k, sampling.min_p, max_tokens, seed)

    canary = _first(options.get("qt_canary"), suite.get("canary"), DEFAULT_CANARY)
    if canary < 0:
        raise QtestsError(f"--canary must be 0 (off) or a positive number of items, got {canary}")
    if temperature is not None and temperature < 0:
        raise QtestsError(f"--temperature must be 0 (greedy) or more, got {temperature:g}")
    alpha = _first(options.get("qt_alpha"), suite.get("alpha"), 0.05)
    if not 0 < alpha < 0.5:
        raise QtestsError(f"--alpha must lie between 0 and 0.5 (a false-alarm rate such as 0.05), got {alpha:g}")
    untrusted = sorted(trusted - {v.label for v in ([reference] if reference else []) + models})
    if untrusted:
        raise QtestsError(f"--trust-remote-code names no model of this run: {', '.join(untrusted)}; "
                          "pass the LABEL of a --model or --reference")
    allow_mismatch = [n.strip() for a in options.get("qt_allow_mismatch") or [] for n in a.split(",") if n.strip()]
    unknown_fields = sorted(set(allow_mismatch) - set(mismatch_field_names()))
    if unknown_fields:
        raise QtestsError(f"unknown --allow-mismatch field {', '.join(unknown_fields)}: "
                          f"choose from {', '.join(mismatch_field_names())}")

    tolerances = parse_fail_on(DEFAULT_FAIL_ON)
    if suite.get("fail_on"):
        tolerances.update(parse_fail_on_mapping(suite["fail_on"], source=f"{suite_path}: fail_on"))
    if options.get("qt_fail_on"):
        tolerances.update(parse_fail_on(options["qt_fail_on"]))

    baseline_dir = options.get("qt_baseline_dir") or (str(base / suite["baseline_dir"]) if "baseline_dir" in suite else "baselines")
    cache_dir = None if options.get("qt_no_cache") else Path(options.get("qt_cache_dir") or DEFAULT_CACHE_DIR)
    engine_args = dict(suite.get("engine_args", {}))
    engine_args.update(parse_engine_args(options.get("qt_engine_args") or []))
    replay = {label: str(base / path) for label, path in suite.get("replay", {}).items()}
    replay.update(dict(_replay_pair(p) for p in options.get("qt_replay") or []))
    expectations = build_expectations(
        suite.get("expect"), f"{suite_path}: expect", options.get("qt_expect") or [], options.get("qt_expect_rtol"),
        tasks=[task_spec_name(t) for t in tasks], suite_tasks=[task_spec_name(t) for t in suite.get("tasks", [])],
        labels=[v.label for v in ([reference] if reference else []) + models],
        models_from_suite=not model_texts and not options.get("qt_reference"),
    )
    extend_truncated = _first(options.get("qt_extend_truncated"), suite.get("extend_truncated"))
    backend = options.get("qt_backend") or suite.get("backend", "transformers")
    if extend_truncated is not None:
        extended_cap(max_tokens, extend_truncated)  # validates the factor
        if backend == "replay":
            raise QtestsError("--extend-truncated needs an engine to continue the truncated outputs; the replay "
                              "backend only scores stored ones: drop it, or use --backend transformers/vllm/openai")
    return RunConfig(
        reference=reference,
        models=models,
        tasks=tasks,
        backend=backend,
        engine_args=engine_args,
        dtype=options.get("qt_dtype") or suite.get("dtype", "auto"),
        base_urls=options.get("qt_base_urls") or suite.get("base_urls", []),
        replay=replay,
        tokenizer=options.get("qt_tokenizer"),
        sampling=sampling,
        limit=limit,
        repeats=repeats,
        thinking=(_first(options.get("qt_thinking"), suite.get("thinking"), "on") == "on"),
        tolerances=tolerances,
        gate_mode=parse_gate_mode(_first(options.get("qt_gate_mode"), suite.get("gate_mode"), "evidence-of-harm")),
        alpha=alpha,
        policies=options.get("qt_policies") or suite.get("policies", []),
        canary=canary,
        parity=parse_parity(_first(options.get("qt_parity"), suite.get("parity"))),
        baseline=options.get("qt_baseline") or suite.get("baseline"),
        baseline_dir=Path(baseline_dir),
        save_baseline=bool(options.get("qt_save_baseline")),
        allow_mismatch=allow_mismatch,
        cache_dir=cache_dir,
        report_dir=Path(options["qt_report"]) if options.get("qt_report") else None,
        batch_size=batch_size,
        expectations=expectations,
        extend_truncated=extend_truncated,
    )


def _replay_pair(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise QtestsError(f"--replay {text!r} must be LABEL=OUTPUTS.jsonl")
    return label, path
