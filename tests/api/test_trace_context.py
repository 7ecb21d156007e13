"""W3C trace context: a caller's traceparent continues into Keel's spans, and Keel's call to
an OpenAI-compatible model server carries the trace on."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from keel.api import create_app
from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


class _Model(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        _Model.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[str]:
    _Model.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_callers_trace_continues_through_keel_to_the_model_server(
    tmp_path: Path, settings: Settings, model_server: str
) -> None:
    from fastapi.testclient import TestClient

    app = App(
        config_from_dict(
            {"app": {"name": "t"}, "agent": {"retrieve": False}, "model": {"id": "openai:m"}},
            base_dir=tmp_path,
        ),
        settings=settings.model_copy(update={"openai_base_url": model_server}),
    )
    try:
        api = create_app(app)
        key, _ = api.state.gateway.keys.create("t", ["chat", "traces:read"])
        headers: dict[str, Any] = {"Authorization": f"Bearer {key}"}
        with TestClient(api) as client:
            plain = client.post("/v1/chat", json={"message": "hi"}, headers=headers)
            assert plain.status_code == 200 and plain.json()["trace_id"] != CALLER_TRACE
            traced = client.post(
                "/v1/chat",
                json={"message": "hi again"},
                headers={**headers, "traceparent": TRACEPARENT, "tracestate": "vendor=1"},
            )
            assert traced.status_code == 200, traced.text
            assert traced.json()["trace_id"] == CALLER_TRACE  # Keel's spans joined the trace
            openai_route = client.post(
                "/v1/chat/completions",
                json={"model": "t", "messages": [{"role": "user", "content": "hey"}]},
                headers={**headers, "traceparent": TRACEPARENT},
            )
            assert openai_route.status_code == 200, openai_route.text
        # the calls to the model server carried the turn's trace on
        outgoing = [h.get("traceparent", "") for h in _Model.seen]
        assert len(outgoing) == 3
        assert outgoing[1].split("-")[1] == CALLER_TRACE
        assert outgoing[2].split("-")[1] == CALLER_TRACE
        assert outgoing[0].split("-")[1] == plain.json()["trace_id"]
    finally:
        app.close()
