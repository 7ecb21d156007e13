"""The contract every VectorStore backend passes, run on embedded Chroma and a `chroma run` server.

Vectors are small hand-made unit vectors (dim 8), so expected rankings and cosine scores are
exact and no embedding model is loaded.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keel.errors import ConfigError, StoreError, UsageError
from keel.rag.store import ChromaStore, VectorStore, open_chroma_client
from keel.rag.types import Chunk

DIM = 8
MODEL = "test:hand-made-8"


def vec(*pairs: tuple[int, float]) -> np.ndarray:
    """A unit vector of dimension DIM from (axis, weight) pairs."""
    v = np.zeros(DIM, dtype=np.float32)
    for axis, weight in pairs:
        v[axis] = weight
    return v / np.linalg.norm(v)


def axis(i: int, sign: float = 1.0) -> np.ndarray:
    return vec((i, sign))


def chunk(cid: str, doc_id: str = "doc-1", text: str | None = None, **kw: Any) -> Chunk:
    return Chunk(
        id=cid,
        doc_id=doc_id,
        text=text if text is not None else f"text of {cid}",
        source=kw.pop("source", f"docs/{doc_id}.md"),
        **kw,
    )


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(
    params=["embedded", pytest.param("server", marks=pytest.mark.chroma_server)],
)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "embedded":
        return open_chroma_client(url=None, path=tmp_path / "chroma")
    url: str = request.getfixturevalue("chroma_server_url")
    return open_chroma_client(url=url, path=tmp_path / "unused")


@pytest.fixture
def make_store(client: Any) -> Iterator[Callable[..., ChromaStore]]:
    """Open stores on the backend; every collection made here is dropped afterwards."""
    names: list[str] = []

    def make(name: str | None = None, *, model: str = MODEL, dimension: int = DIM) -> ChromaStore:
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        names.append(name)
        return ChromaStore(client, name, embedding_model=model, dimension=dimension)

    yield make
    for name in set(names):
        with contextlib.suppress(Exception):  # already dropped by the test
            client.delete_collection(name)


@pytest.fixture
def store(make_store: Callable[..., ChromaStore]) -> ChromaStore:
    return make_store()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Record the size of every upsert/delete/get batch that reaches Chroma."""
    from chromadb.api.models.Collection import Collection

    sizes: dict[str, list[int]] = {"upsert": [], "delete": [], "get": []}
    for op in sizes:
        original = getattr(Collection, op)

        def wrapper(self: Any, *args: Any, _op: str = op, _orig: Any = original, **kw: Any) -> Any:
            if kw.get("ids") is not None:
                sizes[_op].append(len(kw["ids"]))
            return _orig(self, *args, **kw)

        monkeypatch.setattr(Collection, op, wrapper)
    return sizes


# --- the contract --------------------------------------------------------------------------


def test_is_a_vector_store(store: ChromaStore) -> None:
    assert isinstance(store, VectorStore)
    assert store.name.startswith("t-")


def test_query_ranks_nearest_first_with_cosine_scores(store: ChromaStore) -> None:
    chunks = [chunk("a"), chunk("b"), chunk("c"), chunk("d")]
    embeddings = np.stack([axis(0), axis(1), vec((0, 1.0), (1, 1.0)), axis(0, -1.0)])
    store.upsert(chunks, embeddings)

    hits = store.query(axis(0), k=4)

    assert [c.id for c, _ in hits] == ["a", "c", "b", "d"]
    scores = [s for _, s in hits]
    assert scores == pytest.approx([1.0, 1 / math.sqrt(2), 0.0, -1.0], abs=1e-5)
    assert hits[0][0] == chunks[0]


def test_query_accepts_a_row_vector(store: ChromaStore) -> None:
    store.upsert([chunk("a"), chunk("b")], np.stack([axis(0), axis(1)]))
    assert [c.id for c, _ in store.query(axis(1)[None, :], k=1)] == ["b"]


def test_upsert_twice_is_idempotent_and_updates(store: ChromaStore) -> None:
    chunks = [chunk("a"), chunk("b")]
    embeddings = np.stack([axis(0), axis(1)])
    store.upsert(chunks, embeddings)
    store.upsert(chunks, embeddings)
    assert store.count() == 2

    store.upsert([chunk("a", text="new text", page=3)], axis(2)[None, :])

    assert store.count() == 2
    (a,) = store.get(["a"])
    assert a.text == "new text"
    assert a.page == 3
    assert store.query(axis(2), k=1)[0][0].id == "a"


def test_delete_ignores_unknown_ids(store: ChromaStore) -> None:
    store.upsert([chunk("a"), chunk("b"), chunk("c")], np.stack([axis(0), axis(1), axis(2)]))

    store.delete(["a", "nope"])
    assert store.ids() == {"b", "c"}
    store.delete(["nope", "nope-2"])
    store.delete([])
    assert store.count() == 2
    assert {c.id for c, _ in store.query(axis(0), k=5)} == {"b", "c"}


