"""The keel database: one SQLAlchemy engine for every part that stores state.

SQLite in ``.keel/keel.db`` by default; ``KEEL_DATABASE_URL`` (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/keel``) for a database shared by several
gateway instances. The same SQLAlchemy Core code serves both.

Every table is declared on the one :data:`metadata` and versioned by the Alembic migrations
shipped in ``keel/migrations`` (version table ``keel_alembic_version``). :func:`ensure_schema`
runs when an app opens its database: SQLite is upgraded on the spot; a shared (PostgreSQL)
database that is behind is refused with the command to run (``keel db upgrade``), because an
operator decides when a database several instances share migrates. A PostgreSQL database with
no keel tables yet is created at the current schema.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from keel.errors import ConfigError

metadata = MetaData()
"""The one MetaData every keel table is declared on."""

VERSION_TABLE = "keel_alembic_version"
HEAD = "0007"
"""The schema revision this Keel needs (the head of ``keel/migrations/versions``; a test
keeps the two equal)."""

# the modules that declare tables on ``metadata`` (imported to register them all)
TABLE_MODULES = (
    "keel.agents.checkpoints",
    "keel.api.keys",
    "keel.api.storage",
    "keel.evals.judges",
    "keel.evals.store",
    "keel.ops.audit",
    "keel.ops.cache",
    "keel.ops.feedback",
    "keel.ops.jobs",
    "keel.ops.locks",
    "keel.ops.monitor",
    "keel.ops.releases",
    "keel.ops.tracing",
    "keel.rag._tables",
)


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


SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a statement waits for another process's lock


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        write_ahead_log(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def write_ahead_log(connection: Any) -> None:
    """Put a SQLite database in WAL mode (the file keeps it), through ``connection`` (a
    DB-API connection or cursor). Switching a file that is not yet in WAL mode takes an
    exclusive lock, and SQLite answers "database is locked" at once, without its busy
    handler, while another connection holds any lock: two processes opening a new database
    together (two `keel` commands, a gateway and a worker) met that. So the switch is tried
    again until the busy timeout; once the file is in WAL mode it takes no lock."""
    import sqlite3
    import time

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause = 0.005
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


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


# -- schema versions ---------------------------------------------------------------------------
def load_all_tables() -> MetaData:
    """``metadata`` with every keel table registered on it."""
    import importlib

    for name in TABLE_MODULES:
        importlib.import_module(name)
    from keel.ops.cost import end_user_usage_table, usage_table

    usage_table()
    end_user_usage_table()
    return metadata


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None: never migrated)."""
    if not inspect(engine).has_table(VERSION_TABLE):
        return None
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
    return str(row[0]) if row else None


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` (default: the head); returns where it is now."""
    from alembic import command

    with _create_lock, engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)
    return current_revision(engine)


def ensure_schema(engine: Engine) -> None:
    """Make sure the database has the schema this Keel needs (see the module docstring).

    Processes that open a new database at the same moment (``keel serve --workers N``) race to
    migrate it: the one that loses the race waits and finds it migrated."""
    import time

    from sqlalchemy.exc import DBAPIError

    for attempt in range(20):
        try:
            _ensure_schema(engine)
            return
        except DBAPIError:
            if attempt == 19:
                raise
            time.sleep(0.25)


def _ensure_schema(engine: Engine) -> None:
    if engine.__dict__.get("_keel_schema_ok"):
        return
    revision = current_revision(engine)
    if revision != HEAD:
        names = set(inspect(engine).get_table_names())
        fresh = not any(n.startswith("keel_") for n in names)
        if engine.dialect.name != "sqlite" and not fresh:
            where = f"revision {revision}" if revision else "an unversioned earlier release"
            raise ConfigError(
                f"the keel database schema is at {where}; this Keel needs revision {HEAD}. "
                "Back it up, then run `keel db upgrade` (with the same KEEL_DATABASE_URL) once, "
                "from one machine"
            )
        upgrade(engine)
    engine.__dict__["_keel_schema_ok"] = True
