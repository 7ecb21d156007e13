"""Keel's agent graph against a bare LangGraph tool-calling agent, in one run.

    python benchmarks/agent_overhead.py [--n 300]

Both agents get the same scripted model (one tool call, then an answer: two model calls per
invoke) and the same tool, and an in-memory checkpointer; each invoke is a new thread. The
baseline is ``langchain.agents.create_agent``. Keel's graph runs without guards (no hooks)
and without retrieval (the app has no knowledge). Runs alternate between the two so machine
noise hits both alike. Prints the median per-invoke times and their ratio (target <= 1.5),
and, for information, the same for ``App.ask`` with keel's default SQLite checkpointer and
thread index.

    python benchmarks/agent_overhead.py --async [--n 60]

The async path against the sync one, in one run, on keel's default SQLite checkpointer and
thread index: the median per turn of ``App.aask`` (the graph's ``ainvoke``) next to
``App.ask`` (alternating, one turn at a time), then 64 concurrent turns of an async host
with a model that waits 20 ms per call: ``asyncio.gather`` of ``App.aask`` against
``asyncio.to_thread(App.ask)`` (what ``aask`` did before it had an async path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from keel.agents.graph import turn_input
from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings
from keel.testing import ScriptedChatModel
from keel.tools import tool


@tool
def lookup_order(order_id: str) -> str:
    """Look up an order's status.

    Args:
        order_id: The order id.
    """
    return f"{order_id}: shipped"


def script(n: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(n):
        out += [ScriptedChatModel.tool_call("lookup_order", {"order_id": "ORD-1"}), "Shipped."]
    return out


def respond(messages: list[Any]) -> Any:
    """One tool call for a new question, then the answer (whatever order turns run in)."""
    if isinstance(messages[-1], HumanMessage):
        return ScriptedChatModel.tool_call("lookup_order", {"order_id": "ORD-1"})
    return "Shipped."


def _app(work: Path, name: str, model: Any) -> App:
    from keel.definition import AppDefinition
    from keel.tools.registry import Toolset

    config = config_from_dict({"agent": {"retrieve": False}}, base_dir=work)
    definition = AppDefinition(config, lambda q, k: [], toolset=Toolset([lookup_order]))
    return App(config, settings=Settings(data_dir=work / name), model=model, definition=definition)


def async_part(n: int) -> int:
    """``App.aask`` next to ``App.ask``: per turn, then 64 concurrent turns."""
    import asyncio

    work = Path(tempfile.mkdtemp(prefix="keel-bench-async-"))
    warm = 10
    app = _app(work, ".keel", ScriptedChatModel(script=[respond] * (4 * (n + warm))))
    sync_t: list[float] = []
    async_t: list[float] = []

    # one loop for every async turn; the sync turns run between them, outside it (a sync
    # turn inside a running loop cannot run its tools: ToolPolicy.execute_sync)
    loop = asyncio.new_event_loop()
    for i in range(n + warm):
        t0 = time.perf_counter()
        assert app.ask("where is ORD-1?").text == "Shipped."
        t1 = time.perf_counter()
        assert loop.run_until_complete(app.aask("where is ORD-1?")).text == "Shipped."
        t2 = time.perf_counter()
        if i >= warm:
            sync_t.append(t1 - t0)
            async_t.append(t2 - t1)
    loop.close()
    s, a = (statistics.median(x) * 1000 for x in (sync_t, async_t))
    print(f"turns per path: {n} (after {warm} warm-up), 2 model calls + 1 tool call each,")
    print("SQLite checkpoints and thread index, one turn at a time")
    print(f"App.ask  (sync path)          median {s:7.2f} ms")
    print(f"App.aask (graph's async path) median {a:7.2f} ms")
    print(f"ratio async / sync: {a / s:.2f}")
    app.close()

    turns, delay = 64, 0.02
    busy = _app(
        work, ".keel-busy", ScriptedChatModel(script=[respond] * (8 * turns), delay_s=delay)
    )

    async def concurrent(use_async: bool) -> float:
        def question(i: int) -> Any:
            if use_async:
                return busy.aask("where is ORD-1?", uuid.uuid4().hex)
            return asyncio.to_thread(busy.ask, "where is ORD-1?", uuid.uuid4().hex)

        t0 = time.perf_counter()
        answers = await asyncio.gather(*(question(i) for i in range(turns)))
        assert all(x.text == "Shipped." for x in answers)
        return time.perf_counter() - t0

    threaded = asyncio.run(concurrent(False))
    awaited = asyncio.run(concurrent(True))
    print(f"{turns} concurrent turns, model waits {delay * 1000:.0f} ms per call (2 per turn):")
    print(f"gather of to_thread(App.ask)  {threaded * 1000:7.0f} ms")
    print(f"gather of App.aask            {awaited * 1000:7.0f} ms")
    print(f"ratio async / threads: {awaited / threaded:.2f}")
    busy.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="invokes per agent (or path)")
    parser.add_argument(
        "--async", dest="run_async", action="store_true", help="the async path against the sync"
    )
    args = parser.parse_args()
    if args.run_async:
        return async_part(args.n or 60)
    n, warm = args.n or 300, 20

    from langchain.agents import create_agent
    from langchain_core.tools import StructuredTool

    base_model = ScriptedChatModel(script=script(n + warm))
    baseline = create_agent(
        base_model,
        tools=[StructuredTool.from_function(lookup_order)],
        checkpointer=InMemorySaver(),
    )

    work = Path(tempfile.mkdtemp(prefix="keel-bench-agent-"))
    (work / "bench_tools.py").write_text("")  # a folder of its own for the app
    keel_model = ScriptedChatModel(script=script(n + warm))
    from keel.definition import AppDefinition
    from keel.tools.registry import Toolset

    config = config_from_dict({"agent": {"retrieve": False}}, base_dir=work)
    # the same tool, without a module file
    definition = AppDefinition(config, lambda q, k: [], toolset=Toolset([lookup_order]))
    app = App(
        config, settings=Settings(data_dir=work / ".keel"), model=keel_model, definition=definition
    )
    graph = app.agent.build(checkpointer=InMemorySaver())

    def run_baseline() -> None:
        cfg = {"configurable": {"thread_id": uuid.uuid4().hex}}
        out = baseline.invoke({"messages": [HumanMessage("where is ORD-1?")]}, cfg)
        assert out["messages"][-1].content == "Shipped."

    def run_keel() -> None:
        cfg = {"configurable": {"thread_id": uuid.uuid4().hex, "keel_scopes": None}}
        out = graph.invoke(turn_input("where is ORD-1?"), cfg)
        assert out["answer"] == "Shipped.", out

    for _ in range(warm):
        run_baseline()
        run_keel()
    base_t: list[float] = []
    keel_t: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        run_baseline()
        base_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_keel()
        keel_t.append(time.perf_counter() - t0)

    # For information: the whole App.ask path (SQLite checkpoints, thread index, answer).
    ask_model = ScriptedChatModel(script=script(60))
    ask_app = App(
        config,
        settings=Settings(data_dir=work / ".keel-ask"),
        model=ask_model,
        definition=definition,
    )
    ask_t = []
    for i in range(60):
        t0 = time.perf_counter()
        ask_app.ask("where is ORD-1?")
        if i >= 10:
            ask_t.append(time.perf_counter() - t0)

    b, k, a = (statistics.median(x) * 1000 for x in (base_t, keel_t, ask_t))
    print(f"invokes per agent: {n} (after {warm} warm-up), 2 model calls + 1 tool call each")
    print(f"bare LangGraph create_agent  median {b:7.2f} ms")
    print(f"keel agent graph             median {k:7.2f} ms")
    print(f"ratio keel / bare: {k / b:.2f} (target <= 1.5)")
    print(f"(keel App.ask with SQLite checkpoints and thread index: median {a:.2f} ms)")
    app.close()
    ask_app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
