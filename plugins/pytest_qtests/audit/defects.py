"""Export defects: checkpoints that load without an error and still compute garbage.

The failures that reach users are silent export and loader bugs, not quantization loss: per-expert
NVFP4 weights dequantized without their ``weight_global_scale`` (huggingface/transformers#48371), a
zero global scale on an expert calibration never routed to (TensorRT-LLM#16447), an ignore list that
names the split projections a runtime fuses (vllm#40252), fused 3-D experts silently left in BF16
while the config claims FP4 (ModelOpt#2011). Each rule here turns one of them into a one-line finding
that names the module(s), what is wrong and the fix.

Only headers and configs are read, plus the data of the per-tensor scales (a handful of floats per
module): never a weight, never a block-scale matrix, so a 27B audit stays header-fast.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import statistics
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pytest_qtests.audit.headers import CheckpointHeaders, TensorHeader
from pytest_qtests.records import QtestsError

# Per-tensor scales worth reading (a few floats each): the global scales of NVFP4 (compressed-tensors:
# divide by it; ModelOpt ``weight_scale_2``: multiply by it) and per-tensor input scales.
SCALAR_SCALES: frozenset[str] = frozenset({"weight_global_scale", "input_global_scale", "weight_scale_2", "input_scale"})
MAX_SCALE_ELEMENTS = 64  # a "per-tensor" scale with more elements is not read (it is a block scale)
# A module's implied max |weight| this many times off its class's (or other classes') median: a global
# scale reset to 1.0 on the zoo's NVFP4 experts is ~9,000x off; healthy modules sit within ~3x.
OUTLIER_FACTOR = 100.0
NVFP4_RANGE = 6.0 * 448.0  # max FP4 (E2M1) x max FP8 (E4M3) block scale: max |w| = NVFP4_RANGE / global scale
# Projections a runtime fuses into one layer (vLLM's Qwen3-Next / Qwen3.5 gated delta net): fused name -> parts.
FUSED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "in_proj_qkvz": ("in_proj_qkv", "in_proj_z"),
    "in_proj_ba": ("in_proj_b", "in_proj_a"),
}
_FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BF16": "bf16"}
MAX_NAMED = 3


@dataclass(frozen=True)
class Finding:
    """One defect: ``rule`` names the check, ``modules`` every module it concerns."""

    rule: str
    modules: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "modules": list(self.modules), "message": self.message}


def find_defects(headers: CheckpointHeaders, modules: Iterable[Any], disagreements: Iterable[Any],
                 local: bool) -> list[Finding]:
    """Every export defect of one audited checkpoint (``modules``: its ModuleAudit list)."""
    modules = list(modules)
    quant = _quant_config(headers.configs)
    by_name = {t.name: t for t in headers.tensors}
    findings = _missing_tensors(modules, quant)
    if local:
        findings += _bad_scales(Path(headers.source), modules, by_name)
    findings += _ignore_lists(quant, [m.name for m in modules])
    findings += _claims(list(disagreements))
    return findings


# --- rule: tensors a format needs -----------------------------------------------------------

def _required(module: Any, quant: dict[str, Any]) -> tuple[str, ...]:
    """The tensors the module's stored layout cannot be dequantized without."""
    roles = set(module.tensors)
    w4a4 = _activations_are_4bit(quant)
    if "weight_packed" in roles:  # compressed-tensors
        if module.format == "nvfp4":
            return ("weight_packed", "weight_scale", "weight_global_scale") + (("input_global_scale",) if w4a4 else ())
        zero_points = module.format.startswith("int") and _asymmetric(quant)
        return ("weight_packed", "weight_scale") + (("weight_zero_point",) if zero_points else ())
    if "qweight" in roles:  # GPTQ / auto-round
        return ("qweight", "scales", "qzeros")
    if module.format == "nvfp4" and "weight" in roles:  # ModelOpt
        return ("weight", "weight_scale", "weight_scale_2") + (("input_scale",) if w4a4 else ())
    return ()


