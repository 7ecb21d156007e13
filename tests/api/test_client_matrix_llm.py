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
