"""Errors of the OpenAI-compatible routes in OpenAI's shape.

``{"error": {"message", "type", "param", "code"}}`` with the route's status: validation is
``invalid_request_error`` with 400; 401, 403, 404, 409, 413, 429 and 5xx keep their status.
OpenAI's clients read this shape to pick their exception types (``openai.BadRequestError``,
``AuthenticationError``, ``NotFoundError``, ``RateLimitError``, ...). The native routes keep
problem+json; :func:`keel.api.problems.problem_response` sends a request on one of these
paths here.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

_PREFIXES = ("/v1/chat/completions", "/v1/models", "/v1/responses")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorDocument(BaseModel):
    """OpenAI's error document: ``{"error": {"message", "type", "param", "code"}}``."""

    error: OpenAIError


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses of an OpenAI-compatible route."""
    return {
        status: {
            "description": error_type(status),
            "model": OpenAIErrorDocument,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIErrorDocument"}}
            },
        }
        for status in statuses
    }


def is_openai_path(path: str) -> bool:
    """A path served in OpenAI's shape (``/v1/chat/completions``, ``/v1/models[/id]``,
    ``/v1/responses[/...]``)."""
    return any(path == p or path.startswith(p + "/") for p in _PREFIXES)


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The ``{"error": ...}`` document (also the final chunk of a failed stream)."""
    return {
        "error": {
            "message": message,
            "type": error_type(status),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # validation is 400 here, as OpenAI answers it (native routes say 422)
    status = 400 if status == 422 else status
    return JSONResponse(
        error_body(status, message, param=param, code=code), status_code=status, headers=headers
    )
