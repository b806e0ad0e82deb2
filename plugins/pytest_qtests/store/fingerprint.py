"""Fingerprints: everything that determined a set of outcomes, so two runs are only compared when fair.

A baseline is useless if it was collected under other settings than the run compared with it: a lower
``max_tokens`` alone raises truncation and lowers accuracy, which would look like a quantization loss.
So every baseline carries a :class:`Fingerprint`, and :func:`check_compatible` refuses a comparison
whose fingerprints differ in anything but the model, naming each differing field.

The model's identity is also the first part of every generation-cache key, so it must change whenever
the weights change, yet stay cheap on a 30 GB checkpoint and independent of where the directory lives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pytest_qtests.records import DictRecord, QtestsError, SamplingParams, TaskItem, VariantSpec
from pytest_qtests.variants import is_hub_id

# Files of a checkpoint directory that change what the model generates, besides the weights.
_CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    # tokenizer and chat template
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    # quantization configs written beside config.json by the common toolkits
    "quantization_config.json",
    "quant_config.json",
    "quantize_config.json",
    "hf_quant_config.json",
    "recipe.yaml",
)

# Largest safetensors header the safetensors library itself accepts (100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000

# Weight bytes read per sampled window. Headers alone do not change when weights do (a retrained or
# re-tuned checkpoint has the same names, shapes and offsets), and a cache keyed on headers alone would
# hand one model's generations to another. Reading three 1 MiB windows per weight file keeps the cost
# flat on huge checkpoints while any real change of the weights (which touches every tensor) shows.
_SAMPLE_WINDOW = 1 << 20


def content_hash(value: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys, no spaces), stable across processes."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dataset_hash(items: Iterable[TaskItem]) -> str:
    """Content hash of a task's items in order: any edited question, answer or choice changes it."""
    return content_hash(
        [[item.item_id, item.question, item.answer, list(item.choices)] for item in items]
    )


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header (8-byte little-endian length, then JSON) without touching tensor data.

    Returns the header and the offset where tensor data starts.
    """
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            file_size = os.fstat(handle.fileno()).st_size
            if len(prefix) < 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_SAFETENSORS_HEADER, file_size - 8):
                raise ValueError(f"header length {length} exceeds the file size {file_size}")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise QtestsError(
            f"corrupt safetensors header in {path}: {error}; re-export or re-download the checkpoint"
        ) from None
    if not isinstance(header, dict):
        raise QtestsError(
            f"corrupt safetensors header in {path}: not a JSON object; re-export or re-download the checkpoint"
        )
    return header, 8 + length


def _sampled_digest(path: Path, start: int) -> str:
    """sha256 of the bytes after ``start``: all of them when small, else three windows (head, middle, tail)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size - start
        digest.update(str(size).encode())
        if size <= 3 * _SAMPLE_WINDOW:
            windows = [(start, size)]
        else:
            middle = start + size // 2 - _SAMPLE_WINDOW // 2
            windows = [(o, _SAMPLE_WINDOW) for o in (start, middle, start + size - _SAMPLE_WINDOW)]
        for offset, length in windows:
            handle.seek(offset)
            digest.update(handle.read(length))
    return digest.hexdigest()


