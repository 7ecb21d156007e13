"""The HTTP gateway: ``create_app(app)`` builds the FastAPI application; ``keel serve`` runs
it with uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.api.server import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from keel.api.server import create_app

        return create_app
    raise AttributeError(name)
