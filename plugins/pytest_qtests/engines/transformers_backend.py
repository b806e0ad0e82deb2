"""transformers backend: batched ``generate`` with left padding, on CUDA when present, else the CPU.

Requests are grouped by sampling parameters and sorted by prompt length so each batch pads little.
transformers has no per-request seed, so each batch is seeded from its first request's seed: a re-run
with the same requests and batch size reproduces the same samples (the cache key records the engine
version, which includes the batch size for that reason).
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from itertools import groupby
from typing import Any, Iterator, Sequence

from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, SamplingParams, VariantSpec
from pytest_qtests.engines.teacher_forcing import TOP_K, TokenScores, scores_from_logits
from pytest_qtests.engines.base import EngineCapabilities, EngineLoadError, ProgressCallback, free_device_memory, last_error_line, make_record, prompt_token_ids, think_close_id
from pytest_qtests.engines.load_hints import explain_load_failure
from pytest_qtests.packages import installed_version


def device_info() -> dict[str, Any]:
    """The accelerator that ran the generations, for fingerprints and reports (on a machine without a GPU
    driver, worked out without importing torch: see :func:`cuda_possible`)."""
    if cuda_possible():
        import torch

        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            info = {"device": "cuda", "device_name": props.name,
                    "device_memory_gib": round(props.total_memory / 2**30, 1), "device_count": torch.cuda.device_count()}
            if "CUDA_VISIBLE_DEVICES" in os.environ:  # e.g. the slice --gpus-per-worker gave this xdist worker
                info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
            return info
    info = {"device": "cpu", "device_name": "cpu", "cpus": len(os.sched_getaffinity(0))}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return info


def cuda_possible() -> bool:
    """False only where ``torch.cuda.is_available()`` cannot be true: Linux with no NVIDIA or ROCm driver
    device node. There a fully cached re-run names its device without importing torch (seconds)."""
    return sys.platform != "linux" or any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/kfd"))


class TransformersBackend:
    name = "transformers"
    capabilities = EngineCapabilities(renders_prompts=True, teacher_forced_scoring=True, continuation=True)

    def __init__(self, spec: VariantSpec, dtype: str = "auto", batch_size: int = 64, device: str | None = None):
        self.spec = spec
        self.dtype = dtype
        self.batch_size = batch_size
        self._device = device
        self._model: Any = None
        self._tokenizer: Any = None

    # -- engine lifecycle ------------------------------------------------------------------------
    # Everything the fingerprint and the cache keys need (engine version, device, dtype) is worked out
    # from the config and the machine, never from the weights: a fully cached re-run loads no model.
    def _resolved_device(self) -> str:
        if self._device is None:
            self._device = "cuda" if device_info()["device"] == "cuda" else "cpu"
        return self._device

    def _load_dtype(self) -> str:
        """What ``from_pretrained`` is given: ``"auto"`` (the checkpoint's dtype) or a torch dtype's name.

        "auto" keeps the checkpoint's dtype on GPUs; CPUs without native bf16 compute it in float32 (an
        exact upcast of bf16 weights, and ~4x faster than emulated bf16 on such a CPU). compressed-tensors
        computes in the dtype its unquantized tensors are stored in, whatever the config says (a float32
        model around bf16 MXFP4 layers fails: float != BFloat16)."""
        if self.dtype == "auto" and _is_compressed_tensors(self.spec.source):
            return _stored_float_dtype(self.spec.source) or "auto"
        if self.dtype == "auto":
            return "auto" if self._resolved_device() != "cpu" or _cpu_has_bf16() else "float32"
        return self.dtype

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(
                    self.spec.source, revision=self.spec.revision, trust_remote_code=self.spec.trust_remote_code,
                    padding_side="left")
            except Exception as error:  # any loading failure becomes one line for this variant
                raise EngineLoadError(
                    f"transformers could not load {self.spec.label} ({self.spec.source}): "
                    f"{explain_load_failure(error, self.spec)}"
                ) from error
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    def _load(self) -> None:
        """Load the weights, once, when something has to be generated or scored."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM

        self._load_tokenizer()
        device, dtype = self._resolved_device(), self._load_dtype()
        dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        try:
            _check_quantization_method(self.spec)
            with _loader_state_restored():
                model = AutoModelForCausalLM.from_pretrained(
                    self.spec.source, revision=self.spec.revision, trust_remote_code=self.spec.trust_remote_code,
                    dtype=dtype)
            model.to(device).eval()
        except EngineLoadError:
            raise
        except Exception as error:  # any engine failure becomes one line for this variant
            raise EngineLoadError(
                f"transformers could not load {self.spec.label} ({self.spec.source}): "
                f"{explain_load_failure(error, self.spec)}"
            ) from error
        self._model = model

    def device_info(self) -> dict[str, Any]:
        """The devices, and the dtype the loader is given for this checkpoint (recorded, not compared): the
        checkpoint's own (config.json) when that is "auto". Known without the weights, so a cached re-run
        records the same; an integration may still compute in another (auto-round forces float16 on a CPU)."""
        dtype = self._load_dtype()
        return {**device_info(), "load_dtype": _config_dtype(self.spec.source) if dtype == "auto" else dtype}

    @property
    def tokenizer(self) -> Any:
        return self._load_tokenizer()

    def engine_version(self) -> str:
        # the dtype as asked (like vLLM's): "auto" resolves per checkpoint, so the resolved one would make
        # every variant's settings differ from its stored baseline's; it is recorded in device_info() instead
        return (f"transformers {installed_version('transformers')} "
                f"({self._resolved_device()}, {self.dtype}, batch {self.batch_size})")

    def close(self) -> None:
        loaded, self._model, self._tokenizer = self._model is not None, None, None
        if loaded:  # nothing to give back (nor torch to import) when only the cache was read
            free_device_memory()

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        self._load()
        order = sorted(range(len(requests)), key=lambda i: (_sampling_key(requests[i].sampling),
                                                            len(requests[i].prompt + requests[i].continuation)))
        records: dict[int, GenerationRecord] = {}
        for _, group in groupby(order, key=lambda i: _sampling_key(requests[i].sampling)):
            indices = list(group)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for index, record in zip(batch, self._generate_batch([requests[i] for i in batch])):
                    records[index] = record
                if progress:
                    progress(len(batch))
        return [records[i] for i in range(len(requests))]

    def _generate_batch(self, batch: list[GenerationRequest]) -> list[GenerationRecord]:
        import torch

        tokenizer, model = self._tokenizer, self._model
        sampling = batch[0].sampling
        ids = [prompt_token_ids(tokenizer, r) for r in batch]
        encoded = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self._device)
        _check_context(self.spec, model.config, encoded["input_ids"].shape[1], sampling.max_tokens)
        torch.manual_seed(batch[0].seed)
        started = time.perf_counter()
        try:
            with torch.no_grad():
                output = model.generate(**encoded, pad_token_id=tokenizer.pad_token_id,
                                        max_new_tokens=sampling.max_tokens, **_generate_kwargs(sampling))
        except RuntimeError as error:  # the engine died mid-run: finished chunks are cached, a rerun resumes
            raise QtestsError(_generation_failure(self.spec, error)) from None
        latency = (time.perf_counter() - started) / len(batch)
        new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
        stop_ids = _stop_ids(model, tokenizer)
        close_id = think_close_id(tokenizer)
        records = []
        for request, row, mask in zip(batch, new_tokens, encoded["attention_mask"].tolist()):
            token_ids, stopped = _until_stop(row, stop_ids)
            text = tokenizer.decode(token_ids, skip_special_tokens=True)
            finish = "stop" if stopped else "length"
            records.append(make_record(request, text, sum(mask), token_ids, finish, latency, close_id))
        return records

    def score(self, texts: Sequence[str], top_k: int = TOP_K) -> list[TokenScores]:
        """Teacher-forced scores of every token after the first (same shape as the vLLM backend's)."""
        import torch

        self._load()
        scored = []
        for text in texts:
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = self._model(torch.tensor([ids], device=self._device)).logits[0]
            scored.append(scores_from_logits(ids, logits.cpu(), top_k))
        return scored


