"""Atomic file writes: every file qtests writes (baselines, reports, sweep tables, provenance) goes here.

A reader (CI, a second pytest process, a crash's aftermath) sees either the old file or the new one,
never half of one: the bytes go to a temporary file in the target's directory, are flushed to disk,
and the temporary file replaces the target in one ``os.replace``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path``, creating its folder; on any error the target is untouched.

    The file is made world-readable (0644) like an ordinary file: CI uploads reports as artifacts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
