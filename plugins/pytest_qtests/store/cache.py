"""Generation cache: never generate the same sample twice, and lose at most one chunk to a crash.

Reasoning-model evaluations run for hours; a re-run with other tolerances, a resumed run after a kill,
and pytest-xdist workers sharing a reference all want the generations already made. Records live in
one SQLite file in WAL mode: readers never block the writer, each batch is one transaction (a killed
process leaves whole batches or nothing), and ``busy_timeout`` makes concurrent workers queue instead
of failing. Each process opens its own :class:`GenerationCache`; a connection is never shared across
processes.

A key is the sha256 of everything that determines a sample: the model identity hash, the engine and its
version, the rendered prompt, every sampling parameter, the per-sample seed and the continuation. The
item id is *not* part of the key (two items with the same prompt are the same generation).

The same file keeps what the tokenizer rendered (chat prompts, the chat template's hash), keyed by the
model identity, which hashes every tokenizer file: a fully cached re-run then loads no tokenizer, and
so imports neither transformers nor torch (most of such a run's time). It also keeps the canary's
teacher-forced scores (:func:`cached_score`), keyed like generations: with them a fully cached re-run
loads no model on any backend.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from pytest_qtests.engines.base import Backend, ProgressCallback
from pytest_qtests.engines.teacher_forcing import TOP_K, TokenScores
from pytest_qtests.store.fingerprint import content_hash
from pytest_qtests.records import GenerationRecord, GenerationRequest, QtestsError

DEFAULT_CACHE_DIR = Path(".qtests/cache")
CACHE_FILENAME = "generations.sqlite3"
KEY_FORMAT = 1  # bump when the key recipe changes, so old entries are never read under a new meaning
DEFAULT_CHUNK_SIZE = 512
BUSY_TIMEOUT_MS = 60_000
_QUERY_CHUNK = 500  # keys per SELECT, well under SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS renderings (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY,
    scores TEXT NOT NULL
) WITHOUT ROWID
"""


def request_key(model_id_hash: str, engine_version: str, request: GenerationRequest) -> str:
    """Cache key of one sample; equal keys mean the engine would be asked for exactly the same thing.

    ``engine_version`` should name everything about the engine that changes outputs (engine, version,
    dtype); the backend's ``engine_version()`` is where that belongs.
    """
    recipe = {
        "key_format": KEY_FORMAT,
        "model": model_id_hash,
        "engine": engine_version,
        "prompt": request.prompt,
        "sampling": request.sampling.to_dict(),
        "sample_index": request.sample_index,
        "seed": request.seed,
        "continuation": request.continuation,
    }
    if request.continuation_ids:  # only when set, so every key made before the field existed stays valid
        recipe["continuation_ids"] = list(request.continuation_ids)
    return content_hash(recipe)


def request_keys(model_id_hash: str, engine_version: str, requests: Sequence[GenerationRequest]) -> list[str]:
    """:func:`request_key` of each request, in order."""
    return [request_key(model_id_hash, engine_version, request) for request in requests]


def rendering_key(model_id_hash: str, renderer: str, what: Mapping[str, object]) -> str:
    """Key of one text the tokenizer rendered: ``what`` says which (a prompt's message and thinking
    switch, or the chat template); ``renderer`` names the backend and the transformers version."""
    return content_hash({"key_format": KEY_FORMAT, "model": model_id_hash, "renderer": renderer, **what})


def score_key(model_id_hash: str, engine_version: str, text: str) -> str:
    """Key of one text's teacher-forced scores (``TOP_K`` alternatives per position) on one model and engine."""
    return content_hash({"key_format": KEY_FORMAT, "model": model_id_hash, "engine": engine_version, "text": text,
                         "top_k": TOP_K})


