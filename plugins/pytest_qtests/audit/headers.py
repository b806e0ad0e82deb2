"""Read what a checkpoint declares without loading it: its JSON configs and its safetensors headers.

A safetensors header lists every tensor's dtype, shape and byte range, which is all the audit needs
to tell how each layer is stored and what the checkpoint weighs. Reading only headers keeps a 27B
audit far under a second and lets hub checkpoints be audited without downloading tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_qtests.records import QtestsError
from pytest_qtests.variants import is_hub_id

# The only files the audit reads besides safetensors headers.
CONFIG_FILES: tuple[str, ...] = (
    "config.json",
    "quantization_config.json",
    "hf_quant_config.json",
    "model.safetensors.index.json",
)
INDEX_FILE = "model.safetensors.index.json"

# Bits per element of every safetensors dtype; sub-byte dtypes (F4, F6) are packed by the format.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as its shard header declares it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    shard: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class CheckpointHeaders:
    """Everything the audit reads from one checkpoint: parsed config files and all tensor headers."""

    source: str
    configs: dict[str, dict[str, Any]]
    tensors: tuple[TensorHeader, ...]
    shards: tuple[str, ...]


def declared_nbytes(dtype: str, shape: tuple[int, ...], where: str) -> int:
    """Byte size of a tensor from its dtype and shape (what safetensors validates against its offsets)."""
    if dtype not in DTYPE_BITS:
        raise QtestsError(f"{where}: unknown safetensors dtype {dtype!r}; upgrade qtests or report the checkpoint")
    return (math.prod(shape) * DTYPE_BITS[dtype] + 7) // 8


def read_headers(checkpoint: str | Path, revision: str | None = None) -> CheckpointHeaders:
    """Read configs and safetensors headers from a local directory, or from the hub for a hub id."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return _read_local(path)
    if path.exists():
        raise QtestsError(f"{checkpoint} is a file; pass the checkpoint directory that holds config.json")
    if is_hub_id(str(checkpoint)):
        return _read_hub(str(checkpoint), revision)
    raise QtestsError(f"no checkpoint at {checkpoint}: not a directory and not a hub id (ORG/NAME)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QtestsError(f"cannot read {path}: {error}; fix or re-download the file") from None
    if not isinstance(data, dict):
        raise QtestsError(f"{path} holds a JSON {type(data).__name__}, not an object; re-download the file")
    return data


def _shard_names(configs: dict[str, dict[str, Any]], present: list[str], where: str) -> list[str]:
    """Shards in the index's weight_map, else every *.safetensors file present."""
    index = configs.get(INDEX_FILE)
    if index is None:
        if not present:
            raise QtestsError(f"{where} has no *.safetensors files; the audit needs safetensors weights")
        return present
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise QtestsError(f"{where}/{INDEX_FILE} has no weight_map; re-download the index file")
    return sorted(set(weight_map.values()))


def _read_local(directory: Path) -> CheckpointHeaders:
    configs = {name: _read_json(directory / name) for name in CONFIG_FILES if (directory / name).is_file()}
    present = sorted(p.name for p in directory.glob("*.safetensors"))
    shards = _shard_names(configs, present, str(directory))
    tensors: list[TensorHeader] = []
    for shard in shards:
        tensors.extend(_read_local_shard(directory / shard))
    _check_index(configs, tensors, str(directory))
    return CheckpointHeaders(str(directory), configs, tuple(tensors), tuple(shards))


def _read_local_shard(path: Path) -> list[TensorHeader]:
    """Header of one shard via safetensors, which validates the offsets against the file size.

    ``safe_open`` memory-maps the file and parses only its header, so no tensor byte is read.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise QtestsError(f"shard {path} listed in the index is missing; re-download the checkpoint")
    try:
        with safe_open(path, framework="numpy") as handle:
            headers = []
            for name in handle.offset_keys():
                view = handle.get_slice(name)
                dtype, shape = view.get_dtype(), tuple(view.get_shape())
                nbytes = declared_nbytes(dtype, shape, f"{path.name}:{name}")
                headers.append(TensorHeader(name, dtype, shape, nbytes, path.name))
            return headers
    except SafetensorError as error:
        raise QtestsError(f"{path} is not a valid safetensors file ({error}); re-download it") from None


def _check_index(configs: dict[str, dict[str, Any]], tensors: list[TensorHeader], where: str) -> None:
    """An index naming a tensor its shard lacks means an incomplete download: say so, never guess."""
    index = configs.get(INDEX_FILE)
    if index is None:
        return
    located = {t.name: t.shard for t in tensors}
    for name, shard in index["weight_map"].items():
        if located.get(name) != shard:
            raise QtestsError(
                f"{where}: index places {name} in {shard} but that shard's header does not list it; "
                "re-download the checkpoint"
            )


def _read_hub(repo_id: str, revision: str | None) -> CheckpointHeaders:
    """Hub checkpoint: small config files plus header-only range reads, never tensor data."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, LocalEntryNotFoundError, NotASafetensorsRepoError, SafetensorsParsingError,
    )

    unreachable = (
        f"{repo_id} is not a local directory, and the hub is not reachable to read it as a hub id "
        "(offline or HF_HUB_OFFLINE=1); check the path, or download the checkpoint and pass its directory"
    )
    try:
        metadata = get_safetensors_metadata(repo_id, revision=revision)
    except ConnectionError:
        raise QtestsError(unreachable) from None
    except (OSError, ValueError, NotASafetensorsRepoError, SafetensorsParsingError) as error:
        raise QtestsError(f"cannot read safetensors headers of hub id {repo_id}: {error}") from None
    except Exception as error:  # the hub client's own transport errors (httpx or a fork, by version)
        raise QtestsError(f"{unreachable} ({type(error).__name__}: {error})") from None
    configs: dict[str, dict[str, Any]] = {}
    for name in CONFIG_FILES:
        try:
            configs[name] = _read_json(Path(hf_hub_download(repo_id, name, revision=revision)))
        except LocalEntryNotFoundError:
            raise QtestsError(unreachable) from None
        except EntryNotFoundError:
            continue
    tensors = [
        TensorHeader(name, info.dtype, tuple(info.shape), info.data_offsets[1] - info.data_offsets[0], shard)
        for shard, file_metadata in sorted(metadata.files_metadata.items())
        for name, info in file_metadata.tensors.items()
    ]
    return CheckpointHeaders(repo_id, configs, tuple(tensors), tuple(sorted(metadata.files_metadata)))
