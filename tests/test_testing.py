"""keel.testing: the scripted chat model that tests use instead of a real provider."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool

from keel.testing import ScriptedChatModel


class RateLimited(Exception):
    status_code = 429


def test_replies_follow_the_script_in_order() -> None:
    message = AIMessage(content="second", response_metadata={"extra": 1})
    model = ScriptedChatModel(script=["first", message])
    one = model.invoke("hi")
    two = model.invoke([HumanMessage("again")])
    assert (one.content, two.content) == ("first", "second")
    assert isinstance(one, AIMessage)
    assert one.response_metadata["model_name"] == "scripted"
    assert two.response_metadata["extra"] == 1  # kept, with the model name added
    assert message.response_metadata == {"extra": 1}  # the script's message is not changed
    assert [[m.text for m in call] for call in model.calls] == [["hi"], ["again"]]
    assert model.remaining == 0


def test_exceptions_are_raised_instances_and_classes() -> None:
    error = RateLimited("429 Too Many Requests")
    model = ScriptedChatModel(script=[error, TimeoutError, "recovered"])
    with pytest.raises(RateLimited) as caught:
        model.invoke("hi")
    assert caught.value is error
    with pytest.raises(TimeoutError):
        model.invoke("hi")
    assert model.invoke("hi").content == "recovered"
    assert len(model.calls) == 3


def test_a_callable_entry_sees_the_messages() -> None:
    seen: list[list[BaseMessage]] = []

    def echo(messages: list[BaseMessage]) -> str:
        seen.append(messages)
        return f"you said {messages[-1].text}"

    def tool_then(messages: list[BaseMessage]) -> AIMessage:
        return ScriptedChatModel.tool_call("lookup", {"q": messages[-1].text}, id="c1")

    model = ScriptedChatModel(script=[echo, tool_then])
    assert model.invoke("hello").content == "you said hello"
    assert [m.text for m in seen[0]] == ["hello"]
    reply = model.invoke("ORD-1")
    assert reply.tool_calls == [
        {"name": "lookup", "args": {"q": "ORD-1"}, "id": "c1", "type": "tool_call"}
    ]


def test_a_callable_returning_something_else_is_a_clear_error() -> None:
    model = ScriptedChatModel(script=[lambda messages: 42])
    with pytest.raises(TypeError, match="returned int"):
        model.invoke("hi")


def test_invalid_entries_are_refused_when_the_model_is_built() -> None:
    with pytest.raises(TypeError, match="script entry 1 is a int"):
        ScriptedChatModel(script=["ok", 3])


def test_tool_call_helper() -> None:
    message = ScriptedChatModel.tool_call("calculator", {"expression": "2+2"})
    [call] = message.tool_calls
    assert call["name"] == "calculator" and call["args"] == {"expression": "2+2"}
    assert call["id"] and call["id"].startswith("call_")
    assert message.content == ""
    other = ScriptedChatModel.tool_call("calculator", {"expression": "2+2"})
    assert other.tool_calls[0]["id"] != call["id"]
    model = ScriptedChatModel(script=[message])
    reply = model.invoke("what is 2+2")
    assert reply.tool_calls == message.tool_calls
    assert reply.response_metadata["finish_reason"] == "tool_calls"


def test_an_exhausted_script_says_so() -> None:
    model = ScriptedChatModel(script=["only"])
    model.invoke("one")
    with pytest.raises(AssertionError, match="script exhausted after 1 calls"):
        model.invoke("two")
    assert len(model.calls) == 2  # the failed call is logged too


def test_bind_tools_shares_the_script_and_the_call_log() -> None:
    @tool
    def lookup(order_id: str) -> str:
        """Look up an order."""
        return order_id

    model = ScriptedChatModel(script=["a", "b", "c"])
    bound = model.bind_tools([lookup], tool_choice="any")
    assert isinstance(bound, ScriptedChatModel) and bound is not model
    assert [t["function"]["name"] for t in bound.bound_tools] == ["lookup"]
    assert model.bound_tools == []
    assert bound.invoke("1").content == "a"
    assert model.invoke("2").content == "b"
    assert bound.invoke("3").content == "c"
    assert model.calls is bound.calls
    assert [call[0].text for call in model.calls] == ["1", "2", "3"]


def test_usage_is_counted_in_words() -> None:
    model = ScriptedChatModel(script=["three words here"])
    reply = model.invoke([HumanMessage("a question of five words")])
    assert reply.usage_metadata == {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}


def test_streaming_yields_words_and_ends_with_usage() -> None:
    model = ScriptedChatModel(script=["Refunds take  five days.", "again"])
    chunks = list(model.stream("how long?"))
    assert [c.content for c in chunks] == ["Refunds ", "take  ", "five ", "days.", ""]
    assert "".join(str(c.content) for c in chunks) == "Refunds take  five days."
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata == {"input_tokens": 2, "output_tokens": 4, "total_tokens": 6}
    assert last.response_metadata["model_name"] == "scripted"
    assert model.invoke("next").content == "again"  # a stream used one entry


def test_streaming_a_tool_call_comes_in_one_chunk() -> None:
    call = ScriptedChatModel.tool_call("lookup", {"order_id": "ORD-1"}, id="c9")
    model = ScriptedChatModel(script=[call])
    chunks = list(model.stream("where is ORD-1"))
    with_calls = [c for c in chunks if c.tool_call_chunks]
    assert len(with_calls) == 1
    total: Any = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert isinstance(total, AIMessageChunk)
    assert total.tool_calls == call.tool_calls


def test_streaming_raises_scripted_errors() -> None:
    model = ScriptedChatModel(script=[TimeoutError("provider timed out")])
    with pytest.raises(TimeoutError, match="provider timed out"):
        list(model.stream("hi"))


def test_delay_applies_to_sync_calls() -> None:
    model = ScriptedChatModel(script=["slow"], delay_s=0.05)
    start = time.perf_counter()
    assert model.invoke("hi").content == "slow"
    assert time.perf_counter() - start >= 0.05


def test_async_calls_sleep_without_blocking_the_loop() -> None:
    model = ScriptedChatModel(script=["a", "b", "c d"], delay_s=0.25)

    async def run() -> tuple[list[str], str, float]:
        start = time.perf_counter()
        replies = await asyncio.gather(model.ainvoke("1"), model.ainvoke("2"))
        elapsed = time.perf_counter() - start
        streamed = "".join([str(c.content) async for c in model.astream("3")])
        return [str(r.content) for r in replies], streamed, elapsed

    contents, streamed, elapsed = asyncio.run(run())
    assert sorted(contents) == ["a", "b"]
    assert streamed == "c d"
    assert 0.25 <= elapsed < 0.45  # the two calls waited together, not one after the other
    assert len(model.calls) == 3


def test_unused_port_refuses_connections_until_a_server_binds_it() -> None:
    import socket

    from keel.testing import unused_port

    port = unused_port()
    assert 0 < port < 65536
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))  # free for the server started next
        server.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_send_chat_completion_answers_as_openai_does() -> None:
    """A fake server's handler answers with it; the openai SDK reads the reply."""
    import http.server
    import json
    import threading

    from openai import OpenAI

    from keel.testing import send_chat_completion

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            send_chat_completion(self, "Hello.", prompt_tokens=5, completion_tokens=2)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        client = OpenAI(base_url=url, api_key="k", max_retries=0)
        reply = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.headers["content-type"] == "application/json"
        raw = json.loads(reply.content)
        assert raw["object"] == "chat.completion" and raw["model"] == "m"
        completion = reply.parse()
        (choice,) = completion.choices
        assert (choice.message.role, choice.message.content) == ("assistant", "Hello.")
        assert choice.finish_reason == "stop"
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.total_tokens) == (5, 7)
    finally:
        server.shutdown()
        server.server_close()
