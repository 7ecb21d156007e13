"""``App``: one keel.toml made into a running application.

``App.from_config("keel.toml")`` reads the configuration; the heavy parts (embedding model,
vector store, database) are built on first use, so constructing an App is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.config import KeelConfig, load_config
from keel.errors import UsageError
from keel.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from keel.rag.bm25 import BM25Index
    from keel.rag.embeddings import Embedder
    from keel.rag.ingest import Progress
    from keel.rag.manifest import Manifest
    from keel.rag.retrieve import Mode, Retriever
    from keel.rag.store import VectorStore
    from keel.rag.types import Hit, IngestReport


class App:
    """A Keel application: its config, knowledge and (later) agent, guards and gateway."""

    def __init__(
        self, config: KeelConfig, *, settings: Settings | None = None, model: Any = None
    ) -> None:
        self.config = config
        self.settings = settings or get_settings()
        self.model = model
        self._lock = threading.RLock()
        self._bm25: dict[str, BM25Index] = {}
        self._stores: dict[str, VectorStore] = {}

    @classmethod
    def from_config(
        cls, path: str | Path = "keel.toml", model: Any = None, *, settings: Settings | None = None
    ) -> App:
        """Load ``keel.toml`` (or the keel.toml inside a folder)."""
        return cls(load_config(path), settings=settings, model=model)

    # -- places --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.app.name

    @property
    def data_dir(self) -> Path:
        configured = self.settings.data_dir
        if configured is None:
            return self.config.base_dir / ".keel"
        return configured if configured.is_absolute() else self.config.base_dir / configured

    @cached_property
    def engine(self) -> Engine:
        from keel.db import make_engine

        return make_engine(self.settings.database_url, self.data_dir)

    @cached_property
    def embedder(self) -> Embedder:
        from keel.rag.embeddings import Embedder, EmbeddingCache

        emb = self.config.rag.embeddings
        model = emb.model
        if not Path(model).is_absolute() and (self.config.base_dir / model).exists():
            model = str(self.config.base_dir / model)
        return Embedder(
            model,
            backend=emb.backend,
            batch_size=emb.batch_size,
            device=emb.device,
            cache=EmbeddingCache(self.engine),
            cache_dir=self.settings.cache_dir,
        )

    def _collection(self, collection: str | None) -> str:
        from keel.rag.store import validate_collection_name

        if collection is None:
            return self.config.rag.collection
        return validate_collection_name(collection)

    def store(self, collection: str | None = None) -> VectorStore:
        from keel.rag.store import ChromaStore, open_chroma_client

        name = self._collection(collection)
        with self._lock:
            if name not in self._stores:
                client = open_chroma_client(
                    url=self.settings.chroma_url, path=self.data_dir / "chroma"
                )
                self._stores[name] = ChromaStore(
                    client,
                    name,
                    embedding_model=self.embedder.model_id,
                    dimension=self.embedder.dimension,
                )
            return self._stores[name]

    def manifest(self, collection: str | None = None) -> Manifest:
        from keel.rag.manifest import Manifest

        return Manifest(self.engine, self._collection(collection))

    def bm25(self, collection: str | None = None) -> BM25Index:
        """The BM25 index of a collection, rebuilt from the store if it is stale or missing."""
        name = self._collection(collection)
        version = self.manifest(name).current_version()
        with self._lock:
            index = self._bm25_index(name)
            if index.version != version and not (
                index.stored_version() == version and index.load()
            ):
                index.build(self.store(name).iter_chunks(), version)
            return index

    def _bm25_index(self, name: str) -> BM25Index:
        from keel.rag.bm25 import BM25Index

        with self._lock:
            if name not in self._bm25:
                self._bm25[name] = BM25Index(self.data_dir / "bm25" / name)
            return self._bm25[name]

    def retriever(self, collection: str | None = None) -> Retriever:
        from keel.rag.retrieve import Retriever

        name = self._collection(collection)
        r = self.config.rag.retrieval
        return Retriever(
            store=self.store(name),
            embedder=self.embedder,
            bm25=lambda: self.bm25(name),
            mode=r.mode,
            k=r.k,
            candidates=r.candidates,
            rrf_k=r.rrf_k,
        )

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
        from keel.rag.chunking import Chunker
        from keel.rag.ingest import Ingestor
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
        )
        name = self._collection(collection)
        ingestor = Ingestor(
            store=self.store(name),
            embedder=self.embedder,
            manifest=self.manifest(name),
            chunker=Chunker(rag.chunk_size, rag.chunk_overlap),
            bm25=self._bm25_index(name),
            batch_chunks=rag.ingest_batch,
        )
        scopes = [_relative_scope(root, t) for t in targets]
        report = ingestor.run(
            items,
            prune=(lambda source: any(_within(source, s) for s in scopes)) if prune else None,
            progress=progress,
        )
        return report

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        mode: Mode | None = None,
        collection: str | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (hybrid by default), with citation data."""
        return self.retriever(collection).search(query, k, where=where, mode=mode)

    # -- versions --------------------------------------------------------------------------------
    def index_version(self, collection: str | None = None) -> str:
        return self.manifest(collection).current_version()

    @property
    def version(self) -> str:
        """Content hash of the app: config, prompt files and the index version."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode())
        for ref in (self.config.prompts.system, self.config.prompts.examples):
            if ref:
                path = self.config.resolve(ref)
                digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(self.index_version().encode())
        return digest.hexdigest()[:16]

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


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