@contextmanager
def _loader_state_restored() -> Iterator[None]:
    """Undo the global changes an engine integration makes to transformers while loading a checkpoint.

    auto-round, loading its own MoE checkpoints, re-registers transformers' checkpoint conversion
    mapping for the model type (``register_checkpoint_conversion_mapping(..., overwrite=True)``, dropping
    the step that fuses per-expert weights) and never restores it: a BF16 model of the same type loaded
    later in the same process then leaves its experts unfilled and generates gibberish (measured on the
    zoo: the reference loaded after int4-default). The loaded model keeps what it was built with.
    """
    from copy import deepcopy

    import transformers.conversion_mapping as conversion

    cache = deepcopy(conversion._checkpoint_conversion_mapping_cache)
    registered = set(conversion.USER_REGISTERED_MAPPINGS)
    try:
        yield
    finally:
        conversion._checkpoint_conversion_mapping_cache = cache
        conversion.USER_REGISTERED_MAPPINGS.clear()
        conversion.USER_REGISTERED_MAPPINGS.update(registered)


def _check_quantization_method(spec: VariantSpec) -> None:
    """transformers loads a checkpoint whose quantization method it does not know *unquantized*, with only
    a log warning: the gate would then pass or fail a model nobody deploys. Refuse it instead (local
    checkpoints: their config.json is read as plain JSON)."""
    import json
    from pathlib import Path

    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

    config_file = Path(spec.source) / "config.json"
    quant = json.loads(config_file.read_text()).get("quantization_config") if config_file.is_file() else None
    if not isinstance(quant, dict) or quant.get("load_in_4bit") or quant.get("load_in_8bit"):
        return
    method = quant.get("quant_method")
    if method not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        raise EngineLoadError(
            f"transformers could not load {spec.label} ({spec.source}): unknown quantization method {method!r} "
            "in its config.json (transformers would silently load it unquantized); install the package that "
            "provides it, or use an engine that knows it (--backend vllm)"
        )


