"""Parse ``[LABEL=]PATH_OR_HUB_ID[@REVISION]`` into a :class:`VariantSpec`.

The label becomes the test id (``test_accuracy[int4-default-zoo]``), so it must be unique and made of
characters that survive pytest ids, JUnit names and file names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from pytest_qtests.records import QtestsError, VariantSpec

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is spelled as a hub model id (``ORG/NAME``).

    Asked only of a source that is not an existing path: it tells a hub id from a local path that does
    not exist (``./out/int4``, ``/data/ckpt``), so a typo in a path is reported as a missing path
    rather than sent to the hub.
    """
    return bool(_HUB_ID.match(source))


def parse_variant(text: str, base_dir: Path | None = None, trust_remote_code: bool = False) -> VariantSpec:
    """One spec. A relative path is resolved against ``base_dir`` (the suite file's folder) when given."""
    text = text.strip()
    if not text:
        raise QtestsError("empty model spec: use [LABEL=]PATH_OR_HUB_ID[@REVISION], e.g. int4=./out/int4")
    label, _, source = text.rpartition("=") if "=" in text else ("", "", text)
    revision = None
    if "@" in source and not Path(source).exists():
        source, _, revision = source.rpartition("@")
        if not revision:
            raise QtestsError(f"model spec {text!r} has an empty @REVISION: drop the '@' or name a branch/tag/commit")
    if not source:
        raise QtestsError(f"model spec {text!r} has no path or hub id after '=': use LABEL=PATH_OR_HUB_ID")
    local = Path(source).expanduser()
    if base_dir is not None and not local.is_absolute() and (base_dir / local).exists():
        local = base_dir / local
    if local.exists():
        if revision is not None:
            raise QtestsError(
                f"model spec {text!r} asks for revision {revision!r} of the local directory {local}, which has "
                "no revisions (it would be ignored): drop '@" + revision + "' or pass the hub id ORG/NAME@REVISION"
            )
        source = str(local.resolve())
    elif not is_hub_id(source):
        raise QtestsError(
            f"model {source!r} is neither an existing directory nor a hub id (ORG/NAME): check the path"
        )
    label = label or Path(source).name or source.replace("/", "-")
    if not _LABEL.match(label):
        raise QtestsError(f"label {label!r} must use letters, digits, '.', '_', '+', '-': rename it with LABEL=...")
    return VariantSpec(label=label, source=source, revision=revision, trust_remote_code=trust_remote_code)


def check_unique_labels(specs: Iterable[VariantSpec]) -> None:
    seen: dict[str, VariantSpec] = {}
    for spec in specs:
        if spec.label in seen:
            raise QtestsError(
                f"duplicate label {spec.label!r} ({seen[spec.label].source} and {spec.source}): "
                "give each model its own LABEL=..."
            )
        seen[spec.label] = spec
