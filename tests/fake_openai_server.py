"""A scripted OpenAI-compatible server on loopback, for testing the openai backend's fault handling.

The backend's retry, timeout, redaction and fleet logic is what these tests exercise, so the server is
a test double on purpose: a real engine cannot be made to time out, fail with a 503 or send broken
JSON on demand. Generation itself is tested against a real ``vllm serve`` in test_openai_backend.py.

Each POST to ``/v1/completions`` takes the next step of ``script`` (``ok`` once it runs out), or the
step ``by_prompt`` names for its prompt (so a test can make one request slow whatever order they arrive in):
``ok``, ``slow:SECONDS`` (sleep, then ok), ``500``/``503``/``429``/``400``/``401`` (that status; the
body echoes the request's Authorization header, as careless servers do, so redaction is tested),
``malformed`` (a body that is not JSON), ``missing`` (JSON without ``finish_reason``).
An ``ok`` completion echoes the prompt after a short think block, one token per character, cut at
``max_tokens`` with ``finish_reason`` ``length`` - so tests can check order and truncation.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

THINK_PREFIX = "<think>\nechoing\n</think>\n"


class FakeOpenAIServer:
    def __init__(self, script: list[str] | None = None, models: tuple[str, ...] = ("tiny",),
                 owned_by: str = "fakeserver", version: str | None = "9.9.9", by_prompt: dict[str, str] | None = None):
        self.script: deque[str] = deque(script or [])
        self.by_prompt = by_prompt or {}
        self.models = models
        self.owned_by = owned_by
        self.version = version
        # every completions request: headers, body, and (time.perf_counter) when it arrived and was answered
        self.received: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # most completions requests being handled at one time
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def next_step(self, prompt: str) -> str:
        with self._lock:
            if prompt in self.by_prompt:
                return self.by_prompt[prompt]
            return self.script.popleft() if self.script else "ok"

    def entry(self, prompt: str) -> dict[str, Any]:
        """The received request with this prompt (the first, if several)."""
        return next(entry for entry in self.received if entry["body"]["prompt"] == prompt)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def completion_payload(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body["prompt"]
    full = THINK_PREFIX + prompt
    text = full[: body["max_tokens"]]
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop" if text == full else "length"}
    if body.get("return_token_ids"):
        choice["token_ids"] = [ord(character) for character in text]
    return {"choices": [choice], "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text)}}


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self._leave()  # before the client can read the answer and send its next request
            if getattr(self, "_entry", None) is not None:
                self._entry["answered"] = time.perf_counter()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                data = [{"id": model, "object": "model", "owned_by": server.owned_by} for model in server.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())
            elif self.path == "/version" and server.version is not None:
                self._send(200, json.dumps({"version": server.version}).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._entry = {"headers": dict(self.headers), "body": body, "arrived": time.perf_counter()}
            with server._lock:
                server.received.append(self._entry)
                server.in_flight += 1
                server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
            self._counted = True
            try:
                self._answer(body, server.next_step(body["prompt"]))
            except ConnectionError:
                pass  # the client gave up on this request (cancelled or timed out)
            finally:
                self._leave()

        def _leave(self) -> None:
            """This request stops counting as in flight (once), when its answer starts or it ends."""
            if getattr(self, "_counted", False):
                self._counted = False
                with server._lock:
                    server.in_flight -= 1

        def _answer(self, body: dict[str, Any], step: str) -> None:
            if step.startswith("slow:"):
                time.sleep(float(step.split(":", 1)[1]))
                step = "ok"
            if step == "ok":
                self._send(200, json.dumps(completion_payload(body)).encode())
            elif step == "malformed":
                self._send(200, b'{"choices": [{"text": "unterminated')
            elif step == "missing":
                self._send(200, json.dumps({"choices": [{"text": "x"}], "usage": {}}).encode())
            else:
                authorization = self.headers.get("Authorization")
                echoed = json.dumps({"error": f"failed; request had Authorization: {authorization}"})
                self._send(int(step), echoed.encode(), {"Retry-After": "0"} if step == "429" else None)

    return Handler


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
