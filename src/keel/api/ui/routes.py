"""The console's pages and its JSON/SSE endpoints (all under ``/ui``, none in the OpenAPI
schema). Chat, approvals and feedback go through the same code as ``/v1/chat``,
``/v1/threads/{id}/approvals`` and ``/v1/feedback``."""

from __future__ import annotations

import hmac
import json
import secrets
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from markupsafe import Markup

from keel.api.keys import ApiKey
from keel.api.problems import Problem
from keel.api.routes._common import gateway
from keel.api.schemas import ApprovalRequest, ChatRequest, FeedbackRequest
from keel.api.ui import TEMPLATES

router = APIRouter(include_in_schema=False)

COOKIE = "keel_console"
CSRF_COOKIE = "keel_csrf"
CSRF_HEADER = "x-keel-csrf"
PATH = "/ui"


# -- errors the console shows as pages ------------------------------------------------------
class LoginRequired(Exception):
    def __init__(self, next_url: str, message: str = "") -> None:
        self.next_url = next_url
        self.message = message
        super().__init__(message or "sign in")


class UiError(Exception):
    def __init__(self, status: int, detail: str, key: ApiKey | None = None) -> None:
        self.status = status
        self.detail = detail
        self.key = key
        super().__init__(detail)


def install_handlers(api: FastAPI) -> None:
    @api.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        target = f"{PATH}/login?next={quote(exc.next_url, safe='/')}"
        if exc.message:
            target += "&expired=1"
        response = RedirectResponse(target, status_code=303)
        if exc.message:
            response.delete_cookie(COOKIE, path=PATH)
        return response

    @api.exception_handler(UiError)
    async def _error(request: Request, exc: UiError) -> Response:
        return render(
            request,
            "error.html",
            status=exc.status,
            key=exc.key,
            status_code=exc.status,
            detail=exc.detail,
        )


# -- templates ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = _ms
    env.filters["usd"] = _usd
    env.filters["when"] = _when
    env.filters["short"] = lambda v, n=12: "" if v is None else str(v)[:n]
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    env.filters["num"] = lambda v, fmt=".3f": "—" if v is None else format(v, fmt)
    return env


def _ms(value: Any) -> str:
    if value is None:
        return "—"
    v = float(value)
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def _usd(value: Any) -> str:
    return "—" if value is None else f"${float(value):.5f}"


def _when(value: Any) -> str:
    if not value:
        return "—"
    at: Any = value
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(at, datetime):
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        return str(at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    return str(value)


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def render(
    request: Request, template: str, *, status: int = 200, key: ApiKey | None = None, **ctx: Any
) -> HTMLResponse:
    """A page: the template with the signed-in key (for the navigation) and the CSRF token
    (set as a cookie when the browser has none yet)."""
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    html = (
        _env()
        .get_template(template)
        .render(
            key=key,
            can=(lambda scope: key is not None and key.allows(scope)),
            csrf=token,
            path=request.url.path,
            app_name=gateway(request).app.name,
            **ctx,
        )
    )
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    if request.cookies.get(CSRF_COOKIE) != token:
        _set_cookie(response, request, CSRF_COOKIE, token)
    return response


def _set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=PATH, httponly=True, samesite="strict", secure=_https(request)
    )


# -- auth -----------------------------------------------------------------------------------
def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def page_key(request: Request, scope: str | None) -> ApiKey:
    """The signed-in key for a page, holding ``scope`` (None: any valid key); else a redirect
    to the login page or an error page, never the page's data."""
    gw = gateway(request)
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired(_here(request))
    if scope is None:
        key = gw.keys.verify(token)
        if key is None:
            raise LoginRequired(_here(request), "the key is no longer valid")
        return key
    try:
        return gw.admit(request, token, scope)
    except Problem as problem:
        if problem.status == 401:
            raise LoginRequired(_here(request), problem.detail) from None
        raise UiError(problem.status, problem.detail, gw.keys.verify(token)) from None


