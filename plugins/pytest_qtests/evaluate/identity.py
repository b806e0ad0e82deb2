"""What a run is: the variant's content identity and the fingerprint of one (variant, task) run.

The identity keys the generation cache and the renderings; the fingerprint is what a baseline is
compared against (a different tokenizer, dataset or engine is a different run, not a regression).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_qtests.records import VariantSpec
from pytest_qtests.store.fingerprint import Fingerprint, model_identity, replay_identity

if TYPE_CHECKING:
    from pytest_qtests.engines.base import Backend
    from pytest_qtests.settings import RunConfig
    from pytest_qtests.tasks.loaders import TaskData


def variant_identity(config: RunConfig, variant: VariantSpec) -> dict[str, Any]:
    """The variant's content identity (config, tokenizer and safetensors headers hashed); a replayed
    variant's is its file of outputs. Read from disk without loading any engine."""
    if config.backend == "replay":
        return replay_identity(config.replay[variant.label])
    return model_identity(variant)


def run_fingerprint(config: RunConfig, identity: dict[str, Any], data: TaskData, template_hash: str,
                    backend: Backend) -> Fingerprint:
    """Everything that determines the run of one variant on one task, with the devices that ran it."""
    return Fingerprint.for_run(
        model=identity,
        task=data.task.name,
        dataset_hash=data.content_hash,
        prompt_template_hash=template_hash,
        sampling=config.sampling,
        thinking=config.thinking,
        repeats=config.repeats,
        engine=config.backend,
        engine_version=backend.engine_version(),
        extra=backend.device_info(),
    )
