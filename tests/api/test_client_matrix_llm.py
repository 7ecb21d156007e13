"""The client matrix against the real local model (llama.cpp's server with SmolLM2, the
``llm_server`` fixture): the gateway's client tools and structured output with a model that
really generates. The model is small, so each test forces what it checks (a named
tool_choice, a schema-constrained reply) and asserts the mechanics, not the model's skill."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings

pytestmark = pytest.mark.llm


class City(BaseModel):
    city: str


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
    tmp_path: Path, llm_settings: Settings, llm_model: dict[str, Any], serve: type[Any]
) -> Iterator[tuple[str, str]]:
    app = App(
        config_from_dict(
            {"app": {"name": "bot"}, "agent": {"retrieve": False}, "model": llm_model},
            base_dir=tmp_path,
        ),
        settings=llm_settings,
    )
    with serve(app) as srv:
        key, _ = srv.api.state.gateway.keys.create("client", ["chat"])
        yield srv.base_url, key
    app.close()


def test_openai_forced_client_tool_and_parse_on_the_real_model(served: tuple[str, str]) -> None:
    import openai

    base, key = served
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model="bot",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments), dict)  # type: ignore[union-attr]

    parsed = client.chat.completions.parse(
        model="bot",
        messages=[{"role": "user", "content": "Name the capital of France."}],
        response_format=City,
    )
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_langchain_bind_tools_forced_on_the_real_model(served: tuple[str, str]) -> None:
    from langchain_openai import ChatOpenAI

    base, key = served
    llm = ChatOpenAI(model="bot", base_url=base, api_key=key, max_retries=0)  # type: ignore[arg-type]
    ai = llm.bind_tools([WEATHER_TOOL], tool_choice="get_weather").invoke("Weather in Oslo?")
    assert [c["name"] for c in ai.tool_calls] == ["get_weather"]


class Weather(BaseModel):
    city: str
    sky: str


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_pydantic_ai_output_type_on_the_real_model(served: tuple[str, str], api: str) -> None:
    """pydantic-ai returns a typed output through a tool of its own (`final_result`) and sends
    `tool_choice: "required"` for it: the real model's call reaches pydantic-ai as a tool call
    whose arguments validate into the output type."""
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    base, key = served
    provider = OpenAIProvider(base_url=base, api_key=key)
    model_class = OpenAIChatModel if api == "chat" else OpenAIResponsesModel
    agent = Agent(model_class("bot", provider=provider), output_type=Weather, retries=3)
    result = agent.run_sync("What is the weather in Paris? The sky is sunny.")
    assert isinstance(result.output, Weather)


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_openai_agents_sdk_forced_function_tool_on_the_real_model(
    served: tuple[str, str], api: str
) -> None:
    """The Agents SDK's tool loop with a real model: a forced function tool is called by the
    model through the gateway, run by the SDK on the client, and its result ends the run."""
    import asyncio

    import openai
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # no trace export to OpenAI's servers
    base, key = served
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
        model_settings=ModelSettings(tool_choice="get_weather"),
        tool_use_behavior="stop_on_first_tool",
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Oslo?"))
    assert isinstance(result.final_output, str) and result.final_output.startswith("sunny in ")
