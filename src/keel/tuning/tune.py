"""``keel tune``: adapt the app's retriever to its own documents and feedback.

:func:`tune` builds training pairs (:mod:`keel.tuning.pairs`), trains the embedding model or
a reranker (:mod:`keel.tuning.train`), measures it against what the app uses now on queries
it never trained on (:mod:`keel.tuning.gate`) and files the result as an artefact
(:mod:`keel.tuning.artefacts`), deployable only when the gate passed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.errors import UsageError
from keel.tuning.artefacts import Artefact, ArtefactStore, Kind
from keel.tuning.pairs import (
    SOURCES,
    PairSet,
    Query,
    Source,
    build_pairs,
    held_out_queries,
    split_cases,
)
from keel.tuning.train import TrainParams, train_embeddings, train_reranker

if TYPE_CHECKING:
    from keel.app import App
    from keel.rag.types import Chunk

__all__ = ["Progress", "TuneRequest", "parse_sources", "tune"]

Progress = Callable[[str, int, int], None]  # phase, done, total


@dataclass(frozen=True)
class TuneRequest:
    kind: Kind
    sources: tuple[Source, ...] = ("corpus",)
    params: TrainParams = field(default_factory=TrainParams)
    max_pairs: int | None = 2000
    suite: Path | None = None
    show_training_progress: bool = False


def parse_sources(value: str) -> tuple[Source, ...]:
    """``corpus``, ``evals``, ``feedback``, ``all`` or a comma-separated list of them."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return SOURCES
    bad = [n for n in names if n not in SOURCES]
    if bad or not names:
        raise UsageError(f"--from {value!r}: choose corpus, evals, feedback or all")
    return tuple(n for n in SOURCES if n in names)


@dataclass(frozen=True)
class _EvalSplit:
    train: list[tuple[str, list[str]]]
    gate: list[Query]
    name: str


def _eval_cases(app: App, suite_path: Path | None, needed: bool) -> _EvalSplit | None:
    from keel.evals.datasets import load_dataset
    from keel.evals.suites import app_suite, load_suite

    suite = load_suite(suite_path) if suite_path else app_suite(app, purpose="the tuning gate")
    if suite is None:
        if needed:
            raise UsageError("--from evals needs an eval suite (evals/*.yaml, or --suite)")
        return None
    cases = [c for c in load_dataset(suite.dataset_path).cases if c.reference_doc_ids]
    if not cases:
        if needed:
            raise UsageError(f"suite {suite.name}: no case names reference_doc_ids")
        return None
    train_ids, _ = split_cases(c.id for c in cases)
    return _EvalSplit(
        train=[(c.input, list(c.reference_doc_ids)) for c in cases if c.id in train_ids],
        gate=[
            Query(c.input, frozenset(c.reference_doc_ids)) for c in cases if c.id not in train_ids
        ],
        name=suite.name,
    )


def _rated_turns(app: App) -> list[tuple[str, str, str]]:
    """``(question, first passage, trace id)`` of the well-rated turns."""
    from keel.ops.canary import NEGATIVE_BELOW
    from keel.ops.feedback_export import export_feedback

    return [
        (str(c["input"]), str(c["contexts"][0]), str(c["trace_id"]))
        for c in export_feedback(app.engine, turns=app.turn_record)
        if c.get("input") and c.get("contexts") and c["score"] >= NEGATIVE_BELOW
    ]


def _corpus(app: App) -> tuple[list[Chunk], Any]:
    import numpy as np

    chunks: list[Chunk] = []
    vectors = []
    for page, embedded in app.store().iter_embedded():  # type: ignore[attr-defined]
        chunks.extend(page)
        vectors.append(embedded)
    if not chunks:
        raise UsageError("the app's collection is empty: run keel ingest first")
    return chunks, np.concatenate(vectors)