class GenerationCache:
    """A SQLite-backed map from :func:`request_key` to :class:`GenerationRecord`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in put_many).
            self._connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._connection.execute("PRAGMA journal_mode = WAL")
            # NORMAL is safe in WAL mode against process crashes (kill -9); only power loss can drop
            # the last commits, which costs regeneration, never corruption.
            self._connection.execute("PRAGMA synchronous = NORMAL")
            self._connection.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise QtestsError(
                f"generation cache {self.path} cannot be used ({error}): delete it, "
                "pass another --cache-dir, or run with --no-cache"
            ) from None
        except OSError as error:
            raise QtestsError(
                f"cannot create the generation cache in {self.path.parent} ({error.strerror}): "
                "pass a writable --cache-dir or run with --no-cache"
            ) from None

    @classmethod
    def in_directory(cls, directory: Path | str = DEFAULT_CACHE_DIR) -> GenerationCache:
        """The cache file that ``--cache-dir DIRECTORY`` means."""
        return cls(Path(directory) / CACHE_FILENAME)

    def get_many(self, keys: Iterable[str]) -> dict[str, GenerationRecord]:
        """The cached records among ``keys`` (misses are simply absent)."""
        return {key: self._decode(key, text) for key, text in self._select("generations", "record", keys)}

    def _select(self, table: str, column: str, keys: Iterable[str]) -> list[tuple[str, str]]:
        """(key, ``column``) of the rows of ``table`` among ``keys``, a bounded number of keys per query."""
        unique = list(dict.fromkeys(keys))
        rows: list[tuple[str, str]] = []
        for start in range(0, len(unique), _QUERY_CHUNK):
            batch = unique[start : start + _QUERY_CHUNK]
            placeholders = ",".join("?" * len(batch))
            rows += self._connection.execute(
                f"SELECT key, {column} FROM {table} WHERE key IN ({placeholders})", batch).fetchall()
        return rows

    def _insert(self, statement: str, rows: list[tuple]) -> None:
        """Run ``statement`` over ``rows`` in one transaction: all rows or none."""
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            self._connection.executemany(statement, rows)
            self._connection.execute("COMMIT")
        except BaseException:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise

    def _decode(self, key: str, text: str) -> GenerationRecord:
        try:
            return GenerationRecord.from_dict(json.loads(text))
        except (ValueError, TypeError) as error:
            raise QtestsError(
                f"generation cache {self.path} holds an unreadable record ({key[:12]}: {error}): "
                "delete the cache file or run with --no-cache"
            ) from None

    def get_renderings(self, keys: Sequence[str]) -> dict[str, str]:
        """The rendered texts stored under ``keys`` (misses are absent)."""
        return dict(self._select("renderings", "text", keys))

    def put_renderings(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Store rendered texts in one transaction; a key already present keeps its text."""
        rows = list(pairs)
        if rows:
            self._insert("INSERT INTO renderings (key, text) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", rows)

    def get_scores(self, keys: Sequence[str]) -> dict[str, TokenScores]:
        """The teacher-forced scores stored under ``keys`` (misses are absent)."""
        found = {}
        for key, text in self._select("scores", "scores", keys):
            fields = json.loads(text)
            found[key] = TokenScores(fields["token_ids"], fields["logprobs"],
                                     [{int(token): value for token, value in top.items()} for top in fields["topk"]])
        return found

    def put_scores(self, pairs: Iterable[tuple[str, TokenScores]]) -> None:
        """Store scores in one transaction; a key already present keeps its scores."""
        rows = [(key, json.dumps({"token_ids": s.token_ids, "logprobs": s.logprobs, "topk": s.topk}))
                for key, s in pairs]
        if rows:
            self._insert("INSERT INTO scores (key, scores) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", rows)

    def put_many(self, items: Mapping[str, GenerationRecord] | Iterable[tuple[str, GenerationRecord]]) -> int:
        """Store records in one transaction (all or nothing); returns how many were new.

        Records whose ``finish_reason`` is ``"error"`` are never stored: an engine failure must be
        retried on the next run, not replayed. A key already present keeps its first record, so workers
        that raced on the same sample all read back the same one.
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        rows = [
            (key, json.dumps(record.to_dict(), ensure_ascii=False), time.time())
            for key, record in pairs
            if record.finish_reason != "error"
        ]
        if not rows:
            return 0
        before = self._connection.total_changes
        self._insert("INSERT INTO generations (key, record, created_at) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
                     rows)
        return self._connection.total_changes - before

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_alignment(backend: Backend, chunk: Sequence[GenerationRequest], records: Sequence[GenerationRecord]) -> None:
    """A backend returning records out of order would poison the cache for every later run: refuse it."""
    if len(records) != len(chunk):
        raise RuntimeError(f"backend {backend.name} returned {len(records)} records for {len(chunk)} requests")
    for request, record in zip(chunk, records):
        if (record.item_id, record.sample_index) != (request.item_id, request.sample_index):
            raise RuntimeError(
                f"backend {backend.name} returned record {record.item_id}#{record.sample_index} "
                f"for request {request.item_id}#{request.sample_index}: records must be in request order"
            )


def cached_generate(
    cache: GenerationCache | None,
    backend: Backend,
    requests: Sequence[GenerationRequest],
    model_id_hash: str,
    progress: ProgressCallback | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> list[GenerationRecord]:
    """Records for ``requests`` in request order, generating only what the cache lacks (:func:`cached_stream`
    consumed to the end)."""
    return list(cached_stream(cache, backend, requests, model_id_hash, progress, chunk_size))


def cached_stream(
    cache: GenerationCache | None,
    backend: Backend,
    requests: Sequence[GenerationRequest],
    model_id_hash: str,
    progress: ProgressCallback | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    lookahead: int | None = None,
) -> Iterator[GenerationRecord]:
    """Records for ``requests`` in request order as they are consumed, generating only what the cache lacks.

    Misses go to the engine in the order they are needed: streamed through its rolling window where it
    streams (``capabilities.streams``; ``lookahead`` bounds how far past the consumer it sends, see
    ``Backend.stream``), each record stored as it is consumed; otherwise in chunks of ``chunk_size``
    (each chunk one batched ``generate`` call, stored as soon as it returns). A run killed midway keeps
    every stored record and a rerun resumes there. Larger chunks batch better on the engine; smaller ones
    lose less to a kill. Requests with identical keys are generated once. ``cache=None`` (``--no-cache``)
    generates all, in one batch where the engine does not stream. Closing the iterator early generates
    no more than the engine already has in flight.
    """
    if chunk_size < 1:
        raise QtestsError(f"cache chunk size must be at least 1, got {chunk_size}")
    if not requests:
        return
    if cache is None:
        with closing(_generated(backend, requests, len(requests), lookahead, progress)) as chunks:
            for chunk in chunks:
                yield from chunk
        return
    keys = request_keys(model_id_hash, backend.engine_version(), requests)
    found = cache.get_many(keys)
    hits = sum(1 for key in keys if key in found)
    if progress and hits:
        progress(hits)

    misses: dict[str, GenerationRequest] = {}
    for key, request in zip(keys, requests):
        if key not in found:
            misses.setdefault(key, request)
    miss_keys = iter(list(misses))
    with closing(_generated(backend, list(misses.values()), chunk_size, lookahead, progress)) as chunks:
        for key, request in zip(keys, requests):
            # misses are generated in the order they are first needed, so the next chunks hold this one
            while key not in found:
                records = next(chunks, None)
                if records is None:
                    raise RuntimeError(f"backend {backend.name} ended before request {request.item_id}#"
                                       f"{request.sample_index}: it must return a record for every request")
                chunk_keys = list(islice(miss_keys, len(records)))
                cache.put_many(zip(chunk_keys, records))
                found.update(zip(chunk_keys, records))
            # A cached record may have been made for another item with the same prompt: label it as this one.
            yield replace(found[key], item_id=request.item_id, sample_index=request.sample_index)
    repeated = len(requests) - hits - len(misses)  # requests served by another request's generation
    if progress and repeated:
        progress(repeated)


def _generated(backend: Backend, requests: list[GenerationRequest], chunk_size: int, lookahead: int | None,
               progress: ProgressCallback | None) -> Iterator[list[GenerationRecord]]:
    """The engine's records for ``requests`` in request order, a chunk at a time: one record at a time from
    an engine that streams, one ``generate`` batch of ``chunk_size`` otherwise."""
    if not requests:
        return
    if backend.capabilities.streams:
        with closing(backend.stream(requests, lookahead, progress)) as records:
            for request, record in zip(requests, records):
                _check_alignment(backend, [request], [record])
                yield [record]
        return
    for start in range(0, len(requests), chunk_size):
        chunk = requests[start : start + chunk_size]
        records = backend.generate(chunk, progress)
        _check_alignment(backend, chunk, records)
        yield records


def cached_score(cache: GenerationCache | None, backend: Backend, texts: Sequence[str],
                 model_id_hash: str) -> list[TokenScores]:
    """``backend.score(texts)``, scoring only the texts the cache lacks (all of them when ``cache`` is None)."""
    if cache is None:
        return backend.score(texts)
    keys = [score_key(model_id_hash, backend.engine_version(), text) for text in texts]
    found = cache.get_scores(keys)
    missing = [(key, text) for key, text in dict(zip(keys, texts)).items() if key not in found]
    if missing:
        scored = list(zip([key for key, _ in missing], backend.score([text for _, text in missing])))
        cache.put_scores(scored)
        found.update(scored)
    return [found[key] for key in keys]
