"""How hybrid retrieval fuses its dense and BM25 lists into one ranking.

Two methods (``[rag.retrieval] fusion``):

- ``rrf``, reciprocal rank fusion: a candidate scores ``sum(1 / (rrf_k + rank))`` over the
  lists it is in (rank from 1). It reads ranks only, so it needs no calibration between
  cosine similarities and BM25 scores, and it ignores how far apart two candidates are.
- ``convex``, a convex combination of min-max normalised scores (Weaviate's relative score
  fusion; Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023,
  found it better than RRF in and out of domain): each list's scores are mapped onto 0..1
  (its best candidate 1, its last 0), and a candidate scores ``dense_weight * dense + (1 -
  dense_weight) * bm25``, 0 for a list it is not in. A strong BM25 match far ahead of the
  rest keeps its lead, which RRF flattens. On SciFact (``benchmarks/retrieval_beir.py``) it
  is the better one; ``keel tune`` and the benchmark measure both.

One implementation for the retriever and for the gate of a tuned model, so the gate judges
the ranking the app serves.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal, TypeVar

__all__ = ["Fusion", "fuse"]

Fusion = Literal["rrf", "convex"]

K = TypeVar("K", bound=Hashable)


def _normalised(ranked: Sequence[tuple[K, float]]) -> dict[K, float]:
    scores = [s for _, s in ranked]
    lo, hi = min(scores), max(scores)
    if hi <= lo:  # one candidate, or all tied: each is the list's best
        return {key: 1.0 for key, _ in ranked}
    return {key: (s - lo) / (hi - lo) for key, s in ranked}


def fuse(
    dense: Sequence[tuple[K, float]],
    lexical: Sequence[tuple[K, float]],
    *,
    method: Fusion = "rrf",
    rrf_k: int = 60,
    dense_weight: float = 0.5,
) -> dict[K, float]:
    """The fused score of every candidate in either list; each list is ``(key, score)``, best
    first (RRF reads only the order)."""
    fused: dict[K, float] = {}
    if method == "rrf":
        for ranked in (dense, lexical):
            for rank, (key, _) in enumerate(ranked, start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (rrf_k + rank)
        return fused
    if method != "convex":
        raise ValueError(f"unknown fusion {method!r} (rrf or convex)")
    for ranked, weight in ((dense, dense_weight), (lexical, 1.0 - dense_weight)):
        if not ranked:
            continue
        for key, value in _normalised(ranked).items():
            fused[key] = fused.get(key, 0.0) + weight * value
    return fused