def _missing_tensors(modules: list[Any], quant: dict[str, Any]) -> list[Finding]:
    by_gap: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for module in modules:
        if not module.quantized:
            continue
        missing = tuple(role for role in _required(module, quant) if role not in module.tensors)
        if missing:
            by_gap[(module.format, missing)].append(module.name)
    return [Finding("missing-tensor", tuple(names),
                    f"{_names(names)}: stored {fmt} without {', '.join(missing)}, which {fmt} needs to dequantize "
                    f"(a loader then computes with the wrong scale, silently); re-export the checkpoint")
            for (fmt, missing), names in by_gap.items()]


# --- rule: per-tensor scale values ----------------------------------------------------------

def _bad_scales(directory: Path, modules: list[Any], tensors: dict[str, TensorHeader]) -> list[Finding]:
    """Zero, negative, NaN or infinite scales; global scales whose implied weight range is far off."""
    values: dict[tuple[str, str], list[float]] = {}
    for module in modules:
        for role in SCALAR_SCALES & set(module.tensors):
            header = tensors[f"{module.name}.{role}"]
            if header.numel <= MAX_SCALE_ELEMENTS:
                values[(module.name, role)] = read_small_tensor(directory, header)
    findings = []
    by_problem: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (name, role), found in values.items():
        problem = _invalid(found)
        if problem:
            by_problem[(role, problem)].append(name)
    findings += [Finding("bad-scale", tuple(names),
                         f"{_names(names)}: {role} is {problem}; it turns the layer's output into zeros or Inf/NaN "
                         "(an expert calibration never routed to?); recalibrate or re-export these modules")
                 for (role, problem), names in by_problem.items()]
    implied = {module.name: (module.module_class, NVFP4_RANGE / values[(module.name, "weight_global_scale")][0])
               for module in modules
               if module.format == "nvfp4" and len(values.get((module.name, "weight_global_scale"), ())) == 1
               and not _invalid(values[(module.name, "weight_global_scale")])}
    return findings + _range_outliers(implied)


def _invalid(values: list[float]) -> str | None:
    if any(math.isnan(v) for v in values):
        return "NaN"
    if any(math.isinf(v) for v in values):
        return "infinite"
    if any(v == 0 for v in values):
        return "zero"
    if any(v < 0 for v in values):
        return "negative"
    return None


