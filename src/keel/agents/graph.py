"""The agent graph, on LangGraph's StateGraph.

    START → [start] → retrieve → model ⇄ (approve → tools) → finalize → END

- ``start`` runs the ``input`` hooks on the user's message (it is left out of the graph when
  there are none and no cache: START then leads straight to the first step).
- ``cache`` (only with the semantic cache on) looks the checked question up: on a hit the
  cached answer is the turn's answer and the turn ends there. Only the first turn of a thread
  is looked up (a follow-up's meaning depends on what came before), and only when every input
  guard passed.
- ``retrieve`` (when the app has knowledge) searches, runs the ``context`` hooks, and keeps the
  hits; they enter the prompt as delimited, untrusted data (:mod:`keel.agents.context`).
- ``model`` sends the system prompt, few-shot examples, the thread's history and the current
  turn (with its context) to the model chain, bound to the tools the caller may see.
- ``approve`` pauses the run with LangGraph's ``interrupt`` when a call needs a person's
  approval; the run resumes with approve, reject or edited arguments, each decision bound to
  the exact call (id and argument hash) it was given for.
- ``tools`` runs the calls through the ``tool_args`` hooks and the :class:`ToolPolicy`
  (allowlist, scopes, validation, limits, timeouts) and the ``tool_result`` hooks.
- ``handoff`` ends a turn whose model called client tools (tools a caller of the
  OpenAI-compatible routes declared, :mod:`keel.agents.client_tools`): the calls go to the
  client, never run here. The client's next request continues the turn: its results enter
  at ``results`` (through the ``tool_result`` hooks) and go on to ``model``.
- ``finalize`` runs the ``output`` hooks, checks a requested response format
  (:mod:`keel.agents.structured`: one corrective retry) and records the answer. Step, tool-call and
  tool-error limits end a turn here with a clear message, never a traceback; a guard that
  trips anywhere ends it here too, with the guard's message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypedDict, TypeVar

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

from keel.agents import client_tools, structured
from keel.agents.context import render_user_turn
from keel.agents.hooks import Hooks, RunContext
from keel.agents.models import ModelAttempt, ModelChain
from keel.agents.params import ModelParams
from keel.agents.prompts import Prompts
from keel.agents.watching import Watch, watch
from keel.errors import GuardTripped
from keel.guardrails.events import GuardEvent
from keel.ops import semconv
from keel.rag.access import reading_as
from keel.rag.types import Hit
from keel.tools.policy import RunBudget, ToolCall, ToolOutcome, ToolPolicy
from keel.tools.records import ToolCallRecord
from keel.tools.registry import Toolset

StopReason = Literal[
    "done",
    "step_limit",
    "tool_errors",
    "guardrail",
    "approval_required",
    "client_tool_calls",
    "invalid_output",
    "error",
]
_ERROR_STATUSES = {"invalid", "error", "timeout"}


def readable_of(config: RunnableConfig) -> frozenset[str] | None:
    """The access labels of the turn's caller (``TurnRequest.readable``); None: all."""
    labels = config.get("configurable", {}).get("keel_readable")
    return frozenset(labels) if labels is not None else None


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    question: str
    hits: list[Hit]
    steps: int
    tool_counts: dict[str, int]
    tool_errors: int
    outcomes: list[ToolCallRecord]
    decisions: dict[str, dict[str, Any]]
    events: list[GuardEvent]
    answer: str
    stop_reason: str
    guard_message: str
    usage: dict[str, int]
    usage_unknown: bool  # a model call of this turn reported no usage
    finish_reason: str  # the last model call's ("stop", "length", "tool_calls", ...)
    model_id: str
    model_seconds: float
    model_calls: list[dict[str, Any]]  # one per call made: model, seconds, tokens, error
    reask_note: str  # why an output guard sent the answer back (only for the next model call)
    reasks: int
    guard_memory: dict[str, Any]  # hooks' memory across turns (e.g. PII placeholders)
    cache: dict[str, Any]  # the semantic cache's lookup: hit, similarity, entry_id ({}: none)
    client_calls: list[dict[str, Any]]  # calls of client tools, handed to the client
    format_retries: int  # corrective retries of a reply that did not fit the response format


