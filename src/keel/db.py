"""The keel database: one SQLAlchemy engine for every part that stores state.

SQLite in ``.keel/keel.db`` by default; ``KEEL_DATABASE_URL`` (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/keel``) for a database shared by several
gateway instances. The same SQLAlchemy Core code serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

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
