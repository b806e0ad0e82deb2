"""File locks beside the generation cache: one process generates a model's samples, the others wait.

pytest-xdist workers often share a variant (every worker needs the reference). Without a lock each
would generate the same samples at once; with it the first generates and the rest find its records
in the cache when they get the lock.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def generation_lock(cache_dir: Path | str | None, identity: str) -> Iterator[None]:
    """Hold the lock of the model with content hash ``identity`` (no lock without a cache: nothing to share)."""
    if cache_dir is None:
        yield
        return
    lock_dir = Path(cache_dir) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{identity[:32]}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
