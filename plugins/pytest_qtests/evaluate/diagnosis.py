"""Why a variant failed: the engine's load report, the audit's findings, and the layer where it breaks.

The canary says *that* a variant emits gibberish; a user then has to bisect *why*. Three views answer
most cases without one:

* **Load report.** transformers' ``output_loading_info``: checkpoint tensors the model never loaded
  (unexpected) and parameters it had to initialise at random (missing). A silent loader bug shows up
  here as a block of unexpected ``*_global_scale`` tensors (huggingface/transformers#48371).
* **Audit findings** (``audit/defects.py``): defects in the export itself.
* **Localisation.** Reference and variant are teacher-forced on the reference's own canary texts (the
  same token ids on both sides); forward hooks record each decoder layer's output and each module
  class's output inside it, and the relative error ``||variant - reference|| / ||reference||`` pooled over
  every position says where the error enters. Errors accumulate through the stack, so the layer named
  is the one whose *increase* first reaches half the largest increase: where the error jumps.

Runs in transformers on the CPU (or the GPU when present); the models are loaded one after the other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pytest_qtests.audit.checkpoint import (
    DENSE_MLP, LINEAR_ATTN, ROUTED_EXPERTS, ROUTER, SELF_ATTN, SHARED_EXPERT,
)
from pytest_qtests.audit.defects import Finding
from pytest_qtests.records import QtestsError

OUTPUT = "output"  # the decoder layer's own output
LOCALISED_CLASSES: tuple[str, ...] = (SELF_ATTN, LINEAR_ATTN, ROUTER, ROUTED_EXPERTS, SHARED_EXPERT, DENSE_MLP)
JUMP_SHARE = 0.5  # the jump: the first layer whose error increase is at least this share of the largest
MAX_PATTERNS = 4
ARCHITECTURE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")


@dataclass(frozen=True)
class LoadReport:
    """What the engine did not load (``unexpected``) and what it initialised itself (``missing``)."""

    unexpected: tuple[str, ...]
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not (self.unexpected or self.missing or self.mismatched)

    @property
    def message(self) -> str:
        if self.clean:
            return "load report: every checkpoint tensor loaded, nothing initialised"
        parts = []
        for what, names in (("unexpected (in the checkpoint, never loaded)", self.unexpected),
                            ("missing (initialised at random)", self.missing),
                            ("mismatched shapes", self.mismatched)):
            if names:
                parts.append(f"{len(names)} {what}: {tensor_patterns(names)}")
        return "load report: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"unexpected": list(self.unexpected), "missing": list(self.missing),
                "mismatched": list(self.mismatched), "message": self.message}


@dataclass(frozen=True)
class LayerError:
    """Relative error of one decoder layer's output and of each module class inside it."""

    layer: int
    output: float
    modules: dict[str, float]


@dataclass(frozen=True)
class Localisation:
    texts: int
    tokens: int
    layers: tuple[LayerError, ...]

    @property
    def jump_layer(self) -> int | None:
        """The first layer whose error increase is at least :data:`JUMP_SHARE` of the largest increase."""
        errors = [_ordered(layer.output) for layer in self.layers]
        increases = [e - (errors[i - 1] if i else 0.0) for i, e in enumerate(errors)]
        if not increases or max(increases) <= 0:
            return None
        return next(i for i, d in enumerate(increases) if d >= JUMP_SHARE * max(increases))

    @property
    def jump_module(self) -> str | None:
        """The module class with the largest error inside the jump layer."""
        if self.jump_layer is None:
            return None
        modules = self.layers[self.jump_layer].modules
        return max(modules, key=lambda name: _ordered(modules[name])) if modules else None

    @property
    def message(self) -> str:
        head = f"localisation (teacher-forced on {self.texts} reference texts, {self.tokens} tokens)"
        if self.jump_layer is None:
            return f"{head}: no layer adds error"
        layer = self.layers[self.jump_layer]
        inside = ", ".join(f"{name} {_fmt(value)}" for name, value in
                           sorted(layer.modules.items(), key=lambda item: -_ordered(item[1])))
        return (f"{head}: error first jumps at layer {layer.layer} (output rel. error {_fmt(layer.output)}"
                f"{', largest in ' + self.jump_module if self.jump_module else ''}: {inside})")

    def table(self) -> str:
        """One row per layer: output error, then each module class's error."""
        classes = [c for c in LOCALISED_CLASSES if any(c in layer.modules for layer in self.layers)]
        header = ["layer", OUTPUT, *classes]
        rows = [[str(layer.layer), _fmt(layer.output), *(_fmt(layer.modules.get(c)) for c in classes)]
                for layer in self.layers]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
        marker = self.jump_layer
        return "\n".join(line + ("  <- jump" if marker is not None and i - 1 == marker else "")
                         for i, line in enumerate(lines)) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "tokens": self.tokens, "jump_layer": self.jump_layer,
                "jump_module": self.jump_module,
                "layers": [{"layer": l.layer, "output": _json(l.output),
                            "modules": {k: _json(v) for k, v in l.modules.items()}} for l in self.layers]}