def context_length(config: Any) -> int | None:
    """The longest sequence the model was built for: ``max_position_embeddings``, or the scaled length
    when rope scaling (YaRN) extends it."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text_config, "max_position_embeddings", None)
    scaling = getattr(text_config, "rope_scaling", None) or {}
    original, factor = scaling.get("original_max_position_embeddings"), scaling.get("factor")
    if isinstance(original, int) and isinstance(factor, (int, float)):
        positions = max(positions or 0, int(original * factor))
    return positions if isinstance(positions, int) and positions > 0 else None


def _check_context(spec: VariantSpec, config: Any, prompt_tokens: int, max_tokens: int) -> None:
    """Positions past the context are silently garbage in most models: refuse before generating."""
    context = context_length(config)
    if context is not None and prompt_tokens + max_tokens > context:
        raise QtestsError(
            f"{spec.label}: a prompt of {prompt_tokens} tokens plus --max-tokens {max_tokens} exceeds the model's "
            f"context of {context} tokens (max_position_embeddings); lower --max-tokens to at most "
            f"{max(context - prompt_tokens, 1)}"
        )


def _generation_failure(spec: VariantSpec, error: RuntimeError) -> str:
    line = last_error_line(error)
    if re.search(r"\b(nan|inf)\b", line, re.IGNORECASE):
        return (f"{spec.label} produced NaN or infinite logits while generating ({line}): its weights or scales "
                "hold NaN/inf or overflow the dtype; check the export, or try --dtype float32")
    return f"transformers failed while generating for {spec.label} ({line}); finished generations are cached, rerun to resume"


def _is_compressed_tensors(source: str) -> bool:
    """compressed-tensors dequantizes to the checkpoint dtype and refuses a float32 model around it."""
    import json
    from pathlib import Path

    config = Path(source) / "config.json"
    if not config.is_file():
        return False
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    return quant.get("quant_method") == "compressed-tensors"


_FLOAT_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def _stored_float_dtype(source: str) -> str | None:
    """The dtype (torch's name) most of a local checkpoint's unquantized float parameters are stored in
    (scales aside: formats fix their dtype), read from the safetensors headers; None when there are none."""
    from pytest_qtests.audit.headers import read_headers

    counts: dict[str, int] = {}
    for tensor in read_headers(source).tensors:
        if tensor.dtype in _FLOAT_DTYPES and "scale" not in tensor.name:
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel
    return _FLOAT_DTYPES[max(counts, key=counts.get)] if counts else None


def _config_dtype(source: str) -> str:
    """The dtype a checkpoint's config.json names (``dtype``, or the older ``torch_dtype``), "auto" when none."""
    import json
    from pathlib import Path

    config = Path(source) / "config.json"
    fields = json.loads(config.read_text()) if config.is_file() else {}
    text_config = fields.get("text_config") or {}
    return str(fields.get("dtype") or fields.get("torch_dtype") or text_config.get("dtype")
               or text_config.get("torch_dtype") or "auto")


def _cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _sampling_key(sampling: SamplingParams) -> tuple:
    return (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p, sampling.max_tokens)


def _generate_kwargs(sampling: SamplingParams) -> dict[str, Any]:
    if sampling.temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    kwargs: dict[str, Any] = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                              "top_k": sampling.top_k or None}
    if sampling.min_p:
        kwargs["min_p"] = sampling.min_p
    return kwargs


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _until_stop(row: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """Generated ids up to and including the first stop token; whether one was produced."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return row[: position + 1], True
    return row, False
