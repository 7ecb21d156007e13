"""The gateway in process: auth, scopes, threads, approvals, limits, errors, SSE."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from keel.testing import ScriptedChatModel

call = ScriptedChatModel.tool_call
PROBLEM = "application/problem+json"


def problem(response: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["detail"] and "Traceback" not in response.text
    if kind:
        assert body["type"].endswith("/" + kind)
    return body


def test_health_is_open_everything_else_needs_a_key(gateway: Callable[..., Any]) -> None:
    gw = gateway(["hi"])
    assert gw.client.get("/healthz").json() == {"status": "ok"}
    problem(gw.client.post("/v1/chat", json={"message": "hi"}), 401, "unauthorized")
    bad = {"Authorization": "Bearer keel_000000000000_" + "x" * 43}
    problem(gw.client.post("/v1/chat", json={"message": "hi"}, headers=bad), 401)
    key = gw.key("chat")
    r = gw.client.post("/v1/chat", json={"message": "hi"}, headers=gw.headers(key))
    assert r.status_code == 200 and r.json()["text"] == "hi"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-request-id"]
    assert len(r.json()["trace_id"]) == 32


def test_scopes_are_checked_per_endpoint(gateway: Callable[..., Any]) -> None:
    gw = gateway()
    chat_only = gw.headers(gw.key("chat"))
    problem(
        gw.client.post(
            "/v1/ingest", json={"documents": [{"id": "a", "text": "x"}]}, headers=chat_only
        ),
        403,
        "forbidden",
    )
    fb = {"trace_id": "0" * 32, "score": 1}
    problem(gw.client.post("/v1/feedback", json=fb, headers=chat_only), 403)
    # the scope is enough to be heard; a trace that does not exist is 404
    unknown = gw.client.post("/v1/feedback", json=fb, headers=gw.headers(gw.key("feedback")))
    problem(unknown, 404)


def test_a_key_without_a_tool_scope_cannot_make_the_agent_run_it(
    gateway: Callable[..., Any],
) -> None:
    gw = gateway([call("refund_order", {"order_id": "A"}), "no"])
    r = gw.client.post("/v1/chat", json={"message": "refund A"}, headers=gw.headers(gw.key("chat")))
    body = r.json()
    assert body["pending_approval"] is None and body["tool_calls"][0]["status"] == "refused"


def test_threads_belong_to_their_key_and_approvals_work(gateway: Callable[..., Any]) -> None:
    gw = gateway([call("refund_order", {"order_id": "A"}), "Refunded A."])
    owner = gw.headers(gw.key("chat", "orders:write"))
    other = gw.headers(gw.key("chat", "orders:write"))
    r = gw.client.post("/v1/chat", json={"message": "refund A", "thread_id": "t1"}, headers=owner)
    body = r.json()
    assert body["stop_reason"] == "approval_required"
    pending = body["pending_approval"][0]

    problem(gw.client.get("/v1/threads/t1", headers=other), 404)
    problem(
        gw.client.post("/v1/threads/t1/approvals", json={"decision": "approve"}, headers=other), 404
    )
    view = gw.client.get("/v1/threads/t1", headers=owner).json()
    assert view["pending_approval"][0]["id"] == pending["id"]

    wrong = {"decision": {pending["id"]: {"action": "approve", "args_hash": "f" * 16}}}
    problem(gw.client.post("/v1/threads/t1/approvals", json=wrong, headers=owner), 400)
    done = gw.client.post(
        "/v1/threads/t1/approvals",
        json={
            "decision": {pending["id"]: {"action": "approve", "args_hash": pending["args_hash"]}}
        },
        headers=owner,
    )
    assert done.status_code == 200 and done.json()["text"] == "Refunded A."
    view = gw.client.get("/v1/threads/t1", headers=owner).json()
    assert [m["role"] for m in view["messages"]] == ["human", "ai", "tool", "ai"]
    assert gw.client.delete("/v1/threads/t1", headers=other).status_code == 404
    assert gw.client.delete("/v1/threads/t1", headers=owner).status_code == 204
    problem(gw.client.get("/v1/threads/t1", headers=owner), 404)


def test_sse_stream_has_tokens_and_done(gateway: Callable[..., Any]) -> None:
    gw = gateway(["Refunds take 30 days [1]."])
    gw.app.ingest()
    key = gw.headers(gw.key("chat"))
    with gw.client.stream(
        "POST", "/v1/chat", json={"message": "refunds?", "stream": True}, headers=key
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = [
        (block.split("\n")[0][len("event: ") :], json.loads(block.split("\n")[1][len("data: ") :]))
        for block in raw.strip().split("\n\n")
    ]
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and "token" in kinds and "citation" in kinds
    assert "".join(d["text"] for k, d in events if k == "token") == "Refunds take 30 days [1]."
    done = events[-1][1]
    assert done["usage"]["total_tokens"] > 0 and len(done["trace_id"]) == 32


def test_bad_requests_are_problems(gateway: Callable[..., Any]) -> None:
    gw = gateway(limits={"max_body_bytes": 2048, "max_message_chars": 50})
    key = gw.headers(gw.key("chat"))
    problem(
        gw.client.post("/v1/chat", content="hi", headers={**key, "content-type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    problem(gw.client.post("/v1/chat", json={"message": "x" * 3000}, headers=key), 413)
    problem(gw.client.post("/v1/chat", json={"message": "x" * 60}, headers=key), 413)
    body = problem(gw.client.post("/v1/chat", json={"mesage": "hi"}, headers=key), 422)
    assert body["errors"]
    problem(
        gw.client.post(
            "/v1/chat", content="{not json", headers={**key, "content-type": "application/json"}
        ),
        422,
    )
    problem(gw.client.get("/v1/nothing", headers=key), 404)
    problem(
        gw.client.post("/v1/search", json={"query": "x", "where": {"$bad": 1}}, headers=key), 400
    )


def test_model_provider_failure_is_502(gateway: Callable[..., Any]) -> None:
    gw = gateway([RuntimeError("provider exploded")], model={"max_retries": 0})
    r = gw.client.post("/v1/chat", json={"message": "hi"}, headers=gw.headers(gw.key("chat")))
    body = problem(r, 502, "model-provider-failed")
    assert "provider exploded" in body["detail"]


def test_rate_limit_and_token_budget(gateway: Callable[..., Any]) -> None:
    gw = gateway(["a"] * 10, limits={"requests_per_minute": 2, "tokens_per_day": 1_000_000})
    key = gw.headers(gw.key("chat"))
    for _ in range(2):
        assert gw.client.post("/v1/chat", json={"message": "hi"}, headers=key).status_code == 200
    r = gw.client.post("/v1/chat", json={"message": "hi"}, headers=key)
    problem(r, 429, "rate-limited")
    assert int(r.headers["retry-after"]) >= 1
    # another key has its own budget
    other = gw.headers(gw.key("chat"))
    assert gw.client.post("/v1/chat", json={"message": "hi"}, headers=other).status_code == 200

    tight = gateway(["word " * 50] * 3, limits={"tokens_per_day": 10})
    k = tight.headers(tight.key("chat"))
    assert tight.client.post("/v1/chat", json={"message": "hi"}, headers=k).status_code == 200
    r = tight.client.post("/v1/chat", json={"message": "hi"}, headers=k)
    assert "token budget" in problem(r, 429)["detail"]


def test_concurrent_requests_on_one_thread_get_409(gateway: Callable[..., Any]) -> None:
    def slow(messages: list[Any]) -> str:
        time.sleep(0.5)
        return "slow answer"

    gw = gateway([slow, "fast"])
    key = gw.headers(gw.key("chat"))
    results: list[int] = []

    def first() -> None:
        results.append(
            gw.client.post(
                "/v1/chat", json={"message": "a", "thread_id": "busy"}, headers=key
            ).status_code
        )

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.15)
    second = gw.client.post("/v1/chat", json={"message": "b", "thread_id": "busy"}, headers=key)
    t.join()
    problem(second, 409, "conflict")
    assert results == [200]
    view = gw.client.get("/v1/threads/busy", headers=key).json()
    assert [m["role"] for m in view["messages"]] == ["human", "ai"]  # never interleaved


def test_ingest_json_and_files_as_jobs_then_search(gateway: Callable[..., Any]) -> None:
    gw = gateway(limits={"requests_per_minute": 100_000})  # the test polls the jobs
    key = gw.headers(gw.key("ingest", "chat"))
    docs = {"documents": [{"id": "faq-1", "text": "Gift cards never expire.", "title": "FAQ"}]}
    job = gw.client.post("/v1/ingest", json=docs, headers=key)
    assert job.status_code == 202
    files = [("files", ("hours.md", b"# Hours\n\nWe open at 9 on weekdays.\n", "text/markdown"))]
    job2 = gw.client.post("/v1/ingest", files=files, headers=key)
    assert job2.status_code == 202
    for j in (job.json()["id"], job2.json()["id"]):
        for _ in range(200):
            state = gw.client.get(f"/v1/ingest/{j}", headers=key).json()
            if state["state"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert state["state"] == "done", state
    hits = gw.client.post(
        "/v1/search", json={"query": "when do you open", "k": 3}, headers=key
    ).json()["hits"]
    assert hits[0]["doc_id"] == "uploads/hours.md"
    hits = gw.client.post("/v1/search", json={"query": "gift card expiry"}, headers=key).json()
    assert hits["hits"][0]["doc_id"] == "uploads/faq-1"  # a key without admin: under uploads/
    problem(gw.client.get("/v1/ingest/nope", headers=key), 404)
    problem(
        gw.client.post("/v1/ingest", content=b"x", headers={**key, "content-type": "text/plain"}),
        415,
    )


def test_readyz_and_metrics(gateway: Callable[..., Any]) -> None:
    gw = gateway(["hi"])
    ready = gw.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    gw.client.post("/v1/chat", json={"message": "hi"}, headers=gw.headers(gw.key("chat")))
    metrics = gw.client.get("/metrics").text
    assert 'keel_http_requests_total{method="POST",route="/v1/chat",status="200"} 1.0' in metrics


def _sample(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when the series does not exist)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_model_metrics_record_each_model_call_in_a_real_turn(
    gateway: Callable[..., Any],
) -> None:
    """``keel_model_latency_seconds`` is one model call's latency and
    ``keel_model_errors_total`` counts failed calls (a retry included); the turn's wall time
    goes to ``keel_turn_latency_seconds``. Once only tests called the per-call recorder, so
    in production the error counter never moved and the model histogram held whole turns."""
    gw = gateway(
        [TimeoutError("slow"), "Refunds take 30 days.", ConnectionError("down"), ValueError("x")],
        model={"max_retries": 1},
    )
    headers = gw.headers(gw.key("chat"))
    ok = gw.client.post("/v1/chat", json={"message": "How long do refunds take?"}, headers=headers)
    assert ok.status_code == 200, ok.text
    calls = ok.json()["model_calls"]
    assert [bool(c["error"]) for c in calls] == [True, False]  # the timeout, then the answer
    text = gw.client.get("/metrics").text
    model = {"model": calls[0]["model"]}
    assert _sample(text, "keel_model_latency_seconds_count", **model) == 2
    assert _sample(text, "keel_model_errors_total", **model) == 1
    assert (
        _sample(text, "keel_model_tokens_total", kind="output", **model)
        == (calls[1]["output_tokens"])
    )
    assert calls[1]["output_tokens"] > 0
    assert _sample(text, "keel_turn_latency_seconds_count") == 1
    assert _sample(text, "keel_retrieval_requests_total") == 1
    # a turn where every call fails: both attempts count as errors
    failed = gw.client.post("/v1/chat", json={"message": "And exchanges?"}, headers=headers)
    assert failed.status_code == 502, failed.text
    text = gw.client.get("/metrics").text
    assert _sample(text, "keel_model_errors_total", **model) == 3
    assert _sample(text, "keel_turn_latency_seconds_count") == 1


@pytest.mark.redis
def test_limits_are_shared_through_redis(make_app: Callable[..., Any], redis_url: str) -> None:
    import uuid

    from keel.api.limits import KeyLimits

    key = f"k-{uuid.uuid4().hex}"
    a = KeyLimits(requests_per_minute=3, tokens_per_day=100, redis_url=redis_url)
    b = KeyLimits(requests_per_minute=3, tokens_per_day=100, redis_url=redis_url)
    assert a.admit(key) is None and b.admit(key) is None and a.admit(key) is None
    refused = b.admit(key)  # the fourth request, on another "instance"
    assert refused is not None and refused.retry_after >= 1
    other = f"k-{uuid.uuid4().hex}"
    a.spend_tokens(other, 150)
    refusal = b.admit(other)
    assert refusal is not None and "token budget" in refusal.reason


def test_the_gateway_audits_denied_access_and_serves_the_log_to_admins(
    gateway: Callable[..., Any],
) -> None:
    gw = gateway()
    chat = gw.key("chat")
    admin = gw.key("admin", name="admin")
    denied = gw.client.get("/v1/traces", headers=gw.headers(chat))
    assert denied.status_code == 403
    assert gw.client.get("/v1/audit", headers=gw.headers(chat)).status_code == 403
    log = gw.client.get("/v1/audit", headers=gw.headers(admin))
    assert log.status_code == 200, log.text
    body = log.json()
    assert body["intact"] is True
    denials = [e for e in body["entries"] if e["action"] == "access.denied"]
    assert [e["target"] for e in denials] == ["/v1/traces", "/v1/audit"]
    assert all(e["details"]["scope"] in ("traces:read", "admin") for e in denials)
