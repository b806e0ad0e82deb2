"""One run's settings: the gate's options (:class:`GateOptions`, from the command line or Python) over the
suite file (``--qt-config``, YAML or TOML), resolved into a :class:`RunConfig`.

Each gate option is declared once, as a field of :class:`GateOptions` with its flag, help and suite-file
key; :func:`add_gate_options` registers them on a pytest option group or an argparse parser alike
(pytest-benchmark's ``add_display_options(addoption)`` pattern), so the plugin and every ``qtests``
subcommand take the same flags with the same meaning. The suite file is validated up front with its
JSON Schema, so a typo in a CI config fails the job in the first second with the field named, not after
an hour of generation.
"""

from __future__ import annotations

import json
import tomllib
from argparse import BooleanOptionalAction, Namespace
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Collection, get_args, get_type_hints

import jsonschema
from jsonschema.exceptions import best_match

from pytest_qtests.store.cache import DEFAULT_CACHE_DIR
from pytest_qtests.gate.expectations import build_expectations
from pytest_qtests.evaluate.continuation import extended_cap
from pytest_qtests.store.fingerprint import mismatch_field_names
from pytest_qtests.gate.tolerances import Tolerance, parse_fail_on, parse_fail_on_mapping, parse_gate_mode
from pytest_qtests.evaluate.parity import parse_parity
from pytest_qtests.records import QtestsError, SamplingParams, VariantSpec
from pytest_qtests.settings import DEFAULT_CANARY, RunConfig
from pytest_qtests.engines.registry import BACKENDS, backend_names
from pytest_qtests.engines.sampling import sampling_preset
from pytest_qtests.tasks.registry import task_spec_name
from pytest_qtests.variants import check_unique_labels, parse_variant

DEFAULT_FAIL_ON = "accuracy:-2pp,truncation:+5pp,length:1.25x,degenerate:+2pp"
DEFAULT_MAX_TOKENS = 2048


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


