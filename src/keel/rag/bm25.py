"""The lexical side of hybrid search: a bm25s index kept in step with the collection.

The index is derived data. It lives in a folder beside the vector store and is tagged with the
index version (the manifest hash) it was built from; ingestion rebuilds it whenever the
collection changed, and a stale or missing index is rebuilt from the vector store on first
use. It is written to a new folder and swapped in, so a crash never leaves half an index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.rag.filters import matches
from keel.rag.types import Chunk

if TYPE_CHECKING:
    import bm25s

_VERSION_FILE = "keel-version.txt"
_META_FILE = "keel-chunks.json"


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased, stop-worded, Snowball-stemmed tokens (the same for corpus and queries)."""
    import bm25s

    tokens = bm25s.tokenize(
        list(texts),
        stopwords="en",
        stemmer=_stemmer(),
        return_ids=False,
        show_progress=False,
    )
    return [list(t) for t in tokens]


_SWAP_LOCKS: dict[str, threading.Lock] = {}
_SWAP_GUARD = threading.Lock()


def _swap_lock(directory: Path) -> threading.Lock:
    with _SWAP_GUARD:
        return _SWAP_LOCKS.setdefault(str(directory.resolve()), threading.Lock())


class BM25Index:
    """A persisted bm25s index over one collection's chunks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.version: str | None = None
        self._retriever: bm25s.BM25 | None = None
        self._ids: list[str] = []
        self._meta: list[dict[str, Any]] = []
        self._texts: list[str] = []
        self._positions: dict[str, int] = {}
        self._lock = threading.Lock()

    def stored_version(self) -> str | None:
        try:
            return (self.directory / _VERSION_FILE).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def build(self, chunks: Iterable[Chunk], version: str) -> None:
        """Index ``chunks`` and persist the index atomically under ``version``."""
        import bm25s

        ids: list[str] = []
        meta: list[dict[str, Any]] = []
        texts: list[str] = []
        raw: list[str] = []
        for chunk in chunks:
            ids.append(chunk.id)
            meta.append(chunk.store_metadata())
            texts.append(chunk.embedding_text())
            raw.append(chunk.text)
        retriever: bm25s.BM25 | None = None
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=f".{self.directory.name}-"))
        try:
            if texts:
                retriever = bm25s.BM25()
                retriever.index(tokenize(texts), show_progress=False)
                retriever.save(str(tmp), show_progress=False)
            (tmp / _META_FILE).write_text(
                json.dumps({"ids": ids, "meta": meta, "texts": raw}), "utf-8"
            )
            (tmp / _VERSION_FILE).write_text(version, encoding="utf-8")
            # A unique name for the index being replaced, and one swap at a time per folder in
            # this process: two ingest jobs finishing together must not trip over each other.
            old = self.directory.with_name(f".{self.directory.name}-old-{uuid.uuid4().hex}")
            with _swap_lock(self.directory):
                if self.directory.exists():
                    os.replace(self.directory, old)
                os.replace(tmp, self.directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            self._retriever, self._ids, self._meta, self._texts = retriever, ids, meta, raw
            self._positions = {cid: i for i, cid in enumerate(ids)}
            self.version = version

    def load(self) -> bool:
        """Load the persisted index; False when there is none."""
        import bm25s

        version = self.stored_version()
        if version is None:
            return False
        try:
            data = json.loads((self.directory / _META_FILE).read_text(encoding="utf-8"))
            retriever = (
                bm25s.BM25.load(str(self.directory), show_progress=False) if data["ids"] else None
            )
        except (OSError, ValueError, KeyError):
            return False
        with self._lock:
            self._retriever, self._ids, self._meta = retriever, data["ids"], data["meta"]
            self._texts = data.get("texts") or []
            self._positions = {cid: i for i, cid in enumerate(self._ids)} if self._texts else {}
            self.version = version
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def chunk(self, chunk_id: str) -> Chunk | None:
        """The indexed chunk (text and metadata), without a round trip to the vector store."""
        try:
            i = self._positions[chunk_id]
        except KeyError:
            return None
        return Chunk.from_store(chunk_id, self._texts[i], self._meta[i])

    def search(
        self, query: str, k: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, float, dict[str, Any]]]:
        """``(chunk_id, score, metadata)`` best first; only chunks that share a term."""
        retriever, ids, meta = self._retriever, self._ids, self._meta
        if retriever is None or not ids:
            return []
        tokens = tokenize([query])
        if not tokens[0]:
            return []
        mask = None
        if where:
            mask = np.fromiter((matches(m, where) for m in meta), dtype=np.float32, count=len(ids))
            if not mask.any():
                return []
        docs, scores = retriever.retrieve(
            tokens, k=min(k, len(ids)), show_progress=False, weight_mask=mask, n_threads=1
        )
        return [
            (ids[int(i)], float(s), meta[int(i)])
            for i, s in zip(docs[0], scores[0], strict=True)
            if s > 0
        ]
