"""Run a function in a child process under a hard wall-clock deadline.

Why a process: math-verify's own time limit is a ``signal.alarm`` that raises inside the computation.
That works only in the main thread, cannot interrupt C code (a huge integer power, a regex), and is
lost when the alarm lands where exceptions are swallowed (a ``__del__`` or gc callback — seen in this
project's tests). A grader must never hang a whole evaluation, so the call runs in a child process that
is killed at the deadline and started afresh for the next call.
"""

from __future__ import annotations

import importlib
import multiprocessing
import threading
from typing import Any, Callable

STARTUP_TIMEOUT_S = 120.0
"""Generous: the child imports its preloads (sympy takes seconds on a busy two-core machine)."""


class DeadlineExceeded(Exception):
    """The call did not finish in time; its child process was killed."""


class DeadlineWorker:
    """One child process that runs module-level functions, one call at a time, each with a deadline.

    ``preload`` modules are imported when the child starts, before any deadline runs, so slow imports
    never count against a call. Thread-safe: calls from several threads are serialised.
    """

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self._preload = preload
        self._lock = threading.Lock()
        self._process: Any = None
        self._connection: Any = None

    def call(self, function: Callable[..., Any], args: tuple[Any, ...], deadline_s: float) -> Any:
        """``function(*args)`` in the child; re-raises its exception, or :class:`DeadlineExceeded`."""
        with self._lock:
            self._ensure_started()
            self._connection.send((function, args))
            if not self._connection.poll(deadline_s):
                self._stop()
                raise DeadlineExceeded(f"{function.__name__} ran past {deadline_s:g} s")
            try:
                ok, value = self._connection.recv()
            except EOFError:  # the child died (out of memory, killed): start a fresh one next time
                self._stop()
                raise RuntimeError(f"deadline worker died while running {function.__name__}") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold engine threads
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_serve, args=(child_end, self._preload), daemon=True)
        process.start()
        child_end.close()
        if not parent_end.poll(STARTUP_TIMEOUT_S):
            process.kill()
            raise RuntimeError(f"deadline worker did not start within {STARTUP_TIMEOUT_S:g} s")
        parent_end.recv()  # the child's "ready"
        self._process, self._connection = process, parent_end

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._connection.close()
        self._process = self._connection = None


def _serve(connection: Any, preload: tuple[str, ...]) -> None:
    """The child's loop: import the preloads, say ready, then answer calls until the pipe closes."""
    for module in preload:
        importlib.import_module(module)
    connection.send("ready")
    while True:
        try:
            function, args = connection.recv()
        except EOFError:
            return
        try:
            connection.send((True, function(*args)))
        except BaseException as error:  # noqa: BLE001 - every failure goes back to the caller
            try:
                connection.send((False, error))
            except Exception:  # the exception itself cannot be pickled: send its text
                connection.send((False, RuntimeError(f"{type(error).__name__}: {error}")))