def tune(app: App, request: TuneRequest, *, progress: Progress | None = None) -> Artefact:
    """Train, gate and file a tuned embedding model or reranker for ``app``."""
    mode = app.config.rag.retrieval.mode
    if request.kind == "embeddings" and mode == "bm25":
        raise UsageError(
            "this app retrieves with BM25 only: a tuned embedding model changes nothing"
        )
    report = progress or (lambda phase, done, total: None)
    chunks, vectors = _corpus(app)
    split = _eval_cases(app, request.suite, needed="evals" in request.sources)
    seed = request.params.seed

    def search(query: str) -> list[Any]:
        return app.knowledge.search(query, 10, readable=None)

    rated = _rated_turns(app) if "feedback" in request.sources else []
    pairs: PairSet = build_pairs(
        chunks,
        search,
        sources=request.sources,
        seed=seed,
        eval_cases=split.train if split else (),
        rated_questions=[(question, passage) for question, passage, _ in rated],
        max_pairs=request.max_pairs,
        progress=lambda done, total: report("pairs", done, total),
    )
    if not pairs.pairs:
        raise UsageError(f"no training pairs from {', '.join(request.sources)}")

    store = ArtefactStore(app.data_dir)
    work = store.root / f".training-{os.getpid()}-{time.time_ns()}"
    work.mkdir(parents=True)
    try:
        base = app.embedder.load_from
        started = time.perf_counter()
        train = train_embeddings if request.kind == "embeddings" else train_reranker
        train(base, pairs.pairs, request.params, work, show_progress=request.show_training_progress)
        seconds = time.perf_counter() - started
        if split is not None and split.gate:
            queries: Sequence[Query] = split.gate
            on = f"suite {split.name}: {len(split.gate)} cases held out from training"
        else:
            queries = held_out_queries(chunks, seed)
            on = "synthetic queries of held-out documents (no eval suite with reference docs)"
        if not queries:
            raise UsageError("nothing to gate on: no held-out queries (add an eval suite)")
        before, after = _rankers(app, request.kind, work, chunks, vectors)
        figures = _judge(queries, before, after, on, seed, report)
        return store.add(
            request.kind,
            work,
            base_model=app.embedder.model_id,
            training_data_hash=pairs.data_hash,
            pairs=pairs.counts,
            params={**request.params.to_dict(), "max_pairs": request.max_pairs},
            train_seconds=round(seconds, 1),
            gate=figures,
            feedback_traces=tuple(sorted({trace for _, _, trace in rated})),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _judge(
    queries: Sequence[Query], before: Any, after: Any, on: str, seed: int, report: Progress
) -> Any:
    from keel.tuning.gate import judge

    return judge(
        queries, before, after, on=on, seed=seed, progress=lambda d, t: report("gate", d, t)
    )


def _rankers(
    app: App, kind: Kind, model_dir: Path, chunks: list[Chunk], vectors: Any
) -> tuple[Callable[[str], list[str]], Callable[[str], list[str]]]:
    """Document rankers of the app as it is and with the new model."""
    r = app.config.rag.retrieval
    if kind == "embeddings":
        from sentence_transformers import SentenceTransformer

        from keel.tuning.gate import rank_documents

        bm25 = None
        if r.mode == "hybrid":
            index = app.knowledge.bm25(None)

            def bm25(query: str, depth: int) -> list[tuple[str, float]]:
                return [(cid, score) for cid, score, _ in index.search(query, depth)]

        tuned = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        texts = [c.text for c in chunks]
        new_vectors = tuned.encode(texts, batch_size=64, normalize_embeddings=True)
        docs = [c.doc_id for c in chunks]
        ids = [c.id for c in chunks]
        depth = max(r.candidates, 10)

        def ranker(rows: Any, embed: Callable[[str], Any]) -> Callable[[str], list[str]]:
            return rank_documents(
                docs,
                ids,
                rows,
                embed,
                bm25=bm25,
                depth=depth,
                rrf_k=r.rrf_k,
                fusion=r.fusion,
                dense_weight=r.dense_weight,
            )

        before = ranker(vectors, app.embedder.embed_query)
        after = ranker(new_vectors, lambda q: tuned.encode(q, normalize_embeddings=True))
        return before, after

    from keel.rag.rerank import Reranker

    retriever = app.knowledge.retriever(None)
    retriever.reranker = None  # what the fused retrieval ranks, before any reranker
    reranker = Reranker(str(model_dir), "candidate", candidates=app.config.rag.rerank.candidates)

    def hits(query: str) -> list[Any]:
        return retriever.search(query, max(reranker.candidates, 10))

    def as_docs(found: list[Any]) -> list[str]:
        return list(dict.fromkeys(h.doc_id for h in found))

    def reranked(query: str) -> list[str]:
        found = hits(query)
        return as_docs(reranker.rerank(query, found, len(found)))

    return (lambda q: as_docs(hits(q))), reranked
