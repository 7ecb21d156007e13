"""``answer`` hooks watch a generative model's answer while it is written: with output
grounding and its ``prefetch`` on, a turn asked whole streams its (tool-less) model call, and
the answer's finished sentences are embedded on the prefetch's thread while the model is
still writing, so the check after the reply embeds little more than the last sentence; the
decisions are the same as without it. Against a small OpenAI-compatible server that streams
with pauses."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from keel.app import App
from keel.rag.embeddings import onnx_available
from keel.settings import Settings
from keel.testing import send_chat_completion

if TYPE_CHECKING:
    from tests.agents.conftest import EncoderCalls

DOC = (
    "# Refunds\n\nA refund can be requested within 30 days of the purchase, from the billing "
    "page of the account settings.\n\n# Exports\n\nExports are ZIP files of Markdown notes, "
    "made from Settings > Data > Export.\n"
)
ANSWER = (
    "You may ask for your money back during the first month after buying. "
    "Your notes can be downloaded as one compressed archive from the data settings. "
    "Every export is also mailed to the billing contact of the account."
)
GROUNDING = {"output": {"grounding": {"on_fail": "fix", "prefetch": True}}}

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime/optimum not installed")


class _Writer(http.server.BaseHTTPRequestHandler):
    """Chat completions: streamed a few words at a time with a pause between them (a model
    writing), or whole when not asked to stream. Every request body is kept."""

    bodies: list[dict[str, Any]]
    gap = 0.03

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.bodies.append(body)
        usage = {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}
        if not body.get("stream"):
            send_chat_completion(self, ANSWER, prompt_tokens=50, completion_tokens=40)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        words = ANSWER.split(" ")
        for i in range(0, len(words), 3):
            piece = " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")
            self._chunk({"content": piece}, None)
            time.sleep(self.gap)
        self._chunk({}, "stop", usage)
        self.wfile.write(b"data: [DONE]\n\n")

    def _chunk(self, delta: dict[str, Any], finish: str | None, usage: Any = None) -> None:
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": usage,
        }
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def writer() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []
    handler = type("Handler", (_Writer,), {"bodies": bodies})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    server.shutdown()


QUESTION = "Can I get a refund, and how do I export my notes?"
CLAIMS = [s if s.endswith(".") else f"{s}." for s in ANSWER.split(". ")]
PREFETCH = "keel-support-prefetch"  # the prefetch's thread


@pytest.fixture
def build(
    make_app: Callable[..., App],
    settings: Settings,
    tmp_path: Path,
    write: Callable[..., None],
    writer: tuple[str, list[dict[str, Any]]],
    ready_and_spied: Callable[[App], EncoderCalls],
) -> Callable[..., tuple[App, EncoderCalls]]:
    """``build(guards, **raw)``: an app on the writing server, over the docs, warmed as
    `keel serve` warms it (the support encoder loaded before the first turn), and the
    (thread name, texts) of every call that runs its support encoder on short texts."""
    url = writer[0]
    write(tmp_path, {"docs/help.md": DOC})

    def make(guards: dict[str, Any], **raw: Any) -> tuple[App, EncoderCalls]:
        app = make_app(
            {"model": {"id": "openai:m"}, "guards": guards, "tools": {"enabled": []}, **raw},
            app_settings=settings.model_copy(
                update={"openai_base_url": url, "openai_api_key": "x"}
            ),
        )
        return app, ready_and_spied(app)

    return make


def _split(calls: EncoderCalls) -> tuple[list[str], list[str]]:
    """The texts embedded on the prefetch's thread, and the others."""
    ahead = [t for name, texts in calls if name == PREFETCH for t in texts]
    return ahead, [t for name, texts in calls if name != PREFETCH for t in texts]


def _grounding(answer: Any) -> dict[str, Any]:
    event = next(e for e in answer.events if e["name"] == "grounding")
    return dict(event.get("details") or {})


def test_the_answers_sentences_are_embedded_while_the_model_writes(
    build: Callable[..., Any], writer: tuple[str, list[dict[str, Any]]]
) -> None:
    bodies = writer[1]
    app, calls = build(GROUNDING)
    answer = app.ask(QUESTION)
    assert bodies[-1].get("stream") is True  # asked streamed, so the tokens come as written
    ahead, after = _split(calls)
    # the first two sentences were finished, and embedded, while the model was still writing;
    # after the reply the check embedded the last one at most
    assert set(CLAIMS[:2]) <= set(ahead)
    assert [t for t in after if t in CLAIMS] in ([], [CLAIMS[2]])
    report = _grounding(answer)
    assert report["unsupported"] == [CLAIMS[2]]  # the invented one, as without the prefetch
    assert answer.text.strip() == " ".join(CLAIMS[:2])

    # the same turn without the prefetch (the default): asked whole, the same decisions
    plain, _ = build({"output": {"grounding": {"on_fail": "fix"}}})
    before = len(bodies)
    again = plain.ask(QUESTION)
    assert "stream" not in bodies[before] or bodies[before]["stream"] is False
    assert _grounding(again) == report
    assert again.text == answer.text


