"""Hand-built checkpoints for the audit tests: real safetensors headers, no tensor data.

Each shard is written as the 8-byte header length, the JSON header, then truncated to its full
declared size, so the file is sparse: a 27B-scale layout costs a few kilobytes of disk, and any
attempt to audit it by reading tensor data would show up as a slow test.

Layouts name modules as the real models do (Qwen3-Next: fused ``in_proj_qkvz``/``in_proj_ba``,
per-expert MoE; Qwen3.5: ``model.language_model.`` prefix, split ``in_proj_qkv/z/a/b``, vision tower,
MTP head). Storers turn one logical linear ``(out, in)`` into the tensors each format writes, with
the packed shapes measured on auto-round 0.16.1 exports (``auto_round:auto_gptq``, llm_compressor
NVFP4/MXFP4/FP8_BLOCK) and the published GPTQ, native-FP8 and ModelOpt layouts.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable

CONFIGS = Path(__file__).with_name("configs")

# Independent of the product's table on purpose: the tests' oracle for byte sizes.
_BYTES_PER_ELEMENT = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "F8_E4M3": 1}

Tensors = dict[str, tuple[str, tuple[int, ...]]]
Linear = tuple[str, int, int]  # module name, out features, in features
Storer = Callable[[str, int, int], Tensors]


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


# --- storers: one logical linear -> the tensors a format writes -------------------------------

def bf16(module: str, out: int, inp: int, dtype: str = "BF16") -> Tensors:
    return {f"{module}.weight": (dtype, (out, inp))}


def gptq(bits: int, group: int, g_idx: bool = True) -> Storer:
    """GPTQ / auto-round ``auto_gptq`` packing: int32 words along the input dimension."""
    def store(module: str, out: int, inp: int) -> Tensors:
        tensors = {
            f"{module}.qweight": ("I32", (inp * bits // 32, out)),
            f"{module}.qzeros": ("I32", (inp // group, out * bits // 32)),
            f"{module}.scales": ("F16", (inp // group, out)),
        }
        if g_idx:
            tensors[f"{module}.g_idx"] = ("I32", (inp,))
        return tensors
    return store


def ct_int(bits: int, group: int) -> Storer:
    """compressed-tensors ``pack-quantized``: int32 words along the input dimension of [out, in]."""
    def store(module: str, out: int, inp: int) -> Tensors:
        return {
            f"{module}.weight_packed": ("I32", (out, inp * bits // 32)),
            f"{module}.weight_scale": ("BF16", (out, inp // group)),
            f"{module}.weight_shape": ("I64", (2,)),
        }
    return store


def ct_nvfp4(module: str, out: int, inp: int) -> Tensors:
    return {
        f"{module}.weight_packed": ("U8", (out, inp // 2)),
        f"{module}.weight_scale": ("F8_E4M3", (out, inp // 16)),
        f"{module}.weight_global_scale": ("F32", (1,)),
        f"{module}.input_global_scale": ("F32", (1,)),
    }


def ct_mxfp4(module: str, out: int, inp: int) -> Tensors:
    return {
        f"{module}.weight_packed": ("U8", (out, inp // 2)),
        f"{module}.weight_scale": ("U8", (out, inp // 32)),
    }


def fp8_block(scale_name: str = "weight_scale_inv", block: int = 128) -> Storer:
    def store(module: str, out: int, inp: int) -> Tensors:
        return {
            f"{module}.weight": ("F8_E4M3", (out, inp)),
            f"{module}.{scale_name}": ("F32", (math.ceil(out / block), math.ceil(inp / block))),
        }
    return store


def modelopt_nvfp4(module: str, out: int, inp: int) -> Tensors:
    return {
        f"{module}.weight": ("U8", (out, inp // 2)),
        f"{module}.weight_scale": ("F8_E4M3", (out, inp // 16)),
        f"{module}.weight_scale_2": ("F32", ()),
        f"{module}.input_scale": ("F32", ()),
    }


def modelopt_fp8(module: str, out: int, inp: int) -> Tensors:
    return {
        f"{module}.weight": ("F8_E4M3", (out, inp)),
        f"{module}.weight_scale": ("F32", ()),
        f"{module}.input_scale": ("F32", ()),
    }


# --- layouts --------------------------------------------------------------------------------

def qwen3_next_layout(layers: int = 4, hidden: int = 128, experts: int = 4, expert_width: int = 64,
                      shared_width: int = 128, vocab: int = 256) -> tuple[list[Linear], Tensors]:
    """Tiny Qwen3-Next: three linear-attention layers then one full-attention layer, MoE everywhere.

    Returns the linear modules (to be stored by a format) and the always-float tensors."""
    linears: list[Linear] = [("lm_head", vocab, hidden)]
    floats: Tensors = {"model.embed_tokens.weight": ("BF16", (vocab, hidden)), "model.norm.weight": ("BF16", (hidden,))}
    for i in range(layers):
        p = f"model.layers.{i}"
        floats[f"{p}.input_layernorm.weight"] = ("BF16", (hidden,))
        floats[f"{p}.post_attention_layernorm.weight"] = ("BF16", (hidden,))
        if (i + 1) % 4:
            linears += [(f"{p}.linear_attn.in_proj_qkvz", 384, hidden), (f"{p}.linear_attn.in_proj_ba", 4, hidden),
                        (f"{p}.linear_attn.out_proj", hidden, 128)]
            floats[f"{p}.linear_attn.conv1d.weight"] = ("BF16", (256, 1, 4))
            floats[f"{p}.linear_attn.A_log"] = ("F32", (2,))
            floats[f"{p}.linear_attn.dt_bias"] = ("BF16", (2,))
            floats[f"{p}.linear_attn.norm.weight"] = ("BF16", (64,))
        else:
            linears += [(f"{p}.self_attn.q_proj", 256, hidden), (f"{p}.self_attn.k_proj", 64, hidden),
                        (f"{p}.self_attn.v_proj", 64, hidden), (f"{p}.self_attn.o_proj", hidden, 128)]
            floats[f"{p}.self_attn.q_norm.weight"] = ("BF16", (64,))
            floats[f"{p}.self_attn.k_norm.weight"] = ("BF16", (64,))
        linears += [(f"{p}.mlp.gate", experts, hidden), (f"{p}.mlp.shared_expert_gate", 1, hidden)]
        for e in range(experts):
            linears += [(f"{p}.mlp.experts.{e}.gate_proj", expert_width, hidden),
                        (f"{p}.mlp.experts.{e}.up_proj", expert_width, hidden),
                        (f"{p}.mlp.experts.{e}.down_proj", hidden, expert_width)]
        linears += [(f"{p}.mlp.shared_expert.gate_proj", shared_width, hidden),
                    (f"{p}.mlp.shared_expert.up_proj", shared_width, hidden),
                    (f"{p}.mlp.shared_expert.down_proj", hidden, shared_width)]
    return linears, floats


def qwen3_5_layout(layers: int = 64, hidden: int = 5120, intermediate: int = 17408, heads: int = 24,
                   kv_heads: int = 4, head_dim: int = 256, lin_k_heads: int = 16, lin_v_heads: int = 48,
                   lin_dim: int = 128, vocab: int = 248320, vision_depth: int = 27, vision_hidden: int = 1152,
                   vision_mlp: int = 4304, mtp_layers: int = 1) -> tuple[list[Linear], Tensors]:
    """Qwen3.5 dense multimodal (defaults: the 27B shapes): ``model.language_model.`` decoder with
    linear attention in three of four layers, a vision tower under ``model.visual`` and an MTP head."""
    t = "model.language_model"
    linears: list[Linear] = [("lm_head", vocab, hidden)]
    floats: Tensors = {f"{t}.embed_tokens.weight": ("BF16", (vocab, hidden)), f"{t}.norm.weight": ("BF16", (hidden,))}
    key_dim, value_dim = lin_k_heads * lin_dim, lin_v_heads * lin_dim

    def decoder_layer(p: str, full: bool) -> None:
        floats[f"{p}.input_layernorm.weight"] = ("BF16", (hidden,))
        floats[f"{p}.post_attention_layernorm.weight"] = ("BF16", (hidden,))
        if full:
            linears.extend([(f"{p}.self_attn.q_proj", 2 * heads * head_dim, hidden),
                            (f"{p}.self_attn.k_proj", kv_heads * head_dim, hidden),
                            (f"{p}.self_attn.v_proj", kv_heads * head_dim, hidden),
                            (f"{p}.self_attn.o_proj", hidden, heads * head_dim)])
            floats[f"{p}.self_attn.q_norm.weight"] = ("BF16", (head_dim,))
            floats[f"{p}.self_attn.k_norm.weight"] = ("BF16", (head_dim,))
        else:
            linears.extend([(f"{p}.linear_attn.in_proj_qkv", 2 * key_dim + value_dim, hidden),
                            (f"{p}.linear_attn.in_proj_z", value_dim, hidden),
                            (f"{p}.linear_attn.in_proj_b", lin_v_heads, hidden),
                            (f"{p}.linear_attn.in_proj_a", lin_v_heads, hidden),
                            (f"{p}.linear_attn.out_proj", hidden, value_dim)])
            floats[f"{p}.linear_attn.conv1d.weight"] = ("BF16", (2 * key_dim + value_dim, 1, 4))
            floats[f"{p}.linear_attn.A_log"] = ("F32", (lin_v_heads,))
            floats[f"{p}.linear_attn.dt_bias"] = ("BF16", (lin_v_heads,))
            floats[f"{p}.linear_attn.norm.weight"] = ("F32", (lin_dim,))
        linears.extend([(f"{p}.mlp.gate_proj", intermediate, hidden), (f"{p}.mlp.up_proj", intermediate, hidden),
                        (f"{p}.mlp.down_proj", hidden, intermediate)])

    for i in range(layers):
        decoder_layer(f"{t}.layers.{i}", full=(i + 1) % 4 == 0)
    for i in range(mtp_layers):
        decoder_layer(f"mtp.layers.{i}", full=True)
    if mtp_layers:
        linears.append(("mtp.fc", hidden, 2 * hidden))
        for name in ("mtp.norm", "mtp.pre_fc_norm_embedding", "mtp.pre_fc_norm_hidden"):
            floats[f"{name}.weight"] = ("BF16", (hidden,))
    v = "model.visual"
    if vision_depth:
        floats[f"{v}.patch_embed.proj.weight"] = ("BF16", (vision_hidden, 3, 2, 16, 16))
        floats[f"{v}.patch_embed.proj.bias"] = ("BF16", (vision_hidden,))
        floats[f"{v}.pos_embed.weight"] = ("BF16", (2304, vision_hidden))
        for i in range(vision_depth):
            b = f"{v}.blocks.{i}"
            for norm in ("norm1", "norm2"):
                floats[f"{b}.{norm}.weight"] = ("BF16", (vision_hidden,))
                floats[f"{b}.{norm}.bias"] = ("BF16", (vision_hidden,))
            for name, out, inp in ((f"{b}.attn.qkv", 3 * vision_hidden, vision_hidden),
                                   (f"{b}.attn.proj", vision_hidden, vision_hidden),
                                   (f"{b}.mlp.linear_fc1", vision_mlp, vision_hidden),
                                   (f"{b}.mlp.linear_fc2", vision_hidden, vision_mlp)):
                floats[f"{name}.weight"] = ("BF16", (out, inp))
                floats[f"{name}.bias"] = ("BF16", (out,))
        merged = 4 * vision_hidden
        floats[f"{v}.merger.norm.weight"] = ("BF16", (vision_hidden,))
        floats[f"{v}.merger.linear_fc1.weight"] = ("BF16", (merged, merged))
        floats[f"{v}.merger.linear_fc2.weight"] = ("BF16", (hidden, merged))
    return linears, floats


def store(linears: list[Linear], floats: Tensors, choose: Callable[[str], Storer]) -> Tensors:
    """All tensors of a checkpoint: each linear stored by the storer ``choose(module)`` returns."""
    tensors = dict(floats)
    for module, out, inp in linears:
        tensors.update(choose(module)(module, out, inp))
    return tensors


# --- writing ----------------------------------------------------------------------------------

def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return _BYTES_PER_ELEMENT[dtype] * math.prod(shape)


def write_checkpoint(directory: Path, tensors: Tensors, configs: dict[str, dict], shards: int = 1) -> Path:
    """Write sparse shards (header + hole) and the config files; with several shards, an index."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    per_shard = math.ceil(len(names) / shards)
    weight_map = {}
    for index in range(shards):
        shard = "model.safetensors" if shards == 1 else f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        chunk = names[index * per_shard:(index + 1) * per_shard]
        _write_shard(directory / shard, {name: tensors[name] for name in chunk})
        weight_map.update({name: shard for name in chunk})
    for filename, content in configs.items():
        (directory / filename).write_text(json.dumps(content, indent=2))
    if shards > 1:
        total = sum(nbytes(*tensors[name]) for name in names)
        index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index_json))
    return directory


