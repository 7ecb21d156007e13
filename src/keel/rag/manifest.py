"""The ingestion manifest: document id → content hash → chunk ids, per collection.

It lives in the keel database (SQLite or Postgres, the same SQLAlchemy Core code) and is the
source of truth for what a collection should contain. The index version is a hash of it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from keel.db import create_tables, metadata
from keel.errors import StoreError
from keel.rag._tables import documents, ingest_runs

EMPTY_INDEX_VERSION = "empty"
_upgrade_lock = threading.Lock()

# Built once: every turn reads the index version, and building the statement cost more than
# running it.
_CURRENT_VERSION = (
    select(ingest_runs.c.index_version)
    .where(ingest_runs.c.collection == bindparam("collection"), ingest_runs.c.state == "done")
    .order_by(ingest_runs.c.id.desc())
    .limit(1)
)


@dataclass(frozen=True)
class Entry:
    doc_id: str
    source: str
    content_hash: str
    chunk_ids: tuple[str, ...]
    created_by: str | None = None  # the API key that created it; kept when it is replaced


def _add_created_by(engine: Engine) -> None:
    """Databases made before documents recorded their creator get the column (idempotent,
    once per engine and process)."""
    if engine.__dict__.get("_keel_documents_created_by"):
        return
    from sqlalchemy import inspect, text

    with _upgrade_lock, engine.begin() as conn:
        existing = {c["name"] for c in inspect(conn).get_columns("keel_documents")}
        if "created_by" not in existing:
            guard = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
            try:
                conn.execute(
                    text(f"ALTER TABLE keel_documents ADD COLUMN {guard}created_by VARCHAR(64)")
                )
            except SQLAlchemyError as exc:  # another process added it meanwhile (SQLite)
                if "duplicate column" not in str(exc):
                    raise
    engine.__dict__["_keel_documents_created_by"] = True


def _now() -> datetime:
    return datetime.now(UTC)


class Manifest:
    """Read and write one collection's manifest."""

    def __init__(self, engine: Engine, collection: str) -> None:
        self.engine = engine
        self.collection = collection
        try:
            create_tables(engine, metadata, [documents, ingest_runs])
            _add_created_by(engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the keel database: {exc}".splitlines()[0]) from exc

    def entries(self) -> dict[str, Entry]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    documents.c.doc_id,
                    documents.c.source,
                    documents.c.content_hash,
                    documents.c.chunk_ids,
                ).where(documents.c.collection == self.collection)
            )
            return {
                r.doc_id: Entry(r.doc_id, r.source, r.content_hash, tuple(json.loads(r.chunk_ids)))
                for r in rows
            }

    def hashes(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Content hash of each of these documents (for citations and lineage)."""
        ids = sorted(set(doc_ids))
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(documents.c.doc_id, documents.c.content_hash).where(
                    documents.c.collection == self.collection, documents.c.doc_id.in_(ids)
                )
            )
            return {r.doc_id: r.content_hash for r in rows}

    def creators(self, doc_ids: Iterable[str]) -> dict[str, str | None]:
        """For each of these documents that exists: the API key that created it (None: the
        app's own files, the CLI or Python)."""
        ids = sorted(set(doc_ids))
        found: dict[str, str | None] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    select(documents.c.doc_id, documents.c.created_by).where(
                        documents.c.collection == self.collection,
                        documents.c.doc_id.in_(ids[i : i + 500]),
                    )
                )
                found.update({r.doc_id: r.created_by for r in rows})
        return found

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(documents.c.collection == self.collection)
                ).scalar_one()
            )

    def write(self, entries: Sequence[Entry]) -> None:
        """Insert or replace entries, in one transaction."""
        if not entries:
            return
        now = _now()
        ids = [e.doc_id for e in entries]
        with self.engine.begin() as conn:
            creators = {
                r.doc_id: r.created_by
                for r in conn.execute(
                    select(documents.c.doc_id, documents.c.created_by).where(
                        documents.c.collection == self.collection, documents.c.doc_id.in_(ids)
                    )
                )
            }
            conn.execute(
                delete(documents).where(
                    and_(
                        documents.c.collection == self.collection,
                        documents.c.doc_id.in_([e.doc_id for e in entries]),
                    )
                )
            )
            conn.execute(
                insert(documents),
                [
                    {
                        "collection": self.collection,
                        "doc_id": e.doc_id,
                        "source": e.source,
                        "content_hash": e.content_hash,
                        "chunk_ids": json.dumps(list(e.chunk_ids)),
                        "updated_at": now,
                        # a replaced document keeps its creator
                        "created_by": creators.get(e.doc_id, e.created_by),
                    }
                    for e in entries
                ],
            )

    def remove(self, doc_ids: Iterable[str]) -> None:
        ids = list(doc_ids)
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                conn.execute(
                    delete(documents).where(
                        and_(
                            documents.c.collection == self.collection,
                            documents.c.doc_id.in_(ids[i : i + 500]),
                        )
                    )
                )

    def index_version(self) -> str:
        """A hash of the manifest: changes exactly when the collection's content changes."""
        digest = hashlib.sha256()
        entries = self.entries()
        if not entries:
            return EMPTY_INDEX_VERSION
        for doc_id in sorted(entries):
            digest.update(f"{doc_id}\x00{entries[doc_id].content_hash}\x00".encode())
        return digest.hexdigest()[:16]

    # -- runs: an interrupted run is detected by the next one ------------------------------------
    def start_run(self) -> tuple[int, bool]:
        """Record a new run; returns (run id, whether the previous run was interrupted)."""
        with self.engine.begin() as conn:
            last = conn.execute(
                select(ingest_runs.c.state)
                .where(ingest_runs.c.collection == self.collection)
                .order_by(ingest_runs.c.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            run_id = conn.execute(
                insert(ingest_runs).values(
                    collection=self.collection, state="running", started_at=_now()
                )
            ).inserted_primary_key
            assert run_id is not None
        return int(run_id[0]), last in ("running", "failed")

    def finish_run(self, run_id: int, index_version: str, summary: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(ingest_runs)
                .where(ingest_runs.c.id == run_id)
                .values(
                    state="done",
                    finished_at=_now(),
                    index_version=index_version,
                    summary=json.dumps(summary),
                )
            )

    def fail_run(self, run_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(ingest_runs)
                .where(ingest_runs.c.id == run_id)
                .values(state="failed", finished_at=_now())
            )

    def current_version(self) -> str:
        """The index version recorded by the last finished run (cheap: one row)."""
        with self.engine.connect() as conn:
            version = conn.execute(
                _CURRENT_VERSION, {"collection": self.collection}
            ).scalar_one_or_none()
        return version or EMPTY_INDEX_VERSION

    def last_run_interrupted(self) -> bool:
        with self.engine.connect() as conn:
            state = conn.execute(
                select(ingest_runs.c.state)
                .where(ingest_runs.c.collection == self.collection)
                .order_by(ingest_runs.c.id.desc())
                .limit(1)
            ).scalar_one_or_none()
        return state in ("running", "failed")

    def copy_to(self, collection: str, index_version: str) -> None:
        """This manifest as ``collection``'s (a snapshot), with a finished run recording
        ``index_version``: written last, so a copy cut short is never taken for whole."""
        with self.engine.begin() as conn:
            conn.execute(delete(documents).where(documents.c.collection == collection))
            rows = conn.execute(select(documents).where(documents.c.collection == self.collection))
            copied = [{**row._mapping, "collection": collection} for row in rows]
            if copied:
                conn.execute(insert(documents), copied)
            conn.execute(
                insert(ingest_runs).values(
                    collection=collection,
                    state="done",
                    started_at=_now(),
                    finished_at=_now(),
                    index_version=index_version,
                    summary=json.dumps({"snapshot_of": self.collection}),
                )
            )

    def drop(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(documents).where(documents.c.collection == self.collection))
            conn.execute(delete(ingest_runs).where(ingest_runs.c.collection == self.collection))
