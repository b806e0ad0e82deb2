"""What to print when an engine cannot load a variant: the cause and the qtests-level fix.

Engines name the symptom in their own terms ("couldn't connect to huggingface.co", "pass the argument
trust_remote_code=True"); a qtests user needs the flag or command that cures it. Known causes get a
message of their own; anything else keeps the engine's last error line, which usually names the cause.
"""

from __future__ import annotations

import os

from pytest_qtests.records import VariantSpec
from pytest_qtests.engines.base import last_error_line


def explain_load_failure(error: BaseException, spec: VariantSpec) -> str:
    """One line saying why ``spec`` did not load and how to fix it."""
    text = str(error).lower()
    if "trust_remote_code" in text or "custom code" in text:
        return (f"the checkpoint ships its own Python code, which qtests runs only when asked: pass "
                f"--trust-remote-code {spec.label} if you trust {spec.source}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline and ("couldn't connect" in text or "cached files" in text or "offline mode" in text):
        wanted = f"{spec.source}@{spec.revision}" if spec.revision else spec.source
        revision = f" --revision {spec.revision}" if spec.revision else ""
        return (f"{wanted} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1); "
                f"download it first (hf download {spec.source}{revision}) or pass a local directory")
    if "revision" in text and ("not found" in text or "not a valid" in text):
        return f"revision {spec.revision!r} does not exist for {spec.source}; name a branch, tag or commit it has"
    return last_error_line(error)