def _write_shard(path: Path, tensors: Tensors) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)
        _write_unit_scales(handle, header, 8 + len(raw))


# Per-tensor scales the audit reads (``audit/defects.py``): a hole would read as a zero scale, a defect.
_SCALAR_SCALES = ("weight_global_scale", "input_global_scale", "weight_scale_2", "input_scale")


def _write_unit_scales(handle, header: dict, base: int) -> None:
    """Give every F32 per-tensor scale the value 1.0, as a healthy export has some positive value."""
    for name, value in header.items():
        if name != "__metadata__" and name.endswith(_SCALAR_SCALES) and value["dtype"] == "F32":
            begin, end = value["data_offsets"]
            handle.seek(base + begin)
            handle.write(struct.pack("<f", 1.0) * ((end - begin) // 4))


def raw_header_bytes(directory: Path) -> int:
    """The oracle: sum of ``data_offsets`` spans over every shard, parsed here by hand."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(end - begin for key, value in header.items() if key != "__metadata__"
                     for begin, end in [value["data_offsets"]])
    return total


# --- one tiny Qwen3-Next checkpoint per format ------------------------------------------------

_TINY_16BIT = ("lm_head", "in_proj_ba", "mlp.gate", "shared_expert_gate")  # what auto-round keeps by default


def _keep(suffixes: tuple[str, ...], quantized: Storer, also: Callable[[str], Storer | None] = lambda m: None):
    def choose(module: str) -> Storer:
        return also(module) or (bf16 if module.endswith(suffixes) else quantized)
    return choose


def _gptq_choice(module: str) -> Storer | None:
    if ".self_attn." in module:
        return bf16  # not in modules_in_block_to_quantize
    if "layers.3.mlp.shared_expert." in module:
        return gptq(8, 32)  # the "+:" dynamic override
    return None


def _mixed_choice(module: str) -> Storer:
    if ".mlp.experts." in module:
        return ct_nvfp4
    if ".self_attn." in module or module.endswith(("in_proj_qkvz", "out_proj")):
        return fp8_block("weight_scale")
    return bf16


# name -> (config file, where it goes, how each linear is stored)
FORMAT_CASES: dict[str, tuple[str | None, str, Callable[[str], Storer]]] = {
    "bf16": (None, "config.json", lambda module: bf16),
    "auto-round-int4": ("autoround_int4.json", "config.json", _keep(_TINY_16BIT, gptq(4, 32, g_idx=False))),
    "gptq-int4": ("gptq_int4.json", "config.json", _keep(_TINY_16BIT, gptq(4, 32), _gptq_choice)),
    "ct-int4": ("ct_int4.json", "config.json", _keep(_TINY_16BIT, ct_int(4, 64))),
    "ct-nvfp4": ("ct_nvfp4.json", "config.json", _keep(("lm_head", "mlp.gate", "shared_expert_gate"), ct_nvfp4)),
    "ct-mxfp4": ("ct_mxfp4.json", "config.json", _keep(("lm_head", "mlp.gate", "shared_expert_gate"), ct_mxfp4)),
    "ct-mixed": ("ct_mixed.json", "config.json", _mixed_choice),
    "fp8": ("fp8_native.json", "config.json", _keep(_TINY_16BIT, fp8_block())),
    "modelopt-nvfp4": ("modelopt_nvfp4.json", "hf_quant_config.json",
                       _keep(("lm_head", "mlp.gate", "shared_expert_gate"), modelopt_nvfp4,
                             lambda m: bf16 if ".linear_attn." in m else None)),
}


def build_case(name: str, directory: Path, choose: Callable[[str], Storer] | None = None,
               quant_config: dict | None = None) -> Path:
    """Write the tiny Qwen3-Next checkpoint of ``FORMAT_CASES[name]``; ``choose``/``quant_config``
    replace the case's storage choice or config to build deliberate disagreements."""
    config_file, target, case_choose = FORMAT_CASES[name]
    linears, floats = qwen3_next_layout()
    configs: dict[str, dict] = {"config.json": {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next"}}
    quant = quant_config if quant_config is not None else (load_config(config_file) if config_file else None)
    if quant is not None and target == "config.json":
        configs["config.json"]["quantization_config"] = quant
    elif quant is not None:
        configs[target] = quant
    return write_checkpoint(directory, store(linears, floats, choose or case_choose), configs)


# --- real export layouts (see real/README.md) ---------------------------------------------------

REAL = Path(__file__).with_name("real")


def restore_real(name: str, directory: Path) -> Path:
    """Rebuild ``real/<name>`` as a checkpoint: its configs and a sparse shard with the recorded header."""
    source = REAL / name
    directory.mkdir(parents=True, exist_ok=True)
    for config in source.glob("*config.json"):
        (directory / config.name).write_text(config.read_text())
    header = json.loads((source / "header.json").read_text())
    end = max(value["data_offsets"][1] for key, value in header.items() if key != "__metadata__")
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(directory / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + end)
        _write_unit_scales(handle, header, 8 + len(raw))
    return directory
