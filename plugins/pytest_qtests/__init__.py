"""qtests: a pytest plugin that gates quantized LLM checkpoints against their BF16 reference.

The same gate runs without pytest::

    from pytest_qtests import run_gate

    result = run_gate(reference="bf16=Qwen/Qwen3.5-27B", models=["int4=./out/int4"], tasks=["gsm8k"])
    print(result.summary)
    for check in result.failures():
        print(check.variant, check.check, check.verdict.message)

The names below are the public API; everything else may move between releases.
"""

from pytest_qtests.audit.checkpoint import AuditReport, audit
from pytest_qtests.engines.base import Backend, EngineCapabilities
from pytest_qtests.engines.registry import backend_names, register_backend
from pytest_qtests.options import GateOptions, build_config
from pytest_qtests.records import GenerationRecord, GenerationRequest, ItemOutcome, QtestsError, SamplingParams, VariantSpec
from pytest_qtests.run import CheckVerdict, GateResult, run_gate
from pytest_qtests.session import GateSession, Verdict
from pytest_qtests.settings import RunConfig
from pytest_qtests.tasks.registry import register_task
from pytest_qtests.version import __version__

__all__ = [
    "AuditReport",
    "Backend",
    "CheckVerdict",
    "EngineCapabilities",
    "GateOptions",
    "GateResult",
    "GateSession",
    "GenerationRecord",
    "GenerationRequest",
    "ItemOutcome",
    "QtestsError",
    "RunConfig",
    "SamplingParams",
    "VariantSpec",
    "Verdict",
    "__version__",
    "audit",
    "backend_names",
    "build_config",
    "register_backend",
    "register_task",
    "run_gate",
]
