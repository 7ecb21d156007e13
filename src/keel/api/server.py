"""The FastAPI application factory and the middleware every request passes through."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel import __version__
from keel.api import problems
from keel.api.gateway import Gateway

if TYPE_CHECKING:
    from keel.app import App

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# The web console: its own scripts, styles and images only (no inline script or style, no
# other origin); fetches and form posts to itself; never framed.
_UI_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_UI_SECURITY_HEADERS = [
    (name, _UI_CSP) if name == b"content-security-policy" else (name, value)
    for name, value in _SECURITY_HEADERS
]
_JSON_ONLY = {
    "/v1/chat",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/search",
    "/v1/feedback",
}


class Guardrail:
    """Pure ASGI middleware: request ids, security headers, body size cap (413), content
    type checks (415), and request metrics. Cheap enough for every request."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        from prometheus_client import Counter, Histogram

        self.requests = Counter(
            "keel_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=gateway.registry,
        )
        self.latency = Histogram(
            "keel_http_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=gateway.registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request_id = headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        ui = path == "/ui" or path.startswith("/ui/")
        limits = self.gateway.app.config.limits
        cap = limits.max_upload_bytes if path == "/v1/ingest" else limits.max_body_bytes
        status_holder = {"status": 500}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                security = _UI_SECURITY_HEADERS if ui else _SECURITY_HEADERS
                extra = [(b"x-request-id", request_id.encode()), *security]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        async def refuse(status: int, detail: str) -> None:
            from starlette.requests import Request

            response = problems.problem_response(status, detail, request=Request(scope))
            await response(scope, receive, send_with_headers)

        method = scope["method"]
        tracer = self.gateway.app.tracing.tracer if path.startswith("/v1/") else None
        span_cm = (
            tracer.start_as_current_span(
                method,  # named after its route once routed (never a raw path: ids in it)
                attributes={"http.request.method": method, "keel.request.id": request_id},
            )
            if tracer is not None
            else contextlib.nullcontext()
        )
        with span_cm as span:
            await self._handle(scope, receive, send, send_with_headers, refuse, headers, cap)
            if span is not None:
                route = scope.get("route")
                template = getattr(route, "path", None)
                # the raw path only when it holds no identifiers (a thread, a person, a job)
                shown = path if template is None or "{" not in template else template
                span.update_name(f"{method} {template or shown}")
                span.set_attribute("http.route", template or shown)
                span.set_attribute("url.path", shown)
                span.set_attribute("http.response.status_code", status_holder["status"])
                if status_holder["status"] >= 500:
                    from opentelemetry.trace import Status, StatusCode

                    span.set_status(Status(StatusCode.ERROR))
        route = scope.get("route")
        template = getattr(route, "path", "unmatched")
        self.requests.labels(method, template, str(status_holder["status"])).inc()
        self.latency.labels(method, template).observe(time.perf_counter() - started)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        send_with_headers: Any,
        refuse: Any,
        headers: dict[str, str],
        cap: int,
    ) -> None:
        method = scope["method"]
        path = scope["path"]
        try:
            if method in ("POST", "PUT", "PATCH"):
                length = headers.get("content-length")
                if length is not None and (not length.isdigit() or int(length) > cap):
                    await refuse(413, f"the request body is larger than {cap} bytes")
                    return
                ctype = headers.get("content-type", "").split(";")[0].strip().lower()
                json_only = path in _JSON_ONLY or path.startswith("/ui/api/")
                if json_only and ctype != "application/json":
                    await refuse(415, "send the request body as application/json")
                    return
                receive = _capped(receive, cap)
                if ctype == "application/json":
                    receive = _unicode_checked(receive)
            await self.app(scope, receive, send_with_headers)
        except _BodyRefused as exc:  # raised while reading the body, outside any route
            await refuse(exc.status_code, str(exc.detail))


class _BodyRefused(HTTPException):
    """A request body refused while it is read. An ``HTTPException``, so FastAPI's body
    parsing passes it on (any other exception there becomes a 400) and it answers with its
    own status, in the route's error shape."""


def _capped(receive: Receive, cap: int) -> Receive:
    """Count the body as it arrives (a chunked body has no Content-Length): 413 past ``cap``."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise _BodyRefused(413, f"the request body is larger than {cap} bytes")
        return message

    return wrapped


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(body: bytes) -> bool:
    """Whether a JSON body holds a lone surrogate escape (``\\ud800`` without its pair):
    Python's JSON parser lets one through as a string no encoder can write."""
    if not _SURROGATE_ESCAPE.search(body):
        return False  # the common case: no surrogate escape at all
    try:
        parsed = json.loads(body)
    except ValueError:
        return False  # not JSON: the route says so
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unicode_checked(receive: Receive) -> Receive:
    """422 for a JSON body holding a lone surrogate, on every JSON route."""
    chunks: list[bytes] = []

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = b"".join(chunks)
                chunks.clear()
                if _lone_surrogate(body):
                    raise _BodyRefused(
                        422, "the body holds a lone surrogate (\\ud800-\\udfff): not valid text"
                    )
        return message

    return wrapped


def create_app(app: App, *, title: str | None = None, ui: bool | None = None) -> FastAPI:
    """The gateway for one Keel app: native and OpenAI-compatible chat, threads, approvals,
    search, ingestion jobs, feedback, health and metrics; bearer API keys on everything but
    ``/healthz``, ``/readyz`` and ``/metrics``. ``ui``: serve the web console at ``/ui``
    (default: ``[ui] enabled`` in keel.toml)."""
    from prometheus_client import CollectorRegistry

    from keel.api.routes import chat, knowledge, openai_compat, ops, responses

    registry = CollectorRegistry(auto_describe=True)
    gateway = Gateway(app, registry)
    api = FastAPI(
        title=title or f"Keel gateway: {app.name}",
        version=__version__,
        description=app.config.app.description or "A Keel app over HTTP.",
        openapi_tags=[{"name": t} for t in ("chat", "openai", "knowledge", "operations")],
    )
    api.state.gateway = gateway
    problems.install(api)
    for module in (chat, openai_compat, responses, knowledge, ops):
        api.include_router(module.router)
    if app.config.ui.enabled if ui is None else ui:
        from keel.api.ui import install as install_ui

        install_ui(api)
    lim = app.config.limits
    if lim.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(
            CORSMiddleware,
            allow_origins=lim.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Keel-Thread", "X-Request-ID"],
        )
    from keel.api.trace_context import TraceContext

    api.add_middleware(TraceContext)
    api.add_middleware(Guardrail, gateway=gateway)
    _bearer_in_openapi(api)
    return api


def _bearer_in_openapi(api: FastAPI) -> None:
    """Document the bearer scheme, so schema-driven clients (and schemathesis) send keys."""
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
        }
        open_paths = {"/healthz", "/readyz", "/metrics"}
        for path, item in schema.get("paths", {}).items():
            if path in open_paths:
                continue
            for op in item.values():
                if isinstance(op, dict):
                    op["security"] = [{"bearer": []}]
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


def from_env() -> FastAPI:
    """The gateway for the app in ``KEEL_CONFIG`` (what each uvicorn worker builds)."""
    from keel.app import App
    from keel.settings import get_settings

    settings = get_settings()
    config = settings.config
    app = App.from_config(config if config is not None else "keel.toml")
    app.warm()  # the guards' and attribution's models load before the worker takes requests
    api = create_app(app, ui=True if settings.ui else None)
    if settings.embedded_worker:  # jobs left by a worker that stopped start again
        api.state.gateway.queue.run_embedded()
    return api
