"""Hybrid retrieval: dense (vector store) and BM25, fused into one ranking.

Each retriever returns up to ``candidates`` chunks, fused by reciprocal rank fusion or by a
convex combination of normalised scores (:mod:`keel.rag.fusion`). ``Hit.score`` is the fused
score in hybrid mode, the cosine similarity in dense mode and the BM25 score in BM25 mode;
every hit also carries its rank and score in each list. The same metadata filter applies to
both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keel.errors import UsageError
from keel.rag.access import Readable, restrict
from keel.rag.bm25 import BM25Index
from keel.rag.embeddings import Embedder
from keel.rag.filters import validate_where
from keel.rag.fusion import Fusion, fuse
from keel.rag.rerank import Reranker
from keel.rag.store import VectorStore
from keel.rag.types import Chunk, Hit

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "bm25")


@dataclass
class Retriever:
    store: VectorStore
    embedder: Embedder
    bm25: Callable[[], BM25Index]  # the current index, rebuilt by the caller when stale
    mode: Mode = "hybrid"
    k: int = 5
    candidates: int = 50
    rrf_k: int = 60
    fusion: Fusion = "rrf"
    dense_weight: float = 0.5  # convex fusion: the dense list's share
    reranker: Reranker | None = None  # rescores the best fused candidates ([rag.rerank])

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode | None = None,
        readable: Readable = None,
    ) -> list[Hit]:
        """The ``k`` best chunks; only chunks ``readable`` allows (None: all), whatever
        ``where`` says (:func:`keel.rag.access.restrict`)."""
        if not isinstance(query, str) or not query.strip():
            raise UsageError("the query is empty")
        k = self.k if k is None else k
        if k < 1:
            raise UsageError("k must be at least 1")
        mode = mode or self.mode
        if mode not in MODES:
            raise UsageError(f"unknown search mode {mode!r} (hybrid, dense or bm25)")
        flt = validate_where(restrict(validate_where(where), readable))
        depth = max(k, self.candidates)

        dense: list[tuple[Chunk, float]] = []
        if mode in ("hybrid", "dense") and self.store.count() > 0:
            dense = self.store.query(self.embedder.embed_query(query), depth, flt)
        lexical: list[tuple[str, float, dict[str, Any]]] = []
        if mode in ("hybrid", "bm25"):
            lexical = self.bm25().search(query, depth, flt)

        dense_pos = {c.id: (rank, score) for rank, (c, score) in enumerate(dense, start=1)}
        lex_pos = {cid: (rank, score) for rank, (cid, score, _) in enumerate(lexical, start=1)}
        if mode == "dense":
            ranked = [(c.id, s) for c, s in dense]
        elif mode == "bm25":
            ranked = [(cid, s) for cid, s, _ in lexical]
        else:
            fused = fuse(
                [(c.id, s) for c, s in dense],
                [(cid, s) for cid, s, _ in lexical],
                method=self.fusion,
                rrf_k=self.rrf_k,
                dense_weight=self.dense_weight,
            )
            ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
        ranked = ranked[: max(k, self.reranker.candidates) if self.reranker else k]

        chunks = {c.id: c for c, _ in dense}
        if lexical:
            index = self.bm25()
            for cid, _ in ranked:
                if cid not in chunks:
                    found = index.chunk(cid)
                    if found is not None:
                        chunks[cid] = found
        missing = [cid for cid, _ in ranked if cid not in chunks]
        if missing:  # an index from an older Keel without texts: ask the store
            chunks.update((c.id, c) for c in self.store.get(missing))
        hits: list[Hit] = []
        for cid, score in ranked:
            chunk = chunks.get(cid)
            if chunk is None:  # deleted since the BM25 index was built
                continue
            d = dense_pos.get(cid)
            b = lex_pos.get(cid)
            hits.append(
                Hit(
                    doc_id=chunk.doc_id,
                    chunk_id=chunk.id,
                    text=chunk.text,
                    score=float(score),
                    source=chunk.source,
                    title=chunk.title,
                    headings=chunk.headings,
                    start=chunk.start,
                    end=chunk.end,
                    page=chunk.page,
                    metadata=dict(chunk.metadata),
                    dense_rank=d[0] if d else None,
                    dense_score=float(d[1]) if d else None,
                    bm25_rank=b[0] if b else None,
                    bm25_score=float(b[1]) if b else None,
                )
            )
        if self.reranker is not None:  # the best `candidates` reordered; any others follow as fused
            n = self.reranker.candidates
            return (self.reranker.rerank(query, hits[:n], n) + hits[n:])[:k]
        return hits
