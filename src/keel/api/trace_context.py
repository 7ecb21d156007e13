"""W3C trace context in: a caller's ``traceparent`` / ``tracestate`` headers make Keel's spans
part of the caller's trace (OpenTelemetry's propagators read them; nothing is parsed by
hand). The turn's ``trace_id`` is then the caller's trace id."""

from __future__ import annotations

from typing import Any

from opentelemetry import context
from opentelemetry.propagate import extract


class TraceContext:
    """Pure ASGI middleware: the request's trace context is the current context while the
    request is handled."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k.lower() in (b"traceparent", b"tracestate", b"baggage")
        }
        if not carrier:
            await self.app(scope, receive, send)
            return
        token = context.attach(extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
