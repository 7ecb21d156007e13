"""A client that goes away mid-stream cancels the run; the thread stays consistent."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from keel.agents.checkpoints import scoped_thread_id
from keel.app import App
from keel.testing import ScriptedChatModel

call = ScriptedChatModel.tool_call
TOOLS = """
import time
from keel.tools import tool

@tool(side_effects="write")
def slow_write(x: str) -> str:
    \"\"\"Write something slowly.\"\"\"
    time.sleep(1.0)
    return "written"
"""


def well_formed(messages: list[Any]) -> bool:
    calls = {tc["id"] for m in messages if m.type == "ai" for tc in m.tool_calls}
    answered = {m.tool_call_id for m in messages if m.type == "tool"}
    return calls == answered and messages[-1].type == "ai"


def test_closing_a_stream_cancels_the_run_and_the_next_turn_is_clean(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    (tmp_path / "slow_tools.py").write_text(TOOLS)
    model = ScriptedChatModel(script=[call("slow_write", {"x": "a"}), "never shown", "fresh"])
    app = make_app(
        {"tools": {"enabled": ["slow_tools"]}, "agent": {"retrieve": False}}, model=model
    )
    events = app.stream("write it", thread_id="t")
    next(events)  # the run is under way
    events.close()  # the client went away
    answer = app.ask("are you there?", thread_id="t")
    assert answer.text in ("fresh", "never shown")
    assert well_formed(app.history("t"))


def test_http_client_disconnect_releases_the_thread(
    make_app: Callable[..., App], serve: type[Any]
) -> None:
    def slow(messages: list[Any]) -> str:
        time.sleep(0.3)
        return "a long answer that streams word by word " * 5

    app = make_app(
        {"agent": {"retrieve": False}}, model=ScriptedChatModel(script=[slow, "second answer"])
    )
    with serve(app) as srv:
        key, _ = srv.api.state.gateway.keys.create("c", ["chat"])
        headers = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{srv.port}/v1/chat"
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST",
                url,
                json={"message": "hi", "thread_id": "d", "stream": True},
                headers=headers,
            ) as r,
        ):
            next(r.iter_lines())  # first event, then hang up
        deadline = time.monotonic() + 10
        while True:
            second = httpx.post(
                url, json={"message": "again", "thread_id": "d"}, headers=headers, timeout=10
            )
            if second.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert second.status_code == 200, second.text
        key_id = key.split("_")[1]  # threads a key names are stored under its id
        assert well_formed(app.history(scoped_thread_id("d", key_id)))