def test_the_async_path_watches_the_answer_too(
    build: Callable[..., Any], writer: tuple[str, list[dict[str, Any]]]
) -> None:
    import asyncio

    app, calls = build(GROUNDING)
    answer = asyncio.run(app.aask(QUESTION))
    assert writer[1][-1].get("stream") is True
    assert set(CLAIMS[:2]) <= set(_split(calls)[0])
    assert _grounding(answer)["unsupported"] == [CLAIMS[2]]

    async def streamed() -> list[dict[str, Any]]:
        from keel.agents.events import to_dict

        return [to_dict(e) async for e in app.astream(QUESTION)]

    app.resources.support_embedder.clear_query_cache()
    calls.clear()
    events = asyncio.run(streamed())
    assert events[-1]["type"] == "done"
    assert set(CLAIMS[:2]) <= set(_split(calls)[0])  # a streamed turn is watched too
    found = next(e for e in events[-1]["answer"]["events"] if e["name"] == "grounding")
    assert found["details"] == _grounding(answer)


def test_a_structured_reply_is_not_watched(
    build: Callable[..., Any], writer: tuple[str, list[dict[str, Any]]]
) -> None:
    """A call asking for a response format is asked whole: its reply is checked whole."""
    from keel.agents.structured import ResponseFormat

    bodies = writer[1]
    structured, calls = build(GROUNDING)
    before = len(bodies)
    structured.ask(QUESTION, response_format=ResponseFormat("json_object"))
    assert bodies[before:] and not any(b.get("stream") for b in bodies[before:])
    assert _split(calls)[0] == []


def _stream(app: App) -> tuple[list[dict[str, Any]], str]:
    events = list(app.stream(QUESTION))
    shown = "".join(e["text"] for e in events if e["type"] == "token")
    return events, shown


def test_a_streamed_turn_is_watched_and_embeds_each_sentence_once(
    build: Callable[..., Any], writer: tuple[str, list[dict[str, Any]]]
) -> None:
    """A streamed turn checks each sentence as it is shown; the prefetch embeds each one as
    soon as it ends, on its own thread. The encoder computes a sentence once for both (the
    check waits for the one being embedded), and the turn shows and decides what it shows
    and decides without the prefetch."""
    app, calls = build(GROUNDING)
    events, shown = _stream(app)
    assert writer[1][-1].get("stream") is True and events[-1]["type"] == "done"
    ahead, after = _split(calls)
    assert set(CLAIMS[:2]) <= set(ahead)  # finished while the model was still writing
    embedded = [t for t in ahead + after if t in CLAIMS]
    assert sorted(embedded) == sorted(set(embedded)) and set(CLAIMS) <= set(embedded)

    plain, plain_calls = build({"output": {"grounding": {"on_fail": "fix"}}})
    plain_events, plain_shown = _stream(plain)
    assert _split(plain_calls)[0] == []  # nothing watches it without the prefetch
    assert shown == plain_shown and CLAIMS[2] not in shown
    assert _decisions(events) == _decisions(plain_events)


def _decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turn's guard decisions, without their times."""
    found = events[-1]["answer"]["events"]
    return [{k: v for k, v in e.items() if k != "latency_ms"} for e in found]


def test_prefetch_is_refused_where_it_could_not_watch(
    make_app: Callable[..., App], settings: Settings
) -> None:
    """Not honoured means refused: the embedded model answers at once, and an app's tools
    make every call one that is asked whole."""
    from keel.errors import ConfigError

    extractive = make_app({"guards": GROUNDING})
    with pytest.raises(ConfigError, match=r"prefetch: needs openai:\* models.*keel:extractive"):
        _ = extractive.agent
    tools = {"enabled": ["keel:calculator"]}
    with_tools = make_app(
        {"model": {"id": "openai:m"}, "guards": GROUNDING, "tools": tools},
        app_settings=settings.model_copy(update={"openai_api_key": "x"}),
    )
    with pytest.raises(ConfigError, match="prefetch: the app's tools"):
        _ = with_tools.agent
