"""Installed package versions, read from their metadata.

Naming a version must not import the package: transformers (with torch) and vLLM take seconds each to
import, which is most of a fully cached re-run.
"""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def installed_version(package: str) -> str:
    """The installed distribution's version, or ``"not installed"``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
