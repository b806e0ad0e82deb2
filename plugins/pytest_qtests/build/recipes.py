"""What a build is asked to make: the named recipes, the schemes and formats, the settings that decide the
bytes, and the calibration data's identity.

Plain records, shared by the builder (``quantize.py``) and the provenance it writes (``provenance.py``);
both import them from here, one way. A recipe is stated with the audit's own policies
(:data:`pytest_qtests.audit.policies.NAMED_POLICIES`), so the module knowledge lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_qtests.audit.checkpoint import SHARED_EXPERT_GATE
from pytest_qtests.audit.policies import NAMED_POLICIES

SCHEMES: tuple[str, ...] = ("W4A16", "W8A16", "NVFP4", "MXFP4", "FP8_BLOCK", "W2A16", "W3A16", "INT8")
FORMATS: tuple[str, ...] = ("auto_round", "auto_gptq", "llm_compressor")
INTEGER_SCHEMES: tuple[str, ...] = ("W2A16", "W3A16", "W4A16", "W8A16")  # the only ones with a free group size
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Recipe:
    """A named layer choice: the audit classes kept 16-bit, and the audit policies that prove it."""

    name: str
    policies: tuple[str, ...]
    description: str
    extra_classes: tuple[str, ...] = ()

    @property
    def kept_classes(self) -> tuple[str, ...]:
        classes = [c for policy in self.policies for c in NAMED_POLICIES[policy][0]] + list(self.extra_classes)
        return tuple(dict.fromkeys(classes))


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("default", (), "auto-round's own layer choice"),
    # the shared expert's scalar gate goes with it: one tiny linear that scales the whole expert
    Recipe("keep-shared-expert", ("keep-shared-expert",), "MoE shared expert (and its gate) kept 16-bit",
           (SHARED_EXPERT_GATE,)),
    Recipe("keep-linear-attn", ("keep-linear-attn",), "linear attention (Gated DeltaNet) kept 16-bit"),
    Recipe("keep-attn", ("keep-attn",), "all attention kept 16-bit, like Qwen's official GPTQ releases"),
    Recipe("recommended", ("keep-shared-expert", "keep-linear-attn", "keep-router", "keep-lm-head"),
           "shared expert, linear attention, router and lm_head kept 16-bit", (SHARED_EXPERT_GATE,)),
    # for engines with dense kernels but no quantized-MoE kernel for the format (vLLM-CPU)
    Recipe("keep-experts", ("keep-experts",), "routed MoE experts kept 16-bit, the dense layers quantized"),
)}


@dataclass(frozen=True)
class QuantizeSettings:
    """Everything that determines the checkpoint (the provenance's ``settings``; equal settings, equal bytes)."""

    scheme: str
    recipe: str
    export_format: str = "auto_round"
    iters: int = 0
    nsamples: int = 128
    seqlen: int = 2048
    group_size: int | None = None  # None: the scheme's own
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class Calibration:
    """The calibration data as auto-round reads it: a JSONL file of ``{"text": ...}`` lines."""

    source: str  # what the user named: a task or a file
    path: Path
    sha256: str