def api_key(request: Request, scope: str) -> ApiKey:
    """The signed-in key for a console endpoint (errors as problem+json)."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise Problem(401, "sign in to the console first", type="unauthorized")
    return gateway(request).admit(request, token, scope)


def check_csrf(request: Request, presented: str | None) -> None:
    """Refuse a state-changing request that another site could have made: a cross-site
    ``Sec-Fetch-Site`` or ``Origin``, or a CSRF token that is not the cookie's."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise Problem(403, f"cross-site request refused (Sec-Fetch-Site: {site})", type="csrf")
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Problem(403, "cross-origin request refused", type="csrf")
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not presented or not hmac.compare_digest(cookie, presented):
        raise Problem(403, "missing or wrong CSRF token: reload the page", type="csrf")


def _safe_next(value: str | None) -> str:
    if not value or not value.startswith(PATH) or value.startswith("//") or "\\" in value:
        return PATH
    return value


# -- sign in and out ------------------------------------------------------------------------
@router.get("/ui/login")
def login_page(request: Request, next: str = PATH, expired: int = 0) -> HTMLResponse:
    message = "Your key is no longer valid: sign in again." if expired else None
    return render(request, "login.html", next=_safe_next(next), error=message)


@router.post("/ui/login")
def login(
    request: Request,
    key: str = Form(default="", max_length=200),
    csrf: str = Form(default="", max_length=200),
    next: str = Form(default=PATH, max_length=2000),
) -> Response:
    try:
        check_csrf(request, csrf)
    except Problem as problem:
        raise UiError(problem.status, problem.detail) from None
    target = _safe_next(next)
    found = gateway(request).keys.verify(key) if key.strip() else None
    if found is None:
        return render(
            request, "login.html", status=401, next=target, error="Invalid or revoked API key."
        )
    response = RedirectResponse(target, status_code=303)
    _set_cookie(response, request, COOKIE, key.strip())
    _set_cookie(response, request, CSRF_COOKIE, secrets.token_urlsafe(32))  # a new session
    return response