def args_hash(name: str, args: dict[str, Any]) -> str:
    """What an approval is bound to: the tool and its exact arguments."""
    blob = json.dumps({"name": name, "args": args}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def turn_reset() -> dict[str, Any]:
    """The per-turn fields as a new turn starts (everything but its messages, question and
    hits)."""
    return {
        "steps": 0,
        "tool_counts": {},
        "tool_errors": 0,
        "outcomes": [],
        "decisions": {},
        "events": [],
        "answer": "",
        "stop_reason": "",
        "guard_message": "",
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        "usage_unknown": False,
        "finish_reason": "",
        "model_id": "",
        "model_seconds": 0.0,
        "model_calls": [],
        "reask_note": "",
        "reasks": 0,
        "format_retries": 0,
        "client_calls": [],
        "cache": {},
    }


def turn_input(question: str, history: list[AnyMessage] | None = None) -> dict[str, Any]:
    """The graph input that starts a new turn (and resets the per-turn fields).

    ``history`` seeds a new thread with earlier messages (an OpenAI-style client that sends
    the whole conversation with every request).
    """
    return {
        "messages": [*(history or []), HumanMessage(question)],
        "question": question,
        "hits": [],
        **turn_reset(),
    }


def state_hits(state: Mapping[str, Any]) -> list[Hit]:
    """The turn's hits (typed; a checkpoint of an older Keel held their dicts)."""
    return [Hit.of(h) for h in state.get("hits", [])]


def state_outcomes(state: Mapping[str, Any]) -> list[ToolCallRecord]:
    """The turn's tool calls (typed; a checkpoint of an older Keel held their dicts)."""
    return [ToolCallRecord.of(o) for o in state.get("outcomes", [])]


def state_events(state: Mapping[str, Any]) -> list[GuardEvent]:
    """The turn's guard and hook decisions (typed; older checkpoints held dicts)."""
    return [GuardEvent.of(e) for e in state.get("events", [])]


REFUSAL_TEXT = "I don't know: the documents I have do not answer this."


def client_instructions(text: str) -> str:
    """A client's instructions, delimited so the model tells them from the app's own."""
    return (
        "The client calling this app added the instructions below. Follow them where they "
        "do not conflict with the instructions above, which take precedence.\n"
        "<client_instructions>\n"
        f"{text.replace('</client_instructions>', '')}\n"
        "</client_instructions>"
    )


@dataclass
class AgentConfig:
    max_reasks: int = 1
    max_steps: int = 8
    max_tool_calls: int = 16
    max_tool_errors: int = 3
    retrieve: bool = True


def _no_capture(text: str) -> str | None:
    return None


@dataclass
class Agent:
    """Everything the graph's nodes need; :meth:`build` compiles the graph."""

    app_name: str
    chain: ModelChain
    prompts: Prompts
    toolset: Toolset
    search: Callable[[str], list[Hit]] | None
    hooks: Hooks
    config: AgentConfig
    tracer: Any = None  # an OpenTelemetry Tracer; None: no spans
    capture: Callable[[str], str | None] = _no_capture  # what of a text goes on a span
    capture_prompts: bool = False  # whole prompts on model spans (tracing.capture = "full")
    # The semantic cache's lookup: (checked question, run config) -> None (not looked up) or
    # {"hit": bool, "similarity": float | None, "entry_id": int | None, "payload": {...}}.
    cache: Callable[[str, RunnableConfig], dict[str, Any] | None] | None = None

    @contextmanager
    def _span(self, name: str, **attributes: Any) -> Iterator[Any]:
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name) as span:
            _set(span, attributes)
            yield span

    def _guard_spans(self, events: Sequence[GuardEvent]) -> None:
        """One span per guard decision, placed where it ran (its latency is known)."""
        if self.tracer is None:
            return
        now = time.time_ns()
        for event in events:
            latency_ms = event.get("latency_ms")
            if latency_ms is None:
                continue
            span = self.tracer.start_span(
                f"{semconv.GUARD_SPAN_PREFIX} {event.get('name')}",
                start_time=now - int(float(latency_ms) * 1e6),
            )
            _set(
                span,
                {
                    semconv.GUARD_VALIDATOR: event.get("name"),
                    semconv.GUARD_POINT: event.get("point"),
                    semconv.GUARD_OUTCOME: event.get("outcome"),
                    semconv.GUARD_ACTION: event.get("action"),
                    semconv.GUARD_REASON: event.get("reason") or None,
                },
            )
            span.end(end_time=now)

    # -- helpers -------------------------------------------------------------------------------
    def policy(self, config: RunnableConfig) -> ToolPolicy:
        scopes = config.get("configurable", {}).get("keel_scopes")
        return ToolPolicy(self.toolset, scopes=scopes)

    def context(self, state: AgentState, config: RunnableConfig) -> RunContext:
        conf = config.get("configurable", {})
        scopes = conf.get("keel_scopes")
        return RunContext(
            app=self.app_name,
            thread_id=str(conf.get("thread_id", "")),
            scopes=frozenset(scopes) if scopes is not None else None,
            question=state.get("question", ""),
            hits=state_hits(state),
            memory=dict(state.get("guard_memory", {})),
        )

    def _budget(self, state: AgentState) -> RunBudget:
        budget = RunBudget(self.config.max_tool_calls)
        budget.counts = dict(state.get("tool_counts", {}))
        budget.total = sum(budget.counts.values())
        return budget

    def _recorded(self, state: AgentState, ctx: RunContext) -> dict[str, Any]:
        """What hooks left behind: their decisions, and their memory for later turns."""
        new = [GuardEvent.of(e) for e in ctx.events]  # a hook may have appended a dict
        self._guard_spans(new)
        return {"events": [*state_events(state), *new], "guard_memory": ctx.memory}

    def _tripped(self, state: AgentState, ctx: RunContext, trip: GuardTripped) -> dict[str, Any]:
        ctx.record(trip.point or "guard", "guard", "tripped", message=trip.message)
        return {
            "stop_reason": "guardrail",
            "guard_message": trip.message,
            **self._recorded(state, ctx),
        }

    # -- nodes ---------------------------------------------------------------------------------
    def start(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        ctx = self.context(state, config)
        question = state["question"]
        try:
            checked = self.hooks.run_input(question, ctx)
        except GuardTripped as trip:
            return self._tripped(state, ctx, trip)
        update: dict[str, Any] = self._recorded(state, ctx)
        if checked != question:  # e.g. redacted: the thread keeps the checked text
            last = state["messages"][-1]
            update["messages"] = [HumanMessage(checked, id=last.id)]
            update["question"] = checked
        return update

    def cache_lookup(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """The semantic cache: a hit ends the turn with the cached answer."""
        first_turn = len(state["messages"]) == 1
        guards_passed = all(e.outcome == "pass" for e in state_events(state))
        if self.cache is None or not first_turn or not guards_passed:
            return {}
        with self._span("keel.cache") as span:
            found = self.cache(state["question"], config)
            if found is None:
                return {}
            mark = {
                "hit": bool(found.get("hit")),
                "similarity": found.get("similarity"),
                "entry_id": found.get("entry_id"),
            }
            _set(
                span,
                {
                    "keel.cache.hit": mark["hit"],
                    "keel.cache.similarity": mark["similarity"],
                    "keel.cache.entry_id": mark["entry_id"],
                },
            )
        if not mark["hit"]:
            return {"cache": mark}
        payload = found["payload"]
        text = str(payload.get("text", ""))
        return {
            "messages": [AIMessage(text)],
            "answer": text,
            "hits": [Hit.of(h) for h in payload.get("hits", [])],
            "model_id": str(payload.get("model", "")),
            "stop_reason": "done",
            "cache": mark,
        }

    def retrieve(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        assert self.search is not None
        ctx = self.context(state, config)
        with self._span(
            semconv.RETRIEVE_SPAN, **{semconv.RETRIEVE_QUERY: self.capture(state["question"])}
        ) as span:
            with reading_as(readable_of(config)):
                found = self.search(state["question"])
            _set(
                span,
                {
                    "keel.retrieve.hits": len(found),
                    "keel.retrieve.chunk_ids": [h.chunk_id for h in found],
                    "keel.retrieve.doc_ids": [h.doc_id for h in found],
                    "keel.retrieve.scores": [round(h.score, 6) for h in found],
                },
            )
        try:
            hits = self.hooks.run_context(found, ctx)
        except GuardTripped as trip:
            return self._tripped(state, ctx, trip)
        return {"hits": list(hits), **self._recorded(state, ctx)}

    def prompt(
        self,
        state: AgentState,
        instructions: str | None = None,
        response_format: structured.ResponseFormat | None = None,
    ) -> list[BaseMessage]:
        """Exactly what the model is sent ("show me the prompt"). ``instructions``: a
        client's own (the OpenAI-compatible route's system/developer messages), after the
        app's system prompt and few-shot examples, delimited as the client's.
        ``response_format``: the shape the reply must have, said after them."""
        messages = list(state["messages"])
        current = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        hits = state_hits(state)
        turn = HumanMessage(render_user_turn(state["question"], hits))
        client = [SystemMessage(client_instructions(instructions))] if instructions else []
        if response_format is not None:
            client.append(SystemMessage(response_format.instruction()))
        prompt = [
            *self.prompts.messages(),
            *client,
            *messages[:current],
            turn,
            *messages[current + 1 :],
        ]
        if state.get("reask_note"):
            prompt.append(
                SystemMessage(
                    f"Your previous answer was rejected by a check: {state['reask_note']}. "
                    "Answer again, following your instructions."
                )
            )
        return prompt

    def model(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        call = self._model_call(state, config)
        seen = self._watch(state, config, call)
        with self._model_span(call) as span:
            started, attempts = time.perf_counter(), list[ModelAttempt]()
            try:
                model_id, response = call.chain.invoke(
                    call.prompt, seen.config, attempts, stream=seen.stream
                )
            finally:
                seen.finish()
            return self._model_answered(state, call, span, started, attempts, model_id, response)

    async def amodel(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """:meth:`model` on the running event loop (the async graph's ``model`` step)."""
        call = self._model_call(state, config)
        seen = self._watch(state, config, call)
        with self._model_span(call) as span:
            started, attempts = time.perf_counter(), list[ModelAttempt]()
            try:
                model_id, response = await call.chain.ainvoke(
                    call.prompt, seen.config, attempts, stream=seen.stream
                )
            finally:
                seen.finish()
            return self._model_answered(state, call, span, started, attempts, model_id, response)

    def _watch(self, state: AgentState, config: RunnableConfig, call: _ModelCall) -> Watch:
        """The ``answer`` hooks' watchers of this model call (:mod:`keel.agents.watching`)."""
        if not self.hooks.answer:
            return Watch(config)
        return watch(
            config,
            lambda: self.hooks.watchers(self.context(state, config)),
            streams=call.chain.streams_on_request,
            whole=bool(call.tools) or call.chain.response_format is not None,
        )

    def _model_call(self, state: AgentState, config: RunnableConfig) -> _ModelCall:
        """What a model step sends: the prompt, and the chain bound to the visible tools."""
        tools = self.policy(config).visible().to_openai()
        client = client_tools.from_config(config)
        if client is not None:  # offered beside the app's own; never run here
            tools += list(client.tools)
        conf = config.get("configurable", {})
        fmt = structured.from_config(config)
        prompt = self.prompt(state, conf.get("keel_instructions"), fmt)
        requested: ModelParams | None = conf.get("keel_params")
        params = requested.over(self.chain.params) if requested is not None else None
        # a requested tool_choice holds for the turn's first model call only (then "auto"),
        # so a forced call cannot loop
        choice = conf.get("keel_tool_choice") if state.get("steps", 0) == 0 else None
        chain = self.chain.bind(tools, params=params, tool_choice=choice, response_format=fmt)
        primary = self.chain.models[0][0] if self.chain.models else "unknown"
        handed = client.names if client is not None else frozenset()
        return _ModelCall(chain, prompt, tools, handed, primary)

    def _model_span(self, call: _ModelCall) -> Any:
        return self._span(
            f"chat {call.primary}",
            **{"gen_ai.operation.name": "chat", "gen_ai.request.model": call.primary},
        )

    def _model_answered(
        self,
        state: AgentState,
        call: _ModelCall,
        span: Any,
        started: float,
        attempts: list[ModelAttempt],
        model_id: str,
        response: Any,
    ) -> dict[str, Any]:
        """The state update of a model step that answered (and its span's attributes)."""
        elapsed = time.perf_counter() - started
        response = unique_call_ids(response, state["messages"])
        meta = getattr(response, "usage_metadata", None)
        calls = [*response.tool_calls, *response.invalid_tool_calls]
        finish = str(
            response.response_metadata.get("finish_reason") or ("tool_calls" if calls else "stop")
        )
        _set(
            span,
            {
                "gen_ai.response.model": model_id,
                "gen_ai.usage.input_tokens": int(meta["input_tokens"]) if meta else None,
                "gen_ai.usage.output_tokens": int(meta["output_tokens"]) if meta else None,
                "gen_ai.response.finish_reasons": [finish],
                "keel.tools.offered": [t["function"]["name"] for t in call.tools],
                "gen_ai.input.messages": _messages_json(call.prompt)
                if self.capture_prompts
                else None,
                "gen_ai.output.messages": self.capture(response.text),
            },
        )
        usage = dict(state.get("usage", {}))
        for key in ("input_tokens", "output_tokens", "total_tokens"):
            usage[key] = usage.get(key, 0) + int((meta or {}).get(key, 0) or 0)
        model_calls = [
            {
                "model": a.model,
                "seconds": round(a.seconds, 6),
                "input_tokens": int((meta or {}).get("input_tokens", 0) or 0) if ok else 0,
                "output_tokens": int((meta or {}).get("output_tokens", 0) or 0) if ok else 0,
                "error": a.error,
            }
            for a in attempts
            for ok in [not a.error]
        ]
        return {
            "messages": [response],
            "client_calls": [
                {"id": tc["id"], "name": tc["name"], "args": tc["args"]}
                for tc in response.tool_calls
                if tc["name"] in call.handed
            ],
            "steps": state.get("steps", 0) + 1,
            "usage": usage,
            "usage_unknown": state.get("usage_unknown", False) or meta is None,
            "finish_reason": finish,
            "model_id": model_id,
            "model_seconds": state.get("model_seconds", 0.0) + elapsed,
            "model_calls": [*state.get("model_calls", []), *model_calls],
            "reask_note": "",
            "stop_reason": "",  # a reask is over once the model answered again
        }

    def approve(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        policy, budget = self.policy(config), self._budget(state)
        decided = state.get("decisions", {})
        pending: list[dict[str, Any]] = []
        for call, invalid in self._server_calls(last, state):
            if invalid is not None or call.id in decided or not policy.requires_approval(call):
                continue
            if policy.check(call, budget) is not None:
                continue  # it will be refused anyway: nobody needs to approve it
            pending.append(
                {
                    "id": call.id,
                    "name": call.name,
                    "args": call.args,
                    "args_hash": args_hash(call.name, call.args),
                }
            )
        if not pending:
            return {}
        answer = interrupt({"type": "approval_required", "calls": pending})
        decisions = dict(decided)
        given = answer if isinstance(answer, dict) else {}
        for waiting in pending:
            decision = given.get(waiting["id"])
            if not isinstance(decision, dict):
                decision = {"action": "reject", "reason": "no decision was given for this call"}
            elif decision.get("args_hash") != waiting["args_hash"]:
                decision = {
                    "action": "reject",
                    "reason": "the approval was given for a different call",
                }
            decisions[waiting["id"]] = decision
        return {"decisions": decisions}

    def tools(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """Run the model's tool calls as the turn's reader (``search_knowledge`` sees only
        the documents the caller may read)."""
        with reading_as(readable_of(config)):
            return self._tools(state, config)

    def _tools(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        run = _ToolRun.of(self, state, config)
        for call, outcome in run.planned():
            with self._tool_span(call) as span:
                try:
                    if outcome is None:
                        checked = self.hooks.run_tool_args(call, run.ctx)
                        if isinstance(checked, ToolOutcome):
                            outcome = checked
                        else:
                            outcome = run.policy.execute_sync(checked, run.budget)
                    outcome = self.hooks.run_tool_result(outcome, run.ctx)
                except GuardTripped as trip:
                    outcome = run.tripped(call, trip)
                run.record(call, outcome, span)
        return run.update()

    async def atools(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """:meth:`tools` on the running event loop: a coroutine tool is awaited on it (a sync
        one runs in its own thread, as always); the ``tool_args`` and ``tool_result`` hooks,
        when there are any, run in a worker thread. As the turn's reader, as :meth:`tools`."""
        with reading_as(readable_of(config)):
            return await self._atools(state, config)

    async def _atools(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        run = _ToolRun.of(self, state, config)
        hooks = self.hooks
        for call, outcome in run.planned():
            with self._tool_span(call) as span:
                try:
                    if outcome is None:
                        checked = await _off_loop(
                            hooks.tool_args, hooks.run_tool_args, call, run.ctx
                        )
                        if isinstance(checked, ToolOutcome):
                            outcome = checked
                        else:
                            outcome = await run.policy.execute(checked, run.budget)
                    outcome = await _off_loop(
                        hooks.tool_result, hooks.run_tool_result, outcome, run.ctx
                    )
                except GuardTripped as trip:
                    outcome = run.tripped(call, trip)
                run.record(call, outcome, span)
        return run.update()

    def _tool_span(self, call: ToolCall) -> Any:
        return self._span(
            f"execute_tool {call.name}",
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.name,
                "gen_ai.tool.call.id": call.id,
            },
        )

    @staticmethod
    def _server_calls(
        message: AIMessage, state: AgentState
    ) -> list[tuple[ToolCall, ToolOutcome | None]]:
        """The calls the server runs: all but those handed to the client."""
        handed = {c["id"] for c in state.get("client_calls", [])}
        return [(c, o) for c, o in requested_calls(message) if c.id not in handed]

    def handoff(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """The turn ends with calls for the client to run (its next request carries the
        results); the model's words beside the calls, if any, are the answer's text."""
        ai = next(m for m in reversed(state["messages"]) if isinstance(m, AIMessage))
        return {"answer": ai.text, "stop_reason": "client_tool_calls"}

    def results(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """A client's tool results (a turn continued) pass the ``tool_result`` hooks, as the
        app's own tools' results do, before the model sees them."""
        ctx = self.context(state, config)
        messages = state["messages"]
        first = len(messages)
        while first > 0 and isinstance(messages[first - 1], ToolMessage):
            first -= 1
        checked: list[ToolMessage] = []
        try:
            for m in messages[first:]:
                assert isinstance(m, ToolMessage)
                call = ToolCall(m.tool_call_id, m.name or "", {})
                outcome = self.hooks.run_tool_result(
                    ToolOutcome(call=call, status="ok", content=str(m.text)), ctx
                )
                if outcome.content != m.text:
                    checked.append(m.model_copy(update={"content": outcome.content}))
        except GuardTripped as trip:
            return self._tripped(state, ctx, trip)
        return {"messages": checked, **self._recorded(state, ctx)}

    def finalize(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        ctx = self.context(state, config)
        messages = state["messages"]
        last = messages[-1]
        reason = state.get("stop_reason") or "done"
        new: list[AnyMessage] = []
        if reason == "guardrail":
            text = state.get("guard_message") or "I can't help with that request."
            if isinstance(last, AIMessage) and _has_calls(last):
                new += _close_calls(last, "not run: a guard stopped the turn")
            new.append(AIMessage(text))
        elif isinstance(last, AIMessage) and _has_calls(last):
            if state.get("tool_errors", 0) >= self.config.max_tool_errors:
                reason = "tool_errors"
                text = (
                    f"I stopped: tools failed {state.get('tool_errors', 0)} times in this turn "
                    f"(limit {self.config.max_tool_errors})."
                )
            else:
                reason = "step_limit"
                text = (
                    f"I stopped: this turn reached its limit of {self.config.max_steps} model "
                    "steps before finishing."
                )
            new += _close_calls(last, "not run: the turn stopped")
            new.append(AIMessage(text))
        else:
            text = last.text if isinstance(last, AIMessage) else str(last.content)
            if isinstance(last, ToolMessage) and state.get("tool_errors", 0) >= (
                self.config.max_tool_errors
            ):
                reason = "tool_errors"
                text = (
                    f"I stopped: tools failed {state.get('tool_errors', 0)} times in this turn "
                    f"(limit {self.config.max_tool_errors})."
                )
                new.append(AIMessage(text))
        if reason != "guardrail":
            try:
                checked = self.hooks.run_output(text, ctx)
            except GuardTripped as trip:
                if (
                    trip.reask
                    and state.get("reasks", 0) < self.config.max_reasks
                    and isinstance(last, AIMessage)
                    and not new
                ):
                    ctx.record("output", "guard", "reask", message=trip.message)
                    return {
                        "messages": [RemoveMessage(id=last.id or "")],
                        "stop_reason": "reask",
                        "reask_note": trip.message,
                        "reasks": state.get("reasks", 0) + 1,
                        **self._recorded(state, ctx),
                    }
                reason = "guardrail"
                checked = REFUSAL_TEXT if trip.reask else trip.message
                ctx.record(trip.point or "output", "guard", "tripped", message=trip.message)
            if checked != text:
                text = checked
                if new:
                    new[-1] = AIMessage(text)
                elif isinstance(last, AIMessage):
                    new.append(AIMessage(text, id=last.id))
        fmt = structured.from_config(config)
        if fmt is not None and reason == "done":
            text, error = fmt.check(text)
            if error is not None:
                if state.get("format_retries", 0) < 1 and isinstance(last, AIMessage) and not new:
                    ctx.record("output", "response_format", "reask", message=error)
                    return {
                        "messages": [RemoveMessage(id=last.id or "")],
                        "stop_reason": "reask",
                        "reask_note": f"{error}. {fmt.instruction()}",
                        "format_retries": state.get("format_retries", 0) + 1,
                        **self._recorded(state, ctx),
                    }
                reason = "invalid_output"
                text = f"the model's reply does not fit the response format: {error}"
        return {
            "messages": new,
            "answer": text,
            "stop_reason": reason,
            **self._recorded(state, ctx),
        }

    # -- routing -------------------------------------------------------------------------------
    @staticmethod
    def _stopped(state: AgentState) -> bool:
        return state.get("stop_reason") == "guardrail"

    def after_start(self, state: AgentState) -> str:
        if self._stopped(state):
            return "finalize"
        if self.cache is not None:
            return "cache"
        return self._first_step()

    def _first_step(self) -> str:
        return "retrieve" if self.search is not None and self.config.retrieve else "model"

    def after_cache(self, state: AgentState) -> str:
        return END if state.get("cache", {}).get("hit") else self._first_step()

    def after_retrieve(self, state: AgentState) -> str:
        return "finalize" if self._stopped(state) else "model"

    def after_model(self, state: AgentState) -> str:
        last = state["messages"][-1]
        if not (isinstance(last, AIMessage) and _has_calls(last)):
            return "finalize"
        if state.get("steps", 0) >= self.config.max_steps:
            return "finalize"
        if state.get("client_calls") and not self._server_calls(last, state):
            return "handoff"
        return "approve"

    def after_finalize(self, state: AgentState) -> str:
        return "model" if state.get("stop_reason") == "reask" else END

    def after_tools(self, state: AgentState) -> str:
        if state.get("tool_errors", 0) >= self.config.max_tool_errors:
            return "finalize"
        return "handoff" if state.get("client_calls") else "model"

    def entry(self, state: AgentState) -> str:
        """Where a run starts: a turn continued with a client's tool results goes to
        ``results`` (and on to the model); a new turn to its first step."""
        last = state["messages"][-1] if state.get("messages") else None
        if isinstance(last, ToolMessage):
            return "results"
        return "start" if self._checks_input else self._first_step()

    def after_results(self, state: AgentState) -> str:
        return "finalize" if self._stopped(state) else "model"

    def _nodes(self, run_async: bool) -> dict[str, Any]:
        if not run_async:
            return {
                "start": self.start,
                "cache": self.cache_lookup,
                "retrieve": self.retrieve,
                "model": self.model,
                "approve": self.approve,
                "tools": self.tools,
                "finalize": self.finalize,
                "handoff": self.handoff,
                "results": self.results,
            }
        h = self.hooks
        return {
            "start": _threaded(self.start) if h.input else self.start,
            "cache": _threaded(self.cache_lookup),
            "retrieve": _threaded(self.retrieve),
            "model": self.amodel,
            "approve": self.approve,  # inline: LangGraph's interrupt() needs the step's context
            "tools": self.atools,
            "finalize": _threaded(self.finalize) if h.output else self.finalize,
            "handoff": self.handoff,
            "results": _threaded(self.results) if h.tool_result else self.results,
        }

    @property
    def _checks_input(self) -> bool:
        # ``start`` only where it has work: a step costs LangGraph about 0.15 ms
        return bool(self.hooks.input) or self.cache is not None

    def build(self, checkpointer: Any = None, *, run_async: bool = False) -> Any:
        """The compiled graph. ``run_async``: the graph for ``ainvoke``/``astream`` (the
        same steps, edges and state, so either graph continues the other's threads): the
        model is called with ``ainvoke`` and tools are awaited on the running loop; the
        steps that block (retrieval, the cache, steps running guards) run in a worker
        thread, and the cheap ones inline."""
        graph = StateGraph(AgentState)
        checks_input = self._checks_input
        for name, node in self._nodes(run_async).items():
            if name == "start" and not checks_input:
                continue
            if name == "cache" and self.cache is None:
                continue
            graph.add_node(name, node)
        graph.add_conditional_edges(
            START, self.entry, ["results", "start" if checks_input else self._first_step()]
        )
        graph.add_conditional_edges("results", self.after_results, ["model", "finalize"])
        graph.add_edge("handoff", END)
        if checks_input:
            after_start = ["retrieve", "model", "finalize"]
            if self.cache is not None:
                after_start.append("cache")
            graph.add_conditional_edges("start", self.after_start, after_start)
        if self.cache is not None:
            graph.add_conditional_edges("cache", self.after_cache, ["retrieve", "model", END])
        graph.add_conditional_edges("retrieve", self.after_retrieve, ["model", "finalize"])
        graph.add_conditional_edges("model", self.after_model, ["approve", "finalize", "handoff"])
        graph.add_edge("approve", "tools")
        graph.add_conditional_edges("tools", self.after_tools, ["model", "finalize", "handoff"])
        graph.add_conditional_edges("finalize", self.after_finalize, ["model", END])
        return graph.compile(checkpointer=checkpointer)


@dataclass(frozen=True)
class _ModelCall:
    """What one model step sends (:meth:`Agent.model`, :meth:`Agent.amodel`)."""

    chain: ModelChain  # bound to the tools offered
    prompt: list[BaseMessage]
    tools: list[dict[str, Any]]  # offered, the client's included
    handed: frozenset[str]  # the client's tools: calls to them go to the client
    primary: str


@dataclass
class _ToolRun:
    """One ``tools`` step (:meth:`Agent.tools`, :meth:`Agent.atools`): the calls to run,
    with the approvals given applied, and what they did."""

    agent: Agent
    state: AgentState
    policy: ToolPolicy
    budget: RunBudget
    ctx: RunContext
    outcomes: list[ToolCallRecord]
    errors: int
    messages: list[ToolMessage] = field(default_factory=list)

    @classmethod
    def of(cls, agent: Agent, state: AgentState, config: RunnableConfig) -> _ToolRun:
        return cls(
            agent,
            state,
            agent.policy(config),
            agent._budget(state),
            agent.context(state, config),
            state_outcomes(state),
            state.get("tool_errors", 0),
        )

    def planned(self) -> Iterator[tuple[ToolCall, ToolOutcome | None]]:
        """Each call as it will run (edited arguments) or its outcome when it will not
        (rejected, unreadable); checked against the budget as the previous calls left it."""
        last = self.state["messages"][-1]
        assert isinstance(last, AIMessage)
        policy, budget = self.policy, self.budget
        decisions = self.state.get("decisions", {})
        for call, outcome in self.agent._server_calls(last, self.state):
            if (
                outcome is None
                and policy.requires_approval(call)
                and (policy.check(call, budget) is None)
            ):
                decision = decisions.get(call.id, {"action": "reject"})
                action = decision.get("action")
                if action == "edit" and isinstance(decision.get("args"), dict):
                    call = ToolCall(call.id, call.name, dict(decision["args"]))
                elif action != "approve":
                    outcome = ToolOutcome.rejected(call, str(decision.get("reason", "")))
            yield call, outcome

    def tripped(self, call: ToolCall, trip: GuardTripped) -> ToolOutcome:
        self.ctx.record(trip.point or "tool", "guard", "tripped", message=trip.message)
        return ToolOutcome(call=call, status="refused", content=trip.message, error=str(trip))

    def record(self, call: ToolCall, outcome: ToolOutcome, span: Any) -> None:
        capture = self.agent.capture
        _set(
            span,
            {
                "keel.tool.status": outcome.status,
                "keel.tool.result_size": len(outcome.content),
                "keel.tool.error": outcome.error,
                "keel.tool.arguments": capture(json.dumps(call.args, default=str)),
                "keel.tool.result": capture(outcome.content),
            },
        )
        if span is not None and not outcome.ok:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, outcome.status))
        if outcome.status in _ERROR_STATUSES:
            self.errors += 1
        self.outcomes.append(
            ToolCallRecord(
                id=call.id,
                name=call.name,
                args=call.args,
                status=outcome.status,
                content=outcome.content,
                error=outcome.error,
                seconds=round(outcome.seconds, 4),
            )
        )
        self.messages.append(
            ToolMessage(
                outcome.content,
                tool_call_id=call.id,
                name=call.name,
                status="success" if outcome.ok else "error",
            )
        )

    def update(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "outcomes": self.outcomes,
            "tool_counts": dict(self.budget.counts),
            "tool_errors": self.errors,
            **self.agent._recorded(self.state, self.ctx),
        }


_T = TypeVar("_T")


async def _off_loop(hooks: Sequence[Any], run: Callable[..., _T], *args: Any) -> _T:
    """``run(*args)``: inline when there are no ``hooks`` for it to run, else in a worker
    thread (guards may embed text or call a service: the loop must not wait on them)."""
    if not hooks:
        return run(*args)
    return await asyncio.to_thread(run, *args)


def _threaded(
    step: Callable[[AgentState, RunnableConfig], dict[str, Any]],
) -> Callable[[AgentState, RunnableConfig], Awaitable[dict[str, Any]]]:
    """A blocking step of the async graph, run in a worker thread (the context, and with
    it the turn's span, goes along)."""

    async def run(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        return await asyncio.to_thread(step, state, config)

    run.__name__ = run.__qualname__ = getattr(step, "__name__", "step")
    return run


CUT_OFF = "(This turn was interrupted before it finished.)"


def close_cut_turn(messages: list[AnyMessage]) -> dict[str, Any] | None:
    """The state update that ends a turn which stopped half-way (a client that went away, a
    killed process): unanswered tool calls get a tool message and the turn gets a closing
    answer, as if it had reached ``finalize``. ``None`` when the turn ended properly."""
    last_ai = next(
        (i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], AIMessage)),
        None,
    )
    new: list[AnyMessage] = []
    if last_ai is not None:
        ai = messages[last_ai]
        assert isinstance(ai, AIMessage)
        answered = {m.tool_call_id for m in messages[last_ai + 1 :] if isinstance(m, ToolMessage)}
        new += [
            ToolMessage(
                "the turn was interrupted: no result was recorded for this call",
                tool_call_id=call.id,
                name=call.name,
                status="error",
            )
            for call, _ in requested_calls(ai)
            if call.id not in answered
        ]
    last = messages[-1] if messages else None
    closed = isinstance(last, AIMessage) and not _has_calls(last)
    if closed and not new:
        return None
    new.append(AIMessage(CUT_OFF))
    return {"messages": new, "answer": CUT_OFF, "stop_reason": "cancelled"}


def _set(span: Any, attributes: dict[str, Any]) -> None:
    if span is None:
        return
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)


def _messages_json(messages: list[BaseMessage]) -> str:
    return json.dumps([{"role": m.type, "content": m.text} for m in messages], ensure_ascii=False)


def _close_calls(message: AIMessage, why: str) -> list[AnyMessage]:
    """Tool messages for calls that will never run, so the history stays well-formed."""
    return [
        ToolMessage(why, tool_call_id=call.id, name=call.name, status="error")
        for call, _ in requested_calls(message)
    ]


def _has_calls(message: AIMessage) -> bool:
    return bool(message.tool_calls or message.invalid_tool_calls)


def requested_calls(message: AIMessage) -> list[tuple[ToolCall, ToolOutcome | None]]:
    """Every call a model message asks for, in order: the well-formed ones (no outcome yet)
    and those whose arguments could not be read (already answered with a clear error for
    the model: they never run and never need an approval)."""
    calls: list[tuple[ToolCall, ToolOutcome | None]] = [
        (ToolCall(tc["id"] or "", tc["name"], dict(tc["args"])), None) for tc in message.tool_calls
    ]
    for bad in message.invalid_tool_calls:
        call = ToolCall(bad.get("id") or "", bad.get("name") or "", {})
        why = f"the arguments are not valid JSON: {bad.get('error') or bad.get('args')!s}"[:300]
        content = (
            f"Error: the call to {call.name!r} was not run: its arguments are not valid JSON. "
            "Call it again with a JSON object of arguments."
        )
        calls.append((call, ToolOutcome(call=call, status="invalid", content=content, error=why)))
    return calls


def unique_call_ids(message: Any, history: list[AnyMessage]) -> Any:
    """``message`` with every tool call's id unique in the thread: a call with no id, or with
    an id used before (in this message or earlier), gets a new one. Approvals and tool results
    are bound to ids, so two calls sharing one could be approved (or answered) as one. The new
    ids are derived from the call's position, so they are the same however often the step is
    replayed from its checkpoint."""
    if not isinstance(message, AIMessage) or not (message.tool_calls or message.invalid_tool_calls):
        return message
    seen = {
        tc["id"]
        for m in history
        if isinstance(m, AIMessage)
        for tc in [*m.tool_calls, *m.invalid_tool_calls]
        if tc.get("id")
    }
    step = sum(1 for m in history if isinstance(m, AIMessage))
    changed = False

    def fresh(old: str | None, index: int) -> str:
        nonlocal changed
        new = old or ""
        if not new or new in seen:
            changed = True
            new = f"call_keel_{step}_{index}"
            while new in seen:
                new += "_"
        seen.add(new)
        return new

    calls = [{**tc, "id": fresh(tc["id"], i)} for i, tc in enumerate(message.tool_calls)]
    offset = len(calls)
    invalid = [
        {**tc, "id": fresh(tc.get("id"), offset + i)}
        for i, tc in enumerate(message.invalid_tool_calls)
    ]
    if not changed:
        return message
    return message.model_copy(update={"tool_calls": calls, "invalid_tool_calls": invalid})
