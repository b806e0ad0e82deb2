"""pytest-xdist: whole variants per worker, one GPU slice per worker, and which process does what.

With ``pytest -n W --gpus-per-worker N`` worker ``gwK`` sees only devices ``K*N .. K*N+N-1`` of the
devices the controller saw, so W tensor-parallel engines share one host without fighting over a card.
The slice is written to ``CUDA_VISIBLE_DEVICES`` when the worker configures itself, before any engine
(or torch) initialises CUDA, which reads that variable once.

Roles: the *controller* evaluates nothing and owns the user-facing output (verdict table, reports,
baselines), rebuilt from the runs the *workers* published (see :mod:`pytest_qtests.store.run_store`). A
plain ``pytest`` without ``-n`` is neither: it evaluates and reports itself.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, Callable, Mapping, Sequence

import pytest

from pytest_qtests.records import QtestsError

RUN_ID_INPUT = "qtests_run_id"  # workerinput keys the controller hands every worker
DEVICES_INPUT = "qtests_devices"

_WORKER_ID = re.compile(r"^gw(\d+)$")


def worker_index(worker_id: str) -> int:
    """``gw3`` -> 3: xdist numbers its workers from 0 in the order it starts them."""
    match = _WORKER_ID.match(worker_id)
    if match is None:
        raise QtestsError(f"xdist worker id {worker_id!r} is not gwN: --gpus-per-worker needs pytest-xdist's -n")
    return int(match.group(1))


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Devices named by a ``CUDA_VISIBLE_DEVICES`` value (ids or UUIDs); None when it is unset."""
    if value is None:
        return None
    return [device.strip() for device in value.split(",") if device.strip()]


def available_devices(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The CUDA devices this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every card.

    Counting cards without the variable imports torch but creates no CUDA context (device_count asks
    NVML), so the controller stays free of GPU memory.
    """
    named = parse_visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    if named is not None:
        return named
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def check_gpu_budget(workers: int, per_worker: int, devices: Sequence[str]) -> None:
    """Refuse a run whose workers would need more GPUs than there are, before any worker starts."""
    if per_worker < 1:
        raise QtestsError(f"--gpus-per-worker must be a positive integer, got {per_worker}")
    needed = workers * per_worker
    if needed > len(devices):
        raise QtestsError(
            f"--gpus-per-worker {per_worker} with {workers} xdist workers needs {needed} GPUs but {len(devices)} "
            f"are visible ({','.join(devices) or 'none'}): lower -n or --gpus-per-worker"
        )


def gpu_slice(worker_id: str, per_worker: int, devices: Sequence[str]) -> list[str]:
    """The devices of worker ``worker_id``: the K-th block of ``per_worker`` consecutive devices."""
    index = worker_index(worker_id)
    check_gpu_budget(index + 1, per_worker, devices)
    start = index * per_worker
    return list(devices[start : start + per_worker])


# -- roles -------------------------------------------------------------------------------------------

def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """True in the process that hands tests to xdist workers (and so runs none itself)."""
    if is_worker(config) or config.getoption("collectonly", False):
        return False
    return config.getoption("dist", "no") != "no"


def worker_count(config: pytest.Config) -> int | None:
    """How many workers ``-n`` asked for (xdist has already resolved ``auto``); None with ``--tx``."""
    count = config.getoption("numprocesses", None)
    return count if isinstance(count, int) else None


def published_run_id(config: pytest.Config) -> str | None:
    """The id under which this worker publishes its runs for the controller; None outside xdist."""
    return config.workerinput.get(RUN_ID_INPUT) if is_worker(config) else None


def scope_of(nodeid: str, scopes: Mapping[str, str]) -> str:
    """The scheduling unit of a test: its variant when its parameter id is a qtests case, else itself.

    ``qtests/test_gate.py::test_accuracy[int4-gsm8k]`` -> ``int4`` (``scopes`` maps case ids to labels).
    """
    start, end = nodeid.rfind("["), nodeid.rfind("]")
    if 0 <= start < end:
        return scopes.get(nodeid[start + 1 : end], nodeid)
    return nodeid


class ControllerHooks:
    """Registered on the controller only: hands each worker the run id and the devices to slice, and
    schedules whole variants onto workers.

    Every test of a variant must run on one worker, or each worker it touches loads that variant's
    engine. pytest-xdist's own ``loadgroup`` no longer groups under pytest 9 (it renames items through
    an attribute pytest 9 no longer reads), so qtests schedules by variant itself, through xdist's
    documented scheduler hook, whenever the user left xdist on ``load`` (the ``-n`` default) or asked
    for ``loadgroup``; other schedulers the user chose are kept.
    """

    def __init__(self, devices: list[str] | None, case_scopes: Callable[[], dict[str, str]]):
        self.run_id = uuid.uuid4().hex
        self.devices = devices
        self.case_scopes = case_scopes

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_ID_INPUT] = self.run_id
        if self.devices is not None:
            node.workerinput[DEVICES_INPUT] = list(self.devices)

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getoption("dist") not in ("load", "loadgroup"):
            return None
        from xdist.scheduler import LoadScopeScheduling

        scopes = self.case_scopes()

        class VariantScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return scope_of(nodeid, scopes)

        return VariantScheduling(config, log)


def pin_worker_devices(config: pytest.Config, per_worker: int | None) -> list[str] | None:
    """On a worker with ``--gpus-per-worker``: set ``CUDA_VISIBLE_DEVICES`` to its slice; returns it."""
    if not per_worker or not is_worker(config):
        return None
    devices = config.workerinput.get(DEVICES_INPUT)
    if devices is None:
        return None
    chosen = gpu_slice(config.workerinput["workerid"], per_worker, devices)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    return chosen
