"""Leases: one holder at a time for a named resource, across every process and instance.

The gateway takes one per thread around a turn (a second concurrent turn on the thread gets
409, whichever instance it lands on). A lease expires ``ttl_s`` after its last renewal, so a
killed process never holds a resource for longer than that; while held, it is renewed in the
background every ``ttl_s / 3``.

Two backends with the same contract (``tests/ops/test_locks.py`` runs both, and two real
processes against each):

- :class:`RedisLeases` (``KEEL_REDIS_URL``): ``SET key token NX PX ttl``; release and renewal
  are compare-and-delete / compare-and-expire scripts, so a lease that expired and was taken
  by another holder is never released or extended by the old one;
- :class:`DatabaseLeases` (the keel database, SQLite or Postgres): a ``keel_leases`` row per
  held name; taking it is an insert, or an update of an expired row, in one statement.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Column, Engine, Float, String, Table, delete, insert, update
from sqlalchemy.exc import IntegrityError

from keel.db import metadata

__all__ = ["DatabaseLeases", "Lease", "Leases", "RedisLeases", "leases_for"]

leases_table = Table(
    "keel_leases",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("token", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),  # unix seconds
)


class _Backend(Protocol):
    def take(self, name: str, token: str, ttl_s: float) -> bool: ...
    def renew(self, name: str, token: str, ttl_s: float) -> bool: ...
    def give_back(self, name: str, token: str) -> None: ...


@dataclass
class Lease:
    """A held lease; :meth:`release` (or leaving the ``with`` block) gives it back."""

    name: str
    token: str
    _backend: _Backend
    _ttl_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    def _keep(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            try:
                if not self._backend.renew(self.name, self.token, self._ttl_s):
                    return  # lost (expired and taken): nothing more to renew
            except Exception:  # a blip of the backend: try again at the next tick
                continue

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):  # the lease expires on its own
            self._backend.give_back(self.name, self.token)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Leases:
    """Named leases on a backend; :meth:`try_acquire` never waits."""

    def __init__(self, backend: _Backend, *, ttl_s: float = 30.0) -> None:
        self.backend = backend
        self.ttl_s = ttl_s

    def try_acquire(self, name: str) -> Lease | None:
        """The lease on ``name``, or None while another holder has it."""
        token = secrets.token_hex(16)
        if not self.backend.take(name, token, self.ttl_s):
            return None
        lease = Lease(name, token, self.backend, self.ttl_s)
        lease._renewer = threading.Thread(target=lease._keep, name=f"lease {name}", daemon=True)
        lease._renewer.start()
        return lease


class RedisLeases:
    """Leases in Redis (``SET NX PX``)."""

    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
        "else return 0 end"
    )
    _RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )

    def __init__(self, url: str, prefix: str = "keel:lease:") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def take(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self.client.set(self.prefix + name, token, nx=True, px=int(ttl_s * 1000)))

    def renew(self, name: str, token: str, ttl_s: float) -> bool:
        done = self.client.eval(self._RENEW, 1, self.prefix + name, token, int(ttl_s * 1000))
        return bool(done)

    def give_back(self, name: str, token: str) -> None:
        self.client.eval(self._RELEASE, 1, self.prefix + name, token)


class DatabaseLeases:
    """Leases as rows of ``keel_leases`` in the keel database."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        from keel.db import create_tables

        self.engine = engine
        self.clock = clock
        create_tables(engine, metadata, [leases_table])

    def take(self, name: str, token: str, ttl_s: float) -> bool:
        now = self.clock()
        t = leases_table
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(t)
                .where(t.c.name == name, t.c.expires_at < now)
                .values(token=token, expires_at=now + ttl_s)
            ).rowcount
            if taken:
                return True
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t).values(name=name, token=token, expires_at=now + ttl_s))
            return True
        except IntegrityError:  # held (and not expired) by someone else
            return False

    def renew(self, name: str, token: str, ttl_s: float) -> bool:
        t = leases_table
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(t)
                    .where(t.c.name == name, t.c.token == token)
                    .values(expires_at=self.clock() + ttl_s)
                ).rowcount
            )

    def give_back(self, name: str, token: str) -> None:
        t = leases_table
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.name == name, t.c.token == token))


def leases_for(engine: Engine, redis_url: str | None, *, ttl_s: float = 30.0) -> Leases:
    """Redis when ``KEEL_REDIS_URL`` is set (fast, shared by every instance), else the keel
    database (shared by every process that uses it)."""
    backend: _Backend = RedisLeases(redis_url) if redis_url else DatabaseLeases(engine)
    return Leases(backend, ttl_s=ttl_s)
