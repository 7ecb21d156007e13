"""The semantic cache (opt-in, ``[cache] enabled = true``): answers reused for questions that
mean the same.

An entry is a question, its embedding (normalised float32, the app's embedding model) and the
answer it got. Entries live in *partitions*; a lookup only ever sees its own partition:

* the release (the release id when the gateway serves releases, else the app version, a
  content hash of config, prompts, tools and index),
* the index version (a re-ingest that changed anything starts a new partition),
* the API key (``None``, the trusted local caller, has a partition of its own) and the tool
  scopes the caller holds.

A new release or a re-ingest therefore never meets old entries; they expire after ``ttl_s``
and are deleted lazily (or by ``keel cache clear``). A lookup hits when the nearest entry's
cosine similarity is at least ``threshold`` and the entry has not expired. The nearest entry is
found with one matrix product over the partition's vectors, kept in memory per partition and
reloaded when the table changed (another gateway instance, ``keel cache clear``): a cheap
``count, max(id)`` query per lookup tells.

What is cached and what is not is decided by the app (:meth:`keel.App.ask`); see the README's
"Semantic cache" section. The table, ``keel_semantic_cache``, is in the keel database (SQLite
or PostgreSQL, the same code).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    delete,
    func,
    select,
)

from keel.db import create_tables, metadata

cache_table = Table(
    "keel_semantic_cache",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(256), nullable=False, index=True),
    Column("partition", String(64), nullable=False, index=True),
    Column("release", String(64), nullable=False),
    Column("index_version", String(64), nullable=False),
    Column("key_id", String(64)),
    Column("end_user", String(256), index=True),  # whose question made the entry
    Column("question", Text, nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    sqlite_autoincrement=True,  # ids never come back: (count, max id) tells a changed table
)

PURGE_EVERY_S = 60.0


def partition_key(
    app: str,
    release: str,
    index_version: str,
    key_id: str | None,
    scopes: Sequence[str] | None,
    readable: frozenset[str] | None = None,
) -> str:
    """The partition of a turn: app, release, index version, API key, tool scopes and the
    access labels the caller reads (an answer is only ever served to a reader of the same
    documents).

    ``key_id=None`` (the trusted local caller) is not any key's id, and ``scopes=None`` (every
    scope) is not any list of scopes, so neither shares a partition with a key.
    """
    parts: list[object] = [
        app,
        release,
        index_version,
        key_id,
        sorted(scopes) if scopes is not None else None,
    ]
    if readable is not None:  # unchanged keys for readers of everything
        parts.append(sorted(readable))
    blob = json.dumps(parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Partition:
    """Where a turn's entries go: its key and what it is made of (kept for ``stats``)."""

    key: str
    release: str
    index_version: str
    key_id: str | None


@dataclass(frozen=True)
class CacheHit:
    entry_id: int
    similarity: float
    question: str
    payload: dict[str, Any]