@router.post("/ui/logout")
def logout(request: Request, csrf: str = Form(default="", max_length=200)) -> Response:
    try:
        check_csrf(request, csrf)
    except Problem as problem:
        raise UiError(problem.status, problem.detail) from None
    response = RedirectResponse(f"{PATH}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PATH)
    response.delete_cookie(CSRF_COOKIE, path=PATH)
    return response


@router.get("/ui")
def home(request: Request) -> HTMLResponse:
    key = page_key(request, None)
    return render(request, "index.html", key=key)


# -- playground -----------------------------------------------------------------------------
@router.get("/ui/playground")
def playground(request: Request) -> HTMLResponse:
    key = page_key(request, "chat")
    gw = gateway(request)
    return render(
        request,
        "playground.html",
        key=key,
        description=gw.app.config.app.description,
        max_chars=gw.app.config.limits.max_message_chars,
    )


@router.post("/ui/api/chat")
def ui_chat(body: ChatRequest, request: Request) -> Any:
    """The playground's turn: always streamed, the same events as ``/v1/chat``."""
    from keel.api.routes.chat import chat_turn

    key = api_key(request, "chat")
    check_csrf(request, request.headers.get(CSRF_HEADER))
    # the console's signed-in key is the person at the keyboard
    return chat_turn(request, key, body.message, body.thread_id, stream=True, end_user=key.id)


@router.post("/ui/api/threads/{thread_id}/approvals")
def ui_approve(thread_id: str, body: ApprovalRequest, request: Request) -> Any:
    from keel.api.routes.chat import resume_turn

    key = api_key(request, "chat")
    check_csrf(request, request.headers.get(CSRF_HEADER))
    return resume_turn(request, key, thread_id, body.decision)


@router.post("/ui/api/feedback", status_code=201)
def ui_feedback(body: FeedbackRequest, request: Request) -> Any:
    from keel.api.routes.ops import store_feedback

    key = api_key(request, "feedback")
    check_csrf(request, request.headers.get(CSRF_HEADER))
    return store_feedback(request, key, body)


def _chunk(request: Request, chunk_id: str) -> dict[str, Any]:
    found = gateway(request).app.store().get([chunk_id])
    if not found:
        raise Problem(404, f"no chunk {chunk_id!r} in the index")
    c = found[0]
    return {
        "id": c.id,
        "doc_id": c.doc_id,
        "source": c.source,
        "title": c.title,
        "headings": list(c.headings),
        "page": c.page or None,
        "start": c.start,
        "end": c.end,
        "text": c.text,
    }


@router.get("/ui/api/chunk")
def ui_chunk(request: Request, id: str = Query(min_length=1, max_length=2000)) -> Any:
    """A cited chunk's text (the same knowledge ``/v1/search`` serves: ``chat`` scope)."""
    api_key(request, "chat")
    return JSONResponse(_chunk(request, id), headers={"Cache-Control": "no-store"})


@router.get("/ui/chunk")
def chunk_page(request: Request, id: str = Query(min_length=1, max_length=2000)) -> HTMLResponse:
    key = page_key(request, "chat")
    try:
        chunk = _chunk(request, id)
    except Problem as problem:
        raise UiError(problem.status, problem.detail, key) from None
    return render(request, "chunk.html", key=key, chunk=chunk)


# -- traces ---------------------------------------------------------------------------------
_SUMMARY = (
    "trace_id started_at duration_ms status app app_version index_version model thread_id "
    "key_id guard_outcome input_tokens output_tokens cost_usd question answer release_id "
    "cache_hit"
).split()


def _time_or_none(value: str | None, key: ApiKey) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UiError(422, f"not a valid time: {value!r} (use YYYY-MM-DDTHH:MM)", key) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/ui/traces")
def traces_page(
    request: Request,
    since: str | None = Query(default=None, max_length=40),
    until: str | None = Query(default=None, max_length=40),
    status: Literal["", "ok", "error"] = "",
    release: str = Query(default="", max_length=64),
    guard: Literal["", "none", "pass", "flagged", "tripped"] = "",
    min_latency_ms: str = Query(default="", max_length=20),
    limit: int = Query(default=100, ge=1, le=1000),
) -> HTMLResponse:
    key = page_key(request, "traces:read")
    gw = gateway(request)
    latency: float | None = None
    if min_latency_ms.strip():
        try:
            latency = max(0.0, float(min_latency_ms))
        except ValueError:
            raise UiError(422, f"not a number of milliseconds: {min_latency_ms!r}", key) from None
    gw.app.tracing.flush()
    rows = gw.app.tracing.list(
        since=_time_or_none(since, key),
        until=_time_or_none(until, key),
        status=status or None,
        release_id=release.strip() or None,
        guard_outcome=guard or None,
        min_latency_ms=latency,
        limit=limit,
    )
    filters = {
        "since": since or "",
        "until": until or "",
        "status": status,
        "release": release,
        "guard": guard,
        "min_latency_ms": min_latency_ms,
        "limit": limit,
    }
    return render(request, "traces.html", key=key, traces=rows, filters=filters)


def _span_rows(spans: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """The span tree flattened in order, each with its depth and its waterfall bar (x and
    width in a 1000-unit box)."""
    flat: list[tuple[int, dict[str, Any]]] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        flat.append((depth, node))
        for child in node.get("children", []):
            walk(child, depth + 1)

    for root in spans:
        walk(root, 0)
    if not flat:
        return [], 0.0
    t0 = min(n["start_ns"] for _, n in flat)
    end = max(n["start_ns"] + n["duration_ms"] * 1e6 for _, n in flat)
    total_ms = max((end - t0) / 1e6, 1e-6)
    rows = []
    for depth, n in flat:
        offset = (n["start_ns"] - t0) / 1e6
        rows.append(
            {
                "depth": min(depth, 12),
                "name": n["name"],
                "span_id": n["span_id"],
                "status": n["status"],
                "duration_ms": n["duration_ms"],
                "offset_ms": offset,
                "x": round(1000 * offset / total_ms, 1),
                "w": round(max(2.0, 1000 * n["duration_ms"] / total_ms), 1),
                "attributes": sorted(n.get("attributes", {}).items()),
                "events": n.get("events", []),
            }
        )
    return rows, total_ms


def _find_turn(spans: list[dict[str, Any]]) -> dict[str, Any]:
    from keel.ops.semconv import TURN_SPAN, find_span

    turn = find_span(spans, TURN_SPAN)
    return dict(turn.get("attributes", {})) if turn is not None else {}


@router.get("/ui/traces/{trace_id}")
def trace_page(trace_id: str, request: Request) -> HTMLResponse:
    from keel.ops.feedback import FeedbackStore

    key = page_key(request, "traces:read")
    gw = gateway(request)
    gw.app.tracing.flush()
    found = gw.app.tracing.get(trace_id)
    if found is None:
        raise UiError(404, f"no trace {trace_id!r}", key)
    summary = {k: found.get(k) for k in _SUMMARY}
    summary["trace_id"] = trace_id
    rows, total_ms = _span_rows(found["spans"])
    turn = _find_turn(found["spans"])
    versions = [
        ("app", summary["app_version"] or turn.get("keel.app.version")),
        ("index", summary["index_version"] or turn.get("keel.index.version")),
        ("model", summary["model"] or turn.get("gen_ai.request.model")),
        *sorted(
            (k.removeprefix("keel.prompt.").replace("_", " "), v)
            for k, v in turn.items()
            if k.startswith("keel.prompt.")
        ),
        ("release", summary["release_id"]),
        ("git commit", turn.get("keel.git.commit")),
    ]
    return render(
        request,
        "trace.html",
        key=key,
        t=summary,
        rows=rows,
        total_ms=total_ms,
        versions=[(name, v) for name, v in versions if v],
        citations=turn.get("keel.citations") or [],
        stop_reason=turn.get("keel.stop_reason"),
        feedback=FeedbackStore(gw.app.engine).all(trace_id),
    )


# -- evals ----------------------------------------------------------------------------------
def _eval_store(request: Request) -> Any:
    from keel.evals.store import EvalRunStore

    return EvalRunStore(gateway(request).app.engine)


@router.get("/ui/evals")
def evals_page(request: Request, suite: str = Query(default="", max_length=256)) -> HTMLResponse:
    key = page_key(request, "traces:read")
    runs = _eval_store(request).list(limit=200, suite=suite or None)
    metrics: list[str] = []
    for r in runs:
        for m in r["aggregates"]:
            if m not in metrics:
                metrics.append(m)
    return render(request, "evals.html", key=key, runs=runs, metrics=metrics[:6], suite=suite)


def _gate_of(meta: dict[str, Any], run: Any) -> Any:
    from keel.evals.gate import GateResult, MetricVerdict, gate

    data = meta.get("gate")
    if data:
        fields = set(MetricVerdict.__dataclass_fields__)
        return GateResult(
            passed=bool(data.get("passed", meta["passed"])),
            verdicts=[
                MetricVerdict(**{k: v for k, v in verdict.items() if k in fields})
                for verdict in data.get("verdicts", [])
            ],
            worse_cases=list(data.get("worse_cases", [])),
            reasons=list(data.get("reasons", [])),
        )
    return gate(run, thresholds=dict.fromkeys(run.aggregates), higher_is_better=_hib(run))


def _hib(*runs: Any) -> dict[str, bool]:
    from keel.evals.metrics import METRICS

    return {
        m: METRICS[m].higher_is_better if m in METRICS else True
        for run in runs
        for m in run.aggregates
    }


@router.get("/ui/report.css")
def report_css() -> Response:
    """The HTML report's styles, scoped to the console's ``.report`` element."""
    return Response(
        _scoped_report_css(), media_type="text/css", headers={"Cache-Control": "max-age=3600"}
    )


@lru_cache(maxsize=1)
def _scoped_report_css() -> str:
    from keel.evals.reports import REPORT_CSS

    out = []
    for rule in REPORT_CSS.split("}"):
        if "{" not in rule:
            continue
        selectors, body = rule.split("{", 1)
        scoped = ",".join(
            ".report" if s.strip() == "body" else f".report {s.strip()}"
            for s in selectors.split(",")
        )
        out.append(f"{scoped}{{{body}}}")
    return "\n".join(out) + "\n"


@router.get("/ui/evals/compare")
def eval_compare(
    request: Request,
    a: str = Query(min_length=1, max_length=64),
    b: str = Query(min_length=1, max_length=64),
) -> HTMLResponse:
    """Run ``b`` against run ``a`` as its baseline: per-case differences, worse first."""
    from keel.evals.gate import gate
    from keel.evals.reports import render_body

    key = page_key(request, "traces:read")
    store = _eval_store(request)
    found_a, found_b = store.get(a), store.get(b)
    for rid, found in ((a, found_a), (b, found_b)):
        if found is None:
            raise UiError(404, f"no eval run {rid!r}", key)
    assert found_a is not None and found_b is not None
    (meta_a, run_a), (meta_b, run_b) = found_a, found_b
    hib = _hib(run_a, run_b)
    result = gate(run_b, thresholds=dict.fromkeys(hib), higher_is_better=hib, baseline=run_a)
    return render(
        request,
        "eval_compare.html",
        key=key,
        a=meta_a,
        b=meta_b,
        worse=result.worse_cases,
        verdicts=result.verdicts,
        body=Markup(render_body(run_b, result, baseline=run_a)),  # escaped inside
    )


@router.get("/ui/evals/{run_id}")
def eval_run_page(run_id: str, request: Request) -> HTMLResponse:
    from keel.evals.reports import render_body

    key = page_key(request, "traces:read")
    store = _eval_store(request)
    found = store.get(run_id)
    if found is None:
        raise UiError(404, f"no eval run {run_id!r}", key)
    meta, run = found
    others = [r for r in store.list(limit=50, suite=meta["suite"]) if r["id"] != run_id]
    body = render_body(run, _gate_of(meta, run), meta.get("baseline"))
    return render(
        request,
        "eval_run.html",
        key=key,
        meta=meta,
        others=others,
        body=Markup(body),  # the report escapes what it takes from a run
    )


# -- audit log --------------------------------------------------------------------------------
@router.get("/ui/audit")
def audit_page(request: Request) -> HTMLResponse:
    """The audit log, newest first, with the hash chain's verdict (admin keys)."""
    key = page_key(request, "admin")
    gw = gateway(request)
    entries = [e.to_dict() for e in reversed(gw.audit.entries(limit=500))]
    return render(request, "audit.html", key=key, entries=entries, broken=gw.audit.verify())


# -- releases and monitoring ----------------------------------------------------------------
@router.get("/ui/releases")
def releases_page(
    request: Request,
    window: Literal["1h", "24h", "7d", "30d"] = "24h",
    release: str = Query(default="", max_length=64),
) -> HTMLResponse:
    from keel.api.ui._charts import buckets, charts
    from keel.ops.releases import ReleaseStore

    key = page_key(request, "traces:read")
    gw = gateway(request)
    app = gw.app
    store = ReleaseStore(app.engine, app.name)
    state = store.state()
    releases = store.list()
    live = [r for r in (state["stable"], state["canary"]) if r]

    from keel.ops.canary import canary_since, release_health
    from keel.ops.monitor import last_check

    gw.app.tracing.flush()
    history = store.history()
    # health over the canary's life (both sides over the same period), as the rollback
    # check judges it; over all time while no canary serves
    since = canary_since(history, state["canary"])
    health: dict[str, Any] | None = None
    health_error = None
    if live:
        try:
            health = release_health(app.engine, app.name, live, since=since)
        except Exception as exc:  # shown, never a failed page
            health_error = f"{type(exc).__name__}: {exc}"
    drift: dict[str, Any] | None = None
    drift_error = None
    try:
        drift = last_check(app.engine, app.name)
    except Exception as exc:
        drift_error = f"{type(exc).__name__}: {exc}"
    drawn = charts(buckets(app.engine, window, release_id=release or None), window)
    return render(
        request,
        "releases.html",
        key=key,
        state=state,
        releases=releases,
        history=history[:20],
        health=health,
        health_available=True,
        health_error=health_error,
        last_verdict=gw.last_verdict,
        drift=drift,
        drift_available=True,
        drift_error=drift_error,
        charts=drawn,
        window=window,
        release=release,
    )
