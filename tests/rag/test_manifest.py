"""The manifest contract, on SQLite (embedded) and PostgreSQL (shared): the same code path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from keel.db import make_engine
from keel.rag.manifest import EMPTY_INDEX_VERSION, Entry, Manifest


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(None, tmp_path)
    else:
        eng = make_engine(request.getfixturevalue("pg_url"), tmp_path)
    yield eng
    eng.dispose()


def test_write_read_replace_remove(engine: Engine, unique: str) -> None:
    m = Manifest(engine, f"col-{unique}")
    assert m.entries() == {} and m.index_version() == EMPTY_INDEX_VERSION
    m.write([Entry("a", "docs/a.md", "h1", ("c1", "c2")), Entry("b", "docs/b.md", "h2", ())])
    assert m.entries()["a"] == Entry("a", "docs/a.md", "h1", ("c1", "c2"))
    v1 = m.index_version()
    m.write([Entry("a", "docs/a.md", "h3", ("c3",))])
    assert m.entries()["a"].chunk_ids == ("c3",) and m.count() == 2
    assert m.index_version() != v1
    m.remove(["a", "missing"])
    assert list(m.entries()) == ["b"]
    other = Manifest(engine, f"other-{unique}")
    assert other.entries() == {}  # collections are separate


def test_runs_detect_interruption_and_record_the_version(engine: Engine, unique: str) -> None:
    m = Manifest(engine, f"col-{unique}")
    run, interrupted = m.start_run()
    assert not interrupted
    assert m.last_run_interrupted()  # still running: a crash now would leave it so
    m.write([Entry("a", "a", "h", ("c",))])
    m.finish_run(run, m.index_version(), {"added": 1})
    assert m.current_version() == m.index_version() and not m.last_run_interrupted()
    _, interrupted = m.start_run()
    assert not interrupted
    # a new run after one that never finished knows it
    run3, interrupted = m.start_run()
    assert interrupted
    m.fail_run(run3)
    assert m.start_run()[1] is True
    m.drop()
    assert m.entries() == {} and m.current_version() == EMPTY_INDEX_VERSION
