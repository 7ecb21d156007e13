"""The graph's async path: App.aask / astream / aresume run the graph with ainvoke/astream on
the caller's loop, on SQLite and PostgreSQL checkpoints; coroutine tools are awaited on that
loop; concurrent turns interleave on it."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from keel.agents.events import ApprovalRequired, Done, StreamEvent, Token, ToolCallDone
from keel.agents.graph import CUT_OFF
from keel.app import App
from keel.config import config_from_dict
from keel.ops.semconv import TURN_SPAN, find_span
from keel.settings import Settings
from keel.testing import ScriptedChatModel

call = ScriptedChatModel.tool_call

TOOLS = '''
import asyncio
import threading

from keel.tools import tool

SEEN = []  # (tool, id of the running loop, thread ident)
ARRIVED = []


@tool
async def whereami() -> str:
    """Say where the tool runs."""
    SEEN.append(("whereami", id(asyncio.get_running_loop()), threading.get_ident()))
    return "here"


@tool(timeout_s=20)
async def rendezvous(n: int) -> str:
    """Wait until n calls are inside this tool at once.

    Args:
        n: How many calls to wait for.
    """
    ARRIVED.append(1)
    while len(ARRIVED) < n:
        await asyncio.sleep(0.005)
    return f"met {n}"


@tool(side_effects="write", requires_approval=True)
def refund_order(order_id: str, amount: float) -> str:
    """Refund an order.

    Args:
        order_id: The order id.
        amount: Amount in dollars.
    """
    SEEN.append(("refund_order", order_id, amount))
    return f"refunded {amount} on {order_id}"
'''


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[Any]:
    name = f"async_tools_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(TOOLS)
    yield name


@pytest.fixture(params=["sqlite", "postgres"])
def make(
    request: pytest.FixtureRequest, tmp_path: Path, model_cache_dir: Path, tools: str
) -> Iterator[Any]:
    """Apps on SQLite (the default) or PostgreSQL checkpoints, with the async test tools."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir, database_url=url)
    apps: list[App] = []

    def factory(script: list[Any], **model: Any) -> App:
        config = config_from_dict(
            {
                "app": {"name": f"async-{uuid.uuid4().hex[:8]}"},
                "agent": {"retrieve": False},
                "tools": {"enabled": [tools]},
            },
            base_dir=tmp_path,
        )
        app = App(config, settings=settings, model=ScriptedChatModel(script=script, **model))
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


class _Module:
    def __init__(self, globals_: dict[str, Any]) -> None:
        self.SEEN: list[tuple[Any, ...]] = globals_["SEEN"]


def _module(app: App) -> _Module:
    """The test tools' module, as the app loaded it."""
    return _Module(next(t.func.__globals__ for t in app.toolset if "SEEN" in t.func.__globals__))


def _stop_reasons(app: App, tid: str) -> list[str]:
    """The stop reason on the span of each traced turn of thread ``tid``."""
    app.tracing.flush()
    reasons = []
    for row in app.tracing.list(thread_id=tid):
        trace = app.tracing.get(row["trace_id"])
        turn = find_span(trace["spans"], TURN_SPAN) if trace else None
        if turn is not None:
            reasons.append(str(turn["attributes"].get("keel.stop_reason")))
    return reasons


def _types(messages: list[BaseMessage]) -> list[str]:
    return [m.type for m in messages]


def test_async_turns_keep_the_thread_and_resume_an_approval(make: Any) -> None:
    script = [
        "first answer",
        "second answer",
        call("refund_order", {"order_id": "C-1", "amount": 5.0}),
        "Refunded C-1.",
        "a sync follow-up",
    ]
    app = make(script)
    tid = f"t-{uuid.uuid4().hex[:8]}"

    async def host() -> tuple[Any, list[StreamEvent], Any]:
        first = await app.aask("one?", tid)
        assert first.text == "first answer" and first.stop_reason == "done"
        second = [e async for e in app.astream("two?", tid)]
        paused = await app.aask("refund C-1", tid)
        assert paused.stop_reason == "approval_required"
        assert paused.pending_approval and paused.pending_approval[0]["name"] == "refund_order"
        assert app.pending_approval(tid) == paused.pending_approval
        resumed = await app.aresume(tid, "approve")
        return second, resumed  # type: ignore[return-value]

    second, resumed = asyncio.run(host())  # type: ignore[misc]
    assert isinstance(second[-1], Done) and second[-1].answer.text == "second answer"
    assert "".join(e.text for e in second if isinstance(e, Token)) == "second answer"
    assert resumed.text == "Refunded C-1." and resumed.stop_reason == "done"
    assert resumed.tool_calls[0]["status"] == "ok"
    assert ("refund_order", "C-1", 5.0) in _module(app).SEEN
    assert app.pending_approval(tid) is None
    # the sync path continues the thread the async path wrote, and the other way round
    assert app.ask("and now?", tid).text == "a sync follow-up"
    history = app.history(tid)
    assert _types(history) == [
        "human", "ai", "human", "ai", "human", "ai", "tool", "ai", "human", "ai"
    ]  # fmt: skip
    assert isinstance(history[6], ToolMessage) and "refunded 5.0" in history[6].text


def test_an_async_approval_is_streamed_and_refused_on_resume(make: Any) -> None:
    app = make([call("refund_order", {"order_id": "C-2", "amount": 1.0}), "Not refunded."])
    tid = f"t-{uuid.uuid4().hex[:8]}"

    async def host() -> tuple[list[StreamEvent], Any]:
        events = [e async for e in app.astream("refund C-2", tid)]
        return events, await app.aresume(tid, "reject")

    events, answer = asyncio.run(host())
    assert isinstance(events[-2], ApprovalRequired) and events[-2].thread_id == tid
    assert isinstance(events[-1], Done)
    assert events[-1].answer.stop_reason == "approval_required"
    assert answer.text == "Not refunded." and answer.tool_calls[0]["status"] == "rejected"
    assert not any(s[0] == "refund_order" for s in _module(app).SEEN)


