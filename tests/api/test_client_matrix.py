"""The client matrix of issue 16 against a real uvicorn server on loopback: each client runs
a tool round trip (the client executes the tool; the gateway hands the call over and
continues the turn with its result) and asks for structured output, against a scripted
model that emits the tool calls and the JSON.

Rows: the official ``openai`` package (chat completions and responses, ``.parse()`` with a
pydantic model), ``langchain-openai`` (``bind_tools``, ``with_structured_output``),
``pydantic-ai`` with its OpenAI models, and the OpenAI Agents SDK (function tool round trip
and output type, with the Responses API and with chat completions)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, ToolMessage
from pydantic import BaseModel

from keel.testing import ScriptedChatModel


class Weather(BaseModel):
    city: str
    sky: str


def weather_call(name: str = "get_weather") -> Callable[[list[BaseMessage]], Any]:
    """First reply: call the client's weather tool (with whatever the client named it)."""

    def reply(messages: list[BaseMessage]) -> Any:
        return ScriptedChatModel.tool_call(name, {"city": "Paris"}, id="call_w1")

    return reply


def from_result(messages: list[BaseMessage]) -> str:
    """Second reply: JSON built from the tool result the client sent back."""
    result = messages[-1]
    assert isinstance(result, ToolMessage) and result.tool_call_id == "call_w1", messages
    return json.dumps({"city": "Paris", "sky": str(result.text).strip('"')})


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny" if city == "Paris" else "rain"


WEATHER_TOOL = {
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


@pytest.fixture
def served(
    make_app: Callable[..., Any], serve: type[Any]
) -> Iterator[Callable[[list[Any]], tuple[str, str]]]:
    """Start a gateway over a scripted model: ``(base_url, key)``."""
    servers: list[Any] = []

    def start(script: list[Any]) -> tuple[str, str]:
        app = make_app(
            {"app": {"name": "bot"}, "agent": {"retrieve": False}},
            model=ScriptedChatModel(script=script),
        )
        srv = serve(app).__enter__()
        servers.append(srv)
        key, _ = srv.api.state.gateway.keys.create("client", ["chat"])
        return srv.base_url, key

    yield start
    for srv in servers:
        srv.__exit__(None, None, None)


def test_openai_chat_tools_round_trip_and_parse(served: Callable[..., Any]) -> None:
    import openai

    base, key = served([weather_call(), from_result, '{"city": "Oslo", "sky": "snow"}'])
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER_TOOL])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    result = get_weather(**json.loads(call.function.arguments))  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER_TOOL])
    assert json.loads(second.choices[0].message.content or "") == {
        "city": "Paris",
        "sky": "sunny",
    }
    parsed = client.chat.completions.parse(
        model="bot",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        response_format=Weather,
    )
    assert parsed.choices[0].message.parsed == Weather(city="Oslo", sky="snow")


def test_openai_responses_function_tools_and_parse(served: Callable[..., Any]) -> None:
    import openai

    base, key = served([weather_call(), from_result, '{"city": "Oslo", "sky": "snow"}'])
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    tool: Any = {"type": "function", **WEATHER_TOOL["function"]}
    first = client.responses.create(model="bot", input="weather in Paris?", tools=[tool])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    output = get_weather(**json.loads(calls[0].arguments))
    second = client.responses.create(
        model="bot",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": output}],
        tools=[tool],
    )
    assert json.loads(second.output_text) == {"city": "Paris", "sky": "sunny"}
    parsed = client.responses.parse(model="bot", input="weather in Oslo?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", sky="snow")


