"""Incremental, idempotent ingestion: documents → chunks → embeddings → vector store + BM25.

The manifest (document id → content hash → chunk ids) decides what to do with each document:
unchanged documents are skipped before they are chunked or embedded, changed ones have their
chunks replaced, new ones are added, and with ``prune`` the documents that disappeared from the
ingested paths are deleted.

Throughput: embedding is the bottleneck, so writing a batch (vector store, manifest) runs in a
background thread while the next batch is embedded; at most one write is in flight and
batches are written in order.

Crash safety: for each batch, chunks are written to the store first, stale chunks deleted, and
the manifest committed last. A run that dies (even by SIGKILL) leaves its row in state
"running"; the next run reconciles the store with the manifest (deletes chunks the manifest
does not know, re-does documents whose chunks are missing) before it starts, so the result is
the same collection a clean run makes: no duplicates, no orphans, nothing missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from keel.rag.bm25 import BM25Index
from keel.rag.chunking import Chunker
from keel.rag.embeddings import Embedder
from keel.rag.manifest import Entry, Manifest
from keel.rag.store import VectorStore
from keel.rag.types import Chunk, Document, IngestReport, Skipped

Progress = Callable[[int, int], None]


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    old: Entry | None


@dataclass
class Ingestor:
    """Runs ingestions for one collection."""

    store: VectorStore
    embedder: Embedder
    manifest: Manifest
    chunker: Chunker
    bm25: BM25Index
    batch_chunks: int = 512
    created_by: str | None = None  # the API key ingesting, recorded on new documents
    _pending: list[_Pending] = field(default_factory=list)
    _writer: ThreadPoolExecutor | None = None
    _in_flight: Future[None] | None = None

    def run(
        self,
        items: Iterable[Document | Skipped],
        *,
        prune: Callable[[str], bool] | None = None,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Ingest ``items``. ``prune(source)`` says which missing documents to delete."""
        started = time.perf_counter()
        report = IngestReport(collection=self.manifest.collection)
        run_id, interrupted = self.manifest.start_run()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-ingest")
        try:
            entries = self.manifest.entries()
            repaired = self._reconcile(entries, force=interrupted)
            docs: list[Document] = []
            for item in items:
                if isinstance(item, Skipped):
                    report.skipped.append(item)
                else:
                    docs.append(item)
            seen: set[str] = set()
            for done, doc in enumerate(docs, start=1):
                self._consider(doc, entries, seen, report)
                if sum(len(p.chunks) for p in self._pending) >= self.batch_chunks:
                    self._flush(report)
                if progress is not None:
                    progress(done, len(docs))
            self._flush(report)
            self._wait_for_write()
            if prune is not None:
                self._prune(entries, seen, prune, report)
            changed = bool(report.added or report.updated or report.deleted or repaired)
            report.index_version = self.manifest.index_version()
            if changed or self.bm25.stored_version() != report.index_version:
                self.bm25.build(self.store.iter_chunks(), report.index_version)
            self.manifest.finish_run(run_id, report.index_version, report.summary())
        except BaseException:
            self._pending.clear()
            self._writer.shutdown(wait=True, cancel_futures=True)
            self._in_flight = None
            self.manifest.fail_run(run_id)
            raise
        finally:
            self._writer.shutdown(wait=True)
        report.seconds = time.perf_counter() - started
        return report

    # -- steps ------------------------------------------------------------------------------------
    def _reconcile(self, entries: dict[str, Entry], *, force: bool) -> bool:
        """Make the store agree with the manifest; True when anything had to be mended."""
        expected = {cid for e in entries.values() for cid in e.chunk_ids}
        if not force and self.store.count() == len(expected):
            return False
        present = self.store.ids()
        orphans = present - expected
        if orphans:
            self.store.delete(sorted(orphans))
        broken = [d for d, e in entries.items() if not set(e.chunk_ids) <= present]
        for doc_id in broken:  # re-done by this run: treat as not yet ingested
            del entries[doc_id]
        if broken:
            self.manifest.remove(broken)
        return bool(orphans or broken)

    def _consider(
        self, doc: Document, entries: dict[str, Entry], seen: set[str], report: IngestReport
    ) -> None:
        if doc.id in seen:
            report.skipped.append(Skipped(doc.source, f"duplicate document id {doc.id!r}"))
            return
        seen.add(doc.id)
        old = entries.get(doc.id)
        if old is not None and old.content_hash == doc.hash:
            report.unchanged.append(doc.id)
            return
        self._pending.append(_Pending(doc, self.chunker.split(doc), old))

    def _flush(self, report: IngestReport) -> None:
        """Embed the pending documents here, then hand the batch to the writer thread."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        chunks = [c for p in pending for c in p.chunks]
        vectors = None
        if chunks:
            before = self.embedder.encoded
            vectors = self.embedder.embed_documents([c.embedding_text() for c in chunks])
            report.embedded += self.embedder.encoded - before
        stale = [
            cid
            for p in pending
            if p.old is not None
            for cid in sorted(set(p.old.chunk_ids) - {c.id for c in p.chunks})
        ]
        self._wait_for_write()  # batches are written in order, one at a time
        assert self._writer is not None
        self._in_flight = self._writer.submit(self._write, pending, chunks, vectors, stale)
        for p in pending:
            (report.added if p.old is None else report.updated).append(p.doc.id)
        report.chunks_written += len(chunks)
        report.chunks_deleted += len(stale)

    def _wait_for_write(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()  # re-raises a failed write here

    def _write(
        self,
        pending: list[_Pending],
        chunks: list[Chunk],
        vectors: np.ndarray | None,
        stale: list[str],
    ) -> None:
        """Store first, stale chunks next, manifest last: see the module's crash notes."""
        if chunks and vectors is not None:
            self.store.upsert(chunks, vectors)
        if stale:
            self.store.delete(stale)
        self.manifest.write(
            [
                Entry(
                    p.doc.id,
                    p.doc.source,
                    p.doc.hash,
                    tuple(c.id for c in p.chunks),
                    created_by=self.created_by,
                )
                for p in pending
            ]
        )

    def _prune(
        self,
        entries: dict[str, Entry],
        seen: set[str],
        prune: Callable[[str], bool],
        report: IngestReport,
    ) -> None:
        gone = [e for d, e in sorted(entries.items()) if d not in seen and prune(e.source)]
        if not gone:
            return
        chunk_ids = [cid for e in gone for cid in e.chunk_ids]
        if chunk_ids:
            self.store.delete(chunk_ids)
        self.manifest.remove(e.doc_id for e in gone)
        report.deleted.extend(e.doc_id for e in gone)
        report.chunks_deleted += len(chunk_ids)
