"""What each quantization config says about each module, one parser per on-disk format.

The audit compares these expectations with the tensors actually stored, so each parser follows the
matching rules of the engines that load the format (auto-round's loader, GPTQModel/vLLM for
``dynamic``, compressed-tensors' ``re:`` targets, transformers' ``modules_to_not_convert``, vLLM's
ModelOpt exclusion). A config the audit does not understand still yields an audit: formats are then
read from the tensors alone, with a note saying so.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_qtests.records import QtestsError

UNQUANTIZED = "16bit"  # the format name of a module stored as a float of 16 bits or more

# A module path inside the text decoder's repeated blocks; group 1 is the path relative to the block.
TEXT_BLOCK = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?(?:layers|h|blocks)\.\d+\.(.+)$")


@dataclass(frozen=True)
class ConfiguredStorage:
    """How the config says one module is stored; ``reason`` names the config entry that decided it."""

    quantized: bool
    format: str
    bits: int | None
    group_size: int | None
    reason: str
    block_size: tuple[int, ...] | None = None


class QuantConfig(Protocol):
    method: str
    summary: str
    notes: tuple[str, ...]

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        """The config's verdict for one module; None where the config says nothing about it."""


def _unquantized(reason: str) -> ConfiguredStorage:
    return ConfiguredStorage(False, UNQUANTIZED, None, None, reason)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def _format_name(data_type: str, bits: int) -> str:
    """auto-round/GPTQ data types to the audit's format names."""
    if bits >= 16:
        return UNQUANTIZED
    kind = data_type.lower().replace("_", "")
    if kind.startswith("nvfp"):
        return "nvfp4"
    if kind.startswith("mxfp"):
        return f"mxfp{bits}"
    if kind.startswith("fp") or kind.startswith("float"):
        return f"fp{bits}"
    return f"int{bits}"


@dataclass(frozen=True)
class PlainConfig:
    """No quantization config: every module is expected in its stored float dtype."""

    method: str = "none"
    summary: str = "no quantization config (plain checkpoint)"
    notes: tuple[str, ...] = ()

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        return _unquantized("no quantization config")


@dataclass(frozen=True)
class UnknownConfig:
    """A quant_method the audit does not parse: no expectations, formats come from tensors only."""

    method: str
    summary: str
    notes: tuple[str, ...]

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        return None


@dataclass(frozen=True)
class AutoRoundConfig:
    """``quant_method: auto-round``: global scheme, quantized blocks, per-layer ``extra_config``.

    As auto-round's loader does: keys naming an existing module apply to it exactly; other keys are
    regexes (``re.search``), the first matching one wins; modules outside ``block_name_to_quantize``
    stay 16-bit unless an ``extra_config`` entry quantizes them.
    """

    method: str
    summary: str
    notes: tuple[str, ...]
    bits: int
    group_size: int | None
    data_type: str
    blocks: tuple[str, ...]
    exact: dict[str, dict[str, Any]]
    patterns: tuple[tuple[re.Pattern[str], str, dict[str, Any]], ...]

    @classmethod
    def parse(cls, config: dict[str, Any], module_names: frozenset[str]) -> AutoRoundConfig:
        bits = int(config.get("bits", 4))
        group_size = _int_or_none(config.get("group_size"))
        data_type = str(config.get("data_type", "int"))
        blocks = config.get("block_name_to_quantize") or config.get("to_quant_block_names") or ()
        if isinstance(blocks, str):
            blocks = [b.strip() for b in blocks.split(",") if b.strip()]
        flat_blocks = tuple(_flatten(blocks))
        extra = config.get("extra_config") or {}
        exact = {k: v for k, v in extra.items() if k in module_names}
        patterns = tuple((_compile(k, "extra_config"), k, v) for k, v in extra.items() if k not in module_names)
        packing = config.get("packing_format", "auto_round")
        summary = f"auto-round {_format_name(data_type, bits)} g{group_size or '-'} (packing {packing})"
        return cls("auto-round", summary, (), bits, group_size, data_type, flat_blocks, exact, patterns)

    def _in_blocks(self, module: str) -> bool:
        if self.blocks:
            return any(module.startswith(block + ".") for block in self.blocks)
        return TEXT_BLOCK.match(module) is not None

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        if not is_linear:  # auto-round quantizes linear layers only; its regexes skip the rest
            return None
        override, reason = self.exact.get(module), f'extra_config["{module}"]'
        if override is None:
            for pattern, key, value in self.patterns:
                if pattern.search(module):
                    override, reason = value, f'extra_config["{key}"]'
                    break
        if override is None and not self._in_blocks(module):
            return _unquantized("outside block_name_to_quantize")
        override = override or {}
        bits = int(override.get("bits", self.bits))
        data_type = str(override.get("data_type", self.data_type))
        fmt = _format_name(data_type, bits)
        if fmt == UNQUANTIZED:
            return _unquantized(reason)
        group = _int_or_none(override.get("group_size", self.group_size))
        return ConfiguredStorage(True, fmt, bits, group, reason if override else "global scheme")


