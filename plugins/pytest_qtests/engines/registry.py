"""Engines behind one interface: ``generate(requests) -> records``. ``create_backend`` picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_qtests.records import QtestsError, VariantSpec

if TYPE_CHECKING:
    from pytest_qtests.options import RunConfig

BACKENDS = ("transformers", "vllm", "openai", "replay")


def create_backend(config: RunConfig, variant: VariantSpec, hooks: Any = None) -> Any:
    """A new (lazily loading) engine for ``variant`` as the run's settings ask; implementations of the
    ``pytest_qtests_make_backend`` hook are asked first."""
    if hooks is not None:
        from pytest_qtests.hooks import call_hook

        made = call_hook(hooks.pytest_qtests_make_backend, name=config.backend, variant=variant, config=config)
        if made is not None:
            return made
    if config.backend == "transformers":
        from pytest_qtests.engines.transformers_backend import TransformersBackend

        return TransformersBackend(variant, dtype=config.dtype, batch_size=config.batch_size)
    if config.backend == "vllm":
        from pytest_qtests.engines.vllm_backend import VLLMBackend

        dtype = "bfloat16" if config.dtype == "auto" else config.dtype
        return VLLMBackend(variant, engine_args=config.engine_args, dtype=dtype)
    if config.backend == "openai":
        from pytest_qtests.engines.openai_backend import OpenAIBackend

        if not config.base_urls:
            raise QtestsError("--backend openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend(variant, base_urls=config.base_urls)
    if config.backend == "replay":
        from pytest_qtests.engines.replay_backend import ReplayBackend, replay_path

        return ReplayBackend(replay_path(config, variant), tokenizer=_tokenizer(config.tokenizer))
    raise QtestsError(f"unknown backend {config.backend!r}: choose one of {', '.join(BACKENDS)}, or add it with a "
                      "pytest_qtests_make_backend hook")


def _tokenizer(source: str | None) -> Any:
    """``--tokenizer``: the tokenizer replayed lengths are counted with (None: counted in words)."""
    if source is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise QtestsError(f"--tokenizer {source} cannot be loaded ({str(error).splitlines()[0]}); pass a local "
                          "tokenizer directory or a hub id in the local cache") from None