def test_get_keeps_the_order_of_ids_and_skips_missing(store: ChromaStore) -> None:
    store.upsert([chunk("a"), chunk("b"), chunk("c")], np.stack([axis(0), axis(1), axis(2)]))

    assert [c.id for c in store.get(["c", "missing", "a", "b"])] == ["c", "a", "b"]
    assert store.get([]) == []
    assert store.get(["missing"]) == []


def test_ids_and_count(store: ChromaStore) -> None:
    assert store.ids() == set()
    assert store.count() == 0
    store.upsert([chunk(f"c{i}") for i in range(5)], np.stack([axis(i) for i in range(5)]))
    assert store.ids() == {f"c{i}" for i in range(5)}
    assert store.count() == 5


def test_iter_chunks_returns_every_chunk_once_with_metadata(store: ChromaStore) -> None:
    chunks = [
        chunk(
            f"c{i}",
            doc_id=f"doc-{i % 3}",
            title=f"Title {i}" if i % 2 else "",
            headings=("Guide", f"Part {i}") if i % 2 else (),
            start=i * 100,
            end=i * 100 + 99,
            page=i % 4,
            metadata={
                "lang": "en" if i < 4 else "fr",
                "rank": i,
                "weight": i / 4,
                "odd": bool(i % 2),
            },
        )
        for i in range(7)
    ]
    store.upsert(chunks, np.stack([axis(i % DIM) for i in range(7)]))

    for batch_size in (3, 7, 1000):
        got = list(store.iter_chunks(batch_size=batch_size))
        assert len(got) == 7, batch_size
        assert sorted(got, key=lambda c: c.id) == chunks
    assert list(store.iter_chunks()) != []


def test_iter_chunks_on_an_empty_store(store: ChromaStore) -> None:
    assert list(store.iter_chunks(batch_size=2)) == []


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"doc_id": "doc-2"}, ["c", "d"]),
        ({"doc_id": {"$eq": "doc-1"}}, ["a", "b"]),
        ({"lang": {"$in": ["fr", "de"]}}, ["b", "d"]),
        ({"$and": [{"doc_id": "doc-1"}, {"lang": "fr"}]}, ["b"]),
        ({"$or": [{"doc_id": "doc-2"}, {"lang": "fr"}]}, ["b", "c", "d"]),
        ({"page": {"$gte": 2}}, ["c", "d"]),
        ({"doc_id": "nobody"}, []),
        ({}, ["a", "b", "c", "d"]),
        (None, ["a", "b", "c", "d"]),
    ],
)
def test_where_filters(
    store: ChromaStore, where: dict[str, Any] | None, expected: list[str]
) -> None:
    store.upsert(
        [
            chunk("a", doc_id="doc-1", page=1, metadata={"lang": "en"}),
            chunk("b", doc_id="doc-1", page=1, metadata={"lang": "fr"}),
            chunk("c", doc_id="doc-2", page=2, metadata={"lang": "en"}),
            chunk("d", doc_id="doc-2", page=3, metadata={"lang": "fr"}),
        ],
        np.stack([axis(0), vec((0, 1.0), (1, 0.5)), vec((0, 1.0), (1, 1.0)), axis(1)]),
    )
    hits = store.query(axis(0), k=10, where=where)
    assert [c.id for c, _ in hits] == expected


def test_query_on_an_empty_store_returns_nothing(store: ChromaStore) -> None:
    assert store.query(axis(0), k=5) == []
    assert store.query(axis(0), k=5, where={"doc_id": "x"}) == []


def test_k_larger_than_count_returns_everything(store: ChromaStore) -> None:
    store.upsert([chunk("a"), chunk("b")], np.stack([axis(0), axis(1)]))
    assert [c.id for c, _ in store.query(axis(1), k=50)] == ["b", "a"]


def test_writes_are_batched_under_the_max_batch_size(
    store: ChromaStore, client: Any, spy: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "get_max_batch_size", lambda: 3)
    chunks = [chunk(f"c{i:02d}") for i in range(10)]

    store.upsert(chunks, np.stack([vec((i % DIM, 1.0), ((i + 1) % DIM, 0.1)) for i in range(10)]))

    assert spy["upsert"] == [3, 3, 3, 1]
    assert store.count() == 10
    assert [c.id for c in store.get([c.id for c in chunks])] == [c.id for c in chunks]
    assert spy["get"] == [3, 3, 3, 1]
    assert store.ids() == {c.id for c in chunks}
    assert {c.id for c in store.iter_chunks(batch_size=4)} == {c.id for c in chunks}

    store.delete([f"c{i:02d}" for i in range(8)] + ["unknown"])

    assert spy["delete"] == [3, 3, 3]
    assert store.ids() == {"c08", "c09"}


