"""Hybrid fusion: reciprocal rank fusion and the convex combination of normalised scores,
the config that picks one, and the app's search with each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keel.app import App
from keel.errors import ConfigError
from keel.rag.fusion import fuse
from keel.settings import Settings
from keel.tuning.gate import rank_documents

DENSE = [("a", 0.80), ("b", 0.79), ("c", 0.40)]
LEXICAL = [("c", 30.0), ("b", 4.0), ("d", 3.0)]


def test_rrf_adds_reciprocal_ranks() -> None:
    fused = fuse(DENSE, LEXICAL, method="rrf", rrf_k=60)
    assert fused == pytest.approx(
        {"a": 1 / 61, "b": 1 / 62 + 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 63}
    )


def test_convex_combines_min_max_normalised_scores() -> None:
    fused = fuse(DENSE, LEXICAL, method="convex", dense_weight=0.5)
    # dense: a 1, b 0.975, c 0; BM25: c 1, b 1/27, d 0; absent from a list counts 0
    assert fused == pytest.approx({"a": 0.5, "b": 0.5 * 0.975 + 0.5 / 27, "c": 0.5, "d": 0.0})
    assert max(fused, key=fused.__getitem__) == "b"
    # with more weight on BM25, c's strong lexical match keeps its lead; RRF cannot do that
    weighted = fuse(DENSE, LEXICAL, method="convex", dense_weight=0.3)
    assert max(weighted, key=weighted.__getitem__) == "c"


def test_convex_weights_at_the_ends_and_degenerate_lists() -> None:
    only_dense = fuse(DENSE, LEXICAL, method="convex", dense_weight=1.0)
    assert sorted(only_dense, key=lambda k: -only_dense[k])[:3] == ["a", "b", "c"]
    only_bm25 = fuse(DENSE, LEXICAL, method="convex", dense_weight=0.0)
    assert sorted(only_bm25, key=lambda k: -only_bm25[k])[:2] == ["c", "b"]
    # one candidate, or all tied: each is its list's best (1), not a division by zero
    assert fuse([("a", 0.3)], [], method="convex") == {"a": 0.5}
    assert fuse([("a", 2.0), ("b", 2.0)], [], method="convex") == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        fuse(DENSE, LEXICAL, method="max")  # type: ignore[arg-type]


def test_settings_another_fusion_does_not_use_are_refused(
    make_app: Callable[..., App],
) -> None:
    with pytest.raises(ConfigError, match='dense_weight applies to fusion = "convex"'):
        make_app({"rag": {"retrieval": {"dense_weight": 0.7}}})
    with pytest.raises(ConfigError, match='rrf_k applies to fusion = "rrf"'):
        make_app({"rag": {"retrieval": {"fusion": "convex", "rrf_k": 10}}})
    # a dumped config carries every default, and validates again
    config = make_app({"rag": {"retrieval": {"fusion": "convex", "dense_weight": 0.7}}}).config
    assert type(config).model_validate(config.model_dump()).rag.retrieval.dense_weight == 0.7
    assert type(config).model_validate(make_app().config.model_dump()).rag.retrieval.fusion == "rrf"
    with pytest.raises(ConfigError, match="dense_weight"):
        make_app({"rag": {"retrieval": {"fusion": "convex", "dense_weight": 1.5}}})
    with pytest.raises(ConfigError, match="fusion"):
        make_app({"rag": {"retrieval": {"fusion": "max"}}})


KB = {
    "docs/billing.md": "# Refunds\n\nAsk for a refund within 30 days of purchase.\n",
    "docs/invoices.md": "# Invoices\n\nInvoices are emailed monthly as PDF files.\n",
    "docs/sync.txt": "If notes do not sync, sign out and sign back in.",
}


def test_the_app_searches_with_the_configured_fusion(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> None:
    write(tmp_path, KB)
    rrf = make_app()
    rrf.ingest()
    convex = make_app({"rag": {"retrieval": {"fusion": "convex", "dense_weight": 0.6}}})
    query = "invoices emailed monthly"
    by_rrf, by_convex = rrf.search(query, k=3), convex.search(query, k=3)
    assert by_rrf[0].doc_id == by_convex[0].doc_id == "docs/invoices.md"
    # three one-chunk documents: the hits are every candidate of both lists, so each hit's
    # fused score is recomputable from its two list scores
    assert len(by_convex) == 3

    def scaled(values: list[float | None]) -> list[float]:
        found = [v for v in values if v is not None]
        lo, hi = min(found), max(found)
        return [0.0 if v is None else (v - lo) / (hi - lo) if hi > lo else 1.0 for v in values]

    dense = scaled([h.dense_score for h in by_convex])
    lexical = scaled([h.bm25_score for h in by_convex])
    expected = [0.6 * d + 0.4 * b for d, b in zip(dense, lexical, strict=True)]
    assert [h.score for h in by_convex] == pytest.approx(expected)
    assert by_convex[0].score == pytest.approx(1.0)  # first in both lists
    assert by_rrf[0].score == pytest.approx(2 / 61)


def test_the_tuning_gate_ranks_with_the_apps_fusion(settings: Settings) -> None:
    import numpy as np

    vectors = np.eye(4, dtype=np.float32)  # chunk i points along axis i
    docs, ids = ["d0", "d1", "d2", "d3"], ["c0", "c1", "c2", "c3"]

    def embed(_: str) -> np.ndarray:  # dense order: c0, c1, c3, c2
        return np.array([1.0, 0.99, 0.0, 0.5], dtype=np.float32)

    def bm25(_: str, depth: int) -> list[tuple[str, float]]:  # c2 far ahead
        return [("c2", 20.0), ("c1", 1.0), ("c0", 0.5)][:depth]

    rrf = rank_documents(docs, ids, vectors, embed, bm25=bm25, depth=4, rrf_k=60)
    convex = rank_documents(
        docs,
        ids,
        vectors,
        embed,
        bm25=bm25,
        depth=4,
        rrf_k=60,
        fusion="convex",
        dense_weight=0.3,
    )
    assert rrf("q")[0] == "d0"  # ranks only: c0 is first and third
    assert convex("q")[0] == "d2"  # BM25's far-ahead match, BM25 weighted 0.7
