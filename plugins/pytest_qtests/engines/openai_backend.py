"""OpenAI-compatible backend: any server with a ``/v1/completions`` endpoint (``vllm serve``, SGLang,
TGI, llama.cpp), one server or a fleet of them.

Why the *completions* endpoint and not chat: a chat endpoint re-renders the conversation with the
server's own copy of the chat template (and its own thinking switch). The prompt the model sees would
then depend on the server, and a comparison with the same variant run through vLLM offline or
transformers would compare two different prompts. qtests renders every prompt once, with the model's
template, and sends that exact text; every engine therefore sees byte-identical prompts.

Reliability is the point of this module: a gate that hangs on a dead server, or silently scores a
half-answered run, is worse than none. Every request is retried with exponential backoff and jitter on
connection errors, timeouts, HTTP 429/5xx and malformed responses, and rotated to the next server of
the fleet on each retry; when the retries run out the whole run stops with one line naming the server,
the item, what went wrong and the fix. Configuration errors (bad key, unknown model, rejected request)
are not retried. The API key is read from the environment only and redacted from every message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Sequence

import httpx

from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError, SamplingParams, VariantSpec
from pytest_qtests.engines.base import EngineCapabilities, ProgressCallback, make_record, think_close_id

if TYPE_CHECKING:
    from pytest_qtests.engines.teacher_forcing import TokenScores

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
DETAIL_CHARS = 200  # how much of a server's error body goes into a message


@dataclass(frozen=True)
class ServerInfo:
    """What one base URL says it is: checked equal across a fleet, recorded in the engine version."""

    server: str  # who serves it, from /v1/models ``owned_by`` (vllm, sglang, llamacpp, ...)
    version: str | None  # from ``/version`` where the server has it (vLLM, SGLang)
    model: str  # the served model id every request names


@dataclass(frozen=True)
class Completion:
    """The fields of one completions response that a record needs."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] | None
    latency_s: float