@dataclass
class Diagnosis:
    """The three views of one failing variant; ``note`` says why the localisation is absent."""

    variant: str
    load: LoadReport | None
    findings: list[Finding] = field(default_factory=list)
    localisation: Localisation | None = None
    note: str = ""

    @property
    def message(self) -> str:
        parts = [self.load.message] if self.load is not None else []
        parts += [f"audit: {f.message}" for f in self.findings] or ["audit: no export defect found"]
        parts.append(self.localisation.message if self.localisation is not None else f"no localisation ({self.note})")
        return "diagnosis: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "load_report": None if self.load is None else self.load.to_dict(),
                "findings": [f.to_dict() for f in self.findings],
                "localisation": None if self.localisation is None else self.localisation.to_dict(),
                "note": self.note, "message": self.message}


# --- loading -----------------------------------------------------------------------------------

def load_model(source: str) -> tuple[Any, LoadReport]:
    """A checkpoint in transformers, in float32 where the format allows, with its load report."""
    import torch
    from transformers import AutoModelForCausalLM

    from pytest_qtests.engines.transformers_backend import _is_compressed_tensors, _loader_state_restored

    dtype = "auto" if _is_compressed_tensors(source) else torch.float32  # compressed-tensors refuses float32
    try:
        with _loader_state_restored():
            model, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, output_loading_info=True)
    except Exception as error:  # any loader failure is one line naming the checkpoint
        raise QtestsError(f"transformers could not load {source} to diagnose it ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); check the checkpoint") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    report = LoadReport(*(tuple(sorted(info.get(key) or ())) for key in ("unexpected_keys", "missing_keys", "mismatched_keys")))
    return model, report


def check_same_architecture(reference: str, variant: str) -> None:
    """Layer-by-layer comparison needs the same stack: refuse another model before loading either."""
    configs = []
    for source in (reference, variant):
        path = Path(source) / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise QtestsError(f"cannot read {path} ({error}); diagnose takes two local checkpoint directories") from None
        text = config.get("text_config") or config
        configs.append({key: text.get(key, config.get(key)) for key in ARCHITECTURE_KEYS})
    differing = [f"{key} {configs[0][key]} vs {configs[1][key]}" for key in ARCHITECTURE_KEYS
                 if configs[0][key] != configs[1][key]]
    if differing:
        raise QtestsError(f"{variant} is not a variant of {reference} ({', '.join(differing)}); "
                          "diagnose a quantized checkpoint against the reference it was made from")


# --- localisation ------------------------------------------------------------------------------

def _capture(model: Any, token_ids: Sequence[Sequence[int]]) -> dict[tuple[int, str], list[Any]]:
    """Per (layer, module class): the float32 outputs on every text, from forward hooks."""
    import torch

    captured: dict[tuple[int, str], list[Any]] = {}
    handles = []

    def hook(key: tuple[int, str]):
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            captured.setdefault(key, []).append(tensor.detach().float().reshape(-1).cpu())
        return record

    for index, layer in enumerate(_decoder_layers(model)):
        handles.append(layer.register_forward_hook(hook((index, OUTPUT))))
        for name, module in _module_classes(layer).items():
            handles.append(module.register_forward_hook(hook((index, name))))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in token_ids:
                model(torch.tensor([list(ids)], device=device))
    finally:
        for handle in handles:
            handle.remove()
    return _routed_experts(captured)


def _decoder_layers(model: Any) -> Sequence[Any]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise QtestsError(f"cannot find the decoder layers of {type(model).__name__}; diagnose supports "
                          "transformers causal LMs with model.layers")
    return layers


def _module_classes(layer: Any) -> dict[str, Any]:
    """The hooked modules of one decoder layer, by audit class. Routed experts are derived (see below):
    some MoE implementations loop over an expert list that is never called as a module."""
    found = {}
    for attribute, name in (("self_attn", SELF_ATTN), ("linear_attn", LINEAR_ATTN)):
        if hasattr(layer, attribute):
            found[name] = getattr(layer, attribute)
    mlp = getattr(layer, "mlp", None)
    if mlp is None:
        return found
    if hasattr(mlp, "experts"):
        found[ROUTER] = mlp.gate
        found["_moe"] = mlp
        if hasattr(mlp, "shared_expert"):
            found[SHARED_EXPERT] = mlp.shared_expert
            if hasattr(mlp, "shared_expert_gate"):
                found["_shared_gate"] = mlp.shared_expert_gate
    else:
        found[DENSE_MLP] = mlp
    return found


