"""Client tools, tool_choice and response_format on /v1/chat/completions (issue 16, items
3 and 4): a call to a client tool ends the turn with ``tool_calls``; the next request's tool
messages continue it (in the thread, or statelessly from the resent history); a reply that
must be JSON is checked (one corrective retry) and never returned when it does not fit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from pydantic import Field

from keel.testing import ScriptedChatModel

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = {"role": "user", "content": "weather in Paris?"}


class Recording(ScriptedChatModel):
    """A scripted model that keeps what each call was bound to and sent."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any) -> Any:
        self.seen.append(
            {
                "tools": [t["function"]["name"] for t in self.bound_tools],
                "tool_choice": self.tool_choice,
                **kwargs,
            }
        )
        return super()._generate(messages, stop=stop, **kwargs)

    def _stream(self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any) -> Any:
        self.seen.append({"tools": [t["function"]["name"] for t in self.bound_tools]})
        return super()._stream(messages, stop=stop, **kwargs)


def sunny(messages: list[BaseMessage]) -> str:
    result = messages[-1]
    assert isinstance(result, ToolMessage) and result.tool_call_id == "call_w1"
    return f"It is {json.loads(result.text)['sky']} in Paris."


def make(make_app: Callable[..., Any], script: list[Any], **raw: Any) -> Any:
    from tests.api.conftest import Gateway

    model = Recording(script=script, seen=[])
    gw = Gateway(make_app({"agent": {"retrieve": False}, **raw}, model=model))
    return gw, model, gw.key("chat")


def post(gw: Any, key: str, payload: dict[str, Any], **headers: str) -> Any:
    return gw.client.post(
        "/v1/chat/completions",
        json={"model": gw.app.name, **payload},
        headers={**gw.headers(key), **headers},
    )


def handed_over(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert r.json()["keel"]["stop_reason"] == "client_tool_calls"
    return dict(choice["message"])


def result_of(message: dict[str, Any], sky: str = "sunny") -> list[dict[str, Any]]:
    call = message["tool_calls"][0]
    return [
        ASK,
        message,
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"sky": sky})},
    ]


@pytest.mark.parametrize("stateful", [True, False])
def test_a_client_tool_call_ends_the_turn_and_its_result_continues_it(
    make_app: Callable[..., Any], stateful: bool
) -> None:
    call = ScriptedChatModel.tool_call("get_weather", {"city": "Paris"}, id="call_w1")
    gw, model, key = make(make_app, [call, sunny])
    headers = {"X-Keel-Thread": "trip"} if stateful else {}
    first = post(gw, key, {"messages": [ASK], "tools": [WEATHER]}, **headers)
    message = handed_over(first)
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_w1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert model.seen[0]["tools"] == ["get_weather"]  # offered beside the app's (none here)
    assert first.json()["keel"]["tool_calls"] == []  # nothing ran on the server

    second = post(gw, key, {"messages": result_of(message), "tools": [WEATHER]}, **headers)
    assert second.status_code == 200, second.text
    choice = second.json()["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "It is sunny in Paris."},
        "finish_reason": "stop",
    }
    sent = model.calls[-1]
    assert [type(m).__name__ for m in sent[-3:]] == ["HumanMessage", "AIMessage", "ToolMessage"]
    if stateful:  # one thread holds the whole turn
        history = gw.app.history(gw.api.state.gateway.stored_thread(_key(gw, key), "trip"))
        assert [m.type for m in history] == ["human", "ai", "tool", "ai"]


def _key(gw: Any, plain: str) -> Any:
    return gw.keys.verify(plain)


def test_results_must_answer_the_waiting_calls(make_app: Callable[..., Any]) -> None:
    call = ScriptedChatModel.tool_call("get_weather", {"city": "Paris"}, id="call_w1")
    gw, _model, key = make(make_app, [call])
    message = handed_over(post(gw, key, {"messages": [ASK], "tools": [WEATHER]}, **_T))
    wrong = result_of(message)
    wrong[1] = {**message, "tool_calls": [{**message["tool_calls"][0], "id": "call_x"}]}
    wrong[2] = {**wrong[2], "tool_call_id": "call_x"}
    r = post(gw, key, {"messages": wrong, "tools": [WEATHER]}, **_T)
    assert r.status_code == 400 and "call_x" in r.json()["error"]["message"]
    # a tool message that answers no call of the assistant message before it
    stray = [ASK, {"role": "tool", "tool_call_id": "call_w1", "content": "x"}]
    r = post(gw, key, {"messages": stray}, **_T)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1]"
    # results with no conversation before them (and no thread waiting for them)
    alone = [{"role": "tool", "tool_call_id": "call_w1", "content": "x"}]
    r = post(gw, key, {"messages": alone})
    assert r.status_code == 400 and "no tool call is waiting" in r.json()["error"]["message"]


_T = {"X-Keel-Thread": "t1"}