class _Retryable(Exception):
    """A failure another attempt may cure. ``what`` completes "openai server URL ..."."""

    def __init__(self, what: str, detail: str, fix: str, retry_after_s: float | None = None):
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail
        self.fix = fix
        self.retry_after_s = retry_after_s


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        spec: VariantSpec,
        base_urls: list[str],
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout_s: float = 600,
        max_retries: int = 5,
        model_name: str | None = None,
        tokenizer: Any = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ):
        if not base_urls:
            raise QtestsError("the openai backend needs at least one server: pass --base-url http://HOST:PORT/v1")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise QtestsError(
                f"openai backend settings out of range (concurrency {concurrency}, retries {max_retries}, "
                f"timeout {timeout_s}s): concurrency and timeout must be positive, retries at least 0"
            )
        self.spec = spec
        self.base_urls = [normalize_base_url(url) for url in base_urls]
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.model_name = model_name
        self.tokenizer = tokenizer
        # a given tokenizer renders prompts (and counts tokens); a continuation's partial output goes as text
        self.capabilities = EngineCapabilities(renders_prompts=tokenizer is not None, continuation=True, streams=True)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._api_key = os.environ.get(api_key_env) or None  # kept only to send and to redact
        self._info: ServerInfo | None = None
        self._random = random.Random()

    # -- identity --------------------------------------------------------------------------------------
    def server_info(self) -> ServerInfo:
        """Ask every server what it serves; a fleet must serve the same model on the same engine."""
        if self._info is None:
            infos = dict(zip(self.base_urls, asyncio.run(self._discover_all())))
            distinct = set(infos.values())
            if len(distinct) > 1:
                described = "; ".join(f"{url}: {_describe(info)}" for url, info in infos.items())
                raise QtestsError(
                    f"openai servers disagree ({described}); "
                    "point --base-url at servers of one model and engine version"
                )
            self._info = distinct.pop()
        return self._info

    async def _discover_all(self) -> list[ServerInfo]:
        async with self._client() as client:
            return await _gather_or_cancel([self._discover(client, url) for url in self.base_urls])

    async def _discover(self, client: httpx.AsyncClient, base_url: str) -> ServerInfo:
        async def list_models(url: str) -> Any:
            return _decode_json(await self._send(client, "GET", f"{url}/models", None))

        listing = await self._with_retries([base_url], list_models, "GET /models")
        models = listing.get("data") if isinstance(listing, dict) else None
        listed = isinstance(models, list) and all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models)
        if not listed:
            raise QtestsError(
                f"openai server {base_url} answered GET /models without a model list; "
                "check that --base-url points at an OpenAI-compatible API (usually http://HOST:PORT/v1)"
            )
        served = {m["id"]: m for m in models}
        model = self._choose_model(base_url, served)
        owner = served[model].get("owned_by")
        return ServerInfo(server=owner if isinstance(owner, str) and owner else "unknown",
                          version=await _server_version(client, base_url), model=model)

    def _choose_model(self, base_url: str, served: dict[str, dict]) -> str:
        """The model to request: ``model_name`` if given, else the spec's source, else the only one served."""
        wanted = self.model_name or self.spec.source
        if wanted in served:
            return wanted
        if self.model_name is None and len(served) == 1:
            return next(iter(served))
        raise QtestsError(
            f"openai server {base_url} serves {', '.join(sorted(served)) or 'no model'}, not {wanted!r}; "
            "pass the served model name with --openai-model"
        )

    def engine_version(self) -> str:
        info = self.server_info()
        return f"openai-compatible {_describe(info)}"

    def device_info(self) -> dict[str, Any]:
        """Nothing known here: the server's devices are its own (its version is in ``engine_version``)."""
        return {}

    def score(self, texts: Sequence[str]) -> list[TokenScores]:
        raise QtestsError("the openai backend cannot score tokens: use --backend transformers or vllm")

    def close(self) -> None:
        """Nothing held between calls: each ``generate`` opens and closes its own connections."""

    # -- generation ------------------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationRecord]:
        """All requests through one window with no lookahead bound (:meth:`stream`): up to ``concurrency``
        in flight, spread round-robin over the fleet."""
        return list(self.stream(requests, None, progress))

    def stream(
        self, requests: Sequence[GenerationRequest], lookahead: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[GenerationRecord]:
        """Records in request order through a rolling window: requests go out in order, at most
        ``concurrency`` in flight and none more than ``lookahead + concurrency`` past the oldest record not
        yet consumed (``lookahead`` None: no bound). ``lookahead`` answers may wait for the consumer while
        ``concurrency`` more run: with a window of ``concurrency`` alone, one slow answer at its head would
        leave the server idle once the answers behind it are done.

        In request order, not completion order: a consumer that judges what it has so far (``--stop-early``)
        would otherwise see the short answers first. The requests run on an asyncio loop in a thread of
        their own, so the window keeps moving while the consumer works on the records it has, and the
        server never waits for the slowest answer of a batch. asyncio, so that the first request whose
        retries run out (or Ctrl-C) really cancels the others, open connections included; that failure is
        raised at the next record. Closing the iterator (the consumer has seen enough) cancels what is in
        flight and sends nothing more.
        """
        if not requests:
            return
        info = self.server_info()
        close_id = think_close_id(self.tokenizer) if self.tokenizer is not None else None
        answers: list[Future[Completion]] = [Future() for _ in requests]
        ahead = asyncio.Semaphore(len(requests) if lookahead is None else lookahead + self.concurrency)
        loop = asyncio.new_event_loop()
        sender = loop.create_task(self._send_in_order(info, requests, answers, ahead))
        thread = threading.Thread(target=_drive, args=(loop, sender), name="qtests-openai", daemon=True)
        thread.start()
        try:
            for request, answer in zip(requests, answers):
                c = answer.result()
                loop.call_soon_threadsafe(ahead.release)
                if progress:
                    progress(1)
                yield make_record(request, c.text, c.prompt_tokens, c.token_ids, c.finish_reason, c.latency_s,
                                  close_id, output_tokens=c.completion_tokens)
        finally:
            loop.call_soon_threadsafe(sender.cancel)
            thread.join()
            loop.close()

    async def _send_in_order(self, info: ServerInfo, requests: Sequence[GenerationRequest],
                             answers: list[Future[Completion]], ahead: asyncio.Semaphore) -> None:
        """Send ``requests`` in order as ``ahead`` (the window) and the ``concurrency`` slots allow; each
        completion goes to its answer, the first failure to every answer still open (and ends the sending)."""
        slots = asyncio.Semaphore(self.concurrency)
        fleet = len(self.base_urls)
        sender = asyncio.current_task()
        assert sender is not None

        async with self._client() as client:
            async def complete(index: int, request: GenerationRequest) -> None:
                body = completion_body(info, request)
                first = index % fleet  # round-robin over the fleet; each retry moves on to the next server
                try:
                    completion = await self._with_retries(
                        self.base_urls[first:] + self.base_urls[:first],
                        lambda url: self._post_completion(client, url, body, request.prompt + request.continuation),
                        f"item {request.item_id}")
                except Exception as failure:  # noqa: BLE001 - handed to the consumer, who raises it
                    for answer in answers:
                        if not answer.done():
                            answer.set_exception(failure)
                    sender.cancel()
                    return
                finally:
                    slots.release()
                if not answers[index].done():
                    answers[index].set_result(completion)

            tasks: list[asyncio.Task[None]] = []
            try:
                for index, request in enumerate(requests):
                    await ahead.acquire()
                    await slots.acquire()
                    tasks.append(asyncio.create_task(complete(index, request)))
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _with_retries(self, urls: list[str], call: Callable[[str], Awaitable[Any]], subject: str) -> Any:
        """``await call(url)`` until it succeeds, attempt ``k`` going to ``urls[k % len(urls)]``."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            url = urls[attempt % len(urls)]
            try:
                return await call(url)
            except _Retryable as failure:
                if attempt + 1 == attempts:
                    raise QtestsError(self._redact(
                        f"openai server {url} {failure.what} on all {attempts} attempts for {subject}: "
                        f"{failure.detail}; {failure.fix}")) from None
                delay = self._backoff(attempt, failure.retry_after_s)
                log.warning(self._redact(
                    f"openai server {url} {failure.what} for {subject} (attempt {attempt + 1}/{attempts}); "
                    f"retrying in {delay:.2f}s"))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter (so a fleet of clients does not retry in lockstep), at least
        the server's ``Retry-After``, never more than ``backoff_max_s``."""
        delay = self.backoff_s * 2**attempt * self._random.uniform(0.5, 1.5)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, self.backoff_max_s)

    # -- one HTTP exchange -------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )

    async def _post_completion(self, client: httpx.AsyncClient, base_url: str, body: dict[str, Any],
                               prompt: str) -> Completion:
        started = time.perf_counter()
        response = await self._send(client, "POST", f"{base_url}/completions", body)
        latency = time.perf_counter() - started
        return self._parse_completion(_decode_json(response), prompt, latency)

    async def _send(self, client: httpx.AsyncClient, method: str, url: str,
                    body: dict[str, Any] | None) -> httpx.Response:
        try:
            response = await client.request(method, url, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"did not answer within {self.timeout_s:g}s", f"{method} {url} timed out",
                             "raise the openai timeout, lower the concurrency, or check the server load") from None
        except httpx.TransportError as error:
            raise _Retryable("is not reachable", f"{type(error).__name__}: {error}",
                             "start the server (e.g. `vllm serve MODEL --port PORT`) or fix --base-url") from None
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise _Retryable(f"returned HTTP {status}", _body_excerpt(response), "check the server log",
                             _retry_after(response))
        if status in (401, 403):
            raise QtestsError(self._redact(
                f"openai server {url} refused the request (HTTP {status}: {_body_excerpt(response)}); "
                f"set {self.api_key_env} to a key this server accepts"))
        if status >= 400:
            raise QtestsError(self._redact(
                f"openai server {url} rejected the request (HTTP {status}: {_body_excerpt(response)}); "
                "check --base-url (it usually ends in /v1), the model name, and --max-tokens against the "
                "server's context length"))
        return response

    def _parse_completion(self, payload: Any, prompt: str, latency: float) -> Completion:
        """The completion, or ``_Retryable`` naming the first field that is missing or of the wrong type."""
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = payload.get("error") if isinstance(payload, dict) else None
            raise _malformed(f"no choices in the response{f' (error: {error})' if error else ''}")
        choice = choices[0]
        text, finish_reason = choice.get("text"), choice.get("finish_reason")
        if not isinstance(text, str):
            raise _malformed("choices[0].text is missing or not a string")
        if not isinstance(finish_reason, str):
            raise _malformed("choices[0].finish_reason is missing or not a string")
        token_ids = choice.get("token_ids")
        if not (isinstance(token_ids, list) and all(isinstance(t, int) for t in token_ids)):
            token_ids = None
        prompt_tokens, completion_tokens = self._usage(payload.get("usage"), prompt, text)
        return Completion(text, finish_reason, prompt_tokens, completion_tokens, token_ids, latency)

    def _usage(self, usage: Any, prompt: str, text: str) -> tuple[int, int]:
        """(prompt, completion) token counts from ``usage``; counted with the tokenizer if the server
        sent none (some servers omit usage), else the response is unusable for length metrics."""
        if isinstance(usage, dict):
            prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
                return prompt_tokens, completion_tokens
        if self.tokenizer is not None:
            return _count_tokens(self.tokenizer, prompt), _count_tokens(self.tokenizer, text)
        raise _malformed("usage.prompt_tokens/completion_tokens missing (give the backend the model's tokenizer "
                         "to count tokens itself)")

    def _redact(self, message: str) -> str:
        return message.replace(self._api_key, REDACTED) if self._api_key else message


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/`` mean ``http://host:8000/v1``; other paths are kept
    as given (proxies mount the API elsewhere)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise QtestsError(f"--base-url {url!r} is not an http(s) URL; write it as http://HOST:PORT/v1")
    path = url.partition("://")[2].partition("/")[2]
    return url if path else f"{url}/v1"


