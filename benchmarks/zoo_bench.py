"""Shared pieces of the speed benchmarks: the zoo reference on vLLM-CPU, the machine, timing and memory.

Every benchmark runs from the repository root (the zoo task is addressed relative to it), offline, with
vLLM-CPU limited to 1 GiB of KV cache and ``enforce_eager`` (torch.compile would add minutes of engine
start on 2 cores and says nothing about the harness).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "fixtures/zoo/tiny-qwen3next"
TASK = "zoo"
MAX_TOKENS = 96  # the zoo suite's cap: the longest (8-digit) chains need about 90 tokens
SAMPLING = "qwen-thinking"  # temperature 0.6, top-p 0.95, top-k 20
ENGINE_ARGS = {"enforce_eager": "true"}
ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare() -> None:
    """Run from the repo root with the offline engine settings and this checkout's plugin first on the path."""
    os.chdir(REPO)
    os.environ.update(ENV)
    plugins = str(REPO / "plugins")
    if plugins not in sys.path:
        sys.path.insert(0, plugins)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))


def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average tells how contended the cores were."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version()}


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def children_rss_mb() -> float:
    """Resident memory of this process's children (vLLM's engine core runs in one)."""
    import psutil

    return sum(child.memory_info().rss for child in psutil.Process().children(recursive=True)) / 2**20


class PeakRss:
    """Samples this process's RSS every ``interval`` seconds while active; ``peak_mb`` is the largest seen."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak_mb = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table (benchmarks print to logs and terminals alike)."""
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
