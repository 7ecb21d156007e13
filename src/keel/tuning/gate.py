"""The gate of a tuned model: retrieval quality per query, the tuned model against the
current one, on queries it was never trained on, judged by the paired bootstrap of
:func:`keel.evals.gate.paired_bootstrap_ci`: deployable only when the 95% interval of the
mean gain in nDCG@10 lies above zero.

Documents are ranked as the app ranks them: by their best chunk in the app's retrieval mode
(dense, or dense fused with the app's BM25 index by the app's fusion, :mod:`keel.rag.fusion`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keel.evals.gate import paired_bootstrap_ci
from keel.rag.fusion import Fusion, fuse
from keel.tuning.artefacts import GateFigures
from keel.tuning.pairs import Query

__all__ = ["Ranker", "judge", "ndcg_at_10", "rank_documents"]

Ranker = Callable[[str], list[str]]  # a query -> document ids, best first


def ndcg_at_10(ranked: Sequence[str], relevant: frozenset[str]) -> float:
    """Binary-relevance nDCG@10 of a document ranking."""
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / ideal if ideal else 0.0


def rank_documents(
    chunk_docs: Sequence[str],
    chunk_ids: Sequence[str],
    vectors: np.ndarray[Any, Any],
    embed_query: Callable[[str], np.ndarray[Any, Any]],
    *,
    bm25: Callable[[str, int], list[tuple[str, float]]] | None,
    depth: int,
    rrf_k: int,
    fusion: Fusion = "rrf",
    dense_weight: float = 0.5,
) -> Ranker:
    """A ranker over chunks embedded as ``vectors`` (rows normalised), fused with ``bm25``
    (``(chunk id, score)``, best first) when given."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1.0, norms)
    position = {cid: i for i, cid in enumerate(chunk_ids)}

    def rank(query: str) -> list[str]:
        q = embed_query(query)
        q = q / (np.linalg.norm(q) or 1.0)
        sims = unit @ q
        top = np.argsort(-sims, kind="stable")[:depth]
        dense = [(int(i), float(sims[i])) for i in top]
        if bm25 is None:
            fused = {i: s for i, s in dense}
        else:
            lexical = [(position[cid], s) for cid, s in bm25(query, depth) if cid in position]
            fused = fuse(dense, lexical, method=fusion, rrf_k=rrf_k, dense_weight=dense_weight)
        docs: list[str] = []
        for i, _ in sorted(fused.items(), key=lambda item: (-item[1], item[0])):
            if chunk_docs[i] not in docs:
                docs.append(chunk_docs[i])
        return docs

    return rank


# Fewer held-out queries than this never make an artefact deployable, whatever the interval
# says: a bootstrap over a handful of queries is no evidence.
MIN_QUERIES = 10


def judge(
    queries: Sequence[Query],
    before: Ranker,
    after: Ranker,
    *,
    on: str,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> GateFigures:
    """nDCG@10 of ``before`` and ``after`` on ``queries``, paired per query; passed when the
    95% interval of the gain lies above zero on at least :data:`MIN_QUERIES` queries."""
    if not queries:
        raise ValueError("the gate has no queries to measure on")
    old, new = [], []
    for n, q in enumerate(queries, start=1):
        old.append(ndcg_at_10(before(q.text), q.relevant))
        new.append(ndcg_at_10(after(q.text), q.relevant))
        if progress is not None:
            progress(n, len(queries))
    diffs = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
    low, high = paired_bootstrap_ci(diffs, seed=seed)
    return GateFigures(
        metric="ndcg@10",
        on=on,
        queries=len(queries),
        before=float(np.mean(old)),
        after=float(np.mean(new)),
        ci_low=low,
        ci_high=high,
        passed=low > 0 and len(queries) >= MIN_QUERIES,
    )
