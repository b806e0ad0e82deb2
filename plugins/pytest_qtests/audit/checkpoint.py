"""Checkpoint audit: which layers a checkpoint really quantized, and what it really weighs.

A "4-bit" label can hide a checkpoint that keeps every attention layer in BF16 and saves almost
nothing over FP8, or one that quantized the fragile MoE shared expert. ``audit`` reads the configs
and safetensors headers only (never weight data), groups tensors into modules, classifies each
module (attention, linear attention, experts, shared expert, router, ...), reads its stored format
off its tensors, and cross-checks that against what the quantization config claims. Export defects
(``defects.py``) additionally read the few floats of each per-tensor scale.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_qtests.audit.defects import SCALAR_SCALES, Finding, find_defects
from pytest_qtests.audit.formats import QuantConfig, parse_quant_config
from pytest_qtests.audit.headers import TensorHeader, read_headers
from pytest_qtests.audit.storage import describe_storage, is_linear_module, is_quantized_format, split_role

# Module classes, in report order.
EMBEDDINGS, LM_HEAD, SELF_ATTN, LINEAR_ATTN = "embeddings", "lm_head", "self_attn", "linear_attn"
DENSE_MLP, ROUTED_EXPERTS, SHARED_EXPERT = "dense_mlp", "routed_experts", "shared_expert"
SHARED_EXPERT_GATE, ROUTER, VISION, MTP, NORM, OTHER = (
    "shared_expert_gate", "router", "vision", "mtp", "norm", "other")
MODULE_CLASSES: tuple[str, ...] = (
    EMBEDDINGS, LM_HEAD, SELF_ATTN, LINEAR_ATTN, DENSE_MLP, ROUTED_EXPERTS, SHARED_EXPERT,
    SHARED_EXPERT_GATE, ROUTER, VISION, MTP, NORM, OTHER,
)

# First match wins; paths are matched by dotted components, so any prefix (``model.``,
# ``model.language_model.`` of Qwen3.5 multimodal checkpoints) classifies the same way.
_CLASS_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern)) for name, pattern in (
        (MTP, r"(^|\.)mtp(\.|$)"),
        (VISION, r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|multi_modal_projector|mm_projector)(\.|$)"),
        (LM_HEAD, r"(^|\.)lm_head$"),
        (EMBEDDINGS, r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings)$"),
        (NORM, r"(^|\.)[^.]*norm[^.]*$"),
        (SHARED_EXPERT_GATE, r"(^|\.)shared_expert_gate$"),
        (SHARED_EXPERT, r"(^|\.)(shared_expert|shared_experts|shared_mlp)\."),
        (ROUTED_EXPERTS, r"(^|\.)experts(\.|$)"),
        (ROUTER, r"(^|\.)((mlp|block_sparse_moe|moe)\.gate|router)$"),
        (LINEAR_ATTN, r"(^|\.)linear_attn(\.|$)"),
        (SELF_ATTN, r"(^|\.)(self_attn|attention|attn)(\.|$)"),
        (DENSE_MLP, r"(^|\.)(mlp|feed_forward|ffn)(\.|$)"),
    )
)


def classify(module: str) -> str:
    """The class of one module path (``mlp.gate`` is the router; ``mlp.gate_proj`` is dense MLP)."""
    for name, pattern in _CLASS_RULES:
        if pattern.search(module):
            return name
    return OTHER


@dataclass(frozen=True)
class ModuleAudit:
    """One module: its class, how it is stored, and what the config expected."""

    name: str
    module_class: str
    format: str
    bits: int | None
    group_size: int | None
    granularity: str
    params: int
    nbytes: int
    is_linear: bool
    tensors: tuple[str, ...]
    expected: str | None
    expected_reason: str | None
    note: str | None = None

    @property
    def quantized(self) -> bool:
        return is_quantized_format(self.format)


@dataclass(frozen=True)
class Disagreement:
    """A module whose stored format contradicts the quantization config."""

    module: str
    config_says: str
    reason: str
    stored_as: str

    @property
    def message(self) -> str:
        return f"{self.module}: config says {self.config_says} ({self.reason}) but it is stored as {self.stored_as}"


@dataclass(frozen=True)
class ClassSummary:
    """Totals of one module class. ``formats`` maps format -> module count (largest first) over the
    class's linear modules; params and bytes cover every module of the class."""

    module_class: str
    modules: int
    formats: dict[str, int]
    bits: tuple[int, ...]
    granularities: tuple[str, ...]
    params: int
    nbytes: int

    @property
    def format(self) -> str:
        if len(self.formats) == 1:
            return next(iter(self.formats))
        return " + ".join(f"{fmt} ({count})" for fmt, count in self.formats.items())

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.params if self.params else 0.0


