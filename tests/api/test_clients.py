"""Real clients against a real uvicorn server on loopback: the official `openai` package
(sync, async, streaming) and LangChain's ChatOpenAI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings
from keel.testing import ScriptedChatModel


def echo(messages: list[Any]) -> str:
    """Answer with what the thread holds, so tests can see threads continue."""
    said = [m.content for m in messages if m.type == "human"]
    return f"Heard {len(said)}: {said[-1].split('Question: ')[-1]}"


@pytest.fixture
def server(tmp_path: Path, model_cache_dir: Path, serve: type[Any]) -> Iterator[tuple[Any, str]]:
    app = App(
        config_from_dict({"app": {"name": "bot"}, "agent": {"retrieve": False}}, base_dir=tmp_path),
        settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
        model=ScriptedChatModel(script=[echo] * 20),
    )
    with serve(app) as srv:
        key, _ = srv.api.state.gateway.keys.create("client", ["chat"])
        yield srv, key
    app.close()


def test_openai_package_sync_stream_and_async(server: tuple[Any, str]) -> None:
    import openai

    srv, key = server
    client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
    assert {m.id for m in client.models.list()} >= {"bot"}

    reply = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hello there"}]
    )
    assert reply.choices[0].message.content == "Heard 1: hello there"
    assert reply.usage is not None and reply.usage.total_tokens > 0

    # a conversation continues through the X-Keel-Thread header
    headers = {"X-Keel-Thread": "conv-1"}
    client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "one"}], extra_headers=headers
    )
    second = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "two"}], extra_headers=headers
    )
    assert second.choices[0].message.content == "Heard 2: two"

    stream = client.chat.completions.create(
        model="bot",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Heard 1: stream me"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=srv.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()

    async def run_async() -> str:
        aclient = openai.AsyncOpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
        first = await aclient.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "async hi"}]
        )
        parts = []
        async for c in await aclient.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "async stream"}], stream=True
        ):
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
        await aclient.close()
        return f"{first.choices[0].message.content}|{''.join(parts)}"

    assert asyncio.run(run_async()) == "Heard 1: async hi|Heard 1: async stream"


def test_langchain_chat_openai(server: tuple[Any, str]) -> None:
    from langchain_openai import ChatOpenAI

    srv, key = server
    llm = ChatOpenAI(model="bot", base_url=srv.base_url, api_key=key, max_retries=0)  # type: ignore[arg-type]
    assert llm.invoke("what is up").content == "Heard 1: what is up"
    streamed = "".join(str(c.content) for c in llm.stream("streaming now"))
    assert streamed == "Heard 1: streaming now"
    # a stateless client sends the whole conversation: it seeds a new thread
    reply = llm.invoke([("human", "first"), ("ai", "ok"), ("human", "second")])
    assert reply.content == "Heard 2: second"


@pytest.fixture
def limited(tmp_path: Path, model_cache_dir: Path, serve: type[Any]) -> Iterator[tuple[Any, str]]:
    def said(messages: list[Any]) -> str:
        systems = [m.content for m in messages if m.type == "system"]
        client = systems[-1].split("<client_instructions>")[-1].strip()
        return f"{len(systems)} system messages; last: {client!r}"

    raw = {
        "app": {"name": "bot"},
        "agent": {"retrieve": False},
        "limits": {"requests_per_minute": 6},
    }
    app = App(
        config_from_dict(raw, base_dir=tmp_path),
        settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
        model=ScriptedChatModel(script=[said] * 20),
    )
    with serve(app) as srv:
        key, _ = srv.api.state.gateway.keys.create("client", ["chat"])
        yield srv, key
    app.close()


def test_openai_package_raises_its_own_exception_types(limited: tuple[Any, str]) -> None:
    import openai

    srv, key = limited
    msgs: Any = [{"role": "user", "content": "hi"}]

    async def async_errors() -> list[type[Exception]]:
        aclient = openai.AsyncOpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
        raised: list[type[Exception]] = []
        try:
            await aclient.chat.completions.create(model="bot", messages=msgs, temperature=5)
        except openai.BadRequestError as exc:
            raised.append(type(exc))
            assert exc.param == "temperature" and exc.code == "invalid_value"
        await aclient.close()
        return raised

    assert asyncio.run(async_errors()) == [openai.BadRequestError]
    client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="bot", messages=msgs, n=3)
    assert bad.value.param == "n" and bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="bot", messages=msgs, extra_body={"frobnicate": 1})
    assert unknown.value.param == "frobnicate"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.base_url, api_key="nope", max_retries=0).models.list()
    # system and developer messages reach the model as client instructions
    reply = client.chat.completions.create(
        model="bot", messages=[{"role": "developer", "content": "Be brief."}, *msgs]
    )
    assert reply.choices[0].message.content == (
        "2 system messages; last: 'Be brief.\\n</client_instructions>'"
    )
    with pytest.raises(openai.RateLimitError) as limit:  # over 6 a minute
        for _ in range(7):  # (a body refused before the key is checked does not count)
            client.chat.completions.create(model="bot", messages=msgs)
    assert limit.value.body["type"] == "rate_limit_error"  # type: ignore[index]


def test_langchain_system_message_and_errors(limited: tuple[Any, str]) -> None:
    import openai
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    srv, key = limited
    llm = ChatOpenAI(model="bot", base_url=srv.base_url, api_key=key, max_retries=0)  # type: ignore[arg-type]
    reply = llm.invoke([SystemMessage("Talk like a pirate."), HumanMessage("hi")])
    assert (
        reply.content == "2 system messages; last: 'Talk like a pirate.\\n</client_instructions>'"
    )
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        llm.bind(logprobs=True).invoke("hi")
    with pytest.raises(openai.NotFoundError):
        ChatOpenAI(model="gpt-4", base_url=srv.base_url, api_key=key, max_retries=0).invoke("x")  # type: ignore[arg-type]


def test_openai_responses_api(server: tuple[Any, str]) -> None:
    import openai

    srv, key = server
    client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
    first = client.responses.create(model="bot", input="hello there", instructions="Be kind.")
    assert first.output_text == "Heard 1: hello there"
    assert first.status == "completed" and first.id.startswith("resp_")
    assert first.usage is not None and first.usage.total_tokens > 0
    # previous_response_id continues the keel thread
    second = client.responses.create(model="bot", input="again", previous_response_id=first.id)
    assert second.output_text == "Heard 2: again"
    assert second.id[:37] == first.id[:37] and second.id != first.id
    # a whole conversation as input items, streamed
    items: Any = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Heard 1: one"},
        {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
    ]
    with client.responses.stream(model="bot", input=items) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Heard 2: two"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="bot", input="x", tools=[{"type": "web_search"}])
    assert bad.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(model="bot", input="x", previous_response_id="resp_nope")
    assert unknown.value.param == "previous_response_id"
    other, _ = srv.api.state.gateway.keys.create("other", ["chat"])
    stranger = openai.OpenAI(base_url=srv.base_url, api_key=other, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # another key's thread
        stranger.responses.create(model="bot", input="x", previous_response_id=first.id)

    async def run_async() -> str:
        aclient = openai.AsyncOpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
        reply = await aclient.responses.create(model="bot", input="async hi")
        await aclient.close()
        return reply.output_text

    assert asyncio.run(run_async()) == "Heard 1: async hi"
