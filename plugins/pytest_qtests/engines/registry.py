"""Engines by name: ``create_backend`` builds the one a run asks for; ``register_backend`` adds another.

A factory takes the run's settings and one variant and returns a (lazily loading) :class:`Backend`. The
built-in engines are registered here with factories that import their module only when called, so
importing qtests imports neither vLLM nor transformers (a fully cached re-run never does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pytest_qtests.records import QtestsError, VariantSpec

if TYPE_CHECKING:
    from pytest_qtests.engines.base import Backend
    from pytest_qtests.settings import RunConfig

BackendFactory = Callable[["RunConfig", VariantSpec], "Backend"]

_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make ``--backend NAME`` (``RunConfig(backend=NAME)``) build its engines with ``factory``.

    Registering a taken name is refused unless ``replace`` is set, so two plugins cannot silently
    shadow each other's engine.
    """
    if not name or not isinstance(name, str):
        raise QtestsError(f"a backend name must be a non-empty string, got {name!r}")
    if name in _FACTORIES and not replace:
        raise QtestsError(f"backend {name!r} is already registered: pick another name, or pass replace=True")
    _FACTORIES[name] = factory


def backend_names() -> tuple[str, ...]:
    """Every registered backend, the built-ins first."""
    return tuple(_FACTORIES)


def create_backend(config: RunConfig, variant: VariantSpec) -> Backend:
    """A new (lazily loading) engine for ``variant`` as the run's settings ask."""
    factory = _FACTORIES.get(config.backend)
    if factory is None:
        raise QtestsError(f"unknown backend {config.backend!r}: choose one of {', '.join(backend_names())}")
    return factory(config, variant)


def _transformers(config: RunConfig, variant: VariantSpec) -> Backend:
    from pytest_qtests.engines.transformers_backend import TransformersBackend

    return TransformersBackend(variant, dtype=config.dtype, batch_size=config.batch_size)


def _vllm(config: RunConfig, variant: VariantSpec) -> Backend:
    from pytest_qtests.engines.vllm_backend import VLLMBackend

    dtype = "bfloat16" if config.dtype == "auto" else config.dtype
    return VLLMBackend(variant, engine_args=config.engine_args, dtype=dtype)


def _openai(config: RunConfig, variant: VariantSpec) -> Backend:
    from pytest_qtests.engines.openai_backend import OpenAIBackend

    if not config.base_urls:
        raise QtestsError("--backend openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1)")
    return OpenAIBackend(variant, base_urls=config.base_urls)


def _replay(config: RunConfig, variant: VariantSpec) -> Backend:
    from pytest_qtests.engines.replay_backend import ReplayBackend

    if variant.label not in config.replay:
        raise QtestsError(f"--backend replay needs outputs for {variant.label}: pass --replay {variant.label}=OUTPUTS.jsonl")
    return ReplayBackend(config.replay[variant.label])


register_backend("transformers", _transformers)
register_backend("vllm", _vllm)
register_backend("openai", _openai)
register_backend("replay", _replay)

BACKENDS = backend_names()  # the built-in engines (the command line's choices); backend_names() has any added later