@dataclass(frozen=True)
class GptqConfig:
    """``quant_method: gptq``: ``modules_in_block_to_quantize`` and ``dynamic`` rules.

    ``dynamic`` keys are regexes matched with ``re.match`` (GPTQModel and vLLM); ``-:`` skips the
    module, ``+:`` (or no prefix) overrides bits/group_size. Only text-decoder blocks are quantized,
    plus ``lm_head`` when ``lm_head: true``.
    """

    method: str
    summary: str
    notes: tuple[str, ...]
    bits: int
    group_size: int | None
    in_block: frozenset[str]
    dynamic: tuple[tuple[re.Pattern[str], str, bool, dict[str, Any]], ...]
    lm_head: bool

    @classmethod
    def parse(cls, config: dict[str, Any]) -> GptqConfig:
        bits = int(config.get("bits", 4))
        group_size = _int_or_none(config.get("group_size"))
        in_block = frozenset(_flatten(config.get("modules_in_block_to_quantize") or []))
        rules = []
        for key, value in (config.get("dynamic") or {}).items():
            skip = key.startswith("-:")
            pattern = key[2:] if key[:2] in ("-:", "+:") else key
            rules.append((_compile(pattern, "dynamic"), key, skip, value or {}))
        summary = f"gptq int{bits} g{group_size or '-'}" + (" desc_act" if config.get("desc_act") else "")
        return cls("gptq", summary, (), bits, group_size, in_block, tuple(rules), bool(config.get("lm_head")))

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        if not is_linear:
            return None
        block = TEXT_BLOCK.match(module)
        is_head = module.rsplit(".", 1)[-1] == "lm_head"
        if block is None and not (is_head and self.lm_head):
            return _unquantized("outside the quantized decoder blocks")
        if block is not None and self.in_block and block.group(1) not in self.in_block:
            return _unquantized("not in modules_in_block_to_quantize")
        for pattern, key, skip, override in self.dynamic:
            if pattern.match(module):
                if skip:
                    return _unquantized(f'dynamic["{key}"]')
                bits = int(override.get("bits", self.bits))
                group = _int_or_none(override.get("group_size", self.group_size))
                return ConfiguredStorage(True, f"int{bits}", bits, group, f'dynamic["{key}"]')
        return ConfiguredStorage(True, f"int{self.bits}", self.bits, self.group_size, "global scheme")


