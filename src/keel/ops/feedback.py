"""Human feedback on answers, linked to trace ids, in the keel database.

One rating per key per trace: a key that rates a trace again replaces its earlier rating
(feedback without a key, from the Python API or the CLI, is kept as given).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Float,
    String,
    Table,
    Text,
    and_,
    select,
    text,
    update,
)

from keel.db import create_tables, metadata

feedback = Table(
    "keel_feedback",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("trace_id", String(64), nullable=False, index=True),
    Column("thread_id", String(256)),
    Column("key_id", String(64)),
    Column("score", Float, nullable=False),
    Column("comment", Text),
    Column("correction", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class FeedbackStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata, [feedback])

    def add(
        self,
        trace_id: str,
        score: float,
        *,
        comment: str | None = None,
        correction: str | None = None,
        thread_id: str | None = None,
        key_id: str | None = None,
    ) -> str:
        """Keep a rating; the id of its row. A key's earlier rating of the trace is replaced
        (the row keeps its id)."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            if key_id is not None:
                mine = and_(feedback.c.trace_id == trace_id, feedback.c.key_id == key_id)
                _one_rater_at_a_time(conn, mine, f"{trace_id}\0{key_id}")
                earlier = conn.execute(select(feedback.c.id).where(mine)).scalars().all()
                if earlier:
                    conn.execute(
                        update(feedback)
                        .where(feedback.c.id == earlier[0])
                        .values(
                            thread_id=thread_id,
                            score=score,
                            comment=comment,
                            correction=correction,
                            created_at=now,
                        )
                    )
                    if len(earlier) > 1:  # from before ratings were one per key
                        conn.execute(feedback.delete().where(feedback.c.id.in_(earlier[1:])))
                    return str(earlier[0])
            fid = uuid.uuid4().hex
            conn.execute(
                feedback.insert().values(
                    id=fid,
                    trace_id=trace_id,
                    thread_id=thread_id,
                    key_id=key_id,
                    score=score,
                    comment=comment,
                    correction=correction,
                    created_at=now,
                )
            )
        return fid

    def all(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        query = select(feedback).order_by(feedback.c.created_at)
        if trace_id is not None:
            query = query.where(feedback.c.trace_id == trace_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _one_rater_at_a_time(conn: Connection, mine: ColumnElement[bool], name: str) -> None:
    """Serialise the ratings of one key on one trace across processes (a retried request on
    two gateway workers), so the second reads the first's row and replaces it instead of
    adding one. PostgreSQL: a transaction-scoped advisory lock on ``name``. SQLite: a write
    that changes nothing, which takes the database's write lock before anything is read (a
    plain ``SELECT`` reads without one)."""
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        lock = int.from_bytes(digest, "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})
    else:
        conn.execute(update(feedback).where(mine).values(id=feedback.c.id))