def split_commas(values: Collection[Any]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: what repeated and comma-separated flags both mean."""
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def _option(flag: str, help: str, *, metavar: str | None = None, choices: Collection[str] | None = None,
            suite: bool = False, commas: bool = True) -> Any:
    """A :class:`GateOptions` field declaring its flag. ``suite``: the suite file has a key of the field's
    name. ``commas``: a list option's values split at commas (off where a value holds commas itself)."""
    return field(default=None, metadata={"flag": flag, "help": help, "metavar": metavar, "choices": choices,
                                         "suite": suite, "commas": commas})


def _switch(flag: str, help: str) -> Any:
    """A :class:`GateOptions` on/off field declaring its flag (off unless given)."""
    return field(default=False, metadata=_option(flag, help).metadata)


@dataclass(frozen=True)
class GateOptions:
    """The gate's options as the user gave them (None: not given, the suite file or the default decides).

    The same object comes from the command line (:meth:`from_namespace`) or from Python::

        GateOptions(models=["int4=./out"], reference="bf16=Qwen/Qwen3-8B", tasks=["gsm8k"])

    List fields take one string, a list, or comma-separated values alike (except ``engine_args`` and
    ``expect``, whose values hold commas of their own); :func:`build_config` resolves them against the
    suite file into a :class:`RunConfig`.
    """

    models: list[str] | None = _option(
        "--model", "variant to test: [LABEL=]PATH_OR_HUB_ID[@REVISION]", metavar="SPEC", suite=True)
    reference: str | None = _option("--reference", "BF16 reference, evaluated live in this session",
                                    metavar="SPEC", suite=True)
    suite_file: str | None = _option("--qt-config", "suite file (YAML or TOML); flags override it", metavar="FILE")
    tasks: list[str] | None = _option("--tasks", "tasks (name, or name=PATH for a local file)", metavar="TASK",
                                      suite=True)
    limit: int | None = _option("--limit", "first N items of each task", metavar="N", suite=True)
    max_tokens: int | None = _option("--max-tokens", f"output cap (default {DEFAULT_MAX_TOKENS})", metavar="N",
                                     suite=True)
    repeats: int | None = _option("--repeats", "samples per item (avg@K)", metavar="K", suite=True)
    seed: int | None = _option("--seed", "sampling seed", metavar="N", suite=True)
    thinking: str | None = _option("--thinking", "chat template thinking mode", choices=("on", "off"), suite=True)
    sampling: str | None = _option("--sampling", "qwen-thinking (default), qwen-instruct, greedy", metavar="PRESET",
                                   suite=True)
    temperature: float | None = _option("--temperature", "override the preset's temperature", metavar="T",
                                        suite=True)
    backend: str | None = _option(
        "--backend", f"engine: {', '.join(BACKENDS)} (default transformers), or one a "
        "pytest_qtests_register_backends hook adds", metavar="NAME", suite=True)
    dtype: str | None = _option(
        "--dtype", "engine dtype (default auto: checkpoint dtype; float32 on CPUs without bf16)", metavar="DTYPE",
        suite=True)
    batch_size: int | None = _option("--batch-size", "transformers generate batch size", metavar="N", suite=True)
    engine_args: list[str] | None = _option("--engine-arg", "vLLM engine argument", metavar="KEY=VALUE",
                                            suite=True, commas=False)
    base_urls: list[str] | None = _option(
        "--base-url", "OpenAI-compatible endpoint (requests are spread over them); key from OPENAI_API_KEY",
        metavar="URL", suite=True)
    replay: list[str] | None = _option("--replay", "outputs to score (replay backend)", metavar="LABEL=FILE",
                                       suite=True)
    tokenizer: str | None = _option(
        "--tokenizer", "replay: count the lengths of lines without token counts with this tokenizer (else in words)",
        metavar="PATH_OR_HUB_ID")
    trust_remote_code: list[str] | None = _option(
        "--trust-remote-code", "allow this variant's remote code (off for every variant unless named)",
        metavar="LABEL", suite=True)
    fail_on: str | None = _option("--fail-on", f"tolerances, default {DEFAULT_FAIL_ON}", metavar="RULES", suite=True)
    expect: list[str] | None = _option(
        "--expect", "stored absolute expectation, vLLM CI style, e.g. gsm8k:accuracy=0.78,rtol=0.08; "
        "replaces the paired check of that metric", metavar="[LABEL:]TASK:METRIC=VALUE", suite=True, commas=False)
    expect_rtol: float | None = _option(
        "--expect-rtol", "default relative tolerance of expectations (default 0.08, as vLLM's lm-eval tests)",
        metavar="RTOL")
    gate_mode: str | None = _option("--gate-mode", "evidence-of-harm (default) or non-inferiority", metavar="MODE",
                                    suite=True)
    alpha: float | None = _option("--alpha", "family-wise false-alarm rate per variant (default 0.05)",
                                  metavar="A", suite=True)
    policies: list[str] | None = _option(
        "--policy", "checkpoint policy: keep-shared-expert, keep-linear-attn, keep-router, keep-lm-head, "
        "keep-attn, or CLASS=FORMAT (e.g. shared_expert=bf16)", metavar="RULE", suite=True)
    canary: int | None = _option("--canary", f"canary items per variant (0 disables; default {DEFAULT_CANARY})",
                                 metavar="N", suite=True)
    parity: str | None = _option(
        "--parity", "also run each model on engines A and B (e.g. vllm,transformers) and compare greedy outputs "
        "and log-probs", metavar="A,B", suite=True)
    save_baseline: bool = _switch("--save-baseline", "store every evaluated model as a baseline")
    baseline: str | None = _option("--baseline", "stored baseline to compare with (no --reference)",
                                   metavar="NAME_OR_PATH", suite=True)
    baseline_dir: str | None = _option("--baseline-dir", "baseline store (default baselines/)", metavar="DIR",
                                       suite=True)
    allow_mismatch: list[str] | None = _option(
        "--allow-mismatch", "accept a baseline whose fingerprint differs in FIELD", metavar="FIELD")
    no_cache: bool = _switch("--no-cache", "do not read or write the generation cache")
    cache_dir: str | None = _option("--cache-dir", "generation cache (default .qtests/cache)", metavar="DIR")
    extend_truncated: float | None = _option(
        "--extend-truncated", "after the run, continue every output cut at the cap up to F x the cap "
        "(reference and variants)", metavar="F", suite=True)
    stop_early: bool | None = _option(
        "--stop-early", "decide each check as soon as an anytime-valid confidence sequence allows and stop "
        "generating a variant once its verdict is settled: its first FAIL, every check decided, or no FAIL "
        "within reach (default off: --no-stop-early)", suite=True)
    report_dir: str | None = _option(
        "--qt-report", "write results.json, summary.md, flips.jsonl and report.html here", metavar="DIR")
    no_gate: bool = _switch("--no-gate", "with your own test paths: run only them, not the standard gate suite "
                            "beside them")

    def __post_init__(self) -> None:
        """Lists in one shape: ``"a,b"``, ``["a,b"]`` and ``["a", "b"]`` mean the same, as on the command line."""
        for option in GATE_OPTIONS:
            value = getattr(self, option.field)
            if option.is_list and value is not None:
                object.__setattr__(self, option.field, option.split(value))

    @classmethod
    def from_namespace(cls, namespace: Namespace) -> GateOptions:
        """The options parsed by :func:`add_gate_options`: pytest's ``config.option`` or an argparse result.
        Options a parser did not register (``only=``) keep their defaults."""
        return cls(**{option.field: getattr(namespace, option.dest, option.default) for option in GATE_OPTIONS})


@dataclass(frozen=True)
class GateOption:
    """One row of the option table, read off a :class:`GateOptions` field: how its flag parses."""

    flag: str
    field: str
    type: type  # of the value, or of each item of a list; bool: an on/off switch
    is_list: bool  # repeatable; with ``commas``, one flag may also hold several values
    help: str
    metavar: str | None
    choices: Collection[str] | None
    suite_key: str | None  # the suite file's key for it, None when only a flag sets it
    commas: bool
    default: Any

    @property
    def dest(self) -> str:
        """The parsed value's attribute; prefixed because pytest keeps every plugin's options in one namespace."""
        return f"qt_{self.field}"

    def split(self, value: str | Collection[Any]) -> list[str]:
        items = [value] if isinstance(value, (str, Path)) else list(value)
        return split_commas(items) if self.commas else [str(item) for item in items]

    def parser_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``add_argument`` / pytest's ``addoption`` (the same for both)."""
        if self.type is bool:
            if self.default is None:  # on, off, or not given (the suite file or the default decides)
                return {"dest": self.dest, "action": BooleanOptionalAction, "default": None, "help": self.help}
            return {"dest": self.dest, "action": "store_true", "help": self.help}
        arguments: dict[str, Any] = {"dest": self.dest, "help": self.help}
        if self.is_list:
            arguments["action"] = "append"
            arguments["help"] += ("; repeatable, or comma-separated" if self.commas
                                  else "; repeatable (one value per flag: commas belong to the value)")
        elif self.type is not str:
            arguments["type"] = self.type
        if self.metavar is not None:
            arguments["metavar"] = self.metavar
        if self.choices is not None:
            arguments["choices"] = self.choices
        return arguments


def _option_table() -> tuple[GateOption, ...]:
    hints = get_type_hints(GateOptions)
    table = []
    for spec in fields(GateOptions):
        kind = next(t for t in get_args(hints[spec.name]) or (hints[spec.name],) if t is not type(None))
        is_list = getattr(kind, "__origin__", None) is list
        meta = spec.metadata
        table.append(GateOption(
            flag=meta["flag"], field=spec.name, type=get_args(kind)[0] if is_list else kind, is_list=is_list,
            help=meta["help"], metavar=meta["metavar"], choices=meta["choices"],
            suite_key=spec.name if meta["suite"] else None, commas=meta["commas"], default=spec.default))
    return tuple(table)


GATE_OPTIONS: tuple[GateOption, ...] = _option_table()


def add_gate_options(addoption: Callable[..., Any], only: Collection[str] | None = None) -> None:
    """Register the gate's options through ``addoption``: a pytest option group's ``addoption`` or an
    argparse parser's (or argument group's) ``add_argument``. ``only`` names the fields to register
    (default all), for a command where some options make no sense."""
    unknown = set(only or ()) - {option.field for option in GATE_OPTIONS}
    if unknown:
        raise ValueError(f"no gate option named {', '.join(sorted(unknown))}")
    for option in GATE_OPTIONS:
        if only is None or option.field in only:
            addoption(option.flag, **option.parser_arguments())


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


@dataclass(frozen=True)
class _Sources:
    """Where a setting comes from, in order: the flags, then the suite file (paths in it are relative to it)."""

    options: GateOptions
    suite: dict[str, Any]
    suite_path: str | None
    base: Path

    def given(self, name: str, default: Any = None) -> Any:
        return _first(getattr(self.options, name), self.suite.get(name), default)


def build_config(options: GateOptions) -> RunConfig:
    """Resolve the options over the suite file (a flag wins over the file's key of the same name) and the
    defaults, checking every value; the result names everything the run does."""
    suite_path = options.suite_file
    src = _Sources(options, read_suite_file(Path(suite_path)) if suite_path else {}, suite_path,
                   Path(suite_path).resolve().parent if suite_path else Path.cwd())
    suite, given = src.suite, src.given
    reference, models = _variants(src)
    tasks = given("tasks", ["gsm8k"])
    if not tasks:
        raise QtestsError("--tasks is empty: name at least one task, e.g. --tasks gsm8k")
    max_tokens, limit, repeats, batch_size = _counts(src)
    sampling = _sampling(src, max_tokens)
    canary = given("canary", DEFAULT_CANARY)
    if canary < 0:
        raise QtestsError(f"--canary must be 0 (off) or a positive number of items, got {canary}")
    alpha = given("alpha", 0.05)
    if not 0 < alpha < 0.5:
        raise QtestsError(f"--alpha must lie between 0 and 0.5 (a false-alarm rate such as 0.05), got {alpha:g}")
    allow_mismatch = options.allow_mismatch or []
    unknown_fields = sorted(set(allow_mismatch) - set(mismatch_field_names()))
    if unknown_fields:
        raise QtestsError(f"unknown --allow-mismatch field {', '.join(unknown_fields)}: "
                          f"choose from {', '.join(mismatch_field_names())}")

    baseline_dir = options.baseline_dir or (str(src.base / suite["baseline_dir"]) if "baseline_dir" in suite
                                            else "baselines")
    engine_args = dict(suite.get("engine_args", {}))
    engine_args.update(parse_engine_args(options.engine_args or []))
    replay = {label: str(src.base / path) for label, path in suite.get("replay", {}).items()}
    replay.update(dict(_replay_pair(p) for p in options.replay or []))
    expectations = build_expectations(
        suite.get("expect"), f"{suite_path}: expect", options.expect or [], options.expect_rtol,
        tasks=[task_spec_name(t) for t in tasks], suite_tasks=[task_spec_name(t) for t in suite.get("tasks", [])],
        labels=[v.label for v in ([reference] if reference else []) + models],
        models_from_suite=not options.models and not options.reference,
    )
    backend = _backend(src)
    return RunConfig(
        reference=reference,
        models=models,
        tasks=tasks,
        backend=backend,
        engine_args=engine_args,
        dtype=given("dtype", "auto"),
        base_urls=given("base_urls", []),
        replay=replay,
        tokenizer=options.tokenizer,
        sampling=sampling,
        limit=limit,
        repeats=repeats,
        thinking=given("thinking", "on") == "on",
        tolerances=_tolerances(src),
        gate_mode=parse_gate_mode(given("gate_mode", "evidence-of-harm")),
        alpha=alpha,
        policies=given("policies", []),
        canary=canary,
        parity=parse_parity(given("parity")),
        baseline=given("baseline"),
        baseline_dir=Path(baseline_dir),
        save_baseline=options.save_baseline,
        allow_mismatch=allow_mismatch,
        cache_dir=None if options.no_cache else Path(options.cache_dir or DEFAULT_CACHE_DIR),
        report_dir=Path(options.report_dir) if options.report_dir else None,
        batch_size=batch_size,
        expectations=expectations,
        extend_truncated=_extend_truncated(src, backend, max_tokens),
        stop_early=_stop_early(src, live_reference=reference is not None),
    )


def _variants(src: _Sources) -> tuple[VariantSpec | None, list[VariantSpec]]:
    """The reference and the models under test, labels unique and ``--trust-remote-code`` naming only them."""
    options, suite = src.options, src.suite
    trusted = set(suite.get("trust_remote_code", [])) | set(options.trust_remote_code or [])

    def spec(text: str, where: Path | None) -> VariantSpec:
        parsed = parse_variant(text, where)
        return VariantSpec(parsed.label, parsed.source, parsed.revision, parsed.label in trusted)

    # a --baseline flag is the stored stand-in for the suite's live reference (the CI path), so it replaces it
    reference_text = options.reference or (None if options.baseline else suite.get("reference"))
    reference = spec(reference_text, None if options.reference else src.base) if reference_text else None
    models = [spec(t, None) for t in options.models or []] or [spec(t, src.base) for t in suite.get("models", [])]
    if not models and reference is None:
        raise QtestsError("no model to test: pass --model [LABEL=]PATH_OR_HUB_ID (or --qt-config SUITE_FILE)")
    everyone = ([reference] if reference else []) + models
    check_unique_labels(everyone)
    untrusted = sorted(trusted - {v.label for v in everyone})
    if untrusted:
        raise QtestsError(f"--trust-remote-code names no model of this run: {', '.join(untrusted)}; "
                          "pass the LABEL of a --model or --reference")
    return reference, models


def _counts(src: _Sources) -> tuple[int, int | None, int, int]:
    """``--max-tokens``, ``--limit``, ``--repeats``, ``--batch-size``: each a positive integer where given."""
    counts = (src.given("max_tokens", DEFAULT_MAX_TOKENS), src.given("limit"), src.given("repeats", 1),
              src.given("batch_size", 64))
    for name, value in zip(("--max-tokens", "--limit", "--repeats", "--batch-size"), counts):
        if value is not None and value < 1:
            raise QtestsError(f"{name} must be a positive integer, got {value}: pass {name} N with N >= 1")
    return counts


def _sampling(src: _Sources, max_tokens: int) -> SamplingParams:
    """The sampling preset at the run's cap and seed, with ``--temperature`` over the preset's."""
    sampling = sampling_preset(src.given("sampling", "qwen-thinking"), max_tokens=max_tokens, seed=src.given("seed", 0))
    temperature = src.given("temperature")
    if temperature is None:
        return sampling
    if temperature < 0:
        raise QtestsError(f"--temperature must be 0 (greedy) or more, got {temperature:g}")
    return replace(sampling, temperature=temperature)


def _tolerances(src: _Sources) -> dict[str, Tolerance]:
    """The defaults, then the suite's ``fail_on``, then ``--fail-on``: a later one replaces a check's tolerance."""
    tolerances = parse_fail_on(DEFAULT_FAIL_ON)
    if src.suite.get("fail_on"):
        tolerances.update(parse_fail_on_mapping(src.suite["fail_on"], source=f"{src.suite_path}: fail_on"))
    if src.options.fail_on:
        tolerances.update(parse_fail_on(src.options.fail_on))
    return tolerances


def _backend(src: _Sources) -> str:
    backend = src.given("backend", "transformers")
    if backend not in backend_names():  # engines a hook registered included
        where = "--backend" if src.options.backend else f"suite file {src.suite_path}: backend"
        raise QtestsError(f"{where}: unknown backend {backend!r}: choose one of {', '.join(backend_names())}, or "
                          "add it with a pytest_qtests_register_backends hook")
    return backend


def _stop_early(src: _Sources, live_reference: bool) -> bool:
    stop_early = bool(src.given("stop_early", False))
    if stop_early and not live_reference:
        raise QtestsError("--stop-early needs a live --reference to pair each look with (a stored baseline is not "
                          "supported with it yet): add --reference or drop --stop-early")
    return stop_early


def _extend_truncated(src: _Sources, backend: str, max_tokens: int) -> float | None:
    extend_truncated = src.given("extend_truncated")
    if extend_truncated is not None:
        extended_cap(max_tokens, extend_truncated)  # validates the factor
        if backend == "replay":
            raise QtestsError("--extend-truncated needs an engine to continue the truncated outputs; the replay "
                              "backend only scores stored ones: drop it, or use --backend transformers/vllm/openai")
    return extend_truncated


def _replay_pair(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise QtestsError(f"--replay {text!r} must be LABEL=OUTPUTS.jsonl")
    return label, path
