"""``qtests_provenance.json``: how a checkpoint was made, written by ``qtests quantize`` beside its weights.

Read by the audit and the reports (one line: recipe, scheme, format, calibration, versions) and by
``qtests sweep`` to reuse a checkpoint built from the same inputs. Nothing here imports auto-round,
so reading provenance stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_qtests.build.recipes import Calibration, QuantizeSettings, Recipe
from pytest_qtests.packages import installed_version
from pytest_qtests.records import QtestsError

PROVENANCE_FILE = "qtests_provenance.json"
PROVENANCE_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(model: str) -> str | None:
    """sha256 over a local checkpoint's weight files (names and bytes); None for a hub id."""
    directory = Path(model)
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for shard in sorted(directory.glob("*.safetensors")):
        digest.update(shard.name.encode())
        digest.update(sha256_file(shard).encode())
    return digest.hexdigest()


def plan_provenance(model: str, settings: QuantizeSettings, recipe: Recipe,
                    calibration: Calibration | None) -> dict[str, Any]:
    """The provenance a build will write, up to the parts known only afterwards (kept modules).

    ``settings`` plus the inputs' hashes decide the bytes; :func:`same_build` compares exactly these.
    """
    return {
        "qtests_provenance": PROVENANCE_VERSION,
        "model": model,
        "model_sha256": model_digest(model),
        "settings": asdict(settings),
        "recipe": {"name": recipe.name, "description": recipe.description, "kept_classes": list(recipe.kept_classes),
                   "policies": list(recipe.policies)},
        "calibration": None if calibration is None else {"source": calibration.source, "sha256": calibration.sha256},
        "versions": _versions(),
    }


def same_build(existing: dict[str, Any] | None, planned: dict[str, Any]) -> bool:
    """True when ``existing`` was made from the same inputs, settings and library versions as ``planned``."""
    if existing is None:
        return False
    keys = ("model_sha256", "settings", "recipe", "calibration", "versions")
    return all(existing.get(key) == planned.get(key) for key in keys) and existing.get("model_sha256") is not None


def read_provenance(checkpoint: str | Path) -> dict[str, Any] | None:
    """The provenance beside a local checkpoint, or None when there is none (or it is not a local dir)."""
    path = Path(checkpoint) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise QtestsError(f"{path} is not readable JSON ({error}); delete it or rebuild with qtests quantize") from None
    return data if isinstance(data, dict) else None


def describe_provenance(provenance: dict[str, Any]) -> str:
    """One line for the audit and the reports: how the checkpoint was made."""
    settings = provenance.get("settings", {})
    versions = provenance.get("versions", {})
    calibration = provenance.get("calibration")
    calib = (f"calibration {calibration['source']} (sha256 {calibration['sha256'][:12]})" if calibration
             else "auto-round's default calibration")
    group = f" g{settings['group_size']}" if settings.get("group_size") else ""
    return (f"made by qtests quantize: recipe {settings.get('recipe')}, {settings.get('scheme')}{group} as "
            f"{settings.get('export_format')}, iters {settings.get('iters')}, {calib}, "
            f"auto-round {versions.get('auto-round')}, from {provenance.get('model')}")


def _versions() -> dict[str, str]:
    return {package: installed_version(package) for package in ("auto-round", "transformers", "torch")}
