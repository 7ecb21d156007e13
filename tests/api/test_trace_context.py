"""W3C trace context: a caller's traceparent continues into Keel's spans, and Keel's call to
an OpenAI-compatible model server carries the trace on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from keel.api import create_app
from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


def test_a_callers_trace_continues_through_keel_to_the_model_server(
    tmp_path: Path, settings: Settings, model_server: Callable[..., Any]
) -> None:
    model = model_server()
    from fastapi.testclient import TestClient

    app = App(
        config_from_dict(
            {"app": {"name": "t"}, "agent": {"retrieve": False}, "model": {"id": "openai:m"}},
            base_dir=tmp_path,
        ),
        settings=settings.model_copy(update={"openai_base_url": model.url}),
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
        outgoing = [h.get("traceparent", "") for h in model.seen]
        assert len(outgoing) == 3
        assert outgoing[1].split("-")[1] == CALLER_TRACE
        assert outgoing[2].split("-")[1] == CALLER_TRACE
        assert outgoing[0].split("-")[1] == plain.json()["trace_id"]
    finally:
        app.close()