def _routed_experts(captured: dict[tuple[int, str], list[Any]]) -> dict[tuple[int, str], list[Any]]:
    """Routed experts' output = the MoE block's output minus the gated shared expert's contribution."""
    import torch

    result = {key: value for key, value in captured.items() if not key[1].startswith("_")}
    for (index, name), outputs in captured.items():
        if name != "_moe":
            continue
        shared = captured.get((index, SHARED_EXPERT))
        gate = captured.get((index, "_shared_gate"))
        routed = []
        for i, moe in enumerate(outputs):
            if shared is not None:
                weight = torch.sigmoid(gate[i]).repeat_interleave(shared[i].numel() // gate[i].numel()) if gate else 1.0
                moe = moe - weight * shared[i]
            routed.append(moe)
        result[(index, ROUTED_EXPERTS)] = routed
    return result


def _relative(reference: list[Any], variant: list[Any] | None) -> float:
    if variant is None or len(variant) != len(reference):
        return math.nan
    difference = sum(float(((v - r) ** 2).sum()) for r, v in zip(reference, variant))
    norm = sum(float((r ** 2).sum()) for r in reference)
    return math.sqrt(difference / norm) if norm > 0 else math.nan


# --- the whole diagnosis -----------------------------------------------------------------------

def diagnose(reference: str | None, variant: str, label: str, texts: Sequence[str] | str,
             findings: Iterable[Finding] = ()) -> Diagnosis:
    """Load report, findings and (with a reference and texts) the localisation of ``variant``.

    ``texts`` is a string when there are none: why (no live reference, a backend that cannot score).
    """
    import gc

    findings = list(findings)
    if reference is None or isinstance(texts, str):
        _, load = load_model(variant)
        gc.collect()
        return Diagnosis(label, load, findings, None, texts if isinstance(texts, str) else "no reference")
    check_same_architecture(reference, variant)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference)
    token_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    reference_model, _ = load_model(reference)
    reference_outputs = _capture(reference_model, token_ids)
    del reference_model
    gc.collect()
    variant_model, load = load_model(variant)
    variant_outputs = _capture(variant_model, token_ids)
    del variant_model
    gc.collect()
    return Diagnosis(label, load, findings, localise(reference_outputs, variant_outputs, token_ids))


def localise(reference: dict, variant: dict, token_ids: Sequence[Sequence[int]]) -> Localisation:
    """Pooled relative error per layer and module class, from the two sides' captured outputs."""
    layers = []
    for index in sorted({key[0] for key in reference}):
        modules = {name: _relative(reference[(index, name)], variant.get((index, name)))
                   for (i, name) in reference if i == index and name != OUTPUT}
        layers.append(LayerError(index, _relative(reference[(index, OUTPUT)], variant.get((index, OUTPUT))), modules))
    return Localisation(len(token_ids), sum(len(ids) for ids in token_ids), tuple(layers))


# --- formatting --------------------------------------------------------------------------------

def tensor_patterns(names: Sequence[str]) -> str:
    """Tensor names folded into a few patterns: indices become ``*``, siblings ``{a,b}``."""
    patterns = sorted({".".join("*" if part.isdigit() else part for part in name.split(".")) for name in names})
    for position in (-1, -2):
        patterns = _brace(patterns, position)
    shown = ", ".join(patterns[:MAX_PATTERNS])
    return shown + (f" and {len(patterns) - MAX_PATTERNS} more patterns" if len(patterns) > MAX_PATTERNS else "")


def _brace(patterns: list[str], position: int) -> list[str]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for pattern in patterns:
        parts = pattern.split(".")
        if len(parts) < -position:
            groups.setdefault((pattern,), []).append("")
            continue
        key = tuple(parts[:position]) + ("{}",) + tuple(parts[position + 1:] if position != -1 else ())
        groups.setdefault(key, []).append(parts[position])
    folded = []
    for key, members in groups.items():
        if members == [""]:
            folded.append(key[0])
            continue
        middle = members[0] if len(members) == 1 else "{" + ",".join(sorted(members)) + "}"
        folded.append(".".join(part if part != "{}" else middle for part in key))
    return sorted(folded)


def _ordered(value: float) -> float:
    """NaN (broken weights) sorts as the largest error."""
    return math.inf if math.isnan(value) else value


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.3f}" if value < 1000 else f"{value:.3g}"


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None
