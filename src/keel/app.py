"""``App``: one keel.toml made into a running application.

``App.from_config("keel.toml")`` reads the configuration; the heavy parts (embedding model,
vector store, database) are built on first use, so constructing an App is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
    from keel.agents.events import StreamEvent
    from keel.agents.graph import Agent
    from keel.agents.hooks import Hooks
    from keel.agents.models import ToolChoice
    from keel.agents.params import ModelParams
    from keel.agents.prompts import Prompts
    from keel.agents.structured import ResponseFormat
    from keel.agents.turn import TurnRunner
    from keel.assembly import TurnAssembly
    from keel.definition import AppDefinition
    from keel.guardrails.runner import GuardRunner
    from keel.knowledge import Knowledge
    from keel.ops.cache import SemanticCache
    from keel.ops.cost import PriceTable
    from keel.ops.tracing import Tracing
    from keel.rag.access import Readable
    from keel.rag.bm25 import BM25Index
    from keel.rag.embeddings import Embedder
    from keel.rag.ingest import Progress
    from keel.rag.manifest import Manifest
    from keel.rag.retrieve import Mode, Retriever
    from keel.rag.store import VectorStore
    from keel.rag.types import Document, Hit, IngestReport, Skipped
    from keel.resources import Resources
    from keel.tools.registry import Toolset


class App:
    """A Keel application: its config, knowledge and (later) agent, guards and gateway."""

    def __init__(
        self,
        config: KeelConfig,
        *,
        settings: Settings | None = None,
        model: Any = None,
        resources: Resources | None = None,
        definition: AppDefinition | None = None,
    ) -> None:
        from keel.definition import AppDefinition
        from keel.resources import Resources

        self.config = config
        self.settings = settings or get_settings()
        self.model = model
        self.hooks: Hooks | None = None  # set before the first ask to plug in guards
        self.release_id: str | None = None  # set when the app serves a recorded release
        self.definition = definition or AppDefinition(config, lambda q, k: self.search(q, k))
        self.resources = resources or Resources(
            self.settings,
            data_dir=self._data_dir(),
            base_dir=config.base_dir,
            embeddings=config.rag.embeddings,
            service=config.app.name,
            tracing_enabled=config.tracing.enabled,
        )

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        from keel.definition import AppDefinition

        holder: list[App] = []
        definition = AppDefinition.from_release(
            release_id,
            content,
            base_dir=base.config.base_dir,
            search=lambda q, k: holder[0].search(q, k),
        )
        config = definition.config
        snapshot = content.get("index_snapshot")
        if isinstance(snapshot, str) and snapshot:  # the collection the release pinned
            rag = config.rag.model_copy(update={"collection": snapshot})
            config = config.model_copy(update={"rag": rag})
        resources = base.resources.for_release(config.rag.embeddings)
        resources.watch_tuned(config.rag)
        app = cls(
            config, settings=base.settings, model=model, resources=resources, definition=definition
        )
        holder.append(app)
        app.release_id = release_id
        return app

    # -- places --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.app.name

    def _data_dir(self) -> Path:
        configured = self.settings.data_dir
        if configured is None:
            return self.config.base_dir / ".keel"
        return configured if configured.is_absolute() else self.config.base_dir / configured

    @property
    def data_dir(self) -> Path:
        return self.resources.data_dir

    @property
    def engine(self) -> Engine:
        return self.resources.engine

    @property
    def embedder(self) -> Embedder:
        return self.resources.embedder

    @cached_property
    def knowledge(self) -> Knowledge:
        """The app's knowledge: ingestion and search over its collections."""
        from keel.knowledge import Knowledge

        return Knowledge(self.config, self.resources)

    def _collection(self, collection: str | None) -> str:
        return self.knowledge.collection(collection)

    def store(self, collection: str | None = None) -> VectorStore:
        return self.knowledge.store(collection)

    def manifest(self, collection: str | None = None) -> Manifest:
        return self.knowledge.manifest(collection)

    def bm25(self, collection: str | None = None) -> BM25Index:
        """The BM25 index of a collection, rebuilt from the store if it is stale or missing."""
        return self.knowledge.bm25(collection)

    def retriever(self, collection: str | None = None) -> Retriever:
        return self.knowledge.retriever(collection)

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
        return self.knowledge.ingest(paths, prune, collection=collection, progress=progress)

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
        ``labels``: access labels every document gets besides its own."""
        return self.knowledge.ingest_documents(
            documents,
            collection=collection,
            progress=progress,
            created_by=created_by,
            labels=labels,
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
        """The ``k`` best chunks for ``query`` (hybrid by default), with citation data.
        ``readable``: the access labels the reader holds (None: every document; the default
        is the running turn's reader, everything outside a turn)."""
        return self.knowledge.search(
            query, k, where=where, mode=mode, collection=collection, readable=readable
        )

    # -- versions --------------------------------------------------------------------------------
    def index_version(self, collection: str | None = None) -> str:
        return self.manifest(collection).current_version()

    @property
    def version(self) -> str:
        """Content hash of the app: config, prompt files, tool signatures and index version."""
        return self.version_for(self.index_version())

    def version_for(self, index_version: str) -> str:
        return self.definition.version_for(index_version)

    def close(self) -> None:
        """Close what this app holds open (a release's app leaves the resources it borrowed
        from the app on disk open)."""
        self.resources.close()

    # -- agent ---------------------------------------------------------------------------------
    @property
    def prompts(self) -> Prompts:
        return self.definition.prompts

    @property
    def canary(self) -> str:
        return self.definition.canary

    @property
    def toolset(self) -> Toolset:
        """The app's tools: ``[tools] enabled`` in keel.toml, which is also the allowlist."""
        return self.definition.toolset

    @cached_property
    def _assembly(self) -> TurnAssembly:
        """Guards, agent, graphs, tracer, cache and turn pipeline (:mod:`keel.assembly`)."""
        from keel.assembly import AppParts, TurnAssembly

        parts = AppParts(
            config=self.config,
            settings=self.settings,
            definition=self.definition,
            resources=self.resources,
            knowledge=self.knowledge,
            model=lambda: self.model,
            hooks=lambda: self.hooks,
            release_id=lambda: self.release_id,
        )
        return TurnAssembly(parts)

    @property
    def guards(self) -> GuardRunner:
        """The guards of ``[guards]`` in keel.toml, at the agent's hook points."""
        return self._assembly.guards

    def warm(self) -> None:
        """Load now what a server's first request would otherwise wait for: the guards' models
        (:meth:`GuardRunner.warm`) and, when a model of the app is generative (its answers'
        citations are attributed, :mod:`keel.agents.citations`), the support encoder."""
        from keel.agents.models import EXTRACTIVE

        self.guards.warm()
        ids = [self.config.model.id, *self.config.model.fallbacks]
        if self.model is not None or any(i != EXTRACTIVE for i in ids):
            getattr(self.resources.support_embedder, "model", None)  # loads (exports) it

    @property
    def agent(self) -> Agent:
        return self._assembly.agent

    @property
    def graph(self) -> Any:
        """The compiled LangGraph graph, with the app's checkpointer."""
        return self._assembly.graph

    @property
    def threads(self) -> ThreadIndex:
        return self._assembly.threads

    @property
    def tracing(self) -> Tracing:
        """This app's tracer provider and span store (spans also go to OTLP when configured)."""
        return self.resources.tracing

    def turn_record(self, trace_id: str) -> dict[str, Any] | None:
        """What a traced turn asked, answered and retrieved (for feedback and evaluation):
        :meth:`keel.ops.tracing.Tracing.turn` with its chunks read back from the store."""
        return self._assembly.turn_record(trace_id)

    def release_content(self) -> dict[str, Any]:
        """Everything that makes this app, for a release record, with the snapshot of the
        collection it pins (made now if missing: :meth:`keel.knowledge.Knowledge.snapshot`)."""
        snapshot = self.knowledge.snapshot()
        content = self.definition.content(self.index_version(), self.git_commit)
        content["index_snapshot"] = snapshot
        return content

    @property
    def prices(self) -> PriceTable:
        """Token prices per model: keel's defaults, overridden by ``[costs.prices]``."""
        return self._assembly.prices

    @property
    def git_commit(self) -> str | None:
        """The commit the app runs from: ``KEEL_GIT_COMMIT``, else ``git rev-parse HEAD``."""
        return self._assembly.git_commit

    # -- the turn pipeline ------------------------------------------------------------------------
    @property
    def cache(self) -> SemanticCache:
        """The semantic cache (``[cache]``); consulted by turns only when enabled."""
        return self._assembly.cache

    @property
    def turns(self) -> TurnRunner:
        """The turn pipeline every surface runs turns through (:mod:`keel.agents.turn`)."""
        return self._assembly.turns

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
        end_user: str | None = None,
        readable: Readable = None,
    ) -> Answer:
        """One turn of the conversation in ``thread_id`` (a new thread when None).

        ``scopes``: what the caller holds (None: everything, for trusted local use); tools
        needing other scopes are hidden from the model and refused if called.
        ``ephemeral``: a one-off turn that is traced but not kept
        (:meth:`keel.agents.turn.TurnRunner.ask_ephemeral`).
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
        ``end_user``: the person the turn is for (OpenAI's ``user``), recorded on the
        thread, the trace and any cache entry, so ``keel privacy`` can export or erase it.
        ``readable``: the access labels the caller holds (:mod:`keel.rag.access`; None, for
        trusted local use: every document): retrieval, the ``search_knowledge`` tool, the
        cache and citations see only documents these labels allow.
        """
        from keel.agents.turn import TurnRequest

        request = TurnRequest(
            scopes,
            owner,
            history,
            params,
            tool_choice,
            instructions,
            client,
            response_format,
            end_user,
            readable,
        )
        if ephemeral:
            return self.turns.ask_ephemeral(question, thread_id, request)
        return self.turns.ask(question, thread_id, request)

    async def aask(
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
        end_user: str | None = None,
        readable: Readable = None,
    ) -> Answer:
        """:meth:`ask` for async hosts, on the graph's async path: the model is called with
        ``ainvoke`` and coroutine tools are awaited on the running loop; what blocks (the
        thread index, checkpoints, retrieval, guards, citations) runs in worker threads, so
        the loop is never blocked and concurrent turns interleave. Arguments as for
        :meth:`ask` (an ``ephemeral`` turn runs the sync path in a worker thread)."""
        from keel.agents.turn import TurnRequest

        request = TurnRequest(
            scopes,
            owner,
            history,
            params,
            tool_choice,
            instructions,
            client,
            response_format,
            end_user,
            readable,
        )
        if ephemeral:
            import asyncio
            import contextvars

            ctx = contextvars.copy_context()
            ask = self.turns.ask_ephemeral
            return await asyncio.to_thread(ctx.run, ask, question, thread_id, request)
        return await self.turns.aask(question, thread_id, request)

    def events(
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
        end_user: str | None = None,
        readable: Readable = None,
    ) -> Iterator[StreamEvent]:
        """One turn as typed events (:mod:`keel.agents.events`), the last one ``Done``.
        What :meth:`stream` yields as dicts; arguments as for :meth:`ask`."""
        from keel.agents.turn import TurnRequest

        request = TurnRequest(
            scopes,
            owner,
            history,
            params,
            tool_choice,
            instructions,
            client,
            response_format,
            end_user,
            readable,
        )
        return self.turns.stream(question, thread_id, request)

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
        end_user: str | None = None,
        readable: Readable = None,
    ) -> Iterator[dict[str, Any]]:
        """One turn, as events: ``token``, ``tool_call_delta`` (a tool call as the model
        streams it: ``index``, ``id`` and ``name`` on its first delta, ``args`` a piece of its
        JSON arguments), ``tool_call`` (a call's outcome, once run), ``guardrail``,
        ``approval_required``, ``citation`` and finally ``done`` (the whole :class:`Answer`).
        The ids in deltas are the model's own; ``tool_call`` and approvals carry the ids
        Keel made unique. ``client`` and ``response_format``: as for :meth:`ask`.
        :meth:`events` yields the same events typed."""
        from keel.agents.events import to_dict

        events = self.events(
            question,
            thread_id,
            scopes,
            owner=owner,
            history=history,
            params=params,
            tool_choice=tool_choice,
            instructions=instructions,
            client=client,
            response_format=response_format,
            end_user=end_user,
            readable=readable,
        )
        return _as_dicts(events, to_dict)

    async def astream(
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
        end_user: str | None = None,
        readable: Readable = None,
    ) -> AsyncIterator[StreamEvent]:
        """:meth:`events` for async hosts, on the graph's async path (as :meth:`aask`); the
        turn's checks run before the first event. Closing the iterator early cancels the
        turn, as a client that goes away does."""
        from keel.agents.turn import TurnRequest

        request = TurnRequest(
            scopes,
            owner,
            history,
            params,
            tool_choice,
            instructions,
            client,
            response_format,
            end_user,
            readable,
        )
        events = await self.turns.astream(question, thread_id, request)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    def resume(
        self,
        thread_id: str,
        decision: Any,
        scopes: Sequence[str] | None = None,
        *,
        owner: str | None = None,
        readable: Readable = None,
    ) -> Answer:
        """Continue a thread paused for approval (``readable``: as for :meth:`ask`).

        ``decision``: ``"approve"`` or ``"reject"`` for every pending call, or a mapping from
        call id to ``"approve"``, ``"reject"``, ``{"action": "edit", "args": {...}}`` (or
        ``{"args": {...}}``). A decision applies only to the call it names; an ``args_hash``
        given with it must match the pending call's.
        """
        from keel.agents.turn import TurnRequest

        return self.turns.resume(
            thread_id,
            lambda pending: resolve_decisions(decision, pending),
            TurnRequest(scopes, owner, readable=readable),
        )

    async def aresume(
        self,
        thread_id: str,
        decision: Any,
        scopes: Sequence[str] | None = None,
        *,
        owner: str | None = None,
        readable: Readable = None,
    ) -> Answer:
        """:meth:`resume` for async hosts, on the graph's async path (as :meth:`aask`)."""
        from keel.agents.turn import TurnRequest

        return await self.turns.aresume(
            thread_id,
            lambda pending: resolve_decisions(decision, pending),
            TurnRequest(scopes, owner, readable=readable),
        )

    def pending_approval(
        self, thread_id: str, *, owner: str | None = None
    ) -> list[dict[str, Any]] | None:
        """The tool calls a thread waits on (None when it waits on nothing)."""
        self.threads.check_owner(thread_id, owner)
        return self.turns.pending(self.turns.run_config(thread_id))

    def history(self, thread_id: str, *, owner: str | None = None) -> list[Any]:
        """The thread's messages (langchain-core messages), oldest first."""
        self.threads.check_owner(thread_id, owner)
        values = self.graph.get_state(self.turns.run_config(thread_id)).values
        return list(values.get("messages", []))

    def delete_thread(self, thread_id: str, *, owner: str | None = None) -> None:
        self.threads.check_owner(thread_id, owner)
        self.resources.checkpointer.delete_thread(thread_id)
        self.threads.forget(thread_id)

    def prune_threads(self, older_than_days: float | None = None) -> list[str]:
        """Delete threads idle for longer than the retention period; returns their ids."""
        days = older_than_days or self.config.threads.retention_days
        if days is None:
            raise UsageError("no retention period: set threads.retention_days in keel.toml")
        gone = self.threads.idle_since(days)
        for tid in gone:
            self.resources.checkpointer.delete_thread(tid)
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


def _as_dicts(
    events: Iterator[StreamEvent], to_dict: Callable[[StreamEvent], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    try:
        for event in events:
            yield to_dict(event)
    finally:
        _close(events)


def _close(events: Iterator[Any]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


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
