"""Incremental, idempotent ingestion, including recovery from a run killed halfway."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.app import App
from keel.rag.manifest import Manifest

DOCS = {
    "docs/refunds.md": "# Refunds\n\nRefunds are possible within 30 days of purchase.\n",
    "docs/install.md": "# Install\n\nDownload the installer and run it.\n\n## Linux\n\nUse apt.\n",
    "docs/faq.txt": "Opening hours are 9 to 5 on weekdays.",
}


def snapshot(app: App) -> dict[str, Any]:
    """Everything a collection holds: store content, manifest, versions, BM25 answers."""
    store = app.store()
    chunks = sorted(
        (c.id, c.text, tuple(sorted(c.store_metadata().items()))) for c in store.iter_chunks()
    )
    return {
        "chunks": chunks,
        "count": store.count(),
        "manifest": {k: (e.content_hash, e.chunk_ids) for k, e in app.manifest().entries().items()},
        "index_version": app.index_version(),
        "bm25": [h.chunk_id for h in app.search("refunds installer weekdays", 10, mode="bm25")],
    }


def test_first_run_rerun_update_add_and_prune(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> None:
    write(tmp_path, DOCS)
    app = make_app()
    first = app.ingest(["docs"])
    assert sorted(first.added) == sorted(DOCS) and first.chunks_written == 4
    assert first.index_version == app.index_version() != "empty"

    again = app.ingest(["docs"])
    assert again.summary() == {"added": 0, "updated": 0, "unchanged": 3, "deleted": 0, "skipped": 0}
    assert again.embedded == 0 and again.index_version == first.index_version

    write(
        tmp_path,
        {
            "docs/install.md": DOCS["docs/install.md"] + "\n## Mac\n\nUse brew.\n",
            "docs/new.md": "# New\n\nA new page about gift cards.\n",
        },
    )
    (tmp_path / "docs" / "faq.txt").unlink()
    changed = app.ingest(["docs"])
    assert changed.updated == ["docs/install.md"] and changed.added == ["docs/new.md"]
    assert changed.deleted == []  # without --prune nothing is deleted
    assert changed.embedded == 2  # only the new "Mac" chunk and the new page; the rest cached
    assert "docs/faq.txt" in app.manifest().entries()

    pruned = app.ingest(["docs"], prune=True)
    assert pruned.deleted == ["docs/faq.txt"]
    assert "docs/faq.txt" not in app.manifest().entries()
    assert all(h.doc_id != "docs/faq.txt" for h in app.search("opening hours weekdays", 10))
    assert app.store().count() == sum(len(e.chunk_ids) for e in app.manifest().entries().values())


def test_prune_only_touches_the_ingested_paths(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> None:
    write(tmp_path, {**DOCS, "notes/keep.md": "# Keep\n\nNotes stay.\n"})
    app = make_app()
    app.ingest(["docs", "notes"])
    report = app.ingest(["docs"], prune=True)
    assert report.deleted == [] and "notes/keep.md" in app.manifest().entries()


def test_skipped_files_are_reported_not_fatal(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> None:
    write(tmp_path, {"docs/a.md": "# A\n\nfine\n", "docs/b.xyz": "what"})
    (tmp_path / "docs" / "c.txt").write_bytes(b"\xff\xfe\x00bad")
    report = make_app().ingest(["docs"])
    assert report.added == ["docs/a.md"]
    assert {s.source for s in report.skipped} == {"docs/b.xyz", "docs/c.txt"}


def test_an_exception_mid_run_is_recovered_by_the_next_run(
    make_app: Callable[..., App],
    tmp_path: Path,
    write: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst moment: chunks are in the store but the manifest commit never happens."""
    write(
        tmp_path, {f"docs/d{i:02}.md": f"# Doc {i}\n\nUnique fact number {i}.\n" for i in range(30)}
    )
    clean = make_app({"rag": {"ingest_batch": 5}})
    clean.ingest(["docs"])
    expected = snapshot(clean)

    other = tmp_path / "other"
    (other / "docs").mkdir(parents=True)
    for p in (tmp_path / "docs").iterdir():
        (other / "docs" / p.name).write_text(p.read_text())
    from keel.config import config_from_dict
    from keel.settings import Settings

    settings = Settings(data_dir=other / ".keel", cache_dir=clean.settings.cache_dir)
    app = App(config_from_dict({"rag": {"ingest_batch": 5}}, base_dir=other), settings=settings)
    calls = {"n": 0}
    real_write = Manifest.write

    def failing_write(self: Manifest, entries: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        real_write(self, entries)

    monkeypatch.setattr(Manifest, "write", failing_write)
    with pytest.raises(RuntimeError):
        app.ingest(["docs"])
    monkeypatch.setattr(Manifest, "write", real_write)
    assert app.store().count() > app.manifest().count()  # orphans exist right now
    report = app.ingest(["docs"])
    assert len(report.added) == 20 and len(report.unchanged) == 10
    assert snapshot(app) == expected
    app.close()


@pytest.mark.slow
def test_sigkill_halfway_then_rerun_equals_a_clean_run(
    make_app: Callable[..., App], tmp_path: Path, model_cache_dir: Path
) -> None:
    corpus = tmp_path / "kb" / "corpus.jsonl"
    corpus.parent.mkdir()
    with corpus.open("w") as f:
        for i in range(600):
            text = f"Record {i} explains topic {i % 37} with detail {i * 7919 % 1000}. " * 3
            f.write(json.dumps({"_id": f"r{i}", "title": f"Record {i}", "text": text}) + "\n")
    raw = {"rag": {"paths": ["kb"], "ingest_batch": 16}}
    (tmp_path / "keel.toml").write_text('[rag]\npaths = ["kb"]\ningest_batch = 16\n')

    env = {
        **os.environ,
        "KEEL_DATA_DIR": str(tmp_path / "killed"),
        "KEEL_CACHE_DIR": str(model_cache_dir),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "keel.cli", "--config", str(tmp_path / "keel.toml"), "ingest"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    db = tmp_path / "killed" / "keel.db"
    committed = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    committed = conn.execute("select count(*) from keel_documents").fetchone()[0]
            except sqlite3.OperationalError:
                committed = 0
            if committed >= 100:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    assert 0 < committed < 600

    from keel.config import config_from_dict
    from keel.settings import Settings

    killed = App(
        config_from_dict(raw, base_dir=tmp_path),
        settings=Settings(data_dir=tmp_path / "killed", cache_dir=model_cache_dir),
    )
    assert killed.manifest().last_run_interrupted()
    report = killed.ingest()
    assert len(report.added) + len(report.unchanged) == 600

    clean = make_app(raw)
    clean.ingest()
    assert snapshot(killed) == snapshot(clean)
    assert killed.store().count() == len(set(killed.store().ids()))  # no duplicates
    killed.close()
