"""The web console at ``/ui``: a playground chat, a trace explorer, eval runs and releases.

Pages are rendered on the server (Jinja2, autoescaped); the few interactions that need it
(streaming chat, approvals, feedback, opening a citation) are small hand-written scripts
served from this package, as are the styles. Nothing is fetched from anywhere else, and the
pages run under a strict Content-Security-Policy (no inline script or style).

Sign-in is an API key pasted once: it is kept in an HttpOnly, SameSite=Strict cookie (Secure
over https) and checked on every request exactly as a bearer key is, with the same scopes:
``chat`` for the playground, ``feedback`` to rate answers, ``traces:read`` for traces, eval
runs and releases. State-changing requests need the console's CSRF token (double-submit: a
cookie and a header or form field) and are refused from other sites (``Sec-Fetch-Site``,
``Origin``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def install(api: FastAPI) -> None:
    """Serve the console on ``api`` (the gateway)."""
    from starlette.staticfiles import StaticFiles

    from keel.api.ui import routes

    api.include_router(routes.router)
    api.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    routes.install_handlers(api)


__all__ = ["install"]