def test_langchain_openai_bind_tools_and_structured_output(served: Callable[..., Any]) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    base, key = served([weather_call(), from_result, '{"city": "Oslo", "sky": "snow"}'])
    llm = ChatOpenAI(model="bot", base_url=base, api_key=key, max_retries=0)  # type: ignore[arg-type]
    with_tools = llm.bind_tools([get_weather])
    history: list[Any] = [HumanMessage("weather in Paris?")]
    ai = with_tools.invoke(history)
    assert [c["name"] for c in ai.tool_calls] == ["get_weather"]
    call = ai.tool_calls[0]
    history += [ai, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])]
    final = with_tools.invoke(history)
    assert json.loads(str(final.content)) == {"city": "Paris", "sky": "sunny"}
    structured = llm.with_structured_output(Weather)
    assert structured.invoke("weather in Oslo?") == Weather(city="Oslo", sky="snow")


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_pydantic_ai_tools_and_output_type(served: Callable[..., Any], api: str) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    # pydantic-ai returns its output through a tool of its own ("final_result")
    final = ScriptedChatModel.tool_call("final_result", {"city": "Paris", "sky": "sunny"})

    def answer(messages: list[BaseMessage]) -> Any:
        result = messages[-1]
        assert isinstance(result, ToolMessage) and "sunny" in str(result.text), messages
        return final

    base, key = served([weather_call(), answer])
    provider = OpenAIProvider(base_url=base, api_key=key)
    model_class = OpenAIChatModel if api == "chat" else OpenAIResponsesModel
    agent = Agent(model_class("bot", provider=provider), output_type=Weather)
    agent.tool_plain(get_weather)
    result = agent.run_sync("weather in Paris?")
    assert result.output == Weather(city="Paris", sky="sunny")


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_openai_agents_sdk_function_tool_and_output_type(
    served: Callable[..., Any], api: str
) -> None:
    import openai
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # no trace export to OpenAI's servers
    base, key = served([weather_call(), from_result])
    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
    model: Any = (
        OpenAIResponsesModel(model="bot", openai_client=client)
        if api == "responses"
        else OpenAIChatCompletionsModel(model="bot", openai_client=client)
    )
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=model,
        tools=[function_tool(get_weather)],
        output_type=Weather,
    )
    result = asyncio.run(Runner.run(agent, "weather in Paris?"))
    assert result.final_output == Weather(city="Paris", sky="sunny")


def test_openai_streams_client_tool_calls_on_both_apis(served: Callable[..., Any]) -> None:
    """Streamed, a client tool call arrives as the APIs' own stream events: ``delta.tool_calls``
    on chat completions, ``function_call`` output items and argument deltas on responses."""
    import openai

    base, key = served([weather_call(), from_result, weather_call(), from_result])
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    with client.chat.completions.stream(
        model="bot", messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        for _ in stream:
            pass
        done = stream.get_final_completion()
    assert done.choices[0].finish_reason == "tool_calls"
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.function.name, json.loads(call.function.arguments)) == (  # type: ignore[union-attr]
        "get_weather",
        {"city": "Paris"},
    )
    messages += [
        {"role": "assistant", "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    chunks = client.chat.completions.create(
        model="bot", messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"city": "Paris", "sky": "sunny"}

    tool: Any = {"type": "function", **WEATHER_TOOL["function"]}
    with client.responses.stream(model="bot", input="weather in Paris?", tools=[tool]) as events:
        kinds = [event.type for event in events]
        first = events.get_final_response()
    assert "response.output_item.added" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert kinds[-1] == "response.completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    with client.responses.stream(
        model="bot",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[tool],
    ) as events:
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        second = events.get_final_response()
    assert (
        json.loads("".join(deltas))
        == json.loads(second.output_text)
        == {
            "city": "Paris",
            "sky": "sunny",
        }
    )


def test_openai_agents_sdk_streams_a_tool_using_agent_on_responses(
    served: Callable[..., Any],
) -> None:
    import openai
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    base, key = served([weather_call(), from_result])
    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=OpenAIResponsesModel(model="bot", openai_client=client),
        tools=[function_tool(get_weather)],
        output_type=Weather,
    )

    async def run() -> tuple[Any, list[str]]:
        result = Runner.run_streamed(agent, "weather in Paris?")
        kinds = [
            event.item.type
            async for event in result.stream_events()
            if event.type == "run_item_stream_event"
        ]
        return result.final_output, kinds

    final, kinds = asyncio.run(run())
    assert final == Weather(city="Paris", sky="sunny")
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