@dataclass
class AuditReport:
    """The whole audit. ``footprint_bytes`` is the sum of header-declared tensor sizes, exactly."""

    source: str
    architecture: str
    quant_method: str
    quant_summary: str
    shards: int
    modules: list[ModuleAudit]
    classes: list[ClassSummary]
    disagreements: list[Disagreement]
    footprint_bytes: int
    params: int
    notes: list[str] = field(default_factory=list)
    defects: list[Finding] = field(default_factory=list)

    @property
    def bf16_bytes(self) -> int:
        """What the same parameters would weigh all in BF16."""
        return 2 * self.params

    @property
    def bits_per_param(self) -> float:
        return 8 * self.footprint_bytes / self.params if self.params else 0.0

    @property
    def relative_to_bf16(self) -> float:
        return self.footprint_bytes / self.bf16_bytes if self.params else 0.0

    def modules_in(self, *classes: str) -> list[ModuleAudit]:
        return [m for m in self.modules if m.module_class in classes]

    def class_summary(self, module_class: str) -> ClassSummary | None:
        return next((c for c in self.classes if c.module_class == module_class), None)

    def to_dict(self, with_modules: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source, "architecture": self.architecture, "quant_method": self.quant_method,
            "quant_summary": self.quant_summary, "shards": self.shards,
            "footprint_bytes": self.footprint_bytes, "params": self.params, "bf16_bytes": self.bf16_bytes,
            "bits_per_param": self.bits_per_param, "relative_to_bf16": self.relative_to_bf16,
            "classes": [
                {**asdict(c), "format": c.format, "bits_per_param": c.bits_per_param} for c in self.classes
            ],
            "disagreements": [{**asdict(d), "message": d.message} for d in self.disagreements],
            "notes": self.notes,
            "defects": [finding.to_dict() for finding in self.defects],
        }
        if with_modules:
            data["modules"] = [{**asdict(m), "quantized": m.quantized} for m in self.modules]
        return data


def audit(checkpoint: str | Path, revision: str | None = None) -> AuditReport:
    """Audit a local checkpoint directory or a hub id from its configs and safetensors headers."""
    headers = read_headers(checkpoint, revision)
    grouped: dict[str, dict[str, TensorHeader]] = defaultdict(dict)
    for tensor in headers.tensors:
        module, role = split_role(tensor.name)
        grouped[module][role] = tensor
    classes = {name: classify(name) for name in grouped}
    linear = {
        name: is_linear_module(roles, name.rsplit(".", 1)[-1], classes[name] == ROUTED_EXPERTS)
        for name, roles in grouped.items()
    }
    config = parse_quant_config(headers.configs, frozenset(n for n, is_lin in linear.items() if is_lin))
    modules = [_audit_module(name, roles, classes[name], linear[name], config) for name, roles in grouped.items()]
    modules.sort(key=lambda m: m.name)
    notes = list(config.notes) + _storage_notes(modules)
    disagreements = _cross_check(modules)
    local = Path(headers.source).is_dir()
    if not local and any(SCALAR_SCALES & set(m.tensors) for m in modules):
        notes.append("scale values not read (hub checkpoint: headers only); audit a local copy to check them")
    return AuditReport(
        source=headers.source,
        architecture=_architecture(headers.configs.get("config.json", {})),
        quant_method=config.method,
        quant_summary=config.summary,
        shards=len(headers.shards),
        modules=modules,
        classes=_summarize(modules),
        disagreements=disagreements,
        footprint_bytes=sum(t.nbytes for t in headers.tensors),
        params=sum(m.params for m in modules),
        notes=notes,
        defects=find_defects(headers, modules, disagreements, local),
    )


def _audit_module(
    name: str, roles: dict[str, TensorHeader], module_class: str, is_linear: bool, config: QuantConfig
) -> ModuleAudit:
    expected = config.expect(name, is_linear)
    storage = describe_storage(roles, expected)
    return ModuleAudit(
        name=name,
        module_class=module_class,
        format=storage.format,
        bits=storage.bits,
        group_size=storage.group_size,
        granularity=storage.granularity,
        params=storage.params,
        nbytes=sum(t.nbytes for t in roles.values()),
        is_linear=is_linear,
        tensors=tuple(sorted(roles)),
        expected=None if expected is None else expected.format,
        expected_reason=None if expected is None else expected.reason,
        note=storage.note,
    )


def _storage_notes(modules: list[ModuleAudit]) -> list[str]:
    """One line per distinct storage problem, naming the first module and how many share it."""
    by_note: dict[str, list[str]] = defaultdict(list)
    for module in modules:
        if module.note:
            by_note[module.note].append(module.name)
    return [f"{note}: {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            for note, names in by_note.items()]


def _cross_check(modules: list[ModuleAudit]) -> list[Disagreement]:
    """Both directions: quantized in the config but stored 16-bit, and stored quantized against the
    config; plus a quantized format different from the one configured."""
    found = []
    for module in modules:
        if module.expected is None or module.format == "none":
            continue
        expects_quantized = module.expected != "16bit"
        if expects_quantized != module.quantized or (expects_quantized and module.expected != module.format):
            found.append(Disagreement(module.name, module.expected, module.expected_reason or "", module.format))
    return found


def _summarize(modules: list[ModuleAudit]) -> list[ClassSummary]:
    by_class: dict[str, list[ModuleAudit]] = defaultdict(list)
    for module in modules:
        by_class[module.module_class].append(module)
    summaries = []
    for name in MODULE_CLASSES:
        members = by_class.get(name)
        if not members:
            continue
        # Formats describe the linear modules (what quantization acts on) where the class has any,
        # so linear attention's conv1d and A_log do not read as "fp32 linear attention".
        weighed = [m for m in members if m.is_linear] or [m for m in members if m.format != "none"]
        counts: dict[str, int] = defaultdict(int)
        for module in weighed:
            counts[module.format] += 1
        formats = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        summaries.append(ClassSummary(
            module_class=name,
            modules=len(members),
            formats=formats,
            bits=tuple(sorted({m.bits for m in weighed if m.bits})),
            granularities=tuple(sorted({m.granularity for m in weighed if m.granularity})),
            params=sum(m.params for m in members),
            nbytes=sum(m.nbytes for m in members),
        ))
    return summaries


def _architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    return ",".join(architectures) or str(config.get("model_type", "unknown"))