def _range_outliers(implied: dict[str, tuple[str, float]]) -> list[Finding]:
    """NVFP4 global scales imply each module's max |weight|: flag a class whose median is far from the
    other classes' (every routed expert lost its scale) and modules far from their class (one did)."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for name, (module_class, _) in implied.items():
        by_class[module_class].append(name)
    medians = {cls: statistics.median(implied[n][1] for n in names) for cls, names in by_class.items()}
    findings = []
    for cls, names in by_class.items():
        others = [m for other, m in medians.items() if other != cls]
        if others and _far(medians[cls], statistics.median(others)):
            findings.append(Finding(
                "scale-outlier", tuple(names),
                f"{_names(names)}: weight_global_scale implies max |weight| {medians[cls]:.3g} for every {cls} module "
                f"vs {statistics.median(others):.3g} for the checkpoint's other layers (a reset or dropped global "
                "scale); re-export these modules with their calibrated global scales"))
            continue
        outliers = [n for n in names if _far(implied[n][1], medians[cls])]
        if outliers:
            worst = max(outliers, key=lambda n: max(implied[n][1] / medians[cls], medians[cls] / implied[n][1]))
            findings.append(Finding(
                "scale-outlier", tuple(outliers),
                f"{_names(outliers)}: weight_global_scale implies max |weight| {implied[worst][1]:.3g} vs "
                f"{medians[cls]:.3g} for the other {cls} modules (a reset or dropped global scale); "
                "re-export these modules with their calibrated global scales"))
    return findings


def _far(value: float, reference: float) -> bool:
    return reference > 0 and not (1 / OUTLIER_FACTOR <= value / reference <= OUTLIER_FACTOR)


def read_small_tensor(directory: Path, header: TensorHeader) -> list[float]:
    """The values of one small float tensor, read from its byte range (no framework import)."""
    import numpy as np

    path = directory / header.shard
    where = f"{path}: {header.name}"
    dtype = _FLOAT_DTYPES.get(header.dtype)
    if dtype is None:
        raise QtestsError(f"{where} is stored as {header.dtype}, but a scale must be a float tensor "
                          "(F32, F16 or BF16); re-export the checkpoint")
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            begin, end = json.loads(handle.read(length))[header.name]["data_offsets"]
            handle.seek(8 + length + begin)
            raw = handle.read(end - begin)
    except (OSError, ValueError, KeyError, struct.error) as error:
        raise QtestsError(f"cannot read the scale tensor {where} ({error}); re-download the checkpoint") from None
    if len(raw) != header.nbytes:
        raise QtestsError(f"cannot read the scale tensor {where}: {len(raw)} of {header.nbytes} bytes; "
                          "re-download the checkpoint")
    if dtype == "bf16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(float).tolist()
    return np.frombuffer(raw, dtype).astype(float).tolist()


# --- rule: ignore lists -----------------------------------------------------------------------

def _ignore_lists(quant: dict[str, Any], names: list[str]) -> list[Finding]:
    """Entries that match no module (a typo, another model's names, or the split names of a projection the
    checkpoint stores fused), and fused groups only partly ignored (a runtime cannot honour that)."""
    entries, key, match = _ignore_entries(quant)
    findings = []
    for entry in entries:
        if any(match(entry, name) for name in names):
            continue
        fused = _fused_for_split(entry, names)
        if fused:
            findings.append(Finding("ignore-split-names", (fused,),
                                    f'{key} entry "{entry}" names a split projection, but the checkpoint stores it '
                                    f"fused as {fused} (and vLLM runs it fused): the entry matches nothing and the "
                                    f"layer is quantized anyway; name {fused} instead"))
        else:
            findings.append(Finding("ignore-unmatched", (),
                                    f'{key} entry "{entry}" matches no module of the checkpoint; fix the name '
                                    "(this model's module paths) or remove it"))
    ignored = {name for name in names if any(match(entry, name) for entry in entries)}
    for prefix, fused, parts in _split_groups(names):
        hit = [p for p in parts if f"{prefix}.{p}" in ignored]
        if hit and len(hit) < len(parts):
            rest = [p for p in parts if p not in hit]
            findings.append(Finding("ignore-partial-fused", (f"{prefix}.{hit[0]}",),
                                    f"{key} keeps {prefix}.{'/'.join(hit)} unquantized but not {'/'.join(rest)}, "
                                    f"which vLLM fuses with it into one {fused} layer (one format per layer): "
                                    f"list all of {', '.join(parts)} or none"))
    return findings


def _ignore_entries(quant: dict[str, Any]):
    """(entries, config key, matcher) of the checkpoint's skip list, matched as its loaders match it."""
    method = str(quant.get("quant_method", "")).lower()
    if method == "modelopt":
        entries = quant.get("exclude_modules") or quant.get("ignore") or []
        return entries, "exclude_modules", lambda e, n: e == n or e in n or fnmatch.fnmatchcase(n, e)
    if method == "compressed-tensors":
        return quant.get("ignore") or [], "ignore", _ct_match
    if method == "fp8":
        return quant.get("modules_to_not_convert") or [], "modules_to_not_convert", lambda e, n: e in n
    return [], "", lambda e, n: False


def _ct_match(entry: str, name: str) -> bool:
    if entry.startswith("re:"):
        try:
            return re.match(entry[3:], name) is not None
        except re.error as error:
            raise QtestsError(f"ignore entry {entry!r} is not a valid regex ({error}); fix the config") from None
    return entry == name or entry in ("Linear", "Embedding")


