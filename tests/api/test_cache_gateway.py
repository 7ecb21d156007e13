"""The semantic cache behind the gateway: per-key partitions, the flag in JSON, SSE and the
OpenAI-compatible extras, and the hit/miss counter."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Q = "How do I cancel my subscription?"
PARAPHRASE = "How can I cancel my subscription?"


def _sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines.get("event", ""), json.loads(lines.get("data", "null"))))
    return events


def test_cache_hits_per_key_and_is_counted(gateway: Callable[..., Any]) -> None:
    gw = gateway([f"answer {i}" for i in range(5)], cache={"enabled": True, "threshold": 0.9})
    a, b = gw.headers(gw.key("chat", name="a")), gw.headers(gw.key("chat", name="b"))

    first = gw.client.post("/v1/chat", json={"message": Q}, headers=a).json()
    assert first["cache_hit"] is False and first["cache"]["hit"] is False
    hit = gw.client.post("/v1/chat", json={"message": PARAPHRASE}, headers=a).json()
    assert hit["cache_hit"] is True and hit["text"] == first["text"] == "answer 0"
    assert hit["usage"]["total_tokens"] == 0 and hit["trace_id"] != first["trace_id"]

    other_key = gw.client.post("/v1/chat", json={"message": Q}, headers=b).json()
    assert other_key["cache_hit"] is False and other_key["text"] == "answer 1"

    streamed = gw.client.post("/v1/chat", json={"message": Q, "stream": True}, headers=a)
    events = _sse(streamed.text)
    assert events[0] == ("token", {"text": "answer 0"})
    assert events[-1][0] == "done" and events[-1][1]["cache_hit"] is True

    body = {"model": gw.app.name, "messages": [{"role": "user", "content": Q}]}
    compat = gw.client.post("/v1/chat/completions", json=body, headers=b).json()
    assert compat["keel"]["cache_hit"] is True
    assert compat["choices"][0]["message"]["content"] == "answer 1"

    metrics = gw.client.get("/metrics").text
    assert 'keel_cache_requests_total{result="hit"} 3.0' in metrics
    assert 'keel_cache_requests_total{result="miss"} 2.0' in metrics


def test_cache_off_counts_nothing(gateway: Callable[..., Any]) -> None:
    gw = gateway(["one", "two"])
    key = gw.headers(gw.key("chat"))
    for _ in range(2):
        body = gw.client.post("/v1/chat", json={"message": Q}, headers=key).json()
        assert body["cache_hit"] is False and body["cache"] is None
    assert "keel_cache_requests_total{" not in gw.client.get("/metrics").text