def test_reopening_with_another_model_or_dimension_is_a_config_error(
    make_store: Callable[..., ChromaStore],
) -> None:
    store = make_store()
    store.upsert([chunk("a")], axis(0)[None, :])

    with pytest.raises(ConfigError) as err:
        make_store(store.name, model="other-model")
    message = str(err.value)
    assert store.name in message and MODEL in message and "other-model" in message
    assert "re-ingest" in message and "\n" not in message
    with pytest.raises(ConfigError, match="dim 16"):
        make_store(store.name, dimension=16)

    again = make_store(store.name)
    assert again.ids() == {"a"}


def test_a_collection_not_made_by_keel_is_a_config_error(
    client: Any, make_store: Callable[..., ChromaStore]
) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_collection(
        name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    with pytest.raises(ConfigError, match="not created by Keel"):
        make_store(name)


@pytest.mark.parametrize(
    "where",
    [
        {"doc_id": {"$bad": 1}},
        {"$and": [{"doc_id": "a"}]},
        {"doc_id": ["a", "b"]},
        {"$in": 3},
        {"doc_id": {"$in": []}},
        ["doc_id", "a"],
    ],
)
def test_an_invalid_where_is_a_usage_error(store: ChromaStore, where: Any) -> None:
    store.upsert([chunk("a")], axis(0)[None, :])
    with pytest.raises(UsageError, match="invalid where filter"):
        store.query(axis(0), k=1, where=where)


def test_bad_arguments_are_usage_errors(store: ChromaStore) -> None:
    with pytest.raises(UsageError, match="shape"):
        store.upsert([chunk("a")], np.ones((1, DIM + 1)))
    with pytest.raises(UsageError, match="shape"):
        store.upsert([chunk("a"), chunk("b")], axis(0)[None, :])
    with pytest.raises(UsageError, match="duplicate"):
        store.upsert([chunk("a"), chunk("a")], np.stack([axis(0), axis(1)]))
    with pytest.raises(UsageError, match="dimension"):
        store.query(np.ones(DIM + 1), k=1)
    with pytest.raises(UsageError, match="k must be"):
        store.query(axis(0), k=0)
    with pytest.raises(UsageError, match="batch_size"):
        list(store.iter_chunks(batch_size=0))
    assert store.count() == 0
    store.upsert([], np.empty((0, DIM)))
    assert store.count() == 0


@pytest.mark.parametrize("name", ["ab", "-abc", "abc_", "a..b", "has space", "x" * 513, "10.0.0.1"])
def test_an_invalid_collection_name_is_a_usage_error(client: Any, name: str) -> None:
    with pytest.raises(UsageError, match="collection name"):
        ChromaStore(client, name, embedding_model=MODEL, dimension=DIM)


def test_drop_deletes_the_collection(make_store: Callable[..., ChromaStore]) -> None:
    store = make_store()
    store.upsert([chunk("a")], axis(0)[None, :])

    store.drop()
    store.drop()  # dropping twice is fine

    with pytest.raises(StoreError, match="does not exist"):
        store.count()
    fresh = make_store(store.name)
    assert fresh.count() == 0


# --- clients (not part of the backend contract) ---------------------------------------------


def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot reach Chroma at http://127\.0\.0\.1:1"):
        client = open_chroma_client(url="http://127.0.0.1:1", path=tmp_path)
        ChromaStore(client, "docs", embedding_model=MODEL, dimension=DIM).count()


@pytest.mark.chroma_server
def test_a_server_that_goes_down_is_a_store_error(chroma_server: Any, tmp_path: Path) -> None:
    client = open_chroma_client(url=chroma_server.url, path=tmp_path)
    store = ChromaStore(client, "docs", embedding_model=MODEL, dimension=DIM)
    store.upsert([chunk("a")], axis(0)[None, :])

    chroma_server.stop()

    with pytest.raises(StoreError, match=f"cannot reach Chroma at {chroma_server.url}"):
        store.query(axis(0), k=1)
    with pytest.raises(StoreError, match="cannot reach Chroma"):
        store.upsert([chunk("b")], axis(1)[None, :])


@pytest.mark.parametrize(
    "url",
    [
        "localhost:8000",
        "ftp://localhost:8000",
        "http://",
        "http://localhost:port",
        "http://localhost:99999",
        "http://localhost:8000/api",
        "http://user:pw@localhost:8000",
        "http://localhost:8000/?x=1",
    ],
)
def test_a_malformed_url_is_a_config_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        open_chroma_client(url=url, path=tmp_path)


def test_embedded_clients_are_shared_per_directory(tmp_path: Path) -> None:
    first = open_chroma_client(url=None, path=tmp_path / "db")
    again = open_chroma_client(url=None, path=tmp_path / "x" / ".." / "db")
    other = open_chroma_client(url=None, path=tmp_path / "other")
    assert first is again
    assert first is not other
    assert first.get_settings().anonymized_telemetry is False


def test_importing_the_store_does_not_import_chromadb() -> None:
    code = "import sys, keel.rag.store; assert 'chromadb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
