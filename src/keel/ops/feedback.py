"""Human feedback on answers, linked to trace ids, in the keel database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Float, MetaData, String, Table, Text, select

from keel.db import create_tables

metadata = MetaData()
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
        fid = uuid.uuid4().hex
        with self.engine.begin() as conn:
            conn.execute(
                feedback.insert().values(
                    id=fid,
                    trace_id=trace_id,
                    thread_id=thread_id,
                    key_id=key_id,
                    score=score,
                    comment=comment,
                    correction=correction,
                    created_at=datetime.now(UTC),
                )
            )
        return fid

    def all(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        query = select(feedback).order_by(feedback.c.created_at)
        if trace_id is not None:
            query = query.where(feedback.c.trace_id == trace_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
