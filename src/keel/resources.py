"""``Resources``: what an app holds open (database engine, embedder, vector stores, BM25
indexes, checkpointer, tracer, leases), built once on first use, shared explicitly and closed
once.

An :class:`keel.App` owns its Resources. The app of a recorded release served beside it
(:meth:`keel.App.from_release`) borrows them through :meth:`Resources.for_release`: the
database, tracing, checkpoints and leases always, the embedder, vector stores and BM25
indexes when the release embeds with the same settings. Only the owner closes what it built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.config import EmbeddingsSection, RagSection
from keel.settings import Settings

TUNED = "tuned:"  # a model named by its artefact id (keel.tuning.artefacts.PREFIX)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from keel.ops.locks import Leases
    from keel.ops.tracing import Tracing
    from keel.rag.bm25 import BM25Index
    from keel.rag.embeddings import Embedder
    from keel.rag.store import VectorStore
    from keel.tuning.artefacts import Artefact, ArtefactStore, InUse, Kind

__all__ = ["Resources"]


class Resources:
    """The open resources of one app (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path,
        base_dir: Path,
        embeddings: EmbeddingsSection,
        service: str,
        tracing_enabled: bool = True,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.base_dir = base_dir
        self.embeddings = embeddings
        self.service = service
        self.tracing_enabled = tracing_enabled
        self.lock = threading.RLock()
        self._stores: dict[str, VectorStore] = {}
        self._bm25: dict[str, BM25Index] = {}
        self._closers: list[Callable[[], None]] = []
        self._owner: Resources | None = None  # set on borrowed resources
        from keel.tuning.artefacts import InUse

        self._tuned = InUse()  # the tuned models loaded (resolve_tuned), watched

    def for_release(self, embeddings: EmbeddingsSection) -> Resources:
        """Resources for a release's app served beside this one: the database, tracing,
        checkpoints and leases are this app's; the embedder, stores and BM25 indexes too when
        ``embeddings`` are this app's settings (else the release builds its own)."""
        child = Resources(
            self.settings,
            data_dir=self.data_dir,
            base_dir=self.base_dir,
            embeddings=embeddings,
            service=self.service,
            tracing_enabled=self.tracing_enabled,
        )
        from keel.tuning.artefacts import InUse

        child._owner = self
        # the release's own watch, which also reads the app's (it may share its embedder)
        child._tuned = InUse(parent=self._tuned)
        shared = ["engine", "tracing", "checkpointer", "leases"]
        if embeddings == self.embeddings:
            shared += ["embedder", "support_embedder"]
            child._stores = self._stores
            child._bm25 = self._bm25
            child.lock = self.lock
        for name in shared:
            child.__dict__[name] = getattr(self, name)
        return child

    @cached_property
    def engine(self) -> Engine:
        """The keel database (SQLite under the data directory, or ``KEEL_DATABASE_URL``), at
        this Keel's schema."""
        from keel.db import ensure_schema, make_engine

        engine = make_engine(self.settings.database_url, self.data_dir)
        ensure_schema(engine)
        return engine

    @cached_property
    def embedder(self) -> Embedder:
        from keel.rag.embeddings import Embedder, EmbeddingCache

        emb = self.embeddings
        model, model_id = emb.model, None
        if model.startswith(TUNED):  # an artefact of keel tune embeddings
            artefact = self.resolve_tuned(model, "embeddings", allow_ungated=emb.allow_ungated)
            model, model_id = str(artefact.path), artefact.ref
        elif not Path(model).is_absolute() and (self.base_dir / model).exists():
            model = str(self.base_dir / model)
        return Embedder(
            model,
            backend=emb.backend,
            batch_size=emb.batch_size,
            device=emb.device,
            cache=EmbeddingCache(self.engine),
            cache_dir=self.settings.cache_dir,
            model_id=model_id,
        )

    @cached_property
    def support_embedder(self) -> Embedder:
        """The encoder of :mod:`keel.rag.support` (output grounding, citation attribution):
        the int8 copy of :attr:`embedder` (``rag.embeddings.support``), or the embedder."""
        from keel.errors import ConfigError
        from keel.rag.embeddings import Embedder, EmbeddingCache

        base, mode = self.embedder, self.embeddings.support
        if mode == "int8" and base.backend != "onnx":
            raise ConfigError(
                'rag.embeddings.support = "int8" needs the onnx backend (backend = "torch" here, '
                "or onnxruntime and optimum are not installed)"
            )
        if mode == "full" or (mode == "auto" and base.backend != "onnx"):
            return base
        return Embedder(
            base.load_from,
            backend="onnx",
            batch_size=base.batch_size,
            device=base.device,
            cache=EmbeddingCache(self.engine),
            cache_dir=self.settings.cache_dir,
            model_id=base.model_id,
            quantized=True,
        )

    @property
    def artefacts(self) -> ArtefactStore:
        """The tuned models under the data directory (:mod:`keel.tuning.artefacts`)."""
        from keel.tuning.artefacts import ArtefactStore

        return ArtefactStore(self.data_dir)

    @property
    def tuned(self) -> InUse:
        """The tuned models this app (and the releases served beside it) loaded, watched for
        withdrawal (:class:`keel.tuning.artefacts.InUse`)."""
        return self._tuned

    def resolve_tuned(self, ref: str, kind: Kind, *, allow_ungated: bool) -> Artefact:
        """The artefact ``ref`` names (refused when missing, ungated or withdrawn), watched
        from now on: :meth:`check_tuned` refuses to go on once it is withdrawn."""
        artefact = self.artefacts.resolve(ref, kind, allow_ungated=allow_ungated)
        self.tuned.add(artefact)
        return artefact

    def watch_tuned(self, rag: RagSection) -> None:
        """Resolve and watch the tuned models ``rag`` names now (their manifests only, no
        weights loaded): a release that names a withdrawn model is refused
        (:class:`~keel.errors.ModelWithdrawn`) when it is built, not at its first turn."""
        emb, rerank = rag.embeddings, rag.rerank
        if emb.model.startswith(TUNED):
            self.resolve_tuned(emb.model, "embeddings", allow_ungated=emb.allow_ungated)
        if rerank.enabled and rerank.model.startswith(TUNED):
            self.resolve_tuned(rerank.model, "reranker", allow_ungated=rerank.allow_ungated)

    def check_tuned(self) -> None:
        """:class:`~keel.errors.ModelWithdrawn` when a tuned model this app loaded has been
        withdrawn since (a person's data erased, perhaps by another process)."""
        from keel.errors import ModelWithdrawn

        problem = self.tuned.problem()
        if problem is not None:
            raise ModelWithdrawn(problem)

    @cached_property
    def tracing(self) -> Tracing:
        """The tracer provider and span store (spans also go to OTLP when configured)."""
        from keel.ops.tracing import Tracing

        tracing = Tracing(
            self.engine,
            service=self.service,
            otlp_endpoint=self.settings.otlp_endpoint,
            enabled=self.tracing_enabled,
        )
        self._closers.append(tracing.shutdown)
        return tracing

    @cached_property
    def checkpointer(self) -> Any:
        """The LangGraph checkpointer of the app's threads (SQLite, or Postgres)."""
        from keel.agents.checkpoints import open_checkpointer

        saver, close = open_checkpointer(self.settings.database_url, self.data_dir)
        self._closers.append(close)
        return saver

    @cached_property
    def leases(self) -> Leases:
        """Locks with expiry shared by every process on the same database or Redis."""
        from keel.ops.locks import leases_for

        return leases_for(self.engine, self.settings.redis_url)

    def store(self, name: str) -> VectorStore:
        """The vector store of a collection (embedded Chroma, or ``KEEL_CHROMA_URL``)."""
        from keel.rag.store import ChromaStore, open_chroma_client

        with self.lock:
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

    def drop_store(self, name: str) -> None:
        """Delete a collection from the vector store (and forget its handle)."""
        store = self.store(name)
        with self.lock:
            self._stores.pop(name, None)
            self._bm25.pop(name, None)
        store.drop()

    def bm25_index(self, name: str) -> BM25Index:
        """The BM25 index of a collection as stored (the caller rebuilds it when stale)."""
        from keel.rag.bm25 import BM25Index

        with self.lock:
            if name not in self._bm25:
                self._bm25[name] = BM25Index(self.data_dir / "bm25" / name)
            return self._bm25[name]

    def close(self) -> None:
        """Close what these resources built (borrowed ones stay open for their owner)."""
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()
        if self._owner is None and "engine" in self.__dict__:
            self.engine.dispose()