def _local_identity(directory: Path) -> dict[str, Any]:
    if not (directory / "config.json").is_file():
        raise QtestsError(
            f"no config.json in {directory}: point --model at a Hugging Face checkpoint directory"
        )
    parts: dict[str, str] = {}
    for name in _CONFIG_FILES:
        path = directory / name
        if path.is_file():
            parts[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(directory.glob("*.safetensors")):
        header, data_start = read_safetensors_header(path)
        parts[path.name] = content_hash({"header": header, "data": _sampled_digest(path, data_start)})
    for path in sorted(directory.glob("*.bin")):
        parts[path.name] = _sampled_digest(path, 0)
    return {
        "kind": "local",
        "path": str(directory.resolve()),
        "hash": content_hash(parts),
        "files": sorted(parts),
    }


def _resolved_hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit the local Hugging Face cache holds for this revision, if any (never goes online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    return Path(snapshot).name


def model_identity(spec: VariantSpec) -> dict[str, Any]:
    """What identifies the weights a variant loads; ``identity["hash"]`` keys the generation cache.

    Local directory: a content hash of config, generation config, tokenizer, quantization configs, the
    safetensors index and every safetensors header plus sampled weight bytes. The path is recorded for
    people but not hashed, so moving a checkpoint keeps its cache. Hub model: id, requested revision and
    the commit the local cache resolves it to (a moving ``main`` then still shows which weights ran).
    """
    source = os.path.expanduser(spec.source)
    if Path(source).is_dir():
        return _local_identity(Path(source))
    if Path(source).exists():
        raise QtestsError(
            f"model path {spec.source} is a file: pass the checkpoint directory that holds config.json"
        )
    if not is_hub_id(spec.source):
        raise QtestsError(f"model path {spec.source} does not exist: check the path given to --model")
    revision = spec.revision or "main"
    commit = _resolved_hub_commit(spec.source, spec.revision)
    identity = {"kind": "hub", "id": spec.source, "revision": revision, "commit": commit}
    return {**identity, "hash": content_hash(identity)}


def replay_identity(path: str | Path) -> dict[str, Any]:
    """A replayed run's "model" is the file of outputs: its content hash, so an edited file is another run."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as error:
        raise QtestsError(f"replay file {path} cannot be read ({error.strerror}); check the path given to --replay") from None
    return {"kind": "replay", "path": str(Path(path).resolve()), "hash": digest}


@dataclass
class FieldDiff:
    """One differing fingerprint field, with both values; ``str()`` gives ``name a != b``."""

    field: str
    baseline: Any
    run: Any

    def __str__(self) -> str:
        return f"{self.field} {_show(self.baseline)} != {_show(self.run)}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "unset"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256: the prefix is enough to tell two apart
    return str(value)


@dataclass
class Fingerprint(DictRecord):
    """Everything that determined a run's outcomes. ``extra`` (device, timings) is never compared."""

    model: dict[str, Any]
    task: str
    dataset_hash: str
    prompt_template_hash: str
    sampling: dict[str, Any]
    max_tokens: int
    thinking: bool
    repeats: int
    seed: int
    engine: str
    engine_version: str
    task_code: dict[str, str] = field(default_factory=dict)  # the task's grader and prompt builder
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(
        cls,
        *,
        model: dict[str, Any],
        task: str,
        dataset_hash: str,
        prompt_template_hash: str,
        sampling: SamplingParams,
        thinking: bool,
        repeats: int,
        engine: str,
        engine_version: str,
        task_code: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Fingerprint:
        """Build from a run's settings. ``max_tokens`` and ``seed`` move out of ``sampling`` to their own
        fields so each setting appears once and a mismatch is reported once."""
        sampling_dict = sampling.to_dict()
        max_tokens = sampling_dict.pop("max_tokens")
        seed = sampling_dict.pop("seed")
        return cls(
            model=dict(model),
            task=task,
            dataset_hash=dataset_hash,
            prompt_template_hash=prompt_template_hash,
            sampling=sampling_dict,
            max_tokens=max_tokens,
            thinking=thinking,
            repeats=repeats,
            seed=seed,
            engine=engine,
            engine_version=engine_version,
            task_code=dict(task_code or {}),
            extra=dict(extra or {}),
        )

    def compared_fields(self) -> dict[str, Any]:
        """Flat ``{dotted name: value}`` of every compared field (dicts expand to ``sampling.top_p``)."""
        flat: dict[str, Any] = {}
        for name, value in self.to_dict().items():
            if name == "extra":
                continue
            if isinstance(value, dict):
                flat.update({f"{name}.{key}": sub for key, sub in value.items()})
            else:
                flat[name] = value
        return flat


def _covered(name: str, names: Iterable[str]) -> bool:
    """``sampling.top_p`` is covered by ``sampling.top_p`` or by the whole group ``sampling``."""
    return any(name == n or name.startswith(n + ".") for n in names)


def diff_fingerprints(
    a: Fingerprint, b: Fingerprint, ignore: Iterable[str] = frozenset({"model"})
) -> list[FieldDiff]:
    """Differing compared fields of ``a`` (the baseline) and ``b`` (the run), in field order."""
    ignore = tuple(ignore)
    fields_a, fields_b = a.compared_fields(), b.compared_fields()
    names = list(fields_a) + [n for n in fields_b if n not in fields_a]
    return [
        FieldDiff(n, fields_a.get(n), fields_b.get(n))
        for n in names
        if not _covered(n, ignore) and fields_a.get(n) != fields_b.get(n)
    ]


def mismatch_field_names() -> list[str]:
    """Names ``--allow-mismatch`` accepts: each compared field, and each sampling parameter on its own."""
    top = [f.name for f in dataclasses.fields(Fingerprint) if f.name not in ("extra", "model")]
    sampling = [
        f"sampling.{f.name}" for f in dataclasses.fields(SamplingParams) if f.name not in ("max_tokens", "seed")
    ]
    return top + sampling


def check_compatible(
    baseline_fp: Fingerprint,
    run_fp: Fingerprint,
    allow_mismatch: Iterable[str] = (),
    baseline_name: str = "baseline",
) -> list[FieldDiff]:
    """Refuse a comparison whose settings differ (the model may differ: that is the point).

    Returns the differences the user allowed knowingly, so the caller can report them; raises
    :class:`QtestsError` naming every other differing field and the flag that overrides it.
    """
    allowed = set(allow_mismatch)
    valid = mismatch_field_names()
    unknown = sorted(n for n in allowed if n not in valid)
    if unknown:
        raise QtestsError(
            f"unknown --allow-mismatch field {', '.join(unknown)}: choose from {', '.join(valid)}"
        )
    diffs = diff_fingerprints(baseline_fp, run_fp)
    refused = [d for d in diffs if not _covered(d.field, allowed)]
    if refused:
        listed = ", ".join(str(d) for d in refused)
        flags = ",".join(d.field for d in refused)
        raise QtestsError(
            f"fingerprint mismatch with baseline {baseline_name}: {listed}; "
            f"rerun with matching settings or pass --allow-mismatch {flags}"
        )
    return [d for d in diffs if _covered(d.field, allowed)]
