"""Errors as ``application/problem+json`` (RFC 9457), with stable ``type`` URIs.

Every error response of the gateway goes through here; none carries a stack trace.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from keel.api.openai_errors import error_response, is_openai_path
from keel.errors import (
    ConfigError,
    GuardTripped,
    KeelError,
    ModelError,
    ModelWithdrawn,
    StoreError,
    UsageError,
)

MEDIA_TYPE = "application/problem+json"
BASE = "https://keel.dev/problems/"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
}
TYPES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "rate-limited",
    500: "internal",
    502: "model-provider-failed",
    503: "unavailable",
}


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problem statuses a route may answer with."""
    schema = {"$ref": "#/components/schemas/ProblemDocument"}
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            "model": ProblemDocument,
            "content": {MEDIA_TYPE: {"schema": schema}},
        }
        for status in statuses
    }


COMMON = (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503)


class Problem(Exception):
    """Raise in a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.detail = detail
        self.type = type or TYPES.get(status, "error")
        self.headers = headers or {}
        self.extra = extra
        super().__init__(detail)


def problem_response(
    status: int,
    detail: str,
    *,
    type: str | None = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    **extra: Any,
) -> JSONResponse:
    if request is not None and is_openai_path(request.url.path):
        param = extra.get("param")
        return error_response(
            status,
            detail,
            param=str(param) if param is not None else None,
            code=(type or TYPES.get(status, "error")).replace("-", "_"),
            headers=headers,
        )
    body: dict[str, Any] = {
        "type": BASE + (type or TYPES.get(status, "error")),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        rid = getattr(request.state, "request_id", None)
        if rid:
            body["request_id"] = rid
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, type=exc.type, headers=exc.headers, request=request, **exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail) if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return problem_response(exc.status_code, detail, headers=headers, request=request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[dict[str, Any]] = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "kind": str(e.get("type", "")),
            }
            for e in exc.errors()
        ][:20]
        if is_openai_path(request.url.path):
            return _openai_invalid(errors)
        for e in errors:
            del e["kind"]
        if errors:
            first = errors[0]
            detail = f"{'.'.join(first['loc'])}: {first['msg']}"
        else:
            detail = "invalid request"
        return problem_response(422, detail, request=request, errors=errors)

    @app.exception_handler(KeelError)
    async def _keel(request: Request, exc: KeelError) -> JSONResponse:
        return keel_problem(exc, request)

    async def _store(request: Request, exc: Exception) -> JSONResponse:
        import logging

        failed = store_failure(exc) or StoreError("the database failed")
        logging.getLogger("keel.api").warning("storage failed on %s: %s", request.url.path, exc)
        return keel_problem(failed, request)

    import sqlite3

    from sqlalchemy.exc import DBAPIError

    app.add_exception_handler(DBAPIError, _store)
    app.add_exception_handler(sqlite3.Error, _store)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        import logging

        failed = store_failure(exc)
        if failed is not None:
            logging.getLogger("keel.api").warning("storage failed on %s: %s", request.url.path, exc)
            return keel_problem(failed, request)

        logging.getLogger("keel.api").exception("unhandled error on %s", request.url.path)
        return problem_response(500, "the server failed to handle this request", request=request)


def _openai_invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    """A request body OpenAI's way: 400 ``invalid_request_error`` naming the field."""
    if not errors:
        return error_response(400, "invalid request", code="invalid_request")
    first = errors[0]
    loc = [p for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    if first["kind"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        code = "unknown_parameter"
    elif first["kind"] == "json_invalid":
        message = f"the body is not valid JSON: {first['msg']}"
        code = "invalid_json"
    else:
        message = f"{param}: {first['msg']}" if param else first["msg"]
        code = "invalid_value"
    return error_response(400, message, param=param, code=code)


def _allowed_methods(request: Request) -> str:
    """Every method any route serves at this path (a path can have several routes)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


def store_failure(exc: BaseException) -> StoreError | None:
    """A database failure (read-only, locked, gone, unreachable) as the :class:`StoreError` it
    is, so it answers 503 ``store-unavailable`` rather than a generic 500; None for any other
    exception."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, DBAPIError | sqlite3.Error):
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        return StoreError(f"the database cannot be written or read: {reason}")
    return None


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` event that ends a native server-sent event stream: the exception's
    ``type``, the HTTP ``status`` it would have had and a ``detail`` safe to show."""
    failed = store_failure(exc)
    if failed is not None:
        return {"type": "StoreError", "status": 503, "detail": str(failed)}
    if isinstance(exc, KeelError):
        status = 400 if isinstance(exc, UsageError | GuardTripped) else 500
        status = 502 if isinstance(exc, ModelError) else status
        if isinstance(exc, UsageError) and str(exc).startswith("no thread"):
            status = 404
        detail = exc.message if isinstance(exc, GuardTripped) else str(exc)
        if isinstance(exc, ModelWithdrawn):
            status = 503
        elif isinstance(exc, ConfigError):
            detail = "the app is misconfigured"
        return {"type": type(exc).__name__, "status": status, "detail": detail}
    import logging

    logging.getLogger("keel.api").error("a stream failed", exc_info=exc)
    return {"type": "InternalError", "status": 500, "detail": "the server failed the request"}


def keel_problem(exc: KeelError, request: Request | None = None) -> JSONResponse:
    if isinstance(exc, UsageError):
        detail = str(exc)
        if detail.startswith("no thread"):
            return problem_response(404, detail, request=request)
        return problem_response(400, detail, request=request)
    if isinstance(exc, ModelError):
        return problem_response(502, str(exc), request=request)
    if isinstance(exc, StoreError):
        return problem_response(503, str(exc), type="store-unavailable", request=request)
    if isinstance(exc, GuardTripped):
        return problem_response(400, exc.message, type="guardrail", request=request)
    if isinstance(exc, ModelWithdrawn):
        return problem_response(503, str(exc), type="model-withdrawn", request=request)
    if isinstance(exc, ConfigError):
        return problem_response(500, "the app is misconfigured", type="config", request=request)
    return problem_response(500, "the server failed to handle this request", request=request)