def test_a_coroutine_tool_is_awaited_on_the_callers_loop(make: Any) -> None:
    app = make([call("whereami", {}), "It ran here.", call("whereami", {}), "Again."])

    async def host() -> tuple[int, int, list[StreamEvent]]:
        answer = await app.aask("where do tools run?")
        assert answer.text == "It ran here."
        events = [e async for e in app.astream("and when streamed?")]
        return id(asyncio.get_running_loop()), threading.get_ident(), events

    loop_id, thread, events = asyncio.run(host())
    seen = [s for s in _module(app).SEEN if s[0] == "whereami"]
    assert seen == [("whereami", loop_id, thread)] * 2  # the same loop, no thread in between
    done = next(e for e in events if isinstance(e, ToolCallDone))
    assert done.outcome["name"] == "whereami" and done.outcome["status"] == "ok"


def test_the_sync_path_still_runs_coroutine_tools(make: Any) -> None:
    app = make([call("whereami", {}), "Done."])
    assert app.ask("where?").tool_calls[0]["status"] == "ok"
    assert [s[0] for s in _module(app).SEEN] == ["whereami"]


def _respond(messages: list[BaseMessage]) -> AIMessage | str:
    """A tool call for a new question, then an answer naming it (whatever the order)."""
    if isinstance(messages[-1], HumanMessage):
        return call("rendezvous", {"n": 4})
    question = next(m for m in reversed(messages) if isinstance(m, HumanMessage)).text
    return f"answered {question.split('<question>')[-1].split('</question>')[0].strip()}"


def test_concurrent_async_turns_interleave_on_one_loop(make: Any) -> None:
    # each turn's tool waits until all four are inside it: serialised turns would never meet
    app = make([_respond] * 8)
    tids = [f"c-{i}-{uuid.uuid4().hex[:8]}" for i in range(4)]

    async def host() -> list[Any]:
        return list(
            await asyncio.gather(*(app.aask(f"question {i}", tid) for i, tid in enumerate(tids)))
        )

    answers = asyncio.run(host())
    for i, answer in enumerate(answers):
        assert answer.thread_id == tids[i] and answer.stop_reason == "done"
        assert answer.tool_calls[0]["content"] == "met 4", answer.tool_calls
        assert f"question {i}" in answer.text
        assert _types(app.history(tids[i])) == ["human", "ai", "tool", "ai"]


def test_closing_an_async_stream_cancels_the_turn_and_the_thread_goes_on(make: Any) -> None:
    app = make(["a long answer in several words", "the next answer"])
    tid = f"t-{uuid.uuid4().hex[:8]}"

    async def host() -> tuple[StreamEvent, Any]:
        stream = app.astream("tell me", tid)
        first = await anext(stream)
        await stream.aclose()
        return first, await app.aask("again?", tid)

    first, answer = asyncio.run(host())
    assert isinstance(first, Token)
    assert answer.text == "the next answer"
    assert sorted(_stop_reasons(app, tid)) == ["cancelled", "done"]
    history = app.history(tid)
    assert _types(history)[-2:] == ["human", "ai"] and history[-1].text == "the next answer"
    assert _types(history)[0] == "human"
    if len(history) > 2:  # the cut turn was stored: it is closed before the next one
        assert history[1].text == CUT_OFF


def test_cancelling_the_task_of_an_async_turn_cancels_the_turn(make: Any) -> None:
    app = make(["slow answer", "a later answer"], delay_s=5.0)
    tid = f"t-{uuid.uuid4().hex[:8]}"

    async def host() -> None:
        task = asyncio.create_task(app.aask("slow?", tid))
        for _ in range(2000):  # cancel once the model call is under way, not before the turn
            if app.model.started:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(host())
    assert _stop_reasons(app, tid) == ["cancelled"]


def test_hooks_run_off_the_loop_on_the_async_path_and_still_apply(make: Any) -> None:
    from keel.agents.hooks import Hooks

    app = make([call("whereami", {}), "the answer"])
    threads: dict[str, int] = {}

    def at(point: str, value: Any) -> Any:
        threads[point] = threading.get_ident()
        return value

    app.hooks = Hooks(
        input=[lambda text, ctx: at("input", text.replace("secret", "[hidden]"))],
        tool_args=[lambda c, ctx: at("tool_args", c)],
        tool_result=[lambda o, ctx: at("tool_result", o)],
        output=[lambda text, ctx: at("output", text.upper())],
    )

    async def host() -> tuple[Any, int]:
        return await app.aask("my secret question"), threading.get_ident()

    answer, loop_thread = asyncio.run(host())
    assert answer.text == "THE ANSWER" and answer.tool_calls[0]["status"] == "ok"
    assert sorted(threads) == ["input", "output", "tool_args", "tool_result"]
    assert loop_thread not in threads.values()  # guards never block the loop
    assert app.history(answer.thread_id)[0].text == "my [hidden] question"


def test_a_sync_ask_inside_a_running_loop_runs_its_tools(make: Any) -> None:
    # a notebook cell or an async app calling the sync facade: the tool call must not fail
    app = make([call("whereami", {}), "Done."])

    async def host() -> Any:
        return app.ask("where?", thread_id=f"sync-in-loop-{uuid.uuid4().hex[:8]}")

    answer = asyncio.run(host())
    assert answer.text == "Done." and answer.tool_calls[0]["status"] == "ok"
    assert [s[0] for s in _module(app).SEEN] == ["whereami"]
