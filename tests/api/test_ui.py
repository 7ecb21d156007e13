"""The web console in process: off unless enabled, sign-in with an API key in an HttpOnly
cookie, the same scopes as the API (no data without them), CSRF refusals, every page renders,
and nothing in the templates or static files points outside the gateway."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.api.ui import STATIC, TEMPLATES
from keel.ops.feedback import FeedbackStore
from keel.testing import ScriptedChatModel

call = ScriptedChatModel.tool_call
UI = {"ui": {"enabled": True}}
QUESTION = "How long do refunds take?"


def login(gw: Any, key: str) -> str:
    """Sign in as the browser does; returns the CSRF token for later requests."""
    page = gw.client.get("/ui/login")
    assert page.status_code == 200
    csrf = gw.client.cookies.get("keel_csrf")
    assert csrf and f'content="{csrf}"' in page.text
    r = gw.client.post(
        "/ui/login",
        data={"key": key, "csrf": csrf, "next": "/ui"},
        headers={"Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("keel_console="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/ui" in session
    assert "Secure" not in session  # plain http here; https requests get Secure
    token = gw.client.cookies.get("keel_csrf")
    assert token and token != csrf  # a new token for the new session
    return str(token)


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.strip().split("\n\n"):
        lines = block.split("\n")
        out.append((lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])))
    return out


def test_console_is_off_unless_enabled(gateway: Callable[..., Any]) -> None:
    gw = gateway(["hi"])
    for path in ("/ui", "/ui/login", "/ui/static/console.css", "/ui/traces"):
        r = gw.client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith(
            "application/problem+json"
        )


def test_login_refuses_bad_keys_and_foreign_posts(gateway: Callable[..., Any]) -> None:
    gw = gateway(["hi"], **UI)
    r = gw.client.get("/ui/traces", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/traces"
    page = gw.client.get("/ui/login")
    assert "default-src 'none'; script-src 'self'" in page.headers["content-security-policy"]
    csrf = gw.client.cookies.get("keel_csrf")
    bad = gw.client.post(
        "/ui/login", data={"key": "keel_000000000000_" + "x" * 43, "csrf": csrf, "next": "/ui"}
    )
    assert bad.status_code == 401 and "Invalid or revoked API key" in bad.text
    assert "keel_console" not in gw.client.cookies

    good = gw.key("chat")
    no_token = gw.client.post("/ui/login", data={"key": good, "next": "/ui"})
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    foreign = gw.client.post(
        "/ui/login",
        data={"key": good, "csrf": csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert foreign.status_code == 403 and "keel_console" not in gw.client.cookies
    other_origin = gw.client.post(
        "/ui/login", data={"key": good, "csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert other_origin.status_code == 403 and "keel_console" not in gw.client.cookies
    # an open redirect is not possible through ?next=
    ok = gw.client.post(
        "/ui/login",
        data={"key": good, "csrf": csrf, "next": "//evil.example/ui"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/ui"


def test_a_key_without_traces_read_sees_no_traces(gateway: Callable[..., Any]) -> None:
    gw = gateway(["Refunds take 30 days."], **UI)
    answer = gw.client.post(
        "/v1/chat", json={"message": QUESTION}, headers=gw.headers(gw.key("chat"))
    ).json()
    gw.app.tracing.flush()
    login(gw, gw.key("chat", "feedback"))
    home = gw.client.get("/ui")
    assert home.status_code == 200 and "Playground" in home.text
    assert 'href="/ui/traces"' not in home.text
    for path in (
        "/ui/traces",
        f"/ui/traces/{answer['trace_id']}",
        "/ui/evals",
        "/ui/releases",
    ):
        r = gw.client.get(path)
        assert r.status_code == 403, path
        assert "lacks the 'traces:read' scope" in html.unescape(r.text)
        assert QUESTION not in r.text and answer["trace_id"] not in r.text.replace(path, "")


def test_signed_out_and_revoked_keys(gateway: Callable[..., Any]) -> None:
    gw = gateway(["hi"], **UI)
    r = gw.client.get("/ui/api/chunk", params={"id": "x"})
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem")
    key = gw.key("chat", "traces:read", name="soon-revoked")
    csrf = login(gw, key)
    assert gw.client.get("/ui/traces").status_code == 200
    gw.keys.revoke(gw.keys.list()[-1].id)
    r = gw.client.get("/ui/traces", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    assert "no longer valid" in gw.client.get("/ui/login?expired=1").text
    out = gw.client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and "keel_console" not in gw.client.cookies


def test_playground_chat_approval_feedback_and_trace(gateway: Callable[..., Any]) -> None:
    gw = gateway(
        ["Refunds take 30 days [1].", call("refund_order", {"order_id": "A"}), "Refunded A."],
        **UI,
    )
    gw.app.ingest()
    csrf = login(gw, gw.key("chat", "feedback", "traces:read", "orders:write"))
    page = gw.client.get("/ui/playground")
    assert page.status_code == 200 and '<script src="/ui/static/playground.js"' in page.text
    assert "<script>" not in page.text  # nothing inline: the CSP allows none

    body = {"message": QUESTION}
    assert gw.client.post("/ui/api/chat", json=body).status_code == 403  # no CSRF header
    as_form = gw.client.post(
        "/ui/api/chat",
        content=json.dumps(body),
        headers={"X-Keel-CSRF": csrf, "Content-Type": "text/plain"},
    )
    assert as_form.status_code == 415  # what a cross-site form could send
    wrong = gw.client.post("/ui/api/chat", json=body, headers={"X-Keel-CSRF": "nope"})
    assert wrong.status_code == 403 and wrong.json()["type"].endswith("/csrf")
    headers = {"X-Keel-CSRF": csrf}
    with gw.client.stream("POST", "/ui/api/chat", json=body, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events("".join(r.iter_text()))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and "token" in kinds and "citation" in kinds
    assert "".join(d["text"] for k, d in events if k == "token") == "Refunds take 30 days [1]."
    done = events[-1][1]
    cite = next(d for k, d in events if k == "citation")

    chunk = gw.client.get("/ui/api/chunk", params={"id": cite["chunk_id"]})
    assert chunk.status_code == 200 and "Refunds take 30 days." in chunk.json()["text"]
    assert (
        "Refunds take 30 days." in gw.client.get("/ui/chunk", params={"id": cite["chunk_id"]}).text
    )
    assert gw.client.get("/ui/api/chunk", params={"id": "nope"}).status_code == 404

    # a tool that needs approval, in the same thread
    body = {"message": "refund order A", "thread_id": done["thread_id"]}
    with gw.client.stream("POST", "/ui/api/chat", json=body, headers=headers) as r:
        events = sse_events("".join(r.iter_text()))
    pending = next(d for k, d in events if k == "approval_required")["calls"][0]
    url = f"/ui/api/threads/{done['thread_id']}/approvals"
    decision = {
        "decision": {pending["id"]: {"action": "approve", "args_hash": pending["args_hash"]}}
    }
    assert gw.client.post(url, json=decision).status_code == 403  # no CSRF header
    resumed = gw.client.post(url, json=decision, headers=headers)
    assert resumed.status_code == 200 and resumed.json()["text"] == "Refunded A."

    fb = {"trace_id": done["trace_id"], "score": 0, "comment": "too vague"}
    assert gw.client.post("/ui/api/feedback", json=fb).status_code == 403
    assert gw.client.post("/ui/api/feedback", json=fb, headers=headers).status_code == 201
    stored = FeedbackStore(gw.app.engine).all(done["trace_id"])
    assert [(f["score"], f["comment"]) for f in stored] == [(0.0, "too vague")]

    listing = gw.client.get("/ui/traces")
    assert listing.status_code == 200 and f"/ui/traces/{done['trace_id']}" in listing.text
    assert QUESTION in listing.text
    filtered = gw.client.get("/ui/traces", params={"status": "error"})
    assert f"/ui/traces/{done['trace_id']}" not in filtered.text
    assert gw.client.get("/ui/traces", params={"since": "yesterday"}).status_code == 422
    trace = gw.client.get(f"/ui/traces/{done['trace_id']}")
    assert trace.status_code == 200
    for text in ("keel.turn", "keel.retrieve", "too vague", QUESTION, "Refunds take 30 days [1]."):
        assert text in trace.text, text
    assert re.search(r'<rect x="[\d.]+" y="1" width="[\d.]+"', trace.text)  # the waterfall
    assert gw.client.get("/ui/traces/" + "f" * 32).status_code == 404


def test_audit_page_shows_the_log_to_admins_only(gateway: Callable[..., Any]) -> None:
    gw = gateway(["one"], **UI)
    reader = gw.key("traces:read", name="reader")
    gw.client.get("/v1/audit", headers=gw.headers(reader))  # denied: recorded
    login(gw, reader)
    assert gw.client.get("/ui/audit").status_code == 403
    assert 'href="/ui/audit"' not in gw.client.get("/ui/traces").text
    login(gw, gw.key("admin", name="admin"))
    page = gw.client.get("/ui/audit")
    assert page.status_code == 200, page.text
    assert "access.denied" in page.text and "/v1/audit" in page.text
    assert "chain intact" in page.text and 'href="/ui/audit"' in page.text


def test_releases_page_draws_charts(gateway: Callable[..., Any]) -> None:
    gw = gateway(["one", "two"], **UI)
    key = gw.headers(gw.key("chat"))
    for q in ("first question", "second question"):
        gw.client.post("/v1/chat", json={"message": q}, headers=key)
    gw.app.tracing.flush()
    login(gw, gw.key("traces:read"))
    page = gw.client.get("/ui/releases")
    assert page.status_code == 200
    assert page.text.count('<svg class="chart') == 4
    assert re.search(r'<rect class="bar"[^>]*><title>[^<]*: 2</title>', page.text)  # 2 requests
    assert "No releases recorded" in page.text and "no stable release deployed" in page.text
    assert gw.client.get("/ui/releases", params={"window": "7d"}).status_code == 200
    assert gw.client.get("/ui/releases", params={"window": "2y"}).status_code == 422


def test_eval_pages(gateway: Callable[..., Any], record_eval_runs: Callable[..., Any]) -> None:
    gw = gateway([], **UI)
    a, b = record_eval_runs(gw.app.engine)
    login(gw, gw.key("traces:read"))
    listing = gw.client.get("/ui/evals")
    assert listing.status_code == 200 and f"/ui/evals/{a}" in listing.text
    run = gw.client.get(f"/ui/evals/{a}")
    assert run.status_code == 200 and "keel eval: smoke" in run.text and "Scores" in run.text
    assert "&lt;b&gt;question&lt;/b&gt; alpha" in run.text  # escaped, as in the HTML report
    assert '<link rel="stylesheet" href="/ui/report.css">' in run.text
    css = gw.client.get("/ui/report.css")
    assert css.headers["content-type"].startswith("text/css") and ".report table{" in css.text
    assert "\nbody{" not in css.text
    compare = gw.client.get("/ui/evals/compare", params={"a": a, "b": b})
    assert compare.status_code == 200
    text = compare.text
    assert "2 case/metric pairs got worse" in text
    cases = text[text.index("<h2>Cases</h2>") :]
    assert cases.index("beta") < cases.index("gamma") < cases.index("alpha")  # worse first
    assert gw.client.get("/ui/evals/run-nope").status_code == 404
    assert gw.client.get("/ui/evals/compare", params={"a": a, "b": "x"}).status_code == 404


OUTSIDE = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.I)


@pytest.mark.parametrize("folder", [TEMPLATES, STATIC], ids=["templates", "static"])
def test_nothing_points_outside_the_gateway(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    found = [
        f"{p.name}: {m.group(0)}"
        for p in files
        for m in re.finditer(r"https?://\S+|" + OUTSIDE.pattern, p.read_text(encoding="utf-8"))
    ]
    assert found == []
    for p in files:
        text = p.read_text(encoding="utf-8")
        assert "@import" not in text and "url(" not in text, p.name


def test_serve_ui_flag_and_make_run_print_the_console(make_app: Callable[..., Any]) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from keel.api import create_app
    from keel.cli import cli

    app = make_app({})  # [ui] enabled = false
    with TestClient(create_app(app, ui=True)) as client:
        assert client.get("/ui/login").status_code == 200
    assert "--ui" in CliRunner().invoke(cli, ["serve", "--help"]).output
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    assert "http://$(HOST):$(PORT)/ui" in makefile


def test_chart_buckets_from_the_trace_store(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from keel.api.ui._charts import bar_chart, buckets, charts
    from keel.db import make_engine
    from keel.ops.tracing import migrate, traces_table

    engine = make_engine(None, tmp_path)
    migrate(engine)
    now = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    rows = [  # (minutes ago, latency ms, guard outcome, cost, release)
        (10, 100.0, "pass", 0.001, "rel-a"),
        (20, 300.0, "tripped", 0.002, "rel-a"),
        (25, 200.0, "flagged", None, "rel-b"),
        (90, 50.0, None, 0.004, "rel-b"),
        (60 * 30, 10.0, None, None, "rel-a"),  # outside the day
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(traces_table),
            [
                {
                    "trace_id": f"{i:032x}",
                    "name": "keel.turn",
                    "started_at": now - timedelta(minutes=ago),
                    "duration_ms": ms,
                    "status": "ok",
                    "guard_outcome": guard,
                    "cost_usd": cost,
                    "release_id": release,
                }
                for i, (ago, ms, guard, cost, release) in enumerate(rows)
            ],
        )
    day = buckets(engine, "24h", now=now)
    assert len(day) == 24 and day[-1].start == datetime(2025, 3, 1, 12, tzinfo=UTC)
    last, before = day[-1], day[-2]
    assert (last.requests, last.guard_trips, last.p50_ms) == (3, 2, 200.0)
    assert round(last.cost_usd, 6) == 0.003 and (before.requests, before.p50_ms) == (1, 50.0)
    assert sum(b.requests for b in day) == 4
    only_b = buckets(engine, "24h", release_id="rel-b", now=now)
    assert sum(b.requests for b in only_b) == 2
    drawn = charts(day, "24h")
    assert [c["title"] for c in drawn] == ["Requests", "Latency p50", "Guard trips", "Cost"]
    assert drawn[0]["total"] == "4" and drawn[1]["total"] == "150 ms"
    svg = bar_chart("<x>", [("a<b", 1.0), ("c", None)])
    assert "<x>" not in svg and "&lt;x&gt;" in svg and "a&lt;b: 1" in svg
    assert "no traces" in bar_chart("empty", [("a", None), ("b", None)])
    assert "no traces" not in bar_chart("zero", [("a", 0.0)])


def test_api_responses_keep_their_strict_csp(gateway: Callable[..., Any]) -> None:
    gw = gateway([], **UI)
    assert gw.client.get("/healthz").headers["content-security-policy"] == (
        "default-src 'none'; frame-ancestors 'none'"
    )
    ui = gw.client.get("/ui/login").headers["content-security-policy"]
    assert "script-src 'self'" in ui and "'unsafe-inline'" not in ui


def test_releases_page_shows_serving_releases_health_and_the_last_drift_check(
    gateway: Callable[..., Any],
) -> None:
    import numpy as np

    from keel.ops.drift import detect_drift
    from keel.ops.monitor import record_check
    from keel.ops.releases import ReleaseStore

    gw = gateway([], **UI)
    store = ReleaseStore(gw.app.engine, gw.app.name)
    v1 = store.create(gw.app.release_content(), note="v1").id
    v2 = store.create({**gw.app.release_content(), "git_commit": "next"}, note="v2").id
    store.set_stable(v1, "first")
    store.set_canary(v2, 0.25, "try")
    rng = np.random.default_rng(0)
    report = detect_drift(rng.normal(size=(20, 4)), rng.normal(2.0, 1.0, size=(20, 4)))
    record_check(gw.app.engine, gw.app.name, report, reference="cases.jsonl", window="200")
    login(gw, gw.key("traces:read"))
    page = gw.client.get("/ui/releases")
    assert page.status_code == 200
    assert v1 in page.text and v2 in page.text and "25%" in page.text and "75%" in page.text
    assert "not available" not in page.text and "no health data" not in page.text
    assert "alert" in page.text and "mmd_p_value" in page.text and "cases.jsonl" in page.text
