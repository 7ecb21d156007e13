"""The OpenAI-compatible route honours or refuses every request field, answers errors in
OpenAI's shape, streams what the non-streamed answer says, and keeps threads apart from the
``user`` field (issue 16)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from pydantic import Field

from keel.testing import ScriptedChatModel


class Recording(ScriptedChatModel):
    """A scripted model that also keeps the per-call keyword arguments it was sent."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any) -> Any:
        self.seen.append({"stop": stop, **kwargs})
        return super()._generate(messages, stop=stop, **kwargs)


def body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "keel-app", "messages": [{"role": "user", "content": text}], **extra}


def openai_error(response: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def completions(gw: Any, payload: dict[str, Any], key: str, **headers: str) -> Any:
    return gw.client.post(
        "/v1/chat/completions", json=payload, headers={**gw.headers(key), **headers}
    )


def sse(response: Any) -> list[Any]:
    assert response.status_code == 200, response.text
    out = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_errors_are_openai_shaped_on_openai_routes_only(gateway: Callable[..., Any]) -> None:
    gw = gateway(["hi"], agent={"retrieve": False})
    key = gw.key("chat")
    r = gw.client.post("/v1/chat/completions", json=body())
    assert openai_error(r, 401)["type"] == "authentication_error"
    r = completions(gw, {**body(), "model": "gpt-4"}, key)
    err = openai_error(r, 404, "model")
    assert err["code"] == "model_not_found" and "gpt-4" in err["message"]
    assert openai_error(gw.client.get("/v1/models/gpt-4", headers=gw.headers(key)), 404)
    one = gw.client.get("/v1/models/keel-app", headers=gw.headers(key)).json()
    assert one == {**one, "id": "keel-app", "object": "model"}
    r = completions(gw, body(bogus=1), key)
    err = openai_error(r, 400, "bogus")
    assert err["type"] == "invalid_request_error" and err["code"] == "unknown_parameter"
    openai_error(completions(gw, {"model": "keel-app"}, key), 400, "messages")
    r = gw.client.post(
        "/v1/chat/completions",
        content=b"{",
        headers={**gw.headers(key), "content-type": "application/json"},
    )
    openai_error(r, 400)
    r = gw.client.post("/v1/chat/completions", content=b"x", headers=gw.headers(key))
    openai_error(r, 415)
    # the native routes keep problem+json (422 for validation)
    native = gw.client.post("/v1/chat", json={"mesage": "hi"}, headers=gw.headers(key))
    assert native.status_code == 422
    assert native.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]}, "tools[0].x"),
        ({"tools": [{"type": "function", "function": {"name": "refund_order"}}]}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "always"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
            "response_format",
        ),
        ({"store": True}, "store"),
        ({"metadata": {"thread_id": ""}}, "metadata.thread_id"),
    ],
)
def test_fields_it_cannot_honour_are_refused_by_name(
    gateway: Callable[..., Any], extra: dict[str, Any], param: str
) -> None:
    gw = gateway(["never sent"], agent={"retrieve": False})
    key = gw.key("chat")
    openai_error(completions(gw, body(**extra), key), 400, param)
    openai_error(completions(gw, body(stream=True, **extra), key), 400, param)


