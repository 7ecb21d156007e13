"""The audit log: an append-only, hash-chained record of administrative and security events.

Each row carries the SHA-256 of the previous row's hash and its own canonical content, so a
row rewritten, inserted or deleted afterwards breaks the chain at that row, which
:meth:`AuditLog.verify` (``keel audit verify``) reports. Appends from several processes form
one chain: ``prev_hash`` is unique, so two writers that read the same last row cannot both
append after it; the loser reads the new last row and tries again.

Events (``action``): ``key.created``, ``key.revoked``, ``documents.ingested``,
``documents.deleted``, ``release.created``, ``release.stable``, ``release.canary``,
``release.clear_canary``, ``release.promote``, ``release.rollback`` (an automatic one says so
in ``details.reason``), ``cache.cleared``, ``access.denied``. ``actor`` is the API key id, or
``cli`` / ``gateway`` for the operator's and the gateway's own actions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Engine, Float, Integer, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from keel.db import create_tables, metadata
from keel.errors import StoreError

__all__ = ["AuditEntry", "AuditLog", "ChainBreak"]

audit_table = Table(
    "keel_audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("app", String(200), nullable=False, index=True),
    Column("at", Float, nullable=False),  # unix seconds
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(300), nullable=False),
    Column("details", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
)

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    app: str
    at: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "app": self.app,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class ChainBreak:
    """Where verification failed and why."""

    seq: int
    reason: str


def _digest(
    prev: str, app: str, at: float, actor: str, action: str, target: str, details: str
) -> str:
    body = json.dumps(
        [prev, app, repr(at), actor, action, target, details],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


class AuditLog:
    """The audit log (all apps share the table; each entry names its app)."""

    def __init__(self, engine: Engine, app: str) -> None:
        self.engine = engine
        self.app = app
        create_tables(engine, metadata, [audit_table])

    def record(
        self, actor: str, action: str, target: str = "", details: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        """Append one event (retried when another writer appended at the same moment)."""
        text = json.dumps(dict(details or {}), sort_keys=True, default=str, ensure_ascii=False)
        t = audit_table
        for _ in range(50):
            with self.engine.connect() as conn:
                last = conn.execute(select(t.c.hash).order_by(t.c.seq.desc()).limit(1)).first()
            prev = last[0] if last else GENESIS
            at = time.time()
            digest = _digest(prev, self.app, at, actor[:64], action, target[:300], text)
            try:
                with self.engine.begin() as conn:
                    seq = conn.execute(
                        insert(t).values(
                            app=self.app,
                            at=at,
                            actor=actor[:64],
                            action=action,
                            target=target[:300],
                            details=text,
                            prev_hash=prev,
                            hash=digest,
                        )
                    ).inserted_primary_key
            except IntegrityError:  # another writer took this place
                time.sleep(0.005)
                continue
            except OperationalError as exc:
                if not _transient(exc):  # read-only, gone, unreachable: no retry helps
                    reason = str(exc.orig or exc).splitlines()[0][:200]
                    raise StoreError(f"the audit log cannot be written: {reason}") from exc
                time.sleep(0.005)  # SQLite's "database is locked": another writer
                continue
            return AuditEntry(
                int(seq[0]) if seq else 0, self.app, at, actor, action, target,
                json.loads(text), prev, digest,
            )  # fmt: skip
        raise StoreError("could not append to the audit log (too many concurrent writers)")

    def entries(self, *, since: float | None = None, limit: int = 1000) -> list[AuditEntry]:
        """This app's entries, oldest first (from ``since``, unix seconds)."""
        t = audit_table
        query = select(t).where(t.c.app == self.app)
        if since is not None:
            query = query.where(t.c.at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.seq.desc()).limit(limit)).all()
        return [_entry(r) for r in reversed(rows)]

    def verify(self) -> ChainBreak | None:
        """The first row whose hash or link does not hold (over every app's rows: one chain),
        or None when the whole chain is intact."""
        t = audit_table
        prev = GENESIS
        with self.engine.connect() as conn:
            for row in conn.execute(select(t).order_by(t.c.seq)):
                if row.prev_hash != prev:
                    return ChainBreak(row.seq, "does not follow the row before it")
                digest = _digest(
                    row.prev_hash, row.app, row.at, row.actor, row.action, row.target, row.details
                )
                if digest != row.hash:
                    return ChainBreak(row.seq, "its content does not match its hash")
                prev = row.hash
        return None


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        row.seq, row.app, row.at, row.actor, row.action, row.target,
        json.loads(row.details), row.prev_hash, row.hash,
    )  # fmt: skip


def _transient(exc: OperationalError) -> bool:
    """A write that may succeed when retried (another writer holds the database)."""
    text = str(exc.orig or exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text
