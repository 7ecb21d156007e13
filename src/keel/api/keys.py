"""API keys: created with scopes, shown once, stored hashed, revocable.

A key reads ``keel_<id>_<secret>``: the id (12 hex characters) finds the row, the secret (32
random bytes, url-safe) is checked against its SHA-256 in constant time. Keys are long random
tokens, so a fast hash is the right tool (as for GitHub and Stripe tokens); a password hash
would only slow every request down. The plain key is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Engine, String, Table, Text, select, update

from keel.db import create_tables, metadata
from keel.errors import UsageError

SCOPES = ("chat", "ingest", "feedback", "traces:read", "admin")
_KEY = re.compile(r"^keel_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCOPE = re.compile(r"^[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)?$")

api_keys = Table(
    "keel_api_keys",
    metadata,
    Column("id", String(12), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("scopes", Text, nullable=False),
    # the access labels it may read, comma-separated (keel.rag.access); admin reads all
    Column("labels", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    labels: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def readable(self) -> frozenset[str] | None:
        """The access labels this key reads (None: every document, for admin keys);
        unlabelled documents are readable by every key."""
        return None if self.is_admin else self.labels

    def may_assign(self, labels: Iterable[str]) -> list[str]:
        """The labels of ``labels`` this key may not put on a document (it holds the others)."""
        return [] if self.is_admin else sorted(set(labels) - self.labels)

    def allows(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "labels": sorted(self.labels),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(raw: str | list[str]) -> frozenset[str]:
    items = raw.split(",") if isinstance(raw, str) else raw
    scopes = frozenset(s.strip() for s in items if s.strip())
    if not scopes:
        raise UsageError("a key needs at least one scope (e.g. chat)")
    bad = sorted(s for s in scopes if not _SCOPE.match(s))
    if bad:
        raise UsageError(f"invalid scope(s): {', '.join(bad)}")
    return scopes


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata, [api_keys])

    def create(
        self, name: str, scopes: str | list[str], labels: str | Iterable[str] | None = None
    ) -> tuple[str, ApiKey]:
        """``(the plain key, shown once, its record)``; ``labels``: the access labels it
        reads (:mod:`keel.rag.access`)."""
        from keel.rag.access import parse_labels

        name = name.strip()
        if not name or len(name) > 200:
            raise UsageError("a key needs a name of 1-200 characters")
        parsed = parse_scopes(scopes)
        readable = frozenset(parse_labels(labels))
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    hash=_hash(secret),
                    scopes=",".join(sorted(parsed)),
                    labels=",".join(sorted(readable)),
                    created_at=now,
                )
            )
        return f"keel_{key_id}_{secret}", ApiKey(key_id, name, parsed, now, labels=readable)

    def verify(self, presented: str) -> ApiKey | None:
        match = _KEY.match(presented.strip())
        if not match:
            return None
        key_id, secret = match.groups()
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.hash, _hash(secret)):
            return None
        return self._key(row)

    @staticmethod
    def _key(row: Any) -> ApiKey:
        return ApiKey(
            row.id,
            row.name,
            frozenset(s for s in row.scopes.split(",") if s),
            row.created_at,
            row.revoked_at,
            frozenset(s for s in (row.labels or "").split(",") if s),
        )

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at))
            return [self._key(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(result.rowcount)