def test_message_parts_tools_and_client_instructions(
    gateway: Callable[..., Any], make_app: Callable[..., Any]
) -> None:
    gw = gateway(["ok"] * 5, agent={"retrieve": False})
    key = gw.key("chat")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}]
    err = openai_error(completions(gw, {**body(), "messages": msgs}, key), 400)
    assert err["param"] == "messages[0].content[1]" and "images" in err["message"]
    tool = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "user", "content": "and?"},
    ]
    openai_error(completions(gw, {**body(), "messages": tool}, key), 400, "messages[1]")
    # system and developer messages follow the app's prompt as delimited client instructions
    msgs = [
        {"role": "system", "content": "Answer in French."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    r = completions(gw, {**body(), "messages": msgs}, key)
    assert r.status_code == 200, r.text
    prompt = gw.app.model.calls[-1]
    systems = [m.text for m in prompt if isinstance(m, SystemMessage)]
    assert len(systems) == 2 and "Answer in French." not in systems[0]
    assert (
        "<client_instructions>\nAnswer in French.\n\nBe brief.\n</client_instructions>"
        in (systems[1])
    )
    # ... or refused when the app says so
    strict = gateway(["ok"], agent={"retrieve": False}, gateway={"client_instructions": False})
    skey = strict.key("chat")
    err = openai_error(completions(strict, {**body(), "messages": msgs}, skey), 400)
    assert err["param"] == "messages[0].role" and "client_instructions" in err["message"]


def test_generation_parameters_reach_the_model_and_length_is_reported(
    make_app: Callable[..., Any],
) -> None:
    from tests.api.conftest import Gateway

    model = Recording(
        script=[AIMessage("cut sho", response_metadata={"finish_reason": "length"}), "whole"],
        seen=[],
    )
    gw = Gateway(make_app({"agent": {"retrieve": False}}, model=model))
    key = gw.key("chat")
    sent = body(temperature=0.2, top_p=0.9, max_completion_tokens=7, stop="END", seed=3, n=1)
    r = completions(
        gw, {**sent, "logprobs": False, "presence_penalty": 0, "tool_choice": "auto"}, key
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    call = model.seen[-1]
    assert call["temperature"] == 0.2 and call["top_p"] == 0.9 and call["seed"] == 3
    assert call["max_tokens"] == 7 and call["stop"] == ["END"]
    r = completions(gw, body(), key)
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert "temperature" not in model.seen[-1]
    gw.client.close()


def test_stream_carries_the_guard_refusal_and_the_completion_id(
    gateway: Callable[..., Any],
) -> None:
    guards = {
        "input": {"topic_denylist": {"topics": ["medical diagnosis"], "on_fail": "exception"}}
    }
    gw = gateway(["never"] * 4, agent={"retrieve": False}, guards=guards)
    key = gw.key("chat")
    question = body("I need a medical diagnosis")
    plain = completions(gw, question, key).json()
    refusal = plain["choices"][0]["message"]["content"]
    assert refusal and plain["choices"][0]["finish_reason"] == "content_filter"
    events = sse(completions(gw, {**question, "stream": True}, key))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == refusal
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids != {"chatcmpl-pending"}
    assert ids == {f"chatcmpl-{chunks[-1]['keel']['trace_id']}"}
    assert plain["id"] == f"chatcmpl-{plain['keel']['trace_id']}"


def test_stream_error_is_a_final_error_chunk(gateway: Callable[..., Any]) -> None:
    from keel.errors import ModelError

    gw = gateway(
        [ModelError("the provider is down")], agent={"retrieve": False}, model={"max_retries": 0}
    )
    key = gw.key("chat")
    events = sse(completions(gw, body(stream=True), key))
    assert events[-1] != "[DONE]"
    error = events[-1]["error"]
    assert error["code"] == "model_provider_failed" and error["type"] == "server_error"


def test_user_is_the_end_user_not_a_thread(gateway: Callable[..., Any]) -> None:
    def echo(messages: list[Any]) -> str:
        return f"{sum(m.type == 'human' for m in messages)} turns"

    gw = gateway([echo] * 10, agent={"retrieve": False})
    a, b = gw.key("chat", name="a"), gw.key("chat", name="b")
    first = completions(gw, body(user="alice"), a).json()
    # another key with the same user: its own new thread, no 404
    other = completions(gw, body(user="alice"), b)
    assert other.status_code == 200, other.text
    assert other.json()["keel"]["thread_id"] != first["keel"]["thread_id"]
    # a stateless client resends the whole history: a new thread seeded with it
    history = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1 turns"},
        {"role": "user", "content": "two"},
    ]
    again = completions(gw, {**body(user="alice"), "messages": history}, a).json()
    assert again["choices"][0]["message"]["content"] == "2 turns"
    # metadata.thread_id continues a thread, like X-Keel-Thread
    completions(gw, body(metadata={"thread_id": "t-meta"}), a)
    cont = completions(gw, body(metadata={"thread_id": "t-meta", "tag": "x"}), a).json()
    assert cont["keel"]["thread_id"] == "t-meta"
    assert cont["choices"][0]["message"]["content"] == "2 turns"
    mixed = completions(gw, body(metadata={"thread_id": "t-meta"}), a, **{"X-Keel-Thread": "t-2"})
    openai_error(mixed, 400, "metadata.thread_id")
    # the end user is recorded on the trace
    reader = gw.key("traces:read")
    trace = gw.client.get(f"/v1/traces/{first['keel']['trace_id']}", headers=gw.headers(reader))
    assert trace.status_code == 200, trace.text
    assert '"enduser.id": "alice"' in json.dumps(trace.json())
    # and on the usage ledger, per key and end user (streamed turns too)
    streamed = completions(gw, body(user="bob", stream=True), a)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    admin = gw.key("admin")
    usage = gw.client.get("/v1/usage", headers=gw.headers(admin))
    assert usage.status_code == 200, usage.text
    rows = {(r["end_user"], r["key_id"]): r["requests"] for r in usage.json()["end_users"]}
    key_ids = {r["key_id"] for r in usage.json()["keys"]}
    assert sorted(rows.values()) == [1, 1, 2]  # alice twice on key a, once on b; bob once
    assert {user for user, _ in rows} == {"alice", "bob"} and len(key_ids) == 2
    assert gw.client.get("/v1/usage", headers=gw.headers(a)).status_code == 403
    bad = gw.client.get("/v1/usage?day=2026-02-31", headers=gw.headers(admin))
    assert bad.status_code == 400


def test_stream_carries_the_approval_notice_as_the_answer_does(
    gateway: Callable[..., Any],
) -> None:
    call = ScriptedChatModel.tool_call("refund_order", {"order_id": "A1"})
    gw = gateway([call, call], agent={"retrieve": False})
    key = gw.key("chat", "orders:write")
    plain = completions(gw, body("refund A1"), key).json()
    notice = plain["choices"][0]["message"]["content"]
    assert notice.startswith("Waiting for approval of: refund_order")
    events = sse(completions(gw, body("refund A1", stream=True), key))
    chunks = events[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == notice
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["keel"]["pending_approval"][0]["name"] == "refund_order"
