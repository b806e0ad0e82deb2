"""User messages -> the exact prompts an engine sees, through the variant's own chat template.

Renderings are kept in the generation cache, keyed by the model's content identity (which hashes
every tokenizer file), the backend and the transformers version: a fully cached re-run then loads no
tokenizer, and with the vLLM backend imports neither transformers nor torch (most of such a run's time).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pytest_qtests.packages import installed_version
from pytest_qtests.store.cache import GenerationCache, rendering_key
from pytest_qtests.tasks.prompts import render_prompt

if TYPE_CHECKING:
    from pytest_qtests.engines.base import Backend


class PromptRenderer:
    """Renders for one run: its backend (``engine``), thinking switch and cache (None: no cache)."""

    def __init__(self, cache: GenerationCache | None, engine: str, thinking: bool):
        self.cache = cache
        self.engine = engine
        self.thinking = thinking

    def prompts(self, model_hash: str, backend: Callable[[], Backend], messages: Sequence[str]) -> list[str]:
        """Each user message through the chat template of the model with content hash ``model_hash``, as is
        when the backend renders no prompts. ``backend`` is called only when a rendering is not cached."""
        keys = [self._key(model_hash, {"message": message, "thinking": self.thinking})
                for message in messages] if self.cache is not None else []
        found = self.cache.get_renderings(keys) if self.cache is not None and keys else {}
        if keys and all(key in found for key in keys):
            return [found[key] for key in keys]
        engine = backend()
        if not engine.capabilities.renders_prompts:
            return list(messages)
        prompts = [render_prompt(engine.tokenizer, message, self.thinking) for message in messages]
        if self.cache is not None:
            self.cache.put_renderings(zip(keys, prompts))
        return prompts

    def template_hash(self, model_hash: str, backend: Callable[[], Backend]) -> str:
        """sha256 of the chat template the prompts are rendered with ("" hashed when there is none)."""
        key = self._key(model_hash, {"chat_template": True}) if self.cache is not None else None
        if key is not None and (found := self.cache.get_renderings([key])):
            return found[key]
        engine = backend()
        tokenizer = engine.tokenizer if engine.capabilities.renders_prompts else None
        template = (tokenizer.chat_template if tokenizer is not None else None) or ""
        digest = hashlib.sha256(template.encode()).hexdigest()
        if key is not None:
            self.cache.put_renderings([(key, digest)])
        return digest

    def _key(self, model_hash: str, what: dict[str, Any]) -> str:
        renderer = f"{self.engine}, transformers {installed_version('transformers')}"
        return rendering_key(model_hash, renderer, what)
