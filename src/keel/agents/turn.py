"""The turn pipeline: one implementation of a turn for every surface.

input guards -> cache -> retrieve -> model <-> tools (approval) -> output guards, as the agent
graph (:mod:`keel.agents.graph`) runs it, inside the turn's span. :meth:`TurnRunner.stream`
yields the turn's typed events (:mod:`keel.agents.events`); :meth:`TurnRunner.ask` runs the
same turn in one call and returns its :class:`~keel.agents.answer.Answer`;
:meth:`TurnRunner.ask_ephemeral` runs a turn that is not kept (evaluation) and
:meth:`TurnRunner.resume` continues a thread paused for approval. :meth:`TurnRunner.aask`,
:meth:`TurnRunner.astream` and :meth:`TurnRunner.aresume` are the same turns on a running
event loop, on the graph's async path (``ainvoke``/``astream``). :class:`keel.App` is the
facade over it; the HTTP routes and the console encode its events.

Tracing (:class:`keel.ops.turn_trace.TurnTracer`) and the semantic cache's policy
(:class:`keel.ops.cache_policy.TurnCache`) observe the turn from ``ops``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import (
    AsyncGenerator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from keel.agents.events import (
    ApprovalRequired,
    CitationFound,
    Done,
    Guardrail,
    StreamEvent,
    Token,
    ToolCallDelta,
    ToolCallDone,
)
from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.agents.answer import Answer
    from keel.agents.checkpoints import ThreadIndex
    from keel.agents.client_tools import ClientTools
    from keel.agents.models import ToolChoice
    from keel.agents.params import ModelParams
    from keel.agents.structured import ResponseFormat
    from keel.guardrails.runner import GuardRunner
    from keel.ops.cache_policy import CachePartition, TurnCache
    from keel.ops.cost import PriceTable
    from keel.ops.turn_trace import TurnTracer

__all__ = ["TurnParts", "TurnRequest", "TurnRunner"]

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


@dataclass(frozen=True)
class TurnParts:
    """What a turn needs, built lazily by its owner (:class:`keel.App`) and shared."""

    graph: Callable[[], Any]  # the compiled graph with the app's checkpointer
    ephemeral_graph: Callable[[], Any]  # the same graph without one
    checkpointer: Callable[[], Any]
    threads: Callable[[], ThreadIndex]
    guards: Callable[[], GuardRunner | None]
    tracer: Callable[[], TurnTracer]
    support_embedder: Callable[[], Any]  # citation attribution's (keel.rag.support)
    doc_hashes: Callable[[Iterable[str]], Mapping[str, str | None]]
    prices: Callable[[], PriceTable]
    app_name: str
    max_steps: int
    citation_threshold: float
    writes: Callable[[], bool]  # any tool with side effects: checkpoint each step
    cache: TurnCache | None = None
    release_id: str | None = None
    # the graph built for ainvoke/astream (:meth:`keel.agents.graph.Agent.build`), same
    # checkpointer; None: the async methods are not available
    async_graph: Callable[[], Any] | None = None
    # raises when a model the turn would use may no longer be (a withdrawn tuned model:
    # keel.resources.Resources.check_tuned); checked before every turn
    check_models: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class TurnRequest:
    """How the caller shapes one turn (see :meth:`keel.App.ask`)."""

    scopes: Sequence[str] | None = None
    owner: str | None = None
    history: list[Any] | None = None
    params: ModelParams | None = None
    tool_choice: ToolChoice | None = None
    instructions: str | None = None
    client: ClientTools | None = None
    response_format: ResponseFormat | None = None
    end_user: str | None = None  # the person the turn is for (recorded for export/erasure)
    # the access labels the caller may read (keel.rag.access); None: every document
    readable: frozenset[str] | None = None

    @property
    def personal(self) -> bool:
        """A reply shaped by the request's own parameters (length, stop, sampling, a forced
        tool, client instructions, client tools, a response format) is not everybody's
        answer: such turns neither read nor fill the cache."""
        return (
            bool(self.params)
            or self.tool_choice is not None
            or bool(self.instructions)
            or self.client is not None
            or self.response_format is not None
        )


class TurnRunner:
    """Runs turns of one app (see the module's docstring)."""

    def __init__(self, parts: TurnParts) -> None:
        self.parts = parts

    # -- the graph's cache step ----------------------------------------------------------------
    def cache_step(self, question: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The graph's ``cache`` step: the nearest entry of this turn's partition."""
        part: CachePartition | None = config.get("configurable", {}).get("keel_cache")
        if part is None or self.parts.cache is None:
            return None
        return self.parts.cache.lookup(question, part).to_dict()

    # -- set-up --------------------------------------------------------------------------------
    def run_config(self, thread_id: str, request: TurnRequest | None = None) -> dict[str, Any]:
        r = request or TurnRequest()
        return {
            "configurable": {
                "thread_id": thread_id,
                "keel_scopes": list(r.scopes) if r.scopes is not None else None,
                "keel_params": r.params or None,
                "keel_tool_choice": r.tool_choice,
                "keel_instructions": r.instructions or None,
                "keel_client_tools": r.client,
                "keel_response_format": r.response_format,
                "keel_readable": sorted(r.readable) if r.readable is not None else None,
            },
            "recursion_limit": 4 * self.parts.max_steps + 10,
        }

    def durability(self) -> str:
        """Runs that can change the world are checkpointed before each step goes on ("sync");
        read-only runs are checkpointed when they end ("exit"): a crash mid-turn loses only
        that turn, which had no effect outside."""
        return "sync" if self.parts.writes() else "exit"

    def pending(self, config: dict[str, Any]) -> list[dict[str, Any]] | None:
        state = self.parts.graph().get_state(config)
        for task in state.tasks:
            for intr in task.interrupts:
                value = intr.value
                if isinstance(value, dict) and value.get("type") == "approval_required":
                    return list(value["calls"])
        return None

    def prepare(self, thread_id: str | None, request: TurnRequest) -> tuple[str, dict[str, Any]]:
        tid = thread_id or uuid.uuid4().hex
        if not tid or len(tid) > 200:
            raise UsageError("a thread id needs 1-200 characters")
        self.parts.threads().touch(tid, request.owner, request.end_user)
        config = self.run_config(tid, request)
        cache = self.parts.cache
        if cache is not None and not request.personal:
            config["configurable"]["keel_cache"] = cache.partition(
                request.owner, request.scopes, request.readable
            )
        return tid, config

    def _ready_for_turn(self, tid: str, config: dict[str, Any]) -> None:
        """Refuse a thread waiting for approval; close a turn that was cut off (a client that
        went away mid-stream, a killed process) so the history stays well-formed."""
        from keel.agents.graph import close_cut_turn

        if self.pending(config):
            raise UsageError(
                f"thread {tid!r} is waiting for an approval: resume it (approve or reject) first"
            )
        saved = self.parts.checkpointer().get_tuple(config)  # what is stored, not pending
        if saved is None:
            return
        messages = saved.checkpoint.get("channel_values", {}).get("messages", [])
        update = close_cut_turn(list(messages))
        if update is not None:
            self.parts.graph().update_state(config, update, as_node="finalize")

    def start_input(
        self, question: str, tid: str, config: dict[str, Any], request: TurnRequest
    ) -> dict[str, Any]:
        """The graph input of a turn: a new question, or a turn continued with a client's
        tool results (which must answer the calls the thread is waiting on)."""
        from keel.agents.client_tools import continuation
        from keel.agents.graph import turn_input

        client = request.client
        graph = self.parts.graph()
        if client is not None and client.results:
            if question:
                raise UsageError("a turn continued with tool results takes no new question")
            if self.pending(config):
                raise UsageError(
                    f"thread {tid!r} is waiting for an approval: resume it (approve or reject)"
                )
            stored = graph.get_state(config).values.get("messages", [])
            return continuation(stored, request.history, client.results)
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty")
        self._ready_for_turn(tid, config)
        seed = None
        if request.history and not graph.get_state(config).values.get("messages"):
            seed = list(request.history)  # earlier messages, for a thread that has none yet
        return turn_input(question, seed)

    # -- answers -------------------------------------------------------------------------------
    def answer(self, thread_id: str, config: dict[str, Any], trace_id: str = "") -> Answer:
        values = self.parts.graph().get_state(config).values
        return self.answer_from(thread_id, values, self.pending(config), trace_id)

    def answer_from(
        self,
        thread_id: str,
        values: Mapping[str, Any],
        pending: list[dict[str, Any]] | None,
        trace_id: str = "",
    ) -> Answer:
        from keel.agents.answer import Answer
        from keel.agents.citations import citations as cite
        from keel.agents.graph import state_events, state_hits, state_outcomes

        p = self.parts
        hits = state_hits(values)
        text = values.get("answer", "") if pending is None else ""
        # unknown (a server that did not report it) is {}, never zeros
        usage = {} if values.get("usage_unknown") else dict(values.get("usage", {}))
        stop_reason = "approval_required" if pending else values.get("stop_reason", "done")
        citations = cite(
            text,
            hits,
            # a model's own answer that cites nothing it was given is attributed; a guard's
            # or a limit's message never is
            embedder=p.support_embedder() if stop_reason == "done" and hits else None,
            question=str(values.get("question", "")),
            threshold=p.citation_threshold,
        )
        if citations:  # lineage: each citation leads to its chunk, document and content hash
            hashes = p.doc_hashes(c["doc_id"] for c in citations)
            for c in citations:
                c["doc_hash"] = hashes.get(c["doc_id"])
        model_id = values.get("model_id", "")
        return Answer(
            text=text,
            thread_id=thread_id,
            trace_id=trace_id,
            stop_reason=stop_reason,
            citations=citations,
            tool_calls=[r.to_dict() for r in state_outcomes(values)],
            pending_approval=pending,
            usage=usage,
            finish_reason=values.get("finish_reason") or None,
            model=model_id,
            model_seconds=round(float(values.get("model_seconds", 0.0)), 6),
            model_calls=list(values.get("model_calls", [])),
            cost_usd=p.prices().cost(model_id, usage) if model_id and usage else None,
            events=[e.to_dict() for e in state_events(values)],
            hits=[h.to_dict() for h in hits],
            release_id=p.release_id,
            cache_hit=bool(values.get("cache", {}).get("hit")),
            cache=dict(values["cache"]) if values.get("cache") else None,
            client_tool_calls=list(values.get("client_calls", []))
            if stop_reason == "client_tool_calls"
            else [],
        )

    def _keep_in_cache(
        self, config: dict[str, Any], answer: Answer, end_user: str | None = None
    ) -> None:
        part = config["configurable"].get("keel_cache")
        cache = self.parts.cache
        if part is None or cache is None or not cache.reusable(answer):
            return
        values = self.parts.graph().get_state(config).values
        question = str(values.get("question", ""))
        cache.store(part, question, values.get("messages", []), answer, end_user=end_user)

    # -- turns ---------------------------------------------------------------------------------
    # Each turn is: checks and set-up (sync, shared), the graph's run (``invoke``/``stream`` on
    # the sync path, ``ainvoke``/``astream`` on the async one), then the answer and the cache
    # (sync, shared). The async path runs the shared sync steps in a worker thread: they read
    # the thread index and the checkpoints and may embed text, and the loop must not wait.
    def _begin(
        self, question: str, thread_id: str | None, request: TurnRequest
    ) -> tuple[str, dict[str, Any], Any]:
        """The checks and set-up before a turn's first step: ``(thread id, run config,
        graph input)``."""
        self.parts.check_models()
        tid, config = self.prepare(thread_id, request)
        return tid, config, self.start_input(question, tid, config, request)

    def _begin_resume(
        self,
        thread_id: str,
        payload: Callable[[list[dict[str, Any]]], dict[str, Any]],
        request: TurnRequest,
    ) -> tuple[str, dict[str, Any], Any]:
        from langgraph.types import Command

        self.parts.check_models()
        tid, config = self.prepare(thread_id, request)
        pending = self.pending(config)
        if not pending:
            raise UsageError(f"thread {tid!r} has no call waiting for approval")
        return tid, config, Command(resume=payload(pending))

    def _async_graph(self) -> Any:
        if self.parts.async_graph is None:
            raise UsageError("this turn runner has no async graph (TurnParts.async_graph)")
        return self.parts.async_graph()

    def ask(self, question: str, thread_id: str | None, request: TurnRequest) -> Answer:
        """One turn in one call."""
        tid, config, graph_input = self._begin(question, thread_id, request)
        return self._run(graph_input, tid, config, request, question or None, keep=True)

    async def aask(self, question: str, thread_id: str | None, request: TurnRequest) -> Answer:
        """:meth:`ask` on the running event loop: the graph runs with ``ainvoke`` (the model
        with ``ainvoke``, coroutine tools awaited on this loop)."""
        tid, config, graph_input = await _in_thread(self._begin, question, thread_id, request)
        return await self._arun(graph_input, tid, config, request, question or None, keep=True)

    def resume(
        self,
        thread_id: str,
        payload: Callable[[list[dict[str, Any]]], dict[str, Any]],
        request: TurnRequest,
    ) -> Answer:
        """Continue a thread paused for approval; ``payload`` turns the pending calls into
        the resume payload (:func:`keel.app.resolve_decisions`)."""
        tid, config, command = self._begin_resume(thread_id, payload, request)
        return self._run(command, tid, config, request, None, keep=False)

    async def aresume(
        self,
        thread_id: str,
        payload: Callable[[list[dict[str, Any]]], dict[str, Any]],
        request: TurnRequest,
    ) -> Answer:
        """:meth:`resume` on the running event loop (as :meth:`aask`)."""
        tid, config, command = await _in_thread(self._begin_resume, thread_id, payload, request)
        return await self._arun(command, tid, config, request, None, keep=False)

    def _run(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        request: TurnRequest,
        question: str | None,
        *,
        keep: bool,
    ) -> Answer:
        tracer = self.parts.tracer()
        with tracer.span(tid, request.owner, question, request.end_user) as (span, trace_id):
            self.parts.graph().invoke(graph_input, config, durability=self.durability())
            answer = self.answer(tid, config, trace_id)
            tracer.finish(span, summary(answer))
        if keep:
            self._keep_in_cache(config, answer, request.end_user)
        return answer

    async def _arun(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        request: TurnRequest,
        question: str | None,
        *,
        keep: bool,
    ) -> Answer:
        tracer = self.parts.tracer()
        with tracer.span(tid, request.owner, question, request.end_user) as (span, trace_id):
            graph = self._async_graph()
            try:
                await graph.ainvoke(graph_input, config, durability=self.durability())
            except asyncio.CancelledError:  # the caller's task was cancelled: so is the turn
                span.set_attribute("keel.stop_reason", "cancelled")
                raise
            answer = await _in_thread(self.answer, tid, config, trace_id)
            tracer.finish(span, summary(answer))
        if keep:
            await _in_thread(self._keep_in_cache, config, answer, request.end_user)
        return answer

    def stream(
        self, question: str, thread_id: str | None, request: TurnRequest
    ) -> Iterator[StreamEvent]:
        """One turn as typed events, the last one :class:`~keel.agents.events.Done`. The
        checks (thread id, empty question, a thread waiting for approval) run before the
        first event, so a bad request fails at the call, not mid-stream."""
        tid, config, graph_input = self._begin(question, thread_id, request)
        return self._traced(graph_input, tid, config, request, question)

    async def astream(
        self, question: str, thread_id: str | None, request: TurnRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        """:meth:`stream` on the running event loop (the graph's ``astream``): awaiting it
        runs the checks (a bad request fails here) and gives the events' async iterator.
        Closing the iterator early (``aclose``) or cancelling the task reading it cancels
        the turn, and its span says so."""
        tid, config, graph_input = await _in_thread(self._begin, question, thread_id, request)
        return self._atraced(graph_input, tid, config, request, question)

    def _traced(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        request: TurnRequest,
        question: str,
    ) -> Iterator[StreamEvent]:
        """The stream inside the turn's span. The span's context is attached only around each
        step, so a consumer that resumes the generator from another thread (a web server's
        thread pool) never detaches a context it did not attach."""
        from opentelemetry import context as otel_context

        tracer, span, ctx, trace_id = self._open_span(tid, request, question)
        events = self._events(graph_input, tid, config, trace_id, request.end_user)
        try:
            while True:
                token = otel_context.attach(ctx)
                try:
                    event = next(events)
                except StopIteration:
                    break
                finally:
                    otel_context.detach(token)
                if isinstance(event, Done):
                    tracer.finish(span, summary(event.answer))
                yield event
        except GeneratorExit:
            span.set_attribute("keel.stop_reason", "cancelled")
            raise
        finally:
            events.close()
            span.end()

    async def _atraced(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        request: TurnRequest,
        question: str,
    ) -> AsyncGenerator[StreamEvent, None]:
        """:meth:`_traced` for :meth:`astream` (the context attached around each step too:
        each ``anext`` may come from another task)."""
        from opentelemetry import context as otel_context

        tracer, span, ctx, trace_id = self._open_span(tid, request, question)
        events = self._aevents(graph_input, tid, config, trace_id, request.end_user)
        try:
            while True:
                token = otel_context.attach(ctx)
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                if isinstance(event, Done):
                    tracer.finish(span, summary(event.answer))
                yield event
        except (GeneratorExit, asyncio.CancelledError):
            span.set_attribute("keel.stop_reason", "cancelled")
            raise
        finally:
            await events.aclose()
            span.end()

    def _open_span(
        self, tid: str, request: TurnRequest, question: str
    ) -> tuple[TurnTracer, Any, Any, str]:
        """A streamed turn's span (ended by its stream): ``(tracer, span, the context with
        it, trace id)``."""
        from opentelemetry import trace

        from keel.ops.turn_trace import trace_id_of

        tracer = self.parts.tracer()
        span = tracer.start(tid, request.owner, question, request.end_user)
        return tracer, span, trace.set_span_in_context(span), trace_id_of(span)

    def _events(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        trace_id: str,
        end_user: str | None,
    ) -> Generator[StreamEvent, None, None]:
        seen = _TurnEvents(self.parts, graph_input, tid, config)
        for mode, payload in self.parts.graph().stream(
            graph_input,
            config,
            stream_mode=["messages", "updates"],
            durability=self.durability(),
        ):
            yield from seen.feed(mode, payload)
        answer = self.answer(tid, config, trace_id)
        yield from seen.ending(answer)
        if seen.unchanged:
            self._keep_in_cache(config, answer, end_user)
        yield Done(answer)

    async def _aevents(
        self,
        graph_input: Any,
        tid: str,
        config: dict[str, Any],
        trace_id: str,
        end_user: str | None,
    ) -> AsyncGenerator[StreamEvent, None]:
        seen = _TurnEvents(self.parts, graph_input, tid, config)
        stream = self._async_graph().astream(
            graph_input,
            config,
            stream_mode=["messages", "updates"],
            durability=self.durability(),
        )
        try:
            async for mode, payload in stream:
                for event in seen.feed(mode, payload):
                    yield event
        finally:
            await stream.aclose()  # an early close cancels the run now, not when collected
        answer = await _in_thread(self.answer, tid, config, trace_id)
        for event in seen.ending(answer):
            yield event
        if seen.unchanged:
            await _in_thread(self._keep_in_cache, config, answer, end_user)
        yield Done(answer)

    def ask_ephemeral(
        self,
        question: str,
        thread_id: str | None,
        request: TurnRequest,
    ) -> Answer:
        """A turn in a thread of its own that is not kept: traced like any turn, but nothing
        is written to the thread index or the checkpointer, so it cannot be continued or
        resumed (a call waiting for approval is reported in ``pending_approval`` and the turn
        ends there). Evaluation runs use it: each case is a fresh one-off conversation, and a
        durable checkpoint per case cost more than the turn itself (SQLite writes serialised
        across the runner's threads)."""
        from keel.agents.graph import turn_input

        if request.instructions or request.client is not None or request.response_format:
            raise UsageError(
                "an ephemeral turn takes no client instructions, tools or response format"
            )
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty")
        tid = thread_id or f"ephemeral-{uuid.uuid4().hex}"
        if len(tid) > 200:
            raise UsageError("a thread id needs 1-200 characters")
        config = self.run_config(
            tid,
            TurnRequest(
                request.scopes,
                None,
                None,
                request.params,
                request.tool_choice,
                readable=request.readable,
            ),
        )
        tracer = self.parts.tracer()
        history = list(request.history) if request.history else None
        with tracer.span(tid, None, question) as (span, trace_id):
            values = self.parts.ephemeral_graph().invoke(turn_input(question, history), config)
            pending: list[dict[str, Any]] | None = None
            for intr in values.get("__interrupt__", ()):
                value = intr.value
                if isinstance(value, dict) and value.get("type") == "approval_required":
                    pending = list(value["calls"])
            answer = self.answer_from(tid, values, pending, trace_id)
            tracer.finish(span, summary(answer))
        return answer


def summary(answer: Answer) -> dict[str, Any]:
    """The fields of an answer the turn span summarises (without copying its hits)."""
    return {k: getattr(answer, k) for k in _SUMMARY_FIELDS}


_T = TypeVar("_T")


async def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """A blocking step of a turn on the async path, in a worker thread (with the caller's
    context: the turn's span, the trace id)."""
    return await asyncio.to_thread(func, *args)


class _TurnEvents:
    """What a turn's graph stream (modes ``messages`` and ``updates``) means as typed events:
    one reading for :meth:`TurnRunner.stream` and :meth:`TurnRunner.astream`."""

    def __init__(
        self, parts: TurnParts, graph_input: Any, tid: str, config: dict[str, Any]
    ) -> None:
        from keel.agents.hooks import RunContext

        scopes = config["configurable"].get("keel_scopes")
        self.ctx = RunContext(
            app=parts.app_name,
            thread_id=tid,
            scopes=frozenset(scopes) if scopes is not None else None,
            question=str(graph_input.get("question", "")) if isinstance(graph_input, dict) else "",
        )
        guards = parts.guards()
        self.tid = tid
        self.window = guards.stream_guard(self.ctx) if guards else None

    @property
    def unchanged(self) -> bool:
        """The user saw the answer as the model wrote it (no output guard cut the stream)."""
        return self.window is None or self.window.tripped is None

    def feed(self, mode: str, payload: Any) -> Iterator[StreamEvent]:
        from langchain_core.messages import AIMessageChunk

        from keel.agents.graph import state_hits, state_outcomes
        from keel.errors import GuardTripped

        if mode == "messages":
            chunk, meta = payload
            if not (isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "model"):
                return
            for part in chunk.tool_call_chunks:  # a call as the model writes it
                yield ToolCallDelta(
                    index=part.get("index"),
                    id=part.get("id"),
                    name=part.get("name"),
                    args=part.get("args") or "",
                )
            if not chunk.text:
                return
            window = self.window
            try:
                text = chunk.text if window is None else window.feed(chunk.text)
            except GuardTripped as trip:  # shown no further; the run finishes its turn
                yield Guardrail(trip.result if isinstance(trip.result, dict) else {})
                return
            if text:
                yield Token(text)
            return
        if not isinstance(payload, dict):
            return
        if payload.get("retrieve"):
            self.ctx.hits = state_hits(payload["retrieve"])
        cached = payload.get("cache")
        if cached and cached.get("cache", {}).get("hit"):  # the cached answer, at once
            yield Token(cached["answer"])
        tools = payload.get("tools")
        if tools:
            new = len(tools.get("messages", []))
            for record in state_outcomes(tools)[-new:] if new else []:
                yield ToolCallDone(record)

    def ending(self, answer: Answer) -> Iterator[StreamEvent]:
        """The events after the graph's run, before :class:`Done`: the rest of the guarded
        window, the guards that failed, the calls waiting for approval, the citations."""
        from keel.errors import GuardTripped

        window = self.window
        if window is not None and window.tripped is None:
            try:
                rest = window.flush()
            except GuardTripped as trip:
                yield Guardrail(trip.result if isinstance(trip.result, dict) else {})
            else:
                if rest:
                    yield Token(rest)
        for event in answer.events:
            if event.get("outcome") == "fail" and event.get("point") != "output":
                yield Guardrail(event)
        if answer.pending_approval:
            yield ApprovalRequired(self.tid, answer.pending_approval)
        for citation in answer.citations:
            yield CitationFound(citation)