def completion_body(info: ServerInfo, request: GenerationRequest) -> dict[str, Any]:
    """The JSON body for one request: the rendered prompt verbatim, the run's sampling, a per-sample seed.

    ``top_k``/``min_p`` are not in OpenAI's API but vLLM, SGLang and llama.cpp accept them; they are sent
    only when they change decoding (0 means off), so servers without them still take greedy runs.
    vLLM additionally returns the output token ids (exact thinking counts) and is told not to add a
    BOS token: the rendered chat template already holds every special token the model needs.
    """
    sampling: SamplingParams = request.sampling
    body: dict[str, Any] = {
        "model": info.model,
        "prompt": request.prompt + request.continuation,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": request.seed,
        "n": 1,
        "stream": False,
    }
    if sampling.top_k > 0:
        body["top_k"] = sampling.top_k
    if sampling.min_p > 0:
        body["min_p"] = sampling.min_p
    if info.server == "vllm":
        body["return_token_ids"] = True
        body["add_special_tokens"] = False
    return body


def _count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


async def _gather_or_cancel(jobs: list[Awaitable[Any]]) -> list[Any]:
    """Results of all jobs in order; the first failure cancels the rest (and closes their requests)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _drive(loop: asyncio.AbstractEventLoop, sender: asyncio.Task[None]) -> None:
    """Run ``sender`` to its end on ``loop`` (in the stream's thread); its outcome reaches the consumer
    through the answers, so a cancellation ends here quietly."""
    try:
        loop.run_until_complete(sender)
    except asyncio.CancelledError:
        pass
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())


async def _server_version(client: httpx.AsyncClient, base_url: str) -> str | None:
    """``/version`` at the server root (vLLM, SGLang); None where the server has no such route."""
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    try:
        response = await client.get(f"{root}/version")
        version = response.json().get("version") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def _describe(info: ServerInfo) -> str:
    version = f" {info.version}" if info.version else ""
    return f"{info.server}{version} model {info.model}"


def _decode_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise _malformed(f"{type(error).__name__} in body {_body_excerpt(response)!r}") from None


def _malformed(detail: str) -> _Retryable:
    return _Retryable("returned malformed JSON", detail, "check the server log")


def _body_excerpt(response: httpx.Response) -> str:
    text = response.content.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:DETAIL_CHARS] + ("..." if len(text) > DETAIL_CHARS else "") if text else "(empty body)"


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, when the server gives it as a number (the HTTP-date form is ignored)."""
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
