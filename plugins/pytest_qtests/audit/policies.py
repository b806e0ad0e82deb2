"""Layer policies and the footprint claim check, evaluated on an :class:`AuditReport`.

Layer choice matters more than the label: the MoE shared expert and linear attention are fragile,
so a release can require them kept in 16-bit (``keep-shared-expert``), or state any ``CLASS=FORMAT``
rule. The footprint claim catches the opposite failure: a "4-bit" checkpoint that keeps so much in
BF16 it saves almost nothing over the next larger format (Qwen3.5-27B GPTQ-Int4 vs FP8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_qtests.audit.checkpoint import (
    DENSE_MLP, LINEAR_ATTN, LM_HEAD, MODULE_CLASSES, ROUTED_EXPERTS, ROUTER, SELF_ATTN, SHARED_EXPERT,
    AuditReport, ModuleAudit,
)
from pytest_qtests.audit.formats import UNQUANTIZED
from pytest_qtests.records import QtestsError

NAMED_POLICIES: dict[str, tuple[tuple[str, ...], str]] = {
    "keep-shared-expert": ((SHARED_EXPERT,), UNQUANTIZED),
    "keep-linear-attn": ((LINEAR_ATTN,), UNQUANTIZED),
    "keep-router": ((ROUTER,), UNQUANTIZED),
    "keep-lm-head": ((LM_HEAD,), UNQUANTIZED),
    "keep-attn": ((SELF_ATTN, LINEAR_ATTN), UNQUANTIZED),
    "keep-experts": ((ROUTED_EXPERTS,), UNQUANTIZED),
}
RULE_FORMATS: tuple[str, ...] = (
    "bf16", "fp16", "fp32", "fp8", "mxfp8", "int8", "int4", "int3", "int2", "nvfp4", "mxfp4",
)
_WIDTH = re.compile(r"^(\d+)bit$")
# Classes an FP8 or INT4 release quantizes: the decoder's linears. Embeddings, lm_head, routers,
# gates, vision tower and MTP head stay BF16 in such releases.
QUANTIZABLE_CLASSES: tuple[str, ...] = (SELF_ATTN, LINEAR_ATTN, DENSE_MLP, ROUTED_EXPERTS, SHARED_EXPERT)
MAX_NAMED = 5


@dataclass(frozen=True)
class PolicyRule:
    """Every linear module of ``classes`` must be stored as ``required``: ``16bit`` (unquantized, any
    float of 16 bits or more), ``Nbit`` (quantized to N bits), or an exact format (``bf16``, ``int4``)."""

    name: str
    classes: tuple[str, ...]
    required: str

    def allows(self, module: ModuleAudit) -> bool:
        if self.required == UNQUANTIZED:
            return not module.quantized
        width = _WIDTH.match(self.required)
        if width:
            return module.quantized and module.bits == int(width.group(1))
        return module.format == self.required


@dataclass(frozen=True)
class PolicyResult:
    rule: str
    passed: bool
    offending_modules: tuple[str, ...]
    checked_modules: int
    message: str


def parse_policy(text: str) -> PolicyRule:
    """A named policy (``keep-shared-expert``) or a custom ``CLASS=FORMAT`` rule."""
    text = text.strip()
    if text in NAMED_POLICIES:
        classes, required = NAMED_POLICIES[text]
        return PolicyRule(text, classes, required)
    module_class, sep, required = (part.strip() for part in text.partition("="))
    if not sep:
        raise QtestsError(f"unknown policy {text!r}: use one of {', '.join(NAMED_POLICIES)} or CLASS=FORMAT")
    if module_class not in MODULE_CLASSES:
        raise QtestsError(f"policy {text!r}: unknown class {module_class!r}; classes: {', '.join(MODULE_CLASSES)}")
    if required not in RULE_FORMATS and not _WIDTH.match(required):
        raise QtestsError(
            f"policy {text!r}: unknown format {required!r}; use 16bit, Nbit or one of {', '.join(RULE_FORMATS)}"
        )
    return PolicyRule(text, (module_class,), required)


def evaluate_policy(report: AuditReport, rule: PolicyRule | str) -> PolicyResult:
    """Check one rule; a violation names the offending modules (the first few, then a count)."""
    if isinstance(rule, str):
        rule = parse_policy(rule)
    checked = [m for m in report.modules_in(*rule.classes) if m.is_linear]
    offending = [m for m in checked if not rule.allows(m)]
    scope = "/".join(rule.classes)
    if not checked:
        message = f"{rule.name}: no {scope} modules in {report.source}; the rule does not apply"
    elif not offending:
        message = f"{rule.name}: all {len(checked)} {scope} modules are {rule.required}"
    else:
        named = ", ".join(f"{m.name} ({m.format})" for m in offending[:MAX_NAMED])
        more = f" and {len(offending) - MAX_NAMED} more" if len(offending) > MAX_NAMED else ""
        message = (f"{rule.name}: {len(offending)} of {len(checked)} {scope} modules are not {rule.required}: "
                   f"{named}{more}")
    return PolicyResult(rule.name, not offending, tuple(m.name for m in offending), len(checked), message)


@dataclass(frozen=True)
class FootprintClaim:
    passed: bool
    variant_format: str
    reference_format: str
    footprint_bytes: int
    reference_bytes: int
    saving: float
    min_saving: float
    message: str


def footprint_claim(
    report: AuditReport, min_saving: float = 0.25, reference: AuditReport | None = None
) -> FootprintClaim:
    """Does the variant save at least ``min_saving`` of the footprint over the next larger format?

    The reference is ``reference``'s footprint when an audited larger variant is given; otherwise
    the same model with its decoder linears (:data:`QUANTIZABLE_CLASSES`) at the next larger width
    (4-bit -> 8-bit, 8-bit -> BF16) and everything else in BF16.
    """
    if not 0 <= min_saving < 1:
        raise QtestsError(f"min_saving {min_saving} must be a fraction in [0, 1), e.g. 0.25")
    variant = _dominant_quantized(report)
    if variant is None:
        return FootprintClaim(True, "bf16", "bf16", report.footprint_bytes, report.footprint_bytes, 0.0,
                              min_saving, f"{report.source} is not quantized; there is no size claim to check")
    fmt, bits = variant
    reference_bits = 8 if bits <= 4 else 16
    if reference is not None:
        reference_format, reference_bytes = reference.quant_summary, reference.footprint_bytes
    else:
        reference_format = "fp8" if reference_bits == 8 else "bf16"
        reference_bytes = sum(
            m.params * reference_bits // 8 if m.is_linear and m.module_class in QUANTIZABLE_CLASSES else 2 * m.params
            for m in report.modules
        )
    saving = 1 - report.footprint_bytes / reference_bytes
    passed = saving >= min_saving
    verdict = "" if passed else f", below the required {min_saving:.0%}: its 16-bit layers eat the gain"
    message = (f"{fmt} variant weighs {_gb(report.footprint_bytes)} vs {_gb(reference_bytes)} at {reference_format}: "
               f"saves {saving:.1%}{verdict}")
    return FootprintClaim(passed, fmt, reference_format, report.footprint_bytes, reference_bytes, saving,
                          min_saving, message)


def _dominant_quantized(report: AuditReport) -> tuple[str, int] | None:
    """The quantized format holding the most parameters, with its bit width."""
    params: dict[tuple[str, int], int] = {}
    for module in report.modules:
        if module.quantized and module.bits:
            key = (module.format, module.bits)
            params[key] = params.get(key, 0) + module.params
    return max(params, key=params.__getitem__) if params else None


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.2f} MB"
