"""Defective exports made from the zoo's real ones: one checkpoint per export defect the audit catches.

Each starts from a committed zoo variant (a real auto-round / llm-compressor export) and changes only
what the public bug reports describe, so nothing heavier than the zoo is committed: the defects are
rebuilt on demand in a few hundred milliseconds.

    python tests/audit_fixtures/defects.py OUT_DIR   # writes OUT_DIR/<defect> for `qtests audit`
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "zoo"
NVFP4 = ZOO / "nvfp4-all"
REFERENCE = ZOO / "tiny-qwen3next"
ZEROED_EXPERT = "model.layers.1.mlp.experts.3.gate_proj"
DROPPED_EXPERT = "model.layers.2.mlp.experts.5.down_proj"
RESET_EXPERT = "model.layers.0.mlp.experts.2.up_proj"
SPLIT_IGNORE = ("model.layers.0.linear_attn.in_proj_qkv", "model.layers.0.linear_attn.in_proj_z")
BF16_LAYER = "model.layers.3.mlp.experts."  # stored BF16 while the config's Linear target claims NVFP4


def _copy(source: Path, directory: Path) -> Path:
    shutil.copytree(source, directory)
    return directory


def _edit_tensors(directory: Path, edit: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def zero_expert_scale(directory: Path) -> Path:
    """TensorRT-LLM#16447: a zero global scale on one expert (calibration never routed to it)."""
    _copy(NVFP4, directory)
    _edit_tensors(directory, lambda t: t[f"{ZEROED_EXPERT}.weight_global_scale"].zero_())
    return directory


def dropped_expert_scale(directory: Path) -> Path:
    """transformers#48371's shape on disk: one expert module written without its weight_global_scale."""
    _copy(NVFP4, directory)
    _edit_tensors(directory, lambda t: t.pop(f"{DROPPED_EXPERT}.weight_global_scale"))
    return directory


def reset_expert_scale(directory: Path) -> Path:
    """One expert's global scale reset to 1.0 (the zoo's nvfp4-broken does it to all 96)."""
    _copy(NVFP4, directory)
    _edit_tensors(directory, lambda t: t[f"{RESET_EXPERT}.weight_global_scale"].fill_(1.0))
    return directory


def split_name_ignore(directory: Path) -> Path:
    """vllm#40252: the ignore list names the split projections of a fused Qwen3-Next in_proj_qkvz."""
    _copy(NVFP4, directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["ignore"] += list(SPLIT_IGNORE)
    config_path.write_text(json.dumps(config, indent=2))
    return directory


def experts_left_bf16(directory: Path) -> Path:
    """ModelOpt#2011: one layer's experts skipped by the exporter (BF16) while the config claims NVFP4."""
    from safetensors.torch import load_file

    _copy(NVFP4, directory)
    reference = load_file(REFERENCE / "model.safetensors")

    def swap(tensors: dict) -> None:
        for name in [n for n in tensors if n.startswith(BF16_LAYER)]:
            del tensors[name]
        tensors.update({n: t for n, t in reference.items() if n.startswith(BF16_LAYER)})
    _edit_tensors(directory, swap)
    return directory


def unreadable_scale(directory: Path) -> Path:
    """Not a defect but a bad input: a global scale stored as int64, which no loader reads as a scale."""
    import torch

    _copy(NVFP4, directory)
    _edit_tensors(directory, lambda t: t.update({f"{ZEROED_EXPERT}.weight_global_scale": torch.ones(1, dtype=torch.int64)}))
    return directory


# name -> builder; every one must make `qtests audit` exit 1 with a DEFECT line.
DEFECTS: dict[str, Callable[[Path], Path]] = {
    "zero-expert-scale": zero_expert_scale,
    "dropped-expert-scale": dropped_expert_scale,
    "reset-expert-scale": reset_expert_scale,
    "split-name-ignore": split_name_ignore,
    "experts-left-bf16": experts_left_bf16,
}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name, build in DEFECTS.items():
        print(build(out / name))
