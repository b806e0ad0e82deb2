"""How one module is stored, read off its tensors: format, bits, group size and logical parameters.

Packed formats hide the original weight shape (eight int4 values in one int32, two fp4 values in one
byte), so the logical parameter count is rebuilt from the packed and scale shapes. The tensors are
the ground truth; the config is consulted only where the shapes cannot tell (the bit width of
compressed-tensors' int32-packed weights without zero points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_qtests.audit.formats import ConfiguredStorage
from pytest_qtests.audit.headers import DTYPE_BITS, TensorHeader

# Tensor name suffixes that belong to a module; any other tensor is a module of its own
# (e.g. fused 3-D experts ``mlp.experts.gate_up_proj``, ``linear_attn.A_log``).
ROLES: frozenset[str] = frozenset({
    "weight", "bias", "qweight", "qzeros", "scales", "g_idx",
    "weight_packed", "weight_scale", "weight_scale_inv", "weight_scale_2", "weight_global_scale",
    "weight_zero_point", "weight_shape", "weight_g_idx",
    "input_scale", "input_global_scale", "input_zero_point", "output_scale", "k_scale", "v_scale", "q_scale",
})
# Roles that carry data (counted as parameters); everything else is quantization metadata.
DATA_ROLES: frozenset[str] = frozenset({"weight", "bias"})
PACKED_ROLES: frozenset[str] = frozenset({"qweight", "weight_packed"})

FLOAT_FORMATS: dict[str, str] = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64"}
UNQUANTIZED_FORMATS: frozenset[str] = frozenset(FLOAT_FORMATS.values())


@dataclass(frozen=True)
class Storage:
    """What the tensors say: ``granularity`` is e.g. ``g32``, ``128x128``, ``channel``, ``tensor``."""

    format: str
    bits: int | None
    group_size: int | None
    granularity: str
    params: int
    note: str | None = None

    @property
    def quantized(self) -> bool:
        return is_quantized_format(self.format)


def is_quantized_format(fmt: str) -> bool:
    """Anything but a plain float dtype (``none``: a module of quantization metadata only)."""
    return fmt not in UNQUANTIZED_FORMATS and fmt != "none"


def split_role(tensor_name: str) -> tuple[str, str]:
    """``a.b.qweight`` -> (``a.b``, ``qweight``); a tensor without a known suffix is its own weight."""
    module, _, last = tensor_name.rpartition(".")
    if module and last in ROLES:
        return module, last
    return tensor_name, "weight"


def is_linear_module(roles: dict[str, TensorHeader], last_name: str, is_experts: bool) -> bool:
    """A matrix-multiply module: packed weights, a 2-D non-embedding weight, or fused 3-D experts."""
    if PACKED_ROLES & roles.keys():
        return True
    weight = roles.get("weight")
    if weight is None or "embed" in last_name or "norm" in last_name:
        return False
    return len(weight.shape) == 2 or (len(weight.shape) == 3 and is_experts)


def describe_storage(roles: dict[str, TensorHeader], expected: ConfiguredStorage | None) -> Storage:
    """Format, bits, group size and logical parameter count of one module from its tensors."""
    bias = roles["bias"].numel if "bias" in roles else 0
    if "qweight" in roles:
        return _gptq_packed(roles, expected, bias)
    if "weight_packed" in roles:
        return _ct_packed(roles, expected, bias)
    weight = roles.get("weight")
    if weight is None:
        return Storage("none", None, None, "", bias)
    scale = roles.get("weight_scale_inv") or roles.get("weight_scale")
    if weight.dtype in FLOAT_FORMATS:
        return Storage(FLOAT_FORMATS[weight.dtype], DTYPE_BITS[weight.dtype], None, "", weight.numel + bias)
    if weight.dtype.startswith("F8"):
        return _fp8(weight, scale, expected, bias)
    if weight.dtype == "F4" and scale is not None:
        fmt = "nvfp4" if scale.dtype == "F8_E4M3" else "mxfp4"
        return _grouped(fmt, 4, weight.shape[-1], scale, weight.numel + bias, _configured(expected))
    if weight.dtype in ("U8", "I8") and scale is not None:
        return _byte_weight(weight, scale, expected, bias)
    fmt = weight.dtype.lower()
    return Storage(fmt, DTYPE_BITS[weight.dtype], None, "", weight.numel + bias, f"unscaled {weight.dtype} weight")


def _grouped(fmt: str, bits: int, in_features: int, scale: TensorHeader | None, params: int,
             configured: int | None = None) -> Storage:
    """Group size = input features per scale column. One column is per-channel, unless the config's
    group size spans the whole input (a g64 layer with 64 inputs looks per-channel on disk)."""
    if scale is None or scale.numel == 1:
        return Storage(fmt, bits, None, "tensor", params)
    group, granularity = _group(in_features, scale.shape[-1], configured)
    return Storage(fmt, bits, group, granularity, params)


def _group(in_features: int, groups: int, configured: int | None) -> tuple[int | None, str]:
    if groups > 1 or configured == in_features:
        group = in_features // groups
        return group, f"g{group}"
    return None, "channel"


def _gptq_packed(roles: dict[str, TensorHeader], expected: ConfiguredStorage | None, bias: int) -> Storage:
    """GPTQ/auto-round ``qweight`` [in*bits/32, out] (AWQ: [in, out*bits/32]); bits from ``qzeros``."""
    qweight, scales, qzeros = roles["qweight"], roles.get("scales"), roles.get("qzeros")
    word = DTYPE_BITS[qweight.dtype]
    out = scales.shape[-1] if scales is not None else None
    bits = qzeros.shape[-1] * word // out if qzeros is not None and out else None
    if not bits and expected is not None and expected.quantized:
        bits = expected.bits
    if not bits or out is None:
        return Storage("int?", bits, None, "", 0, "packed weight without scales/zeros or a config bit width")
    if qweight.shape[-1] == out:
        in_features = qweight.shape[0] * word // bits
    else:
        in_features, out = qweight.shape[0], qweight.shape[-1] * word // bits
    params = in_features * out + bias
    group, granularity = _group(in_features, scales.shape[0] if len(scales.shape) == 2 else 1, _configured(expected))
    return Storage(f"int{bits}", bits, group, granularity, params)


def _configured(expected: ConfiguredStorage | None) -> int | None:
    return expected.group_size if expected is not None and expected.quantized else None


def _ct_packed(roles: dict[str, TensorHeader], expected: ConfiguredStorage | None, bias: int) -> Storage:
    """compressed-tensors ``weight_packed``: uint8 holds two fp4 values, int32 holds 32/bits ints."""
    packed, scale = roles["weight_packed"], roles.get("weight_scale")
    rows = math.prod(packed.shape[:-1])
    if packed.dtype == "U8":
        is_nv = "weight_global_scale" in roles or (scale is not None and scale.dtype == "F8_E4M3")
        in_features = packed.shape[-1] * 2
        fmt = "nvfp4" if is_nv else "mxfp4"
        return _grouped(fmt, 4, in_features, scale, rows * in_features + bias, _configured(expected))
    bits = expected.bits if expected is not None and expected.quantized else None
    if not bits:
        return Storage("int?", None, None, "", 0, "int32-packed weight and no config bit width")
    in_features = packed.shape[-1] * DTYPE_BITS[packed.dtype] // bits
    return _grouped(f"int{bits}", bits, in_features, scale, rows * in_features + bias, _configured(expected))


def _fp8(weight: TensorHeader, scale: TensorHeader | None, expected: ConfiguredStorage | None, bias: int) -> Storage:
    """Per-tensor, per-channel or block scales; block sizes come from the config when it gives them."""
    params = weight.numel + bias
    block = expected.block_size if expected is not None else None
    if scale is None or scale.numel == 1 and not block:
        return Storage("fp8", 8, None, "tensor", params)
    if len(scale.shape) < 2 or scale.shape[-1] == 1 and not block:
        return Storage("fp8", 8, None, "channel", params)
    if block is None:
        block = tuple(-(-dim // n) for dim, n in zip(weight.shape[-2:], scale.shape[-2:]))
    return Storage("fp8", 8, None, "x".join(map(str, block)), params)


def _byte_weight(weight: TensorHeader, scale: TensorHeader, expected: ConfiguredStorage | None, bias: int) -> Storage:
    """Byte-typed ``weight`` with scales (ModelOpt, int-quantized): fp8 scales mean NVFP4, byte
    scales MXFP4, an 8-bit config int8, otherwise two int4 values per byte (ModelOpt AWQ)."""
    rows, group = math.prod(weight.shape[:-1]), _configured(expected)
    two_per_byte = weight.shape[-1] * 2
    if scale.dtype == "F8_E4M3":
        return _grouped("nvfp4", 4, two_per_byte, scale, rows * two_per_byte + bias, group)
    if scale.dtype in ("U8", "F8_E8M0"):
        return _grouped("mxfp4", 4, two_per_byte, scale, rows * two_per_byte + bias, group)
    if weight.dtype == "I8" and (expected is None or expected.bits in (None, 8)):
        return _grouped("int8", 8, weight.shape[-1], scale, weight.numel + bias, group)
    return _grouped("int4", 4, two_per_byte, scale, rows * two_per_byte + bias, group)
