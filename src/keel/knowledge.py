"""``Knowledge``: an app's collections: ingestion (one run at a time per collection across
processes, audited) and hybrid search with citation data. :class:`keel.App` delegates its
``ingest``, ``ingest_documents``, ``search``, ``store``, ``manifest``, ``bm25`` and
``retriever`` here."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from keel.config import KeelConfig
from keel.errors import ConfigError, UsageError
from keel.resources import Resources

if TYPE_CHECKING:
    from keel.rag.access import LabelPolicy, Readable
    from keel.rag.bm25 import BM25Index
    from keel.rag.ingest import Ingestor, Progress
    from keel.rag.manifest import Manifest
    from keel.rag.rerank import Reranker
    from keel.rag.retrieve import Mode, Retriever
    from keel.rag.store import VectorStore
    from keel.rag.types import Document, Hit, IngestReport, Skipped

__all__ = ["Knowledge"]


class Knowledge:
    """Ingest and search the collections of one app."""

    def __init__(self, config: KeelConfig, resources: Resources) -> None:
        self.config = config
        self.resources = resources
        self._ingest_locks: dict[str, threading.Lock] = {}  # one per collection

    def index_version(self, collection: str | None = None) -> str:
        return self.manifest(collection).current_version()

    def collection(self, collection: str | None) -> str:
        """The collection's name (``[rag] collection`` when None), checked."""
        from keel.rag.store import validate_collection_name

        if collection is None:
            return self.default_collection
        return validate_collection_name(collection)

    @property
    def default_collection(self) -> str:
        """``[rag] collection``; with a tuned embedding model (``tuned:<id>``) a collection of
        its own, ``<collection>.<id>``, since its vectors are not comparable with the base
        model's: the base model's collection stays as it was, for a rollback."""
        from keel.rag.snapshots import is_snapshot

        rag = self.config.rag
        model = rag.embeddings.model
        if model.startswith("tuned:") and not is_snapshot(rag.collection):  # a release's copy
            from keel.rag.store import validate_collection_name

            return validate_collection_name(f"{rag.collection}.{model.removeprefix('tuned:')}")
        return rag.collection

    def store(self, collection: str | None = None) -> VectorStore:
        return self.resources.store(self.collection(collection))

    def manifest(self, collection: str | None = None) -> Manifest:
        from keel.rag.manifest import Manifest

        return Manifest(self.resources.engine, self.collection(collection))

    def bm25(self, collection: str | None = None) -> BM25Index:
        """The BM25 index of a collection, rebuilt from the store if it is stale or missing."""
        name = self.collection(collection)
        version = self.manifest(name).current_version()
        with self.resources.lock:
            index = self.resources.bm25_index(name)
            if index.version != version and not (
                index.stored_version() == version and index.load()
            ):
                index.build(self.store(name).iter_chunks(), version)
            return index

    def retriever(self, collection: str | None = None) -> Retriever:
        from keel.rag.retrieve import Retriever

        name = self.collection(collection)
        r = self.config.rag.retrieval
        return Retriever(
            store=self.store(name),
            embedder=self.resources.embedder,
            bm25=lambda: self.bm25(name),
            mode=r.mode,
            k=r.k,
            candidates=r.candidates,
            rrf_k=r.rrf_k,
            fusion=r.fusion,
            dense_weight=r.dense_weight,
            reranker=self.reranker,
        )

    @cached_property
    def reranker(self) -> Reranker | None:
        """The cross-encoder of ``[rag.rerank]`` (None when it is off)."""
        from keel.rag.rerank import Reranker

        cfg = self.config.rag.rerank
        if not cfg.enabled:
            return None
        model, model_id = cfg.model, cfg.model
        if model.startswith("tuned:"):
            artefact = self.resources.resolve_tuned(
                model, "reranker", allow_ungated=cfg.allow_ungated
            )
            model, model_id = str(artefact.path), artefact.ref
        else:
            path = Path(model).expanduser()
            path = path if path.is_absolute() else self.config.base_dir / path
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"[rag.rerank] model {cfg.model!r}: not a tuned:<id> artefact nor a "
                    "local cross-encoder folder"
                )
            model, model_id = str(path), str(path)
        return Reranker(model, model_id, candidates=cfg.candidates, batch_size=cfg.batch_size)

    # -- knowledge -----------------------------------------------------------------------------
    def ingest(
        self,
        paths: Sequence[str | Path] | None = None,
        prune: bool = False,
        *,
        collection: str | None = None,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Load, chunk, embed and index ``paths`` (default: ``rag.paths`` from keel.toml).

        Paths are relative to the ingest root (``rag.root``, default the app folder) and must
        lie inside it. With ``prune``, documents previously ingested from these paths that are
        no longer there are deleted; documents from other paths are never touched.
        """
        from keel.rag.loaders import iter_documents

        rag = self.config.rag
        root = self.config.rag_root
        targets = [Path(p) for p in (paths if paths else rag.paths)]
        if not targets:
            raise UsageError("nothing to ingest: give paths or set rag.paths in keel.toml")
        items = iter_documents(
            targets,
            root=root,
            include=rag.include,
            exclude=rag.exclude,
            max_bytes=int(rag.max_file_mb * 1024 * 1024),
            pdf=rag.pdf_budget(),
        )
        scopes = [_relative_scope(root, t) for t in targets]
        with self._ingest_lock(collection):
            report = self._ingestor(collection).run(
                self._labelled(items),
                prune=(lambda source: any(_within(source, s) for s in scopes)) if prune else None,
                progress=progress,
            )
        self._audit_ingest(report, "cli")
        return report

    def ingest_documents(
        self,
        documents: Iterable[Document | Skipped],
        *,
        collection: str | None = None,
        progress: Progress | None = None,
        created_by: str | None = None,
        labels: Sequence[str] = (),
    ) -> IngestReport:
        """Ingest documents made in code (or uploaded), with the same manifest and chunking.
        ``created_by``: the API key ingesting, recorded on the documents it creates;
        ``labels``: access labels every document gets (besides its own and the rules')."""
        from keel.rag.access import parse_labels

        extra = parse_labels(labels)
        with self._ingest_lock(collection):
            ingestor = self._ingestor(collection)
            ingestor.created_by = created_by
            report = ingestor.run(self._labelled(documents, extra), progress=progress)
        self._audit_ingest(report, created_by or "cli")
        return report

    @property
    def label_policy(self) -> LabelPolicy:
        """How documents get their access labels (``[rag.labels]``, ``[rag] default_labels``)."""
        from keel.rag.access import LabelPolicy

        rag = self.config.rag
        return LabelPolicy.from_config(rag.labels, rag.default_labels)

    def _labelled(
        self, items: Iterable[Document | Skipped], extra: Sequence[str] = ()
    ) -> Iterator[Document | Skipped]:
        from keel.rag.types import Document

        policy = self.label_policy
        for item in items:
            yield policy.apply(item, extra) if isinstance(item, Document) else item

    def _audit_ingest(self, report: IngestReport, actor: str) -> None:
        """Documents added, replaced or deleted go to the audit log (unchanged ones do not)."""
        from keel.ops.audit import AuditLog

        if report.added or report.updated or report.deleted:
            AuditLog(self.resources.engine, self.config.app.name).record(
                actor,
                "documents.ingested",
                report.collection,
                {"added": report.added, "updated": report.updated, "deleted": report.deleted},
            )

    @contextmanager
    def _ingest_lock(self, collection: str | None) -> Iterator[None]:
        """One ingest run at a time per collection, across every process using the same keel
        database (or Redis): a run that starts while another is under way would take it for
        an interrupted one and reconcile it away (the gateway runs uploads as concurrent
        background jobs; a CLI ingest may run beside them). A second run waits its turn."""
        name = self.collection(collection)
        with self.resources.lock:
            local = self._ingest_locks.setdefault(name, threading.Lock())
        with local:
            leases = self.resources.leases
            wait = 0.05
            while (lease := leases.try_acquire(f"{self.config.app.name}:ingest:{name}")) is None:
                time.sleep(wait)
                wait = min(wait * 2, 1.0)
            with lease:
                yield

    # -- snapshots (keel.rag.snapshots) ----------------------------------------------------------
    def snapshot(self, collection: str | None = None) -> str:
        """The snapshot of the collection at its current index version, made if missing
        (under the collection's ingest lease, so no ingest changes it meanwhile); its name."""
        from keel.rag.snapshots import snapshot_name

        name = self.collection(collection)
        with self._ingest_lock(name):
            version = self.index_version(name)
            snap = snapshot_name(name, version)
            copy = self.manifest(snap)
            if copy.current_version() == version:
                return snap  # made before (the manifest is written last)
            self.resources.drop_store(snap)  # a copy cut short
            target = self.resources.store(snap)
            source = self.resources.store(name)
            for chunks, vectors in source.iter_embedded():  # type: ignore[attr-defined]
                target.upsert(chunks, vectors)
            self.manifest(name).copy_to(snap, version)
        return snap

    def snapshots(self, collection: str | None = None) -> list[str]:
        """The snapshots of a collection that exist."""
        from sqlalchemy import select

        from keel.rag._tables import ingest_runs
        from keel.rag.snapshots import SNAPSHOT_MARK

        prefix = self.collection(collection) + SNAPSHOT_MARK
        with self.resources.engine.connect() as conn:
            names = conn.execute(
                select(ingest_runs.c.collection)
                .where(ingest_runs.c.collection.startswith(prefix, autoescape=True))
                .distinct()
            ).scalars()
            return sorted(names)

    def drop_snapshot(self, name: str) -> None:
        """Delete a snapshot: its vectors, manifest and BM25 index."""
        import shutil

        from keel.rag.snapshots import is_snapshot

        if not is_snapshot(name):
            raise UsageError(f"{name!r} is not a snapshot")
        self.resources.drop_store(name)
        self.manifest(name).drop()
        shutil.rmtree(self.resources.data_dir / "bm25" / name, ignore_errors=True)

    def gc_snapshots(self, keep: Iterable[str], collection: str | None = None) -> list[str]:
        """Delete the collection's snapshots not in ``keep`` (those releases reference);
        returns what went."""
        kept = set(keep)
        gone = [name for name in self.snapshots(collection) if name not in kept]
        for name in gone:
            self.drop_snapshot(name)
        return gone

    def _ingestor(self, collection: str | None) -> Ingestor:
        from keel.rag.chunking import Chunker
        from keel.rag.ingest import Ingestor

        self.resources.check_tuned()  # no chunk embedded by a withdrawn model

        rag = self.config.rag
        name = self.collection(collection)
        return Ingestor(
            store=self.store(name),
            embedder=self.resources.embedder,
            manifest=self.manifest(name),
            chunker=Chunker(rag.chunk_size, rag.chunk_overlap),
            bm25=self.resources.bm25_index(name),
            batch_chunks=rag.ingest_batch,
        )

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode | None = None,
        collection: str | None = None,
        readable: Readable | Literal["turn"] = "turn",
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (hybrid by default), with citation data, among
        the chunks ``readable`` labels allow (None: all; "turn": the running turn's reader,
        :func:`keel.rag.access.current_readable`)."""
        from keel.rag.access import current_readable

        reader = current_readable() if readable == "turn" else readable
        self.resources.check_tuned()  # no search on a withdrawn model's vectors
        return self.retriever(collection).search(query, k, where=where, mode=mode, readable=reader)


def _relative_scope(root: Path, target: Path) -> str:
    """The root-relative prefix that ``source`` values under ``target`` start with.

    Symlinks are not resolved here, as the loaders do not resolve them when they name sources.
    """
    path = Path(os.path.normpath(target if target.is_absolute() else root / target))
    try:
        rel = path.relative_to(root)
    except ValueError as exc:  # iter_documents refuses these before we get here
        raise UsageError(f"path outside the ingest root: {target}") from exc
    return rel.as_posix()


def _within(source: str, scope: str) -> bool:
    return scope in ("", ".") or source == scope or source.startswith(scope.rstrip("/") + "/")