@dataclass(frozen=True)
class CompressedTensorsConfig:
    """``quant_method: compressed-tensors``: ``config_groups`` targets and the ``ignore`` list.

    Targets and ignore entries are exact module names, ``re:`` regexes (``re.match``) or class
    names; from headers alone ``Linear`` (any linear module) and ``Embedding`` can be resolved.
    The first group whose targets match decides; ``mixed-precision`` takes each group's ``format``.
    """

    method: str
    summary: str
    notes: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...], ConfiguredStorage], ...]
    ignore: tuple[str, ...]

    @classmethod
    def parse(cls, config: dict[str, Any]) -> CompressedTensorsConfig:
        top_format = config.get("format")
        groups, notes = [], []
        for name, group in (config.get("config_groups") or {}).items():
            weights = group.get("weights")
            if not weights:
                continue
            fmt = _ct_format(weights, group.get("format") or top_format)
            group_size = _int_or_none(weights.get("group_size"))
            bits = int(weights.get("num_bits", 0)) or None
            expectation = ConfiguredStorage(True, fmt, bits, group_size, name, _block(weights.get("block_structure")))
            targets = tuple(group.get("targets") or ())
            notes += [f"target class {t!r} of {name} cannot be resolved from headers" for t in _odd(targets)]
            groups.append((name, targets, expectation))
        ignore = tuple(config.get("ignore") or ())
        formats = "+".join(sorted({g[2].format for g in groups})) or "none"
        summary = f"compressed-tensors {formats} ({top_format})"
        return cls("compressed-tensors", summary, tuple(notes), tuple(groups), ignore)

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        for entry in self.ignore:
            if _ct_match(entry, module, is_linear):
                return _unquantized(f'ignore["{entry}"]')
        for name, targets, expectation in self.groups:
            if any(_ct_match(target, module, is_linear) for target in targets):
                return expectation
        return _unquantized("no config_groups target matches") if is_linear else None


def _ct_format(weights: dict[str, Any], group_format: str | None) -> str:
    bits = int(weights.get("num_bits", 0))
    if weights.get("type") != "float":
        return f"int{bits}"
    if bits == 4:
        return "mxfp4" if (group_format or "").startswith("mxfp4") else "nvfp4"
    return f"fp{bits}"


def _ct_match(target: str, module: str, is_linear: bool) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    if target == "Linear":
        return is_linear
    if target == "Embedding":
        return module.rsplit(".", 1)[-1] in ("embed_tokens", "wte", "word_embeddings", "tok_embeddings")
    return module == target


def _odd(targets: tuple[str, ...]) -> list[str]:
    """Class-name targets other than the two the headers can resolve."""
    return [t for t in targets if t[:1].isupper() and "." not in t and t not in ("Linear", "Embedding")]


@dataclass(frozen=True)
class Fp8Config:
    """``quant_method: fp8`` (native FP8): every linear except ``modules_to_not_convert`` and lm_head.

    Names match as substrings, as transformers does; ``weight_block_size`` gives the scale blocks.
    """

    method: str
    summary: str
    notes: tuple[str, ...]
    not_convert: tuple[str, ...]
    block_size: tuple[int, ...] | None

    @classmethod
    def parse(cls, config: dict[str, Any]) -> Fp8Config:
        block = config.get("weight_block_size")
        summary = "fp8 " + ("x".join(map(str, block)) + " blocks" if block else "per-tensor")
        return cls("fp8", summary, (), tuple(config.get("modules_to_not_convert") or ()), _block(block))

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        if not is_linear:
            return None
        for key in self.not_convert:
            if key in module:
                return _unquantized(f'modules_to_not_convert["{key}"]')
        if module.rsplit(".", 1)[-1] == "lm_head":
            return _unquantized("lm_head is never converted")
        return ConfiguredStorage(True, "fp8", 8, None, "global scheme", self.block_size)


# ModelOpt quant_algo values to (format, bits).
MODELOPT_ALGOS: dict[str, tuple[str, int]] = {
    "FP8": ("fp8", 8), "FP8_PB_WO": ("fp8", 8), "FP8_PER_CHANNEL_PER_TOKEN": ("fp8", 8),
    "MXFP8": ("mxfp8", 8), "NVFP4": ("nvfp4", 4), "NVFP4_AWQ": ("nvfp4", 4), "W4A16_NVFP4": ("nvfp4", 4),
    "INT4_AWQ": ("int4", 4), "W4A16_AWQ": ("int4", 4), "W4A8_AWQ": ("int4", 4),
    "INT8_SQ": ("int8", 8), "W8A8_SQ_PER_CHANNEL": ("int8", 8), "INT8_WO": ("int8", 8),
}


