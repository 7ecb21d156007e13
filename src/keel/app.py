"""``App``: one keel.toml made into a running application.

``App.from_config("keel.toml")`` reads the configuration; the heavy parts (embedding model,
vector store, database) are built on first use, so constructing an App is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.config import KeelConfig, load_config
from keel.errors import UsageError
from keel.settings import Settings, get_settings

_log = logging.getLogger("keel.cache")

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy import Engine

    from keel.agents.answer import Answer
    from keel.agents.checkpoints import ThreadIndex
    from keel.agents.client_tools import ClientTools
    from keel.agents.graph import Agent
    from keel.agents.hooks import Hooks
    from keel.agents.models import ToolChoice
    from keel.agents.params import ModelParams
    from keel.agents.prompts import Prompts
    from keel.agents.structured import ResponseFormat
    from keel.guardrails.runner import GuardRunner
    from keel.guardrails.scope import AppScope
    from keel.ops.cache import SemanticCache
    from keel.ops.cost import PriceTable
    from keel.ops.tracing import Tracing
    from keel.rag.bm25 import BM25Index
    from keel.rag.embeddings import Embedder
    from keel.rag.ingest import Ingestor, Progress
    from keel.rag.manifest import Manifest
    from keel.rag.retrieve import Mode, Retriever
    from keel.rag.store import VectorStore
    from keel.rag.types import Document, Hit, IngestReport, Skipped
    from keel.tools.registry import Toolset


class App:
    """A Keel application: its config, knowledge and (later) agent, guards and gateway."""

    def __init__(
        self, config: KeelConfig, *, settings: Settings | None = None, model: Any = None
    ) -> None:
        self.config = config
        self.settings = settings or get_settings()
        self.model = model
        self.hooks: Hooks | None = None  # set before the first ask to plug in guards
        self.release_id: str | None = None  # set when the app serves a recorded release
        self._borrowed: set[str] = set()  # resources shared with the app it was built from
        self._closers: list[Any] = []
        self._lock = threading.RLock()
        self._bm25: dict[str, BM25Index] = {}
        self._stores: dict[str, VectorStore] = {}
        self._ingest_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_config(
        cls, path: str | Path = "keel.toml", model: Any = None, *, settings: Settings | None = None
    ) -> App:
        """Load ``keel.toml`` (or the keel.toml inside a folder)."""
        return cls(load_config(path), settings=settings, model=model)

    @classmethod
    def from_release(
        cls, release_id: str, content: Mapping[str, Any], *, base: App, model: Any = None
    ) -> App:
        """The app a recorded release describes, served beside ``base`` (the app on disk).

        Config, prompts and model ids come from the release; tools are code, so the tools the
        deployed code provides must have the signatures the release recorded (otherwise a
        :class:`UsageError` names the difference). The database, trace store, thread store
        and, when the embedding settings match, the embedder and vector stores are shared
        with ``base``: a thread keeps its history whichever release serves it.
        """
        from keel.agents.prompts import Example, Prompts
        from keel.config import config_from_dict

        raw = content.get("config")
        if not isinstance(raw, dict):
            raise UsageError(f"release {release_id} has no config")
        config = config_from_dict(
            json.loads(json.dumps(raw)), base_dir=base.config.base_dir, origin=release_id
        )
        app = cls(config, settings=base.settings, model=model)
        app.release_id = release_id
        stored = content.get("prompts") or {}
        app.__dict__["prompts"] = Prompts(
            system=str(stored.get("system", "")),
            examples=tuple(
                Example(question=str(e["question"]), answer=str(e["answer"]))
                for e in stored.get("examples", [])
            ),
            system_source=f"release {release_id}",
            examples_source=f"release {release_id}" if stored.get("examples") else None,
        )
        recorded = json.dumps(content.get("tools", []), sort_keys=True, default=str)
        deployed = json.dumps(app.toolset.to_openai(), sort_keys=True, default=str)
        if recorded != deployed:
            names = sorted(
                {t.get("function", {}).get("name", "?") for t in content.get("tools", [])}
                ^ {t.get("function", {}).get("name", "?") for t in app.toolset.to_openai()}
            )
            detail = f" (tools only on one side: {', '.join(names)})" if names else ""
            raise UsageError(
                f"release {release_id} recorded other tool signatures than the deployed code "
                f"provides{detail}: deploy the code it was made from"
            )
        definition = {k: content.get(k) for k in ("config", "prompts", "tools", "models")}
        app.__dict__["_definition_digest"] = hashlib.sha256(
            json.dumps(definition, sort_keys=True, default=str).encode()
        ).hexdigest()
        shared = ["engine", "tracing", "threads", "_checkpointer"]
        if config.rag.embeddings == base.config.rag.embeddings:
            shared.append("embedder")
            app._stores = base._stores
            app._bm25 = base._bm25
        for name in shared:
            app.__dict__[name] = getattr(base, name)
            app._borrowed.add(name)
        return app

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
        from keel.db import ensure_schema, make_engine

        engine = make_engine(self.settings.database_url, self.data_dir)
        ensure_schema(engine)
        return engine

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
                items,
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
    ) -> IngestReport:
        """Ingest documents made in code (or uploaded), with the same manifest and chunking.
        ``created_by``: the API key ingesting, recorded on the documents it creates."""
        with self._ingest_lock(collection):
            ingestor = self._ingestor(collection)
            ingestor.created_by = created_by
            report = ingestor.run(documents, progress=progress)
        self._audit_ingest(report, created_by or "cli")
        return report

    def _audit_ingest(self, report: IngestReport, actor: str) -> None:
        """Documents added, replaced or deleted go to the audit log (unchanged ones do not)."""
        from keel.ops.audit import AuditLog

        if report.added or report.updated or report.deleted:
            AuditLog(self.engine, self.name).record(
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
        from keel.ops.locks import leases_for

        name = self._collection(collection)
        with self._lock:
            local = self._ingest_locks.setdefault(name, threading.Lock())
        with local:
            leases = leases_for(self.engine, self.settings.redis_url)
            wait = 0.05
            while (lease := leases.try_acquire(f"{self.name}:ingest:{name}")) is None:
                time.sleep(wait)
                wait = min(wait * 2, 1.0)
            with lease:
                yield

    def _ingestor(self, collection: str | None) -> Ingestor:
        from keel.rag.chunking import Chunker
        from keel.rag.ingest import Ingestor

        rag = self.config.rag
        name = self._collection(collection)
        return Ingestor(
            store=self.store(name),
            embedder=self.embedder,
            manifest=self.manifest(name),
            chunker=Chunker(rag.chunk_size, rag.chunk_overlap),
            bm25=self._bm25_index(name),
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
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (hybrid by default), with citation data."""
        return self.retriever(collection).search(query, k, where=where, mode=mode)

    # -- versions --------------------------------------------------------------------------------
    def index_version(self, collection: str | None = None) -> str:
        return self.manifest(collection).current_version()

    @property
    def version(self) -> str:
        """Content hash of the app: config, prompt files, tool signatures and index version."""
        return self.version_for(self.index_version())

    def version_for(self, index_version: str) -> str:
        digest = hashlib.sha256(self._definition_digest.encode())
        digest.update(index_version.encode())
        return digest.hexdigest()[:16]

    @cached_property
    def _definition_digest(self) -> str:
        """What the app is, apart from its index: fixed for the life of the App (the prompts
        and tools it loaded are the ones it runs with)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode())
        for ref in (self.config.prompts.system, self.config.prompts.examples):
            if ref:
                path = self.config.resolve(ref)
                digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        tools = json.dumps(self.toolset.to_openai(), sort_keys=True, default=str)
        digest.update(tools.encode())
        return digest.hexdigest()

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()
        if "engine" in self.__dict__ and "engine" not in self._borrowed:
            self.engine.dispose()

    # -- agent ---------------------------------------------------------------------------------
    @cached_property
    def prompts(self) -> Prompts:
        from dataclasses import replace

        from keel.agents.prompts import load_prompts

        p = self.config.prompts
        prompts = load_prompts(
            self.config.resolve(p.system) if p.system else None,
            self.config.resolve(p.examples) if p.examples else None,
            {"app_name": self.name, "app_description": self.config.app.description},
        )
        if "prompt_leak" in self.config.guards.output:
            # A canary token: if it ever shows up in an answer, the system prompt leaked.
            prompts = replace(
                prompts,
                system=f"{prompts.system}\n\n(Internal marker, never repeat it: {self.canary})",
            )
        return prompts

    @property
    def canary(self) -> str:
        digest = hashlib.sha256(f"keel-canary\x00{self.name}".encode()).hexdigest()[:12]
        return f"keel-canary-{digest}"

    @cached_property
    def guards(self) -> GuardRunner:
        """The guards of ``[guards]`` in keel.toml, at the agent's hook points."""
        from keel.guardrails.runner import GuardRunner, Services

        def external(name: str) -> bool:
            tool = self.toolset.get(name)
            return name == "http_get" or (tool is not None and tool.side_effects == "write")

        services = Services(
            embedder=lambda: self.embedder,
            system_prompt=lambda: self.prompts.system,
            canary=self.canary,
            scope=lambda: self._scope,
        )
        return GuardRunner(self.config.guards, services, external)

    @cached_property
    def _scope(self) -> AppScope:
        """What the app is for, for the off-topic check (keel.guardrails.scope)."""
        from keel.guardrails.scope import AppScope

        def nearest(vector: Any) -> tuple[float, str] | None:
            hits = self.store().query(vector, k=1)
            return (hits[0][1], hits[0][0].text) if hits else None

        system = self.prompts.system.split("\n\n(Internal marker, never repeat it:")[0]
        return AppScope(self.config.app.description, system, nearest)

    @cached_property
    def toolset(self) -> Toolset:
        """The app's tools: ``[tools] enabled`` in keel.toml, which is also the allowlist."""
        from keel.errors import ConfigError
        from keel.tools.builtin import calculator, make_http_get, make_search_knowledge
        from keel.tools.registry import Toolset

        tools: list[Any] = []
        imports: list[str] = []
        cfg = self.config.tools
        for ref in cfg.enabled:
            if ref == "keel:search_knowledge":
                tools.append(make_search_knowledge(lambda q, k: self.search(q, k)))
            elif ref == "keel:calculator":
                tools.append(calculator)
            elif ref == "keel:http_get":
                if not cfg.http_get.allowed_hosts:
                    raise ConfigError("keel:http_get needs tools.http_get.allowed_hosts")
                tools.append(
                    make_http_get(
                        allowed_hosts=cfg.http_get.allowed_hosts,
                        max_bytes=cfg.http_get.max_bytes,
                        timeout_s=cfg.http_get.timeout_s,
                    )
                )
            elif ref.startswith("keel:"):
                raise ConfigError(f"tools.enabled: unknown built-in tool {ref!r}")
            else:
                imports.append(ref)
        toolset = Toolset(tools)
        if imports:
            toolset = toolset + Toolset.from_imports(imports, self.config.base_dir)
        return toolset

    @cached_property
    def agent(self) -> Agent:
        from keel.agents.graph import Agent, AgentConfig
        from keel.agents.models import ModelChain, build_model, model_name

        m = self.config.model

        def build(model_id: str) -> Any:
            return build_model(
                model_id,
                embedder=lambda: self.embedder,
                settings=self.settings,
                timeout_s=m.timeout_s,
                connect_timeout_s=m.connect_timeout_s,
                first_token_timeout_s=m.first_token_timeout_s,
            )

        primary = (model_name(self.model), self.model) if self.model is not None else None
        models = [primary or (m.id, build(m.id)), *[(f, build(f)) for f in m.fallbacks]]
        a = self.config.agent
        return Agent(
            app_name=self.name,
            chain=ModelChain(models, max_retries=m.max_retries, params=m.params() or None),
            prompts=self.prompts,
            toolset=self.toolset,
            search=self._search_for_agent if a.retrieve else None,
            hooks=self._hooks(),
            tracer=self.tracing.tracer if self.config.tracing.enabled else None,
            capture=self._capture,
            capture_prompts=self.config.tracing.capture == "full",
            cache=self._cache_lookup if self.config.cache.enabled else None,
            config=AgentConfig(
                max_steps=a.max_steps,
                max_tool_calls=a.max_tool_calls,
                max_tool_errors=a.max_tool_errors,
                retrieve=a.retrieve,
            ),
        )

    def _hooks(self) -> Hooks:
        """Guards first, then any hooks set on the app by hand."""
        from keel.agents.hooks import POINTS, Hooks

        g = self.guards
        guards = Hooks(
            input=[g.on_input] if g.rules["input"] else [],
            context=[g.on_context] if g.rules["context"] else [],
            tool_args=[g.on_tool_args] if g.rules["tool_args"] else [],
            tool_result=[g.on_tool_result] if g.rules["tool_result"] else [],
            output=[g.on_output] if g.rules["output"] else [],
        )
        if self.hooks is None:
            return guards
        return Hooks(**{p: [*getattr(guards, p), *getattr(self.hooks, p)] for p in POINTS})

    def _search_for_agent(self, question: str) -> list[Hit]:
        from keel.rag.manifest import EMPTY_INDEX_VERSION

        if self.index_version() == EMPTY_INDEX_VERSION:
            return []  # no knowledge ingested: do not even load the embedding model
        return self.search(question)

    @cached_property
    def _checkpointer(self) -> Any:
        from keel.agents.checkpoints import open_checkpointer

        saver, close = open_checkpointer(self.settings.database_url, self.data_dir)
        self._closers.append(close)
        return saver

    @cached_property
    def graph(self) -> Any:
        """The compiled LangGraph graph, with the app's checkpointer."""
        return self.agent.build(checkpointer=self._checkpointer)

    @cached_property
    def threads(self) -> ThreadIndex:
        from keel.agents.checkpoints import ThreadIndex

        return ThreadIndex(self.engine, self.name)

    @cached_property
    def tracing(self) -> Tracing:
        """This app's tracer provider and span store (spans also go to OTLP when configured)."""
        from keel.ops.tracing import Tracing

        tracing = Tracing(
            self.engine,
            service=self.name,
            otlp_endpoint=self.settings.otlp_endpoint,
            enabled=self.config.tracing.enabled,
        )
        self._closers.append(tracing.shutdown)
        return tracing

    def turn_record(self, trace_id: str) -> dict[str, Any] | None:
        """What a traced turn asked, answered and retrieved (for feedback and evaluation)."""
        self.tracing.flush()
        found = self.tracing.get(trace_id)
        if found is None:
            return None
        from keel.ops.semconv import RETRIEVE_SPAN, TURN_SPAN, find_span

        turn = find_span(found["spans"], TURN_SPAN)
        retrieve = find_span(found["spans"], RETRIEVE_SPAN)
        hits: list[dict[str, Any]] = []
        if retrieve is not None:
            ids = retrieve["attributes"].get("keel.retrieve.chunk_ids", [])
            if ids:
                hits = [
                    {"chunk_id": c.id, "doc_id": c.doc_id, "text": c.text}
                    for c in self.store().get(list(ids))
                ]
        attrs = turn["attributes"] if turn else {}
        return {
            "question": attrs.get("keel.input"),
            "answer": attrs.get("keel.output"),
            "hits": hits,
            "app_version": attrs.get("keel.app.version"),
            "index_version": attrs.get("keel.index.version"),
            "model": attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model"),
            "prompt_versions": {
                k.removeprefix("keel.prompt."): v
                for k, v in attrs.items()
                if k.startswith("keel.prompt.")
            },
            "git_commit": attrs.get("keel.git.commit"),
        }

    def release_content(self) -> dict[str, Any]:
        """Everything that makes this app, for a release record."""
        p = self.prompts
        return {
            "config": self.config.model_dump(mode="json"),
            "prompts": {
                "system": p.system,
                "examples": [{"question": e.question, "answer": e.answer} for e in p.examples],
            },
            "tools": self.toolset.to_openai(),
            "models": [self.config.model.id, *self.config.model.fallbacks],
            "index_version": self.index_version(),
            "git_commit": self.git_commit,
        }

    @cached_property
    def prices(self) -> PriceTable:
        """Token prices per model: keel's defaults, overridden by ``[costs.prices]``."""
        from keel.ops.cost import PriceTable

        return PriceTable(self.config.costs.prices)

    @cached_property
    def git_commit(self) -> str | None:
        """The commit the app runs from: ``KEEL_GIT_COMMIT``, else ``git rev-parse HEAD``."""
        if self.settings.git_commit:
            return self.settings.git_commit
        import subprocess

        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=self.config.base_dir,
                capture_output=True,
                text=True,
                timeout=5,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    def _capture(self, text: str) -> str | None:
        """What of a text goes on a span: nothing, the text with PII and secrets redacted, or
        the text itself (``[tracing] capture``)."""
        mode = self.config.tracing.capture
        if mode == "off" or not text:
            return None
        if mode == "full":
            return text
        if len(text) <= _REDACTED_CACHE_CHARS:
            return _redacted_cached(text)
        return _redacted(text)

    # -- semantic cache ------------------------------------------------------------------------
    @cached_property
    def cache(self) -> SemanticCache:
        """The semantic cache (``[cache]``); consulted by turns only when enabled."""
        from keel.ops.cache import SemanticCache

        c = self.config.cache
        return SemanticCache(
            self.engine,
            self.name,
            threshold=c.threshold,
            ttl_s=c.ttl_s,
            max_entries=c.max_entries,
        )

    def _cache_partition(self, owner: str | None, scopes: Sequence[str] | None) -> dict[str, Any]:
        from keel.ops.cache import partition_key

        index_version = self.index_version()
        release = self.release_id or self.version_for(index_version)
        key = partition_key(self.name, release, index_version, owner, scopes)
        return {"key": key, "release": release, "index_version": index_version, "key_id": owner}

    def _cache_lookup(self, question: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The graph's ``cache`` step: the nearest entry of this turn's partition."""
        part = config.get("configurable", {}).get("keel_cache")
        if part is None:
            return None
        try:
            found = self.cache.nearest(part["key"], self.embedder.embed_query(question))
            entry_id, similarity = found if found is not None else (None, None)
            entry = (
                self.cache.entry(entry_id)
                if entry_id is not None
                and similarity is not None
                and similarity >= self.cache.threshold
                else None
            )
        except Exception:  # the cache is an optimisation: a broken one is a miss
            _log.warning("semantic cache lookup failed", exc_info=True)
            return {"hit": False, "similarity": None, "entry_id": None}
        if similarity is None:
            return {"hit": False, "similarity": None, "entry_id": None}
        if entry is None:
            return {"hit": False, "similarity": round(similarity, 6), "entry_id": None}
        return {
            "hit": True,
            "similarity": round(similarity, 6),
            "entry_id": entry_id,
            "payload": entry[1],
        }

    def _cache_store(self, config: dict[str, Any], answer: Answer) -> None:
        """Keep a turn's answer when it may be reused: the first turn of a thread, answered by
        the model without tools, approvals or any guard failing or changing anything, and not
        a refusal ("I don't know" for one question says little about a look-alike)."""
        from langchain_core.messages import AIMessage, HumanMessage

        from keel.agents.graph import REFUSAL_TEXT
        from keel.ops.cache import Partition
        from keel.ops.refusal import is_refusal

        part = config["configurable"].get("keel_cache")
        if (
            part is None
            or answer.cache_hit
            or answer.stop_reason != "done"
            or answer.tool_calls
            or answer.pending_approval
            or not answer.text.strip()
            or answer.text.strip().startswith(REFUSAL_TEXT)
            or is_refusal(answer.text)
            or any(e.get("outcome") != "pass" for e in answer.events)
        ):
            return
        values = self.graph.get_state(config).values
        messages = values.get("messages", [])
        if not (
            len(messages) == 2
            and isinstance(messages[0], HumanMessage)
            and isinstance(messages[1], AIMessage)
            and not messages[1].tool_calls
            and messages[1].text == answer.text
        ):
            return  # history before this turn, tool calls, or an answer changed on the way
        question = str(values.get("question", ""))
        payload = {"text": answer.text, "hits": answer.hits, "model": answer.model}
        try:
            self.cache.store(
                Partition(part["key"], part["release"], part["index_version"], part["key_id"]),
                question,
                self.embedder.embed_query(question),
                payload,
            )
        except Exception:  # never fail a turn that was answered
            _log.warning("semantic cache store failed", exc_info=True)

    def _turn_attributes(self, tid: str, owner: str | None) -> dict[str, Any]:
        p = self.prompts
        index_version = self.index_version()
        attrs: dict[str, Any] = {
            "keel.app.name": self.name,
            "keel.app.version": self.version_for(index_version),
            "keel.index.version": index_version,
            "keel.prompt.system_version": p.system_version,
            "keel.thread.id": tid,
            "gen_ai.request.model": self.agent.chain.models[0][0],
            # summarized even when the turn fails (its status is then "error")
            "keel.summary": True,
        }
        if self.release_id:
            attrs["keel.release.id"] = self.release_id
        if p.examples_version:
            attrs["keel.prompt.examples_version"] = p.examples_version
        if owner:
            attrs["keel.key.id"] = owner
        if self.git_commit:
            attrs["keel.git.commit"] = self.git_commit
        return attrs

    @contextmanager
    def _turn_span(
        self, tid: str, owner: str | None, question: str | None
    ) -> Iterator[tuple[Any, str]]:
        from keel.ops.semconv import TURN_SPAN

        with self.tracing.tracer.start_as_current_span(
            TURN_SPAN, attributes=self._turn_attributes(tid, owner)
        ) as span:
            if question is not None:
                span.set_attribute("keel.input", self._capture(question) or "")
            yield span, format(span.get_span_context().trace_id, "032x")

    def _finish_span(self, span: Any, answer: Answer | None, data: Any = None) -> None:
        """Summary attributes of a turn (what ``keel traces list`` shows)."""
        if data is not None:
            info = data
        elif answer is not None:  # the fields read below, without copying the hits
            info = {k: getattr(answer, k) for k in _SUMMARY_FIELDS}
        else:
            info = {}
        usage = info.get("usage", {})
        events = info.get("events", [])
        outcomes = {e.get("outcome") for e in events if "point" in e}
        guard = (
            "tripped"
            if info.get("stop_reason") == "guardrail"
            else ("flagged" if "fail" in outcomes else "pass" if outcomes else "none")
        )
        from keel.ops.semconv import GUARD_OUTCOME

        for key, value in {
            "keel.summary": True,
            "keel.stop_reason": info.get("stop_reason"),
            "keel.output": self._capture(info.get("text", "")) or "",
            "gen_ai.response.model": info.get("model") or None,
            "gen_ai.usage.input_tokens": int(usage.get("input_tokens", 0)),
            "gen_ai.usage.output_tokens": int(usage.get("output_tokens", 0)),
            "keel.cost.usd": info.get("cost_usd"),
            GUARD_OUTCOME: guard,
            "keel.citations": [f"{c['doc_id']}#{c['chunk_id']}" for c in info.get("citations", [])],
        }.items():
            if value is not None:
                span.set_attribute(key, value)
        cache = info.get("cache")
        if cache:  # the semantic cache was consulted
            span.set_attribute("keel.cache.hit", bool(cache.get("hit")))
            for key in ("similarity", "entry_id"):
                if cache.get(key) is not None:
                    span.set_attribute(f"keel.cache.{key}", cache[key])
        if info.get("stop_reason") in ("error",):
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))

    def _run_config(
        self,
        thread_id: str,
        scopes: Sequence[str] | None,
        params: ModelParams | None = None,
        tool_choice: ToolChoice | None = None,
        instructions: str | None = None,
        client: ClientTools | None = None,
        response_format: ResponseFormat | None = None,
    ) -> dict[str, Any]:
        return {
            "configurable": {
                "thread_id": thread_id,
                "keel_scopes": list(scopes) if scopes is not None else None,
                "keel_params": params or None,
                "keel_tool_choice": tool_choice,
                "keel_instructions": instructions or None,
                "keel_client_tools": client,
                "keel_response_format": response_format,
            },
            "recursion_limit": 4 * self.config.agent.max_steps + 10,
        }

    def _durability(self) -> str:
        """Runs that can change the world are checkpointed before each step goes on ("sync");
        read-only runs are checkpointed when they end ("exit"): a crash mid-turn loses only
        that turn, which had no effect outside."""
        writes = any(t.side_effects == "write" for t in self.toolset)
        return "sync" if writes else "exit"

    def _pending(self, thread_id: str, config: dict[str, Any]) -> list[dict[str, Any]] | None:
        state = self.graph.get_state(config)
        for task in state.tasks:
            for intr in task.interrupts:
                value = intr.value
                if isinstance(value, dict) and value.get("type") == "approval_required":
                    return list(value["calls"])
        return None

    def _ready_for_turn(self, tid: str, config: dict[str, Any]) -> None:
        """Refuse a thread waiting for approval; close a turn that was cut off (a client that
        went away mid-stream, a killed process) so the history stays well-formed."""
        from keel.agents.graph import close_cut_turn

        if self._pending(tid, config):
            raise UsageError(
                f"thread {tid!r} is waiting for an approval: resume it (approve or reject) first"
            )
        saved = self._checkpointer.get_tuple(config)  # what is stored, not pending writes
        if saved is None:
            return
        messages = saved.checkpoint.get("channel_values", {}).get("messages", [])
        update = close_cut_turn(list(messages))
        if update is not None:
            self.graph.update_state(config, update, as_node="finalize")

    def _prepare_turn(
        self,
        thread_id: str | None,
        owner: str | None,
        scopes: Sequence[str] | None,
        params: ModelParams | None = None,
        tool_choice: ToolChoice | None = None,
        instructions: str | None = None,
        client: ClientTools | None = None,
        response_format: ResponseFormat | None = None,
    ) -> tuple[str, dict[str, Any]]:
        import uuid

        tid = thread_id or uuid.uuid4().hex
        if not tid or len(tid) > 200:
            raise UsageError("a thread id needs 1-200 characters")
        self.threads.touch(tid, owner)
        config = self._run_config(
            tid, scopes, params, tool_choice, instructions, client, response_format
        )
        # a reply shaped by a request's own parameters (length, stop, sampling, a forced
        # tool, client instructions, client tools, a response format) is not everybody's
        # answer: such turns neither read nor fill the cache
        personal = (
            bool(params)
            or tool_choice is not None
            or bool(instructions)
            or client is not None
            or response_format is not None
        )
        if self.config.cache.enabled and not personal:
            config["configurable"]["keel_cache"] = self._cache_partition(owner, scopes)
        return tid, config

    def _answer(self, thread_id: str, config: dict[str, Any], trace_id: str = "") -> Answer:
        values = self.graph.get_state(config).values
        return self._answer_from(thread_id, values, self._pending(thread_id, config), trace_id)

    def _answer_from(
        self,
        thread_id: str,
        values: Mapping[str, Any],
        pending: list[dict[str, Any]] | None,
        trace_id: str = "",
    ) -> Answer:
        from keel.agents.answer import Answer
        from keel.agents.citations import citations as cite
        from keel.agents.graph import hit_from_dict

        text = values.get("answer", "") if pending is None else ""
        # unknown (a server that did not report it) is {}, never zeros
        usage = {} if values.get("usage_unknown") else dict(values.get("usage", {}))
        stop_reason = "approval_required" if pending else values.get("stop_reason", "done")
        citations = cite(
            text,
            [hit_from_dict(h) for h in values.get("hits", [])],
            # a model's own answer that cites nothing it was given is attributed; a guard's
            # or a limit's message never is
            embedder=self.embedder if stop_reason == "done" and values.get("hits") else None,
            question=str(values.get("question", "")),
            threshold=self.config.agent.citation_threshold,
        )
        if citations:  # lineage: each citation leads to its chunk, document and content hash
            hashes = self.manifest().hashes(c["doc_id"] for c in citations)
            for c in citations:
                c["doc_hash"] = hashes.get(c["doc_id"])
        return Answer(
            text=text,
            thread_id=thread_id,
            trace_id=trace_id,
            stop_reason=stop_reason,
            citations=citations,
            tool_calls=list(values.get("outcomes", [])),
            pending_approval=pending,
            usage=usage,
            finish_reason=values.get("finish_reason") or None,
            model=values.get("model_id", ""),
            model_seconds=round(float(values.get("model_seconds", 0.0)), 6),
            model_calls=list(values.get("model_calls", [])),
            cost_usd=self.prices.cost(values.get("model_id", ""), usage)
            if values.get("model_id") and usage
            else None,
            events=list(values.get("events", [])),
            hits=list(values.get("hits", [])),
            release_id=self.release_id,
            cache_hit=bool(values.get("cache", {}).get("hit")),
            cache=dict(values["cache"]) if values.get("cache") else None,
            client_tool_calls=list(values.get("client_calls", []))
            if stop_reason == "client_tool_calls"
            else [],
        )

    def ask(
        self,
        question: str,
        thread_id: str | None = None,
        scopes: Sequence[str] | None = None,
        *,
        owner: str | None = None,
        history: list[Any] | None = None,
        ephemeral: bool = False,
        params: ModelParams | None = None,
        tool_choice: ToolChoice | None = None,
        instructions: str | None = None,
        client: ClientTools | None = None,
        response_format: ResponseFormat | None = None,
    ) -> Answer:
        """One turn of the conversation in ``thread_id`` (a new thread when None).

        ``scopes``: what the caller holds (None: everything, for trusted local use); tools
        needing other scopes are hidden from the model and refused if called.
        ``ephemeral``: a one-off turn that is traced but not kept (see :meth:`_ask_ephemeral`).
        ``params``: generation parameters for this turn's model calls, over ``[model]``'s.
        ``tool_choice``: "auto" (the default), "none", "required" or ``{"type": "function",
        "function": {"name": ...}}`` for the turn's first model call; later calls of the turn
        are "auto", so a forced call cannot loop.
        ``instructions``: a client's own instructions for this turn, sent to the model after
        the app's system prompt, delimited as the client's (the app's prompt stays in charge).
        ``client``: tools the caller runs itself (:mod:`keel.agents.client_tools`): a call to
        one ends the turn with ``stop_reason = "client_tool_calls"``; a request whose
        ``client.results`` answer those calls continues the turn (``question`` is then "").
        ``response_format``: the reply must be JSON of this shape
        (:mod:`keel.agents.structured`), else ``stop_reason = "invalid_output"``.
        """
        if ephemeral:
            if instructions or client is not None or response_format is not None:
                raise UsageError(
                    "an ephemeral turn takes no client instructions, tools or response format"
                )
            if not isinstance(question, str) or not question.strip():
                raise UsageError("the question is empty")
            return self._ask_ephemeral(question, thread_id, scopes, history, params, tool_choice)
        tid, config = self._prepare_turn(
            thread_id, owner, scopes, params, tool_choice, instructions, client, response_format
        )
        graph_input = self._turn_start(question, tid, config, history, client)
        with self._turn_span(tid, owner, question or None) as (span, trace_id):
            self.graph.invoke(graph_input, config, durability=self._durability())
            answer = self._answer(tid, config, trace_id)
            self._finish_span(span, answer)
        self._cache_store(config, answer)
        return answer

    def _turn_start(
        self,
        question: str,
        tid: str,
        config: dict[str, Any],
        history: list[Any] | None,
        client: ClientTools | None,
    ) -> dict[str, Any]:
        """The graph input of a turn: a new question, or a turn continued with a client's
        tool results (which must answer the calls the thread is waiting on)."""
        from keel.agents.client_tools import continuation
        from keel.agents.graph import turn_input

        if client is not None and client.results:
            if question:
                raise UsageError("a turn continued with tool results takes no new question")
            if self._pending(tid, config):
                raise UsageError(
                    f"thread {tid!r} is waiting for an approval: resume it (approve or reject)"
                )
            stored = self.graph.get_state(config).values.get("messages", [])
            return continuation(stored, history, client.results)
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty")
        self._ready_for_turn(tid, config)
        return turn_input(question, self._seed(tid, config, history))

    def _seed(
        self, tid: str, config: dict[str, Any], history: list[Any] | None
    ) -> list[Any] | None:
        """Earlier messages for a thread that has none yet (ignored for existing threads)."""
        if not history:
            return None
        if self.graph.get_state(config).values.get("messages"):
            return None
        return list(history)

    def stream(
        self,
        question: str,
        thread_id: str | None = None,
        scopes: Sequence[str] | None = None,
        *,
        owner: str | None = None,
        history: list[Any] | None = None,
        params: ModelParams | None = None,
        tool_choice: ToolChoice | None = None,
        instructions: str | None = None,
        client: ClientTools | None = None,
        response_format: ResponseFormat | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One turn, as events: ``token``, ``tool_call_delta`` (a tool call as the model
        streams it: ``index``, ``id`` and ``name`` on its first delta, ``args`` a piece of its
        JSON arguments), ``tool_call`` (a call's outcome, once run), ``guardrail``,
        ``approval_required``, ``citation`` and finally ``done`` (the whole :class:`Answer`).
        The ids in deltas are the model's own; ``tool_call`` and approvals carry the ids
        Keel made unique. ``client`` and ``response_format``: as for :meth:`ask`."""
        tid, config = self._prepare_turn(
            thread_id, owner, scopes, params, tool_choice, instructions, client, response_format
        )
        graph_input = self._turn_start(question, tid, config, history, client)
        yield from self._traced_stream(graph_input, tid, config, owner, question)

    def _traced_stream(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        owner: str | None,
        question: str,
    ) -> Iterator[dict[str, Any]]:
        """The stream inside the turn's span. The span's context is attached only around each
        step, so a consumer that resumes the generator from another thread (a web server's
        thread pool) never detaches a context it did not attach."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        tracer = self.tracing.tracer
        from keel.ops.semconv import TURN_SPAN

        span = tracer.start_span(TURN_SPAN, attributes=self._turn_attributes(tid, owner))
        span.set_attribute("keel.input", self._capture(question) or "")
        trace_id = format(span.get_span_context().trace_id, "032x")
        ctx = trace.set_span_in_context(span)
        events = self._stream(graph_input, tid, config, trace_id)
        try:
            while True:
                token = otel_context.attach(ctx)
                try:
                    event = next(events)
                except StopIteration:
                    break
                finally:
                    otel_context.detach(token)
                if event["type"] == "done":
                    self._finish_span(span, None, event["answer"])
                yield event
        except GeneratorExit:
            span.set_attribute("keel.stop_reason", "cancelled")
            raise
        finally:
            events.close()
            span.end()

    def _stream(
        self, graph_input: Any, tid: str, config: dict[str, Any], trace_id: str = ""
    ) -> Generator[dict[str, Any], None, None]:
        from langchain_core.messages import AIMessageChunk

        from keel.agents.graph import hit_from_dict
        from keel.agents.hooks import RunContext
        from keel.errors import GuardTripped

        scopes = config["configurable"].get("keel_scopes")
        ctx = RunContext(
            app=self.name,
            thread_id=tid,
            scopes=frozenset(scopes) if scopes is not None else None,
            question=str(graph_input.get("question", "")) if isinstance(graph_input, dict) else "",
        )
        window = self.guards.stream_guard(ctx) if self.guards else None

        for mode, payload in self.graph.stream(
            graph_input,
            config,
            stream_mode=["messages", "updates"],
            durability=self._durability(),
        ):
            if mode == "messages":
                chunk, meta = payload
                if not (
                    isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "model"
                ):
                    continue
                for part in chunk.tool_call_chunks:  # a call as the model writes it
                    yield {
                        "type": "tool_call_delta",
                        "index": part.get("index"),
                        "id": part.get("id"),
                        "name": part.get("name"),
                        "args": part.get("args") or "",
                    }
                if not chunk.text:
                    continue
                try:
                    text = chunk.text if window is None else window.feed(chunk.text)
                except GuardTripped as trip:  # shown no further; the run finishes its turn
                    yield {
                        "type": "guardrail",
                        **(trip.result if isinstance(trip.result, dict) else {}),
                    }
                    continue
                if text:
                    yield {"type": "token", "text": text}
                continue
            if not isinstance(payload, dict):
                continue
            if payload.get("retrieve"):
                ctx.hits = [hit_from_dict(h) for h in payload["retrieve"].get("hits", [])]
            cached = payload.get("cache")
            if cached and cached.get("cache", {}).get("hit"):  # the cached answer, at once
                yield {"type": "token", "text": cached["answer"]}
            tools = payload.get("tools")
            if tools:
                new = len(tools.get("messages", []))
                for outcome in tools.get("outcomes", [])[-new:] if new else []:
                    yield {"type": "tool_call", **outcome}
        answer = self._answer(tid, config, trace_id)
        if window is not None and window.tripped is None:
            try:
                rest = window.flush()
            except GuardTripped as trip:
                yield {
                    "type": "guardrail",
                    **(trip.result if isinstance(trip.result, dict) else {}),
                }
            else:
                if rest:
                    yield {"type": "token", "text": rest}
        for event in answer.events:
            if event.get("outcome") == "fail" and event.get("point") != "output":
                yield {"type": "guardrail", **event}
        if answer.pending_approval:
            yield {"type": "approval_required", "thread_id": tid, "calls": answer.pending_approval}
        for citation in answer.citations:
            yield {"type": "citation", **citation}
        if window is None or window.tripped is None:  # the user saw the answer unchanged
            self._cache_store(config, answer)
        yield {"type": "done", "answer": answer.to_dict()}

    def resume(
        self,
        thread_id: str,
        decision: Any,
        scopes: Sequence[str] | None = None,
        *,
        owner: str | None = None,
    ) -> Answer:
        """Continue a thread paused for approval.

        ``decision``: ``"approve"`` or ``"reject"`` for every pending call, or a mapping from
        call id to ``"approve"``, ``"reject"``, ``{"action": "edit", "args": {...}}`` (or
        ``{"args": {...}}``). A decision applies only to the call it names; an ``args_hash``
        given with it must match the pending call's.
        """
        from langgraph.types import Command

        tid, config = self._prepare_turn(thread_id, owner, scopes)
        pending = self._pending(tid, config)
        if not pending:
            raise UsageError(f"thread {tid!r} has no call waiting for approval")
        payload = resolve_decisions(decision, pending)
        with self._turn_span(tid, owner, None) as (span, trace_id):
            self.graph.invoke(Command(resume=payload), config, durability=self._durability())
            answer = self._answer(tid, config, trace_id)
            self._finish_span(span, answer)
        return answer

    def pending_approval(
        self, thread_id: str, *, owner: str | None = None
    ) -> list[dict[str, Any]] | None:
        """The tool calls a thread waits on (None when it waits on nothing)."""
        self.threads.check_owner(thread_id, owner)
        return self._pending(thread_id, self._run_config(thread_id, None))

    def history(self, thread_id: str, *, owner: str | None = None) -> list[Any]:
        """The thread's messages (langchain-core messages), oldest first."""
        self.threads.check_owner(thread_id, owner)
        values = self.graph.get_state(self._run_config(thread_id, None)).values
        return list(values.get("messages", []))

    def delete_thread(self, thread_id: str, *, owner: str | None = None) -> None:
        self.threads.check_owner(thread_id, owner)
        self._checkpointer.delete_thread(thread_id)
        self.threads.forget(thread_id)

    def prune_threads(self, older_than_days: float | None = None) -> list[str]:
        """Delete threads idle for longer than the retention period; returns their ids."""
        days = older_than_days or self.config.threads.retention_days
        if days is None:
            raise UsageError("no retention period: set threads.retention_days in keel.toml")
        gone = self.threads.idle_since(days)
        for tid in gone:
            self._checkpointer.delete_thread(tid)
            self.threads.forget(tid)
        return gone

    def prune(self) -> dict[str, int | None]:
        """Apply ``[retention]``: delete traces, feedback, usage rows, cache entries and
        threads older than their periods; returns how many of each went (None: no period)."""
        from keel.ops.audit import AuditLog
        from keel.ops.retention import prune_records

        r = self.config.retention
        report = prune_records(
            self.engine,
            self.name,
            traces_days=r.traces_days,
            feedback_days=r.feedback_days,
            usage_days=r.usage_days,
            cache_days=r.cache_days,
        ).to_dict()
        threads_days = r.threads_days or self.config.threads.retention_days
        report["threads"] = len(self.prune_threads(threads_days)) if threads_days else None
        if any(report.values()):
            AuditLog(self.engine, self.name).record("keel", "retention.pruned", self.name, report)
        return report

    # -- ephemeral turns (evaluation) --------------------------------------------------------------
    @cached_property
    def _ephemeral_graph(self) -> Any:
        """The agent graph without a checkpointer, for turns that are not kept."""
        return self.agent.build(checkpointer=None)

    def _ask_ephemeral(
        self,
        question: str,
        thread_id: str | None,
        scopes: Sequence[str] | None,
        history: list[Any] | None,
        params: ModelParams | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> Answer:
        """A turn in a thread of its own that is not kept: traced like any turn, but nothing
        is written to the thread index or the checkpointer, so it cannot be continued or
        resumed (a call waiting for approval is reported in ``pending_approval`` and the turn
        ends there). Evaluation runs use it: each case is a fresh one-off conversation, and a
        durable checkpoint per case cost more than the turn itself (SQLite writes serialised
        across the runner's threads)."""
        import uuid

        from keel.agents.graph import turn_input

        tid = thread_id or f"ephemeral-{uuid.uuid4().hex}"
        if len(tid) > 200:
            raise UsageError("a thread id needs 1-200 characters")
        config = self._run_config(tid, scopes, params, tool_choice)
        with self._turn_span(tid, None, question) as (span, trace_id):
            values = self._ephemeral_graph.invoke(
                turn_input(question, list(history) if history else None), config
            )
            pending: list[dict[str, Any]] | None = None
            for intr in values.get("__interrupt__", ()):
                value = intr.value
                if isinstance(value, dict) and value.get("type") == "approval_required":
                    pending = list(value["calls"])
            answer = self._answer_from(tid, values, pending, trace_id)
            self._finish_span(span, answer)
        return answer


_SUMMARY_FIELDS = (
    "usage",
    "events",
    "stop_reason",
    "text",
    "model",
    "cost_usd",
    "citations",
    "cache",
)
_REDACTED_CACHE_CHARS = 4096


def _redacted(text: str) -> str:
    """``text`` with its PII and secrets redacted (what ``capture = "redacted"`` keeps)."""
    from keel.guardrails.redaction import redact_text

    return redact_text(text)


# A turn captures its answer twice (the model span and the turn), and an app answers the same
# words often (refusals, canned replies): short texts are redacted once.
_redacted_cached = lru_cache(maxsize=1024)(_redacted)


def resolve_decisions(decision: Any, pending: list[dict[str, Any]]) -> dict[str, Any]:
    """Turn a user's decision into the resume payload, bound to each pending call's hash."""
    by_id = {call["id"]: call for call in pending}
    if isinstance(decision, str):
        decision = {call_id: decision for call_id in by_id}
    if not isinstance(decision, Mapping):
        raise UsageError("a decision is 'approve', 'reject' or a mapping of call id to one")
    payload: dict[str, Any] = {}
    for call_id, choice in decision.items():
        if call_id not in by_id:
            raise UsageError(f"no pending call {call_id!r} (pending: {sorted(by_id)})")
        call = by_id[call_id]
        if isinstance(choice, str):
            choice = {"action": choice}
        if not isinstance(choice, Mapping):
            raise UsageError(f"decision for {call_id!r} must be a string or an object")
        entry = dict(choice)
        if "action" not in entry and "args" in entry:
            entry["action"] = "edit"
        if entry.get("action") not in ("approve", "reject", "edit"):
            raise UsageError(f"decision for {call_id!r}: action must be approve, reject or edit")
        if entry["action"] == "edit" and not isinstance(entry.get("args"), Mapping):
            raise UsageError(f"decision for {call_id!r}: edit needs 'args' (an object)")
        given = entry.get("args_hash")
        if given is not None and given != call["args_hash"]:
            raise UsageError(f"decision for {call_id!r} was made for different arguments")
        entry["args_hash"] = call["args_hash"]
        payload[call_id] = entry
    return payload


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
