"""The turn pipeline: one typed event stream behind ask, stream, the async facade and the
HTTP encoders; the cache policy and the turn span as observers from ops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from keel.agents.events import (
    ApprovalRequired,
    Done,
    StreamEvent,
    Token,
    ToolCallDelta,
    ToolCallDone,
    to_dict,
)
from keel.app import App
from keel.ops.cache_policy import TurnCache
from keel.ops.semconv import TURN_SPAN, find_span
from keel.testing import ScriptedChatModel

call = ScriptedChatModel.tool_call


def _tool_app(make_app: Callable[..., App], tools_dir: Path, script: list[Any]) -> App:
    cfg = {"tools": {"enabled": [tools_dir.name]}}
    return make_app(cfg, model=ScriptedChatModel(script=script))


def test_a_turn_is_one_typed_event_stream_ending_with_its_answer(
    make_app: Callable[..., App], tools_dir: Path
) -> None:
    app = _tool_app(make_app, tools_dir, [call("lookup_order", {"order_id": "C"}), "C shipped."])
    events: list[StreamEvent] = list(app.events("where is C?"))
    assert isinstance(events[-1], Done)
    assert not any(isinstance(e, Done) for e in events[:-1])
    outcome = next(e for e in events if isinstance(e, ToolCallDone)).outcome
    assert outcome["name"] == "lookup_order" and outcome["status"] == "ok"
    assert any(isinstance(e, ToolCallDelta) and e.name == "lookup_order" for e in events)
    answer = events[-1].answer
    assert "".join(e.text for e in events if isinstance(e, Token)) == answer.text == "C shipped."
    assert answer.trace_id and answer.tool_calls[0]["name"] == "lookup_order"


def test_stream_is_the_typed_events_as_documented_dicts(
    make_app: Callable[..., App], tools_dir: Path
) -> None:
    script = [call("refund_order", {"order_id": "C", "amount": 2.0})]
    typed = list(_tool_app(make_app, tools_dir, script).events("refund C", "t-typed"))
    dicts = list(_tool_app(make_app, tools_dir, script).stream("refund C", "t-dicts"))
    assert [to_dict(e)["type"] for e in typed] == [d["type"] for d in dicts]
    assert isinstance(typed[-2], ApprovalRequired)
    assert to_dict(typed[-2])["calls"][0]["name"] == dicts[-2]["calls"][0]["name"]
    assert dicts[-1]["answer"]["stop_reason"] == "approval_required"
    assert dicts[-1]["answer"]["pending_approval"][0]["name"] == "refund_order"


def test_ask_and_events_give_the_same_answer(make_app: Callable[..., App]) -> None:
    asked = make_app(model=ScriptedChatModel(script=["the same reply"])).ask("hello?")
    streamed = list(make_app(model=ScriptedChatModel(script=["the same reply"])).events("hello?"))
    done = streamed[-1]
    assert isinstance(done, Done)
    keep = ("text", "stop_reason", "citations", "tool_calls", "usage", "model", "events")
    assert {k: getattr(asked, k) for k in keep} == {k: getattr(done.answer, k) for k in keep}


def test_the_async_facade_runs_inside_a_running_event_loop(
    make_app: Callable[..., App],
) -> None:
    app = make_app(model=ScriptedChatModel(script=["first answer", "second answer"]))

    async def host() -> tuple[str, list[StreamEvent]]:
        answer = await app.aask("one?", "t-async")
        events = [e async for e in app.astream("two?", "t-async")]
        return answer.text, events

    text, events = asyncio.run(host())
    assert text == "first answer"
    assert isinstance(events[-1], Done) and events[-1].answer.text == "second answer"
    assert [m.type for m in app.history("t-async")] == ["human", "ai", "human", "ai"]


def test_closing_the_async_stream_early_cancels_the_turn(make_app: Callable[..., App]) -> None:
    app = make_app(model=ScriptedChatModel(script=["a long answer in several words"]))

    async def host() -> StreamEvent:
        stream = app.astream("tell me", "t-cut")
        first = await anext(stream)
        await stream.aclose()
        return first

    assert isinstance(asyncio.run(host()), Token)
    app.tracing.flush()
    trace = app.tracing.get(app.tracing.list(limit=1)[0]["trace_id"])
    assert trace is not None
    turn = find_span(trace["spans"], TURN_SPAN)
    assert turn is not None and turn["attributes"]["keel.stop_reason"] == "cancelled"
    assert [m.type for m in app.history("t-cut")][:1] == ["human"]


def _answer(text: str, **over: Any) -> Any:
    base = dict(
        text=text,
        stop_reason="done",
        cache_hit=False,
        tool_calls=[],
        pending_approval=None,
        events=[],
        hits=[],
        model="m",
    )
    return SimpleNamespace(**{**base, **over})


def test_the_cache_keeps_only_answers_others_may_be_given() -> None:
    assert TurnCache.reusable(_answer("Refunds take 5 days."))
    for refused in (
        _answer("I'm not sure what you mean."),  # a refusal, as the evals count it
        _answer("I don't know: the documents I have do not answer this."),
        _answer("  "),
        _answer("ok", stop_reason="guardrail"),
        _answer("ok", cache_hit=True),
        _answer("ok", tool_calls=[{"name": "x"}]),
        _answer("ok", events=[{"point": "output", "outcome": "fail"}]),
    ):
        assert not TurnCache.reusable(refused), refused


def test_a_traced_turn_reads_back_typed(make_app: Callable[..., App]) -> None:
    app = make_app(model=ScriptedChatModel(script=["traced reply"]))
    answer = app.ask("what was asked?")
    app.tracing.flush()
    turn = app.tracing.turn(answer.trace_id)
    assert turn is not None and turn.trace_id == answer.trace_id
    assert turn.answer == "traced reply" and turn.question == "what was asked?"
    assert turn.app_version == app.version and turn.model
    assert app.tracing.turn("0" * 32) is None
