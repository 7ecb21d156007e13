"""Schema migrations of the keel database (Alembic, ``keel/migrations``): a database made by
the release before migrations is upgraded with its rows intact, on SQLite (on its own, when
an app opens it) and on PostgreSQL (refused until an operator runs ``keel db upgrade``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, MetaData, Table, create_engine, insert, inspect, select, text
from typer.testing import CliRunner

from keel.app import App
from keel.config import config_from_dict
from keel.db import HEAD, current_revision, ensure_schema, load_all_tables, make_engine, upgrade
from keel.errors import ConfigError
from keel.settings import Settings

# what the release before migrations did not have yet (added in place, later)
LATER = {"keel_traces": {"release_id", "cache_hit"}, "keel_documents": {"created_by"}}
BASELINE_TABLES = (
    "keel_api_keys",
    "keel_documents",
    "keel_feedback",
    "keel_releases",
    "keel_spans",
    "keel_traces",
    "keel_usage",
)


def _previous_release_schema(engine: Engine) -> None:
    """The tables as the previous release created them, with a row in each that matters."""
    current = load_all_tables()
    old = MetaData()
    for name in BASELINE_TABLES:
        table = current.tables[name]
        cols = [
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
            if c.name not in LATER.get(name, set())
        ]
        Table(name, old, *cols)
    old.create_all(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(old.tables["keel_traces"]).values(
                trace_id="t" * 32, name="keel.turn", started_at=now, duration_ms=1.0, status="ok"
            )
        )
        docs = old.tables["keel_documents"]
        row: dict[str, object] = {}
        for c in docs.columns:
            if not c.nullable or c.primary_key:
                kind = str(c.type).upper()
                row[c.name] = (
                    now if "DATE" in kind or "TIME" in kind else (1 if "INT" in kind else "x")
                )
        conn.execute(insert(docs).values(**row))


def _row_survived(engine: Engine) -> None:
    metadata = load_all_tables()
    traces = metadata.tables["keel_traces"]
    with engine.connect() as conn:
        got = conn.execute(select(traces.c.trace_id, traces.c.release_id)).all()
    assert got == [("t" * 32, None)]
    columns = {c["name"] for c in inspect(engine).get_columns("keel_documents")}
    assert "created_by" in columns


def test_the_head_constant_is_the_migrations_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import keel.db

    config = Config()
    config.set_main_option("script_location", str(Path(keel.db.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_sqlite_from_the_previous_release_upgrades_when_the_app_opens_it(
    tmp_path: Path, settings: Settings
) -> None:
    data = tmp_path / ".keel"
    engine = make_engine(None, data)
    _previous_release_schema(engine)
    assert current_revision(engine) is None
    app = App(config_from_dict({"app": {"name": "m"}}, base_dir=tmp_path), settings=settings)
    try:
        assert app.engine.dialect.name == "sqlite"
        assert current_revision(app.engine) == HEAD
        _row_survived(app.engine)
        assert {"keel_leases", "keel_ingest_jobs", "keel_audit"} <= set(
            inspect(app.engine).get_table_names()
        )
    finally:
        app.close()


def test_keel_db_current_and_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keel.cli import cli
    from keel.settings import get_settings

    (tmp_path / "keel.toml").write_text('[app]\nname = "m"\n')
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    get_settings.cache_clear()
    try:
        _previous_release_schema(make_engine(None, tmp_path / ".keel"))
        cfg = ["--config", str(tmp_path / "keel.toml")]
        runner = CliRunner()
        behind = runner.invoke(cli, [*cfg, "db", "current"])
        assert behind.exit_code == 1 and "unversioned" in behind.output
        up = runner.invoke(cli, [*cfg, "db", "upgrade"])
        assert up.exit_code == 0, up.output
        assert f"-> {HEAD}" in up.output
        now = runner.invoke(cli, [*cfg, "db", "current", "--json"])
        assert now.exit_code == 0 and '"up_to_date": true' in now.output
    finally:
        get_settings.cache_clear()


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards)."""
    name = f"keel_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.postgres
def test_postgres_behind_is_refused_until_keel_db_upgrade(
    tmp_path: Path, settings: Settings, pg_database: str
) -> None:
    engine = make_engine(pg_database, tmp_path)
    _previous_release_schema(engine)
    with pytest.raises(ConfigError, match="keel db upgrade"):
        ensure_schema(make_engine(pg_database, tmp_path))
    assert upgrade(engine) == HEAD
    _row_survived(engine)
    engine.dispose()
    app = App(
        config_from_dict({"app": {"name": "m"}}, base_dir=tmp_path),
        settings=settings.model_copy(update={"database_url": pg_database}),
    )
    try:
        assert current_revision(app.engine) == HEAD
    finally:
        app.close()


@pytest.mark.postgres
def test_a_fresh_postgres_database_is_created_at_the_head(tmp_path: Path, pg_database: str) -> None:
    engine = make_engine(pg_database, tmp_path)
    ensure_schema(engine)
    assert current_revision(engine) == HEAD
    assert "keel_traces" in inspect(engine).get_table_names()
    engine.dispose()


OPENER = """
import sys
from pathlib import Path
from keel.db import current_revision, ensure_schema, make_engine
engine = make_engine(None, Path(sys.argv[1]))
ensure_schema(engine)
print(current_revision(engine))
"""


def test_processes_opening_a_new_database_at_once_all_find_it_migrated(tmp_path: Path) -> None:
    """`keel serve --workers N` on a fresh data directory: every worker migrates or waits."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(tmp_path / ".keel")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == [HEAD] * 3


@pytest.mark.parametrize("opened", ["keel.db", "checkpoints.db"])
def test_a_new_database_locked_by_another_connection_is_waited_for(
    tmp_path: Path, opened: str
) -> None:
    """Switching a new SQLite file to WAL takes an exclusive lock, and SQLite refuses it at once
    ("database is locked", whatever the busy timeout) while another connection (standing in
    for another process) holds a lock: the keel database's engine and the threads'
    checkpointer wait until it is free."""
    import sqlite3
    import threading
    from contextlib import closing

    from keel.agents.checkpoints import open_checkpointer

    data_dir = tmp_path / ".keel"
    data_dir.mkdir()
    other = sqlite3.connect(data_dir / opened, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (i INTEGER)")
    other.execute("BEGIN IMMEDIATE")  # another process writing to the file, not yet in WAL
    other.execute("INSERT INTO t VALUES (1)")
    done = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    done.start()
    try:
        if opened == "keel.db":
            engine = make_engine(None, data_dir)
            with engine.connect() as conn:
                mode = conn.execute(text("PRAGMA journal_mode")).scalar()
            engine.dispose()
        else:
            _, close = open_checkpointer(None, data_dir)
            close()
            with closing(sqlite3.connect(data_dir / opened)) as plain:
                mode = plain.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        done.join()
        other.close()