def _fused_for_split(entry: str, names: list[str]) -> str | None:
    """The fused module an unmatched entry's split name belongs to, when the checkpoint has it."""
    body = entry[3:] if entry.startswith("re:") else entry
    for fused, parts in FUSED_PROJECTIONS.items():
        for part in parts:
            if re.search(rf"{part}(?![a-z_])", body):
                candidate = re.sub(rf"{part}(?![a-z_])", fused, body, count=1)
                found = [n for n in names if n == candidate or (entry.startswith("re:") and _ct_match("re:" + candidate, n))]
                if found:
                    return found[0]
    return None


def _split_groups(names: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(module prefix, fused name, parts) for every layer that stores a fusable projection split."""
    present = set(names)
    groups = []
    for name in names:
        prefix, _, last = name.rpartition(".")
        for fused, parts in FUSED_PROJECTIONS.items():
            if last == parts[0] and all(f"{prefix}.{p}" in present for p in parts):
                groups.append((prefix, fused, parts))
    return groups


# --- rule: what the config claims vs what is stored --------------------------------------------

def _claims(disagreements: list[Any]) -> list[Finding]:
    """The audit's config/tensor disagreements, grouped: a quantized claim over BF16 storage (fused 3-D
    experts the exporter skipped) or a 16-bit claim over quantized storage (a loader that believes the
    config reads packed bytes as weights)."""
    by_kind: dict[tuple[str, str], list[str]] = defaultdict(list)
    for d in disagreements:
        by_kind[(d.config_says, d.stored_as)].append(d.module)
    return [Finding("config-mismatch", tuple(names),
                    f"{_names(names)}: the quantization config says {says} but the tensors are {stored}; re-export "
                    "so the config describes the stored tensors (or fix the config)")
            for (says, stored), names in by_kind.items()]


# --- helpers ----------------------------------------------------------------------------------

def _quant_config(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The quantization config as ``formats.parse_quant_config`` picks it (ModelOpt's file first)."""
    if "hf_quant_config.json" in configs:
        modelopt = configs["hf_quant_config.json"]
        return {**modelopt.get("quantization", modelopt), "quant_method": "modelopt"}
    return configs.get("config.json", {}).get("quantization_config") or configs.get("quantization_config.json") or {}


def _activations_are_4bit(quant: dict[str, Any]) -> bool:
    """W4A4: compressed-tensors groups with 4-bit input activations, or ModelOpt NVFP4 (not W4A16)."""
    for group in (quant.get("config_groups") or {}).values():
        activations = group.get("input_activations") or {}
        if int(activations.get("num_bits") or 0) == 4:
            return True
    return str(quant.get("quant_algo", "")).upper() in ("NVFP4", "NVFP4_AWQ")


def _asymmetric(quant: dict[str, Any]) -> bool:
    return any((group.get("weights") or {}).get("symmetric") is False
               for group in (quant.get("config_groups") or {}).values())


def _names(names: list[str] | tuple[str, ...]) -> str:
    """A few modules by name; many as patterns with ``*`` where their indices differ
    (``model.layers.3.mlp.experts.*.up_proj``)."""
    if len(names) <= MAX_NAMED:
        return ", ".join(names)
    split = [name.split(".") for name in names]
    varying = {i for parts in split for i, part in enumerate(parts)
               if part.isdigit() and any(len(o) != len(parts) or o[i] != part for o in split)}
    patterns = list(dict.fromkeys(
        ".".join("*" if i in varying and part.isdigit() else part for i, part in enumerate(parts)) for parts in split))
    shown = patterns if len(patterns) <= MAX_NAMED else list(names[:MAX_NAMED])
    more = "" if len(patterns) <= MAX_NAMED else f" and {len(names) - MAX_NAMED} more"
    return ", ".join(shown) + more + f" ({len(names)} modules)"
