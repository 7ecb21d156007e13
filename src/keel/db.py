"""The keel database: one SQLAlchemy engine for every part that stores state.

SQLite in ``.keel/keel.db`` by default; ``KEEL_DATABASE_URL`` (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/keel``) for a database shared by several
gateway instances. The same SQLAlchemy Core code serves both.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event
from sqlalchemy.exc import OperationalError, ProgrammingError

from keel.errors import ConfigError


def normalise_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use the psycopg 3 driver that Keel installs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str | None, data_dir: Path) -> Engine:
    """The engine for ``url``, or for the embedded SQLite file in ``data_dir``."""
    if url is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{data_dir / 'keel.db'}"
    url = normalise_url(url)
    try:
        if url.startswith("sqlite"):
            # A local file: no connection goes stale, so no ping before each use; and enough
            # pooled connections for a gateway's or an evaluation run's threads, so none
            # waits for a free one or opens and closes overflow connections (each open runs
            # the pragmas below).
            engine = create_engine(url, pool_size=32, max_overflow=32)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # bad URL, missing driver
        raise ConfigError(f"cannot use database URL {url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_create_lock = threading.Lock()


def create_tables(engine: Engine, metadata: MetaData, tables: Sequence[Table]) -> None:
    """Create ``tables`` if they are missing, once per engine and process.

    Serialised: several threads opening a fresh database at once (an evaluation run, a
    gateway's first requests) would otherwise race on ``CREATE TABLE``; and remembered, so the
    hot paths that open a store per call do not inspect the schema every time.
    """
    created: set[str] = engine.__dict__.setdefault("_keel_created_tables", set())
    todo = [t for t in tables if t.name not in created]
    if not todo:
        return
    with _create_lock:
        todo = [t for t in todo if t.name not in created]
        if not todo:
            return
        try:
            metadata.create_all(engine, tables=todo, checkfirst=True)
        except OperationalError as exc:  # another process created them meanwhile
            if "already exists" not in str(exc):
                raise
        except ProgrammingError as exc:  # the same on PostgreSQL
            if "already exists" not in str(exc):
                raise
        created.update(t.name for t in todo)