@dataclass
class _Loaded:
    stamp: tuple[int, int]  # (count, max id) of the partition when loaded
    ids: np.ndarray
    vectors: np.ndarray  # (n, d) float32, rows normalised
    created: np.ndarray  # unix seconds


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:  # SQLite gives naive datetimes back: they were stored as UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class SemanticCache:
    """Questions, their embeddings and answers, by partition (see the module doc).

    ``clock``: seconds since the epoch (tests move it to expire entries).
    """

    def __init__(
        self,
        engine: Engine,
        app: str,
        *,
        threshold: float,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.app = app
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        self._last_purge = 0.0
        create_tables(engine, metadata, [cache_table])

    # -- reading ---------------------------------------------------------------------------------
    def _stamp(self, partition: str) -> tuple[int, int]:
        t = cache_table
        with self.engine.connect() as conn:
            count, top = conn.execute(
                select(func.count(), func.max(t.c.id)).where(t.c.partition == partition)
            ).one()
        return int(count or 0), int(top or 0)

    def _partition(self, partition: str) -> _Loaded:
        stamp = self._stamp(partition)
        with self._lock:
            loaded = self._loaded.get(partition)
            if loaded is not None and loaded.stamp == stamp:
                return loaded
        t = cache_table
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.embedding, t.c.created_at)
                .where(t.c.partition == partition)
                .order_by(t.c.id)
            ).all()
        stamp = (len(rows), max((r.id for r in rows), default=0))
        if rows:  # one embedding model per partition; anything else is ignored
            size = len(rows[-1].embedding)
            rows = [r for r in rows if len(r.embedding) == size]
            vectors = np.stack([np.frombuffer(r.embedding, dtype=np.float32) for r in rows])
        else:
            vectors = np.zeros((0, 0), dtype=np.float32)
        loaded = _Loaded(
            stamp=stamp,
            ids=np.asarray([r.id for r in rows], dtype=np.int64),
            vectors=vectors,
            created=np.asarray([_epoch(r.created_at) for r in rows], dtype=np.float64),
        )
        with self._lock:
            self._loaded[partition] = loaded
        return loaded

    def nearest(self, partition: str, vector: np.ndarray) -> tuple[int, float] | None:
        """The nearest live (unexpired) entry and its cosine similarity, whatever it is."""
        loaded = self._partition(partition)
        if not len(loaded.ids):
            return None
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if loaded.vectors.shape[1] != query.shape[0]:
            return None  # another embedding model: nothing comparable
        sims = loaded.vectors @ query
        sims[loaded.created < self.clock() - self.ttl_s] = -np.inf
        best = int(np.argmax(sims))
        if not np.isfinite(sims[best]):
            return None
        return int(loaded.ids[best]), float(sims[best])

    def lookup(self, partition: str, vector: np.ndarray) -> CacheHit | None:
        """The cached answer for a question meaning the same, or None."""
        found = self.nearest(partition, vector)
        if found is None or found[1] < self.threshold:
            return None
        entry = self.entry(found[0])
        if entry is None:  # deleted meanwhile
            return None
        return CacheHit(found[0], found[1], entry[0], entry[1])

    def entry(self, entry_id: int) -> tuple[str, dict[str, Any]] | None:
        """An entry's question and payload (None when it is gone)."""
        t = cache_table
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.question, t.c.payload).where(t.c.id == entry_id)).first()
        return None if row is None else (str(row.question), json.loads(row.payload))

    # -- writing ---------------------------------------------------------------------------------
    def store(
        self,
        partition: Partition,
        question: str,
        vector: np.ndarray,
        payload: dict[str, Any],
        *,
        end_user: str | None = None,
    ) -> int:
        """Keep an answer; the partition's oldest entries beyond ``max_entries`` go."""
        t = cache_table
        now = self.clock()
        blob = np.asarray(vector, dtype=np.float32).reshape(-1).tobytes()
        with self.engine.begin() as conn:
            inserted = conn.execute(
                t.insert().values(
                    app=self.app,
                    partition=partition.key,
                    release=partition.release,
                    index_version=partition.index_version,
                    key_id=partition.key_id,
                    end_user=end_user,
                    question=question,
                    embedding=blob,
                    payload=json.dumps(payload, ensure_ascii=False, default=str),
                    created_at=datetime.fromtimestamp(now, UTC),
                )
            )
            key = inserted.inserted_primary_key
            assert key is not None
            entry_id = key[0]
            count = conn.execute(
                select(func.count()).where(t.c.partition == partition.key)
            ).scalar_one()
            if count > self.max_entries:
                oldest = conn.execute(
                    select(t.c.id)
                    .where(t.c.partition == partition.key)
                    .order_by(t.c.id.desc())
                    .offset(self.max_entries)
                ).all()
                conn.execute(delete(t).where(t.c.id.in_([r.id for r in oldest])))
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            self.purge_expired()
        return int(entry_id)

    def purge_expired(self) -> int:
        """Delete this app's expired entries, in every partition (old releases' included)."""
        cutoff = datetime.fromtimestamp(self.clock() - self.ttl_s, UTC)
        t = cache_table
        with self.engine.begin() as conn:
            gone = conn.execute(delete(t).where(t.c.app == self.app, t.c.created_at < cutoff))
        return int(gone.rowcount or 0)

    def clear(self, key_id: str | None = None) -> int:
        """Delete this app's entries (only one API key's with ``key_id``); returns how many."""
        t = cache_table
        query = delete(t).where(t.c.app == self.app)
        if key_id is not None:
            query = query.where(t.c.key_id == key_id)
        with self.engine.begin() as conn:
            gone = conn.execute(query)
        with self._lock:
            self._loaded.clear()
        return int(gone.rowcount or 0)

    def stats(self) -> dict[str, Any]:
        """Entries by partition (release, index version, key), with their age span."""
        t = cache_table
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    t.c.partition,
                    t.c.release,
                    t.c.index_version,
                    t.c.key_id,
                    func.count().label("entries"),
                    func.min(t.c.created_at).label("oldest"),
                    func.max(t.c.created_at).label("newest"),
                )
                .where(t.c.app == self.app)
                .group_by(t.c.partition, t.c.release, t.c.index_version, t.c.key_id)
                .order_by(func.max(t.c.created_at).desc())
            ).all()
        partitions = [
            {
                "partition": r.partition,
                "release": r.release,
                "index_version": r.index_version,
                "key_id": r.key_id,
                "entries": int(r.entries),
                "oldest": datetime.fromtimestamp(_epoch(r.oldest), UTC).isoformat(),
                "newest": datetime.fromtimestamp(_epoch(r.newest), UTC).isoformat(),
            }
            for r in rows
        ]
        return {
            "app": self.app,
            "entries": sum(p["entries"] for p in partitions),
            "threshold": self.threshold,
            "ttl_s": self.ttl_s,
            "max_entries": self.max_entries,
            "partitions": partitions,
        }
