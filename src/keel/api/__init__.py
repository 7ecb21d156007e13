"""The HTTP gateway: ``create_app(app)`` builds the FastAPI application; ``keel serve`` runs
it with uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.api.server import create_app

_EXPORTS = {"create_app": "keel.api.server"}
__all__ = ["create_app"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
