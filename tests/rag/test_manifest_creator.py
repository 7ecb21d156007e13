"""The manifest records which API key created each document; databases made before it had
that column are upgraded in place."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from keel.rag.manifest import Entry, Manifest


def test_an_old_manifest_gains_created_by_and_keeps_its_rows(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:  # the table as it was before documents had a creator
        conn.execute(
            text(
                "CREATE TABLE keel_documents (collection VARCHAR(512) NOT NULL, doc_id "
                "VARCHAR(1024) NOT NULL, source TEXT NOT NULL, content_hash VARCHAR(64) NOT "
                "NULL, chunk_ids TEXT NOT NULL, updated_at DATETIME NOT NULL, "
                "PRIMARY KEY (collection, doc_id))"
            )
        )
        conn.execute(
            text("INSERT INTO keel_documents VALUES ('c', 'a', 'a', 'h', '[]', '2025-01-01')")
        )
    manifest = Manifest(engine, "c")
    assert manifest.creators(["a"]) == {"a": None}
    manifest.write([Entry("b", "b", "h2", ("1",), created_by="k1")])
    manifest.write([Entry("b", "b", "h3", ("2",), created_by="k2")])  # a replacement
    assert manifest.creators(["a", "b", "missing"]) == {"a": None, "b": "k1"}
    Manifest(create_engine(f"sqlite:///{tmp_path / 'old.db'}"), "c")  # idempotent
