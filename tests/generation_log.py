"""pytest plugin that logs engine creations, model loads and real ``generate`` calls of the transformers backend.

Loaded with ``-p generation_log`` (this folder on PYTHONPATH) and ``QT_TEST_LOG=FILE``: every process
(xdist controller and workers) appends JSON lines, so a test or ``benchmarks/gpu_check.sh`` can count how
often each model was loaded and generated, by which worker, and which GPU slice each worker was pinned to. It
observes only; the generation is real.
"""

import json
import os

from pytest_qtests.engines import transformers_backend

_generate = transformers_backend.TransformersBackend.generate


def _log(entry):
    with open(os.environ["QT_TEST_LOG"], "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def generate(self, requests, progress=None):
    records = _generate(self, requests, progress)
    _log({"generate": self.spec.label, "n": len(requests), "tokens": sum(r.output_tokens for r in records),
          "pid": os.getpid(), "worker": os.environ.get("PYTEST_XDIST_WORKER", "controller")})
    return records


transformers_backend.TransformersBackend.generate = generate
_init = transformers_backend.TransformersBackend.__init__


def init(self, spec, *args, **kwargs):
    _log({"engine": spec.label, "pid": os.getpid()})
    _init(self, spec, *args, **kwargs)


transformers_backend.TransformersBackend.__init__ = init
_load = transformers_backend.TransformersBackend._load


def load(self):
    if self._model is None:  # the weights are about to be read: a real load
        _log({"load": self.spec.label, "pid": os.getpid()})
    _load(self)


transformers_backend.TransformersBackend._load = load


def pytest_sessionstart(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid", "controller")
    _log({"worker": worker, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