@dataclass(frozen=True)
class ModelOptConfig:
    """ModelOpt (``hf_quant_config.json``): ``quant_algo``, ``exclude_modules`` (exact, substring or
    glob, as vLLM matches them), and per-layer ``quantized_layers`` for ``MIXED_PRECISION``."""

    method: str
    summary: str
    notes: tuple[str, ...]
    algo: str
    group_size: int | None
    exclude: tuple[str, ...]
    layers: dict[str, dict[str, Any]]

    @classmethod
    def parse(cls, config: dict[str, Any]) -> ModelOptConfig:
        quant = config.get("quantization", config)
        algo = str(quant.get("quant_algo") or "").upper()
        layers = quant.get("quantized_layers") or {}
        if algo not in MODELOPT_ALGOS and algo != "MIXED_PRECISION":
            raise QtestsError(f"ModelOpt quant_algo {algo or 'missing'!r} is not known; expected one of "
                              f"{', '.join(sorted(MODELOPT_ALGOS))} or MIXED_PRECISION")
        group_size = _int_or_none(quant.get("group_size"))
        exclude = tuple(quant.get("exclude_modules") or quant.get("ignore") or ())
        summary = f"modelopt {algo}" + (f" g{group_size}" if group_size else "")
        return cls("modelopt", summary, (), algo, group_size, exclude, layers)

    def expect(self, module: str, is_linear: bool) -> ConfiguredStorage | None:
        if not is_linear:
            return None
        for pattern in self.exclude:
            if pattern == module or pattern in module or fnmatch.fnmatchcase(module, pattern):
                return _unquantized(f'exclude_modules["{pattern}"]')
        if self.algo == "MIXED_PRECISION":
            entry = self.layers.get(module)
            if entry is None:
                return _unquantized("not in quantized_layers")
            algo, group, reason = str(entry.get("quant_algo", "")).upper(), entry.get("group_size"), "quantized_layers"
        else:
            algo, group, reason = self.algo, self.group_size, "quant_algo"
        if algo not in MODELOPT_ALGOS:
            raise QtestsError(f"ModelOpt layer {module} has unknown quant_algo {algo!r}")
        fmt, bits = MODELOPT_ALGOS[algo]
        return ConfiguredStorage(True, fmt, bits, _int_or_none(group), reason)


def parse_quant_config(configs: dict[str, dict[str, Any]], module_names: frozenset[str]) -> QuantConfig:
    """Pick the checkpoint's quantization config: ModelOpt's file, config.json's
    ``quantization_config``, else ``quantization_config.json``; none means a plain checkpoint."""
    if "hf_quant_config.json" in configs:
        return ModelOptConfig.parse(configs["hf_quant_config.json"])
    config = configs.get("config.json", {}).get("quantization_config") or configs.get("quantization_config.json")
    if not config:
        return PlainConfig()
    method = str(config.get("quant_method", "")).lower().replace("_", "-")
    if method in ("auto-round", "autoround", "intel/auto-round"):
        return AutoRoundConfig.parse(config, module_names)
    if method == "gptq":
        return GptqConfig.parse(config)
    if method == "compressed-tensors":
        return CompressedTensorsConfig.parse(config)
    if method == "fp8":
        return Fp8Config.parse(config)
    if method == "modelopt":
        return ModelOptConfig.parse(config)
    note = f"quant_method {method or 'missing'!r} is not parsed; formats are read from the tensors only"
    return UnknownConfig(method or "unknown", f"{method or 'unknown'} (not parsed)", (note,))


def _flatten(items: Any) -> list[str]:
    if isinstance(items, str):
        return [items]
    return [leaf for item in items for leaf in _flatten(item)]


def _block(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) and value else None


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise QtestsError(f"{where} key {pattern!r} is not a valid regex ({error}); fix the config") from None
