"""Durable threads: LangGraph checkpointers and the thread index.

SQLite (langgraph-checkpoint-sqlite) in ``.keel/checkpoints.db`` by default; PostgreSQL
(langgraph-checkpoint-postgres) when ``KEEL_DATABASE_URL`` points at Postgres, so several
gateway instances share threads. Both savers have async methods too
(:mod:`keel.agents.savers`), for the graph's async path (``App.aask``, ``App.astream``).
The ``keel_threads`` table (in the keel database) records each thread's owner and last
activity, for listing, ownership checks and retention.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, DateTime, Engine, String, Table, delete, select, update
from sqlalchemy.exc import IntegrityError

from keel.db import create_tables, metadata
from keel.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

threads = Table(
    "keel_threads",
    metadata,
    Column("thread_id", String(256), primary_key=True),
    Column("app", String(256), nullable=False),
    Column("owner", String(256)),
    # the person the thread is with (OpenAI's user, X-Keel-User), for export and erasure
    Column("end_user", String(256), index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# What a checkpoint may revive besides LangGraph's safe types (messages, datetimes, ...):
# the agent state's own types. Anything else in a stored checkpoint is refused, so a row
# written into the checkpoint database cannot make the server import and call other code.
STATE_TYPES = (
    ("keel.rag.types", "Hit"),
    ("keel.tools.records", "ToolCallRecord"),
    ("keel.guardrails.events", "GuardEvent"),
)


def serializer() -> Any:
    """LangGraph's serializer, reviving only its safe types and :data:`STATE_TYPES`."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)


def open_checkpointer(
    database_url: str | None, data_dir: Path
) -> tuple[BaseCheckpointSaver[Any], Callable[[], None]]:
    """``(checkpointer, close)`` for the configured database."""
    from keel.db import SQLITE_BUSY_TIMEOUT_S, normalise_url, write_ahead_log

    if database_url is None or normalise_url(database_url).startswith("sqlite"):
        from keel.agents.savers import KeelSqliteSaver

        if database_url is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = str(data_dir / "checkpoints.db")
        else:  # a SQLite keel database elsewhere: checkpoints go beside it
            db = Path(normalise_url(database_url).split("///", 1)[-1])
            path = str(db.with_name(f"{db.stem}-checkpoints.db"))
        conn = sqlite3.connect(path, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_S)
        write_ahead_log(conn)
        # WAL + NORMAL: a commit survives the process being killed (the tests kill it), not a
        # power cut; FULL would fsync on every checkpoint, several per turn.
        conn.execute("PRAGMA synchronous=NORMAL")
        saver = KeelSqliteSaver(conn, serde=serializer())
        saver.setup()
        return saver, conn.close
    url = normalise_url(database_url)
    if not url.startswith("postgresql"):
        raise ConfigError(f"threads need SQLite or PostgreSQL, not {url.split(':', 1)[0]}")
    try:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        from keel.agents.savers import KeelPostgresSaver
    except ImportError as exc:
        raise ConfigError("Postgres threads need langgraph-checkpoint-postgres") from exc
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=8,
        open=True,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    saver_pg = KeelPostgresSaver(pool, serde=serializer())
    saver_pg.setup()
    return saver_pg, pool.close


def scoped_thread_id(thread_id: str, owner: str | None) -> str:
    """The stored id of the thread a key names ``thread_id``: ``<key id>:<thread id>``, so
    two keys choosing the same id never share (or squat) a thread, and whether another key
    uses an id is never revealed. Ids too long for that form are hashed after the prefix.
    ``owner=None`` (the trusted local caller) names threads as they are stored."""
    if owner is None:
        return thread_id
    stored = f"{owner}:{thread_id}"
    if len(stored) <= 200:
        return stored
    import hashlib

    return f"{owner}:#{hashlib.sha256(thread_id.encode()).hexdigest()}"


def client_thread_id(stored: str, owner: str | None) -> str:
    """The id a key knows a stored thread by (the inverse of :func:`scoped_thread_id` for
    ids that fit; a hashed long id stays hashed, which only the key's own traces show)."""
    if owner is not None and stored.startswith(f"{owner}:"):
        return stored[len(owner) + 1 :]
    return stored


class ThreadIndex:
    """Which threads exist, who owns them and when they were last used."""

    def __init__(self, engine: Engine, app: str) -> None:
        self.engine = engine
        self.app = app
        create_tables(engine, metadata, [threads])

    def resolve(self, thread_id: str, owner: str | None) -> str:
        """The stored id of the thread ``owner`` names ``thread_id`` (see
        :func:`scoped_thread_id`). A thread the same key created before ids were scoped
        keeps its unscoped id; nobody else's unscoped thread is ever resolved."""
        stored = scoped_thread_id(thread_id, owner)
        if stored == thread_id:
            return stored
        with self.engine.connect() as conn:
            found = conn.execute(
                select(threads.c.thread_id, threads.c.owner).where(
                    threads.c.thread_id.in_([stored, thread_id])
                )
            ).all()
        owners = {row[0]: row[1] for row in found}
        if stored not in owners and owners.get(thread_id) == owner:
            return thread_id
        return stored

    def touch(self, thread_id: str, owner: str | None, end_user: str | None = None) -> None:
        """Record activity; a new thread belongs to ``owner``; another owner is refused.
        ``end_user``: the person the turn is for (kept on the thread once given)."""
        now = datetime.now(UTC)
        exists, _ = self.owner_of(thread_id)
        if not exists:
            # A transaction of its own: on PostgreSQL a failed insert aborts its transaction,
            # so the check and update below could not run in it.
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        threads.insert().values(
                            thread_id=thread_id,
                            app=self.app,
                            owner=owner,
                            end_user=end_user,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:  # created concurrently: fall through to the check
                pass
            else:
                return
        self.check_owner(thread_id, owner)
        values: dict[str, object] = {"updated_at": now}
        if end_user:
            values["end_user"] = end_user
        with self.engine.begin() as conn:
            conn.execute(update(threads).where(threads.c.thread_id == thread_id).values(**values))

    def owner_of(self, thread_id: str) -> tuple[bool, str | None]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(threads.c.owner).where(threads.c.thread_id == thread_id)
            ).first()
        return (row is not None, row[0] if row else None)

    def check_owner(self, thread_id: str, owner: str | None) -> None:
        """``owner=None`` is the trusted local caller (Python API, CLI): it may use any
        thread. Any other owner may use only its own threads and threads without one."""
        if owner is None:
            return
        exists, current = self.owner_of(thread_id)
        if exists and current is not None and current != owner:
            raise UsageError(f"no thread {thread_id!r}")  # not yours: as if it did not exist

    def all(self, owner: str | None = None) -> list[dict[str, Any]]:
        query = (
            select(threads).where(threads.c.app == self.app).order_by(threads.c.updated_at.desc())
        )
        if owner is not None:
            query = query.where(threads.c.owner == owner)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def forget(self, thread_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(threads).where(threads.c.thread_id == thread_id))

    def idle_since(self, days: float) -> list[str]:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(threads.c.thread_id).where(
                    threads.c.app == self.app, threads.c.updated_at < cutoff
                )
            )
            return [r[0] for r in rows]