def test_tool_choice_reaches_the_model_and_none_keeps_tools_unused(
    make_app: Callable[..., Any],
) -> None:
    call = ScriptedChatModel.tool_call("get_weather", {"city": "Paris"}, id="call_w1")
    gw, model, key = make(make_app, [call, call, "no tools used"])
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        r = post(gw, key, {"messages": [ASK], "tools": [WEATHER], "tool_choice": choice})
        handed_over(r)
        assert model.seen[-1]["tool_choice"] == choice
    r = post(gw, key, {"messages": [ASK], "tools": [WEATHER], "tool_choice": "none"})
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert model.seen[-1]["tool_choice"] == "none"


def test_client_tools_can_be_refused_and_extractive_cannot_be_forced(
    make_app: Callable[..., Any],
) -> None:
    from tests.api.conftest import Gateway

    gw, _model, key = make(make_app, [], gateway={"client_tools": False})
    r = post(gw, key, {"messages": [ASK], "tools": [WEATHER]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "client_tools = false" in r.json()["error"]["message"]

    extractive = Gateway(make_app({"agent": {"retrieve": False}}))
    ekey = extractive.key("chat")
    r = post(extractive, ekey, {"messages": [ASK], "tools": [WEATHER], "tool_choice": "required"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    assert "keel:extractive" in r.json()["error"]["message"]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    r = post(extractive, ekey, {"messages": [ASK], "response_format": schema})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_a_streamed_turn_hands_over_its_tool_calls(make_app: Callable[..., Any]) -> None:
    call = ScriptedChatModel.tool_call("get_weather", {"city": "Paris"}, id="call_w1")
    gw, _model, key = make(make_app, [call])
    r = post(gw, key, {"messages": [ASK], "tools": [WEATHER], "stream": True})
    assert r.status_code == 200, r.text
    chunks = [
        json.loads(line[6:])
        for line in r.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls == [
        [
            {
                "index": 0,
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
    "required": ["city", "degrees"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": CITY, "strict": True},
}


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_that_does_not_fit_the_schema_is_retried_once(
    make_app: Callable[..., Any], stream: bool
) -> None:
    gw, model, key = make(
        make_app, ['{"city": "Paris"}', '```json\n{"city": "Paris", "degrees": 21}\n```']
    )
    r = post(gw, key, {"messages": [ASK], "response_format": JSON_SCHEMA, "stream": stream})
    assert r.status_code == 200, r.text
    if stream:
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in r.text.splitlines()
            if line.startswith("data: {") and json.loads(line[6:]).get("choices")
        )
    else:
        text = r.json()["choices"][0]["message"]["content"]
    assert json.loads(text) == {"city": "Paris", "degrees": 21}
    first, retry = model.calls
    said = [m.text for m in first if isinstance(m, SystemMessage)]
    assert any('"degrees"' in s and "JSON Schema" in s for s in said)  # the model is told
    note = [m.text for m in retry if isinstance(m, SystemMessage)][-1]
    assert "rejected" in note and "'degrees' is a required property" in note
    assert [m for m in retry if isinstance(m, AIMessage)] == []  # the bad reply is gone


def test_a_reply_that_never_fits_is_a_422_with_the_validation_error(
    make_app: Callable[..., Any],
) -> None:
    gw, _model, key = make(make_app, ["sunny, 21 degrees", "still prose", "[1]", "[2]"])
    r = post(gw, key, {"messages": [ASK], "response_format": JSON_SCHEMA})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_model_output" and error["param"] == "response_format"
    assert "not JSON" in error["message"]
    r = post(gw, key, {"messages": [ASK], "response_format": {"type": "json_object"}})
    assert r.status_code == 422 and "not an object" in r.json()["error"]["message"]


ADD_TOOL = '''
from keel.tools import tool

@tool
def add(a: int, b: int) -> str:
    """Add two numbers.

    Args:
        a: The first.
        b: The second.
    """
    return str(a + b)
'''


def test_app_tools_run_here_and_client_tools_go_to_the_client(
    make_app: Callable[..., Any], tmp_path: Any, write: Callable[..., None]
) -> None:
    from langchain_core.messages.tool import tool_call

    write(tmp_path, {"add_tool.py": ADD_TOOL})
    both = AIMessage(
        "",
        tool_calls=[
            tool_call(name="add", args={"a": 2, "b": 3}, id="call_a1"),
            tool_call(name="get_weather", args={"city": "Paris"}, id="call_w1"),
        ],
    )

    def done(messages: list[BaseMessage]) -> str:
        results = {m.tool_call_id: m.text for m in messages if isinstance(m, ToolMessage)}
        return f"add gave {results['call_a1']}, the client gave {results['call_w1']}"

    gw, model, key = make(make_app, [both, done], tools={"enabled": ["add_tool"]})
    first = post(gw, key, {"messages": [ASK], "tools": [WEATHER]}, **_T)
    message = handed_over(first)
    assert model.seen[0]["tools"] == ["add", "get_weather"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
    ran = first.json()["keel"]["tool_calls"]
    assert [(c["name"], c["status"], c["content"]) for c in ran] == [("add", "ok", "5")]
    resent = [
        ASK,
        message,
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
    ]
    second = post(gw, key, {"messages": resent, "tools": [WEATHER]}, **_T)
    assert second.json()["choices"][0]["message"]["content"] == "add gave 5, the client gave sunny"
