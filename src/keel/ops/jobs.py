"""Ingestion jobs in the keel database: their state, report and error are readable from every
process and instance, not only the one that accepted the request.

A job holds its work (``payload``: the documents or files to ingest) until it ends, so any
worker can run it (:mod:`keel.worker` puts the job's id on the task queue). A job records
which process runs it (``runner``, host and pid), how often it was started (``attempts``) and
when it last reported (``updated_at``); a job whose worker died is started again
(:meth:`JobStore.unfinished` lists the candidates).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Column, Engine, Float, Integer, String, Table, Text, insert, select, update

from keel.db import metadata

__all__ = ["JobRecord", "JobState", "JobStore"]

JobState = Literal["queued", "running", "done", "failed"]

jobs_table = Table(
    "keel_ingest_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("app", String(200), nullable=False, index=True),
    Column("key_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("report", Text, nullable=True),  # JSON
    Column("error", Text, nullable=True),
    Column("runner", String(300), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("payload", Text, nullable=True),  # JSON: the work, until the job ends
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
)


@dataclass(frozen=True)
class JobRecord:
    """One ingestion job as stored."""

    id: str
    key_id: str
    state: JobState
    report: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float
    runner: str
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        """What ``GET /v1/ingest/{job}`` shows."""
        return {
            "id": self.id,
            "state": self.state,
            "report": self.report,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
        }


def _runner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobStore:
    """Ingestion jobs of one app."""

    def __init__(self, engine: Engine, app: str) -> None:
        from keel.db import create_tables

        self.engine = engine
        self.app = app
        create_tables(engine, metadata, [jobs_table])

    def create(self, key_id: str, payload: str | None = None) -> JobRecord:
        """A queued job holding its work (``payload``, JSON)."""
        now = time.time()
        job_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            conn.execute(
                insert(jobs_table).values(
                    id=job_id,
                    app=self.app,
                    key_id=key_id,
                    state="queued",
                    runner=_runner(),
                    created_at=now,
                    updated_at=now,
                    payload=payload,
                    attempts=0,
                )
            )
        found = self.get(job_id)
        assert found is not None
        return found

    def get(self, job_id: str) -> JobRecord | None:
        t = jobs_table
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == job_id, t.c.app == self.app)).first()
        if row is None:
            return None
        return JobRecord(
            id=row.id,
            key_id=row.key_id,
            state=row.state,
            report=json.loads(row.report) if row.report else None,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            runner=row.runner,
            attempts=int(row.attempts or 0),
        )

    def _set(self, job_id: str, **values: Any) -> None:
        t = jobs_table
        with self.engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.app == self.app)
                .values(updated_at=time.time(), **values)
            )

    def payload(self, job_id: str) -> str | None:
        """The job's work (None once it ended)."""
        t = jobs_table
        with self.engine.connect() as conn:
            return conn.execute(
                select(t.c.payload).where(t.c.id == job_id, t.c.app == self.app)
            ).scalar()

    def running(self, job_id: str) -> None:
        t = jobs_table
        self._set(job_id, state="running", runner=_runner(), attempts=t.c.attempts + 1)

    def done(self, job_id: str, report: dict[str, Any]) -> None:
        self._set(job_id, state="done", report=json.dumps(report, default=str), payload=None)

    def failed(self, job_id: str, error: str) -> None:
        self._set(job_id, state="failed", error=error[:2000], payload=None)

    def requeued(self, job_id: str) -> bool:
        """Back to ``queued`` (its worker died): the next worker starts it again. Only a job
        still ``running`` or ``queued`` goes back (one that ended meanwhile stays as it ended);
        whether it did. The caller holds the job's lease."""
        t = jobs_table
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(t)
                .where(t.c.id == job_id, t.c.app == self.app, t.c.state.in_(("running", "queued")))
                .values(updated_at=time.time(), state="queued")
            )
        return changed.rowcount == 1

    def unfinished(self, queued_for_s: float, *, now: float | None = None) -> list[JobRecord]:
        """Jobs that may have lost their worker: every running job (the caller checks its
        lease) and jobs queued for longer than ``queued_for_s`` seconds."""
        from sqlalchemy import and_, or_

        t = jobs_table
        cutoff = (now if now is not None else time.time()) - queued_for_s
        stuck = or_(t.c.state == "running", and_(t.c.state == "queued", t.c.updated_at < cutoff))
        with self.engine.connect() as conn:
            ids = conn.execute(select(t.c.id).where(t.c.app == self.app, stuck)).scalars().all()
        return [job for job in (self.get(i) for i in ids) if job is not None]
