from __future__ import annotations

from pathlib import Path

from keel.rag.bm25 import BM25Index, tokenize
from keel.rag.types import Chunk


def chunk(i: int, text: str, source: str = "a.md") -> Chunk:
    return Chunk(id=f"c{i}", doc_id=source, text=text, source=source)


CHUNKS = [
    chunk(0, "Refunds are issued within 30 days of purchase."),
    chunk(1, "Install the desktop application on Windows.", "b.md"),
    chunk(2, "Running several installers in parallel is not supported.", "b.md"),
]


def test_tokenize_stems_and_drops_stop_words() -> None:
    assert tokenize(["The installers are running"]) == [["instal", "run"]]


def test_build_search_persist_and_reload(tmp_path: Path) -> None:
    index = BM25Index(tmp_path / "bm25" / "docs")
    index.build(CHUNKS, "v1")
    hits = index.search("how do I install it", 10)
    assert [h[0] for h in hits][:2] == ["c1", "c2"]  # stemming: install ~ installers
    assert all(score > 0 for _, score, _ in hits)
    assert index.search("zebra", 10) == []  # no shared term, no hit
    assert index.search("the and of", 10) == []  # only stop words

    reloaded = BM25Index(tmp_path / "bm25" / "docs")
    assert reloaded.stored_version() == "v1" and reloaded.load()
    assert reloaded.search("how do I install it", 10) == hits


def test_filters_apply_to_bm25(tmp_path: Path) -> None:
    index = BM25Index(tmp_path / "i")
    index.build(CHUNKS, "v1")
    hits = index.search("install refunds", 10, {"source": "a.md"})
    assert [h[0] for h in hits] == ["c0"]
    assert index.search("install", 10, {"source": "zzz.md"}) == []


def test_rebuild_replaces_atomically_and_empty_index_works(tmp_path: Path) -> None:
    index = BM25Index(tmp_path / "i")
    index.build(CHUNKS, "v1")
    index.build([], "v2")
    assert index.search("install", 10) == []
    fresh = BM25Index(tmp_path / "i")
    assert fresh.load() and fresh.version == "v2" and len(fresh) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i"]  # no temp folders left
    assert BM25Index(tmp_path / "none").load() is False
