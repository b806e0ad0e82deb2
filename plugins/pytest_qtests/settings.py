"""The resolved settings of one gate run: what every layer below the options reads.

Kept apart from :mod:`pytest_qtests.options` (which parses flags, suite files and Python arguments into
it) so that engines, the evaluator and the reports can name the type without depending on the option
parser, and the option parser can ask the engine registry for its names without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_qtests.gate.expectations import Expectations
from pytest_qtests.gate.tolerances import Tolerance
from pytest_qtests.records import SamplingParams, VariantSpec
from pytest_qtests.store.cache import DEFAULT_CACHE_DIR

DEFAULT_CANARY = 16


@dataclass
class RunConfig:
    reference: VariantSpec | None
    models: list[VariantSpec]
    tasks: list[str]
    backend: str = "transformers"
    engine_args: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    base_urls: list[str] = field(default_factory=list)
    replay: dict[str, str] = field(default_factory=dict)
    tokenizer: str | None = None  # replay: counts lengths the files do not give
    sampling: SamplingParams = field(default_factory=SamplingParams)
    limit: int | None = None
    repeats: int = 1
    thinking: bool = True
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    gate_mode: str = "evidence-of-harm"
    alpha: float = 0.05
    policies: list[str] = field(default_factory=list)
    canary: int = DEFAULT_CANARY
    parity: tuple[str, str] | None = None  # (engine under test, engine it is held to)
    baseline: str | None = None
    baseline_dir: Path = Path("baselines")
    save_baseline: bool = False
    allow_mismatch: list[str] = field(default_factory=list)
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    report_dir: Path | None = None
    batch_size: int = 64
    expectations: Expectations = field(default_factory=Expectations)
    extend_truncated: float | None = None  # continue truncated samples to this factor x the cap
    stop_early: bool = False  # sequential mode (gate/sequential.py): off by default, see README "Stopping early"
