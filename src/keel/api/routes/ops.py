"""Feedback, health, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from keel.api.problems import COMMON, Problem, documented
from keel.api.routes._common import gateway
from keel.api.schemas import FeedbackRequest

router = APIRouter(tags=["operations"], responses=documented(*COMMON))


@router.post("/v1/feedback", status_code=201, summary="Feedback on an answer, by trace id")
def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    from keel.ops.feedback import FeedbackStore

    gw = gateway(request)
    key = gw.authenticate(request, "feedback")
    fid = FeedbackStore(gw.app.engine).add(
        body.trace_id,
        body.score,
        comment=body.comment,
        correction=body.correction,
        thread_id=body.thread_id,
        key_id=key.id,
    )
    return {"id": fid, "trace_id": body.trace_id}


@router.get("/healthz", summary="The process is up (no auth)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded and stores reachable (no auth)")
def readyz(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    checks: dict[str, str] = {}
    try:
        with gw.app.engine.connect() as conn:
            conn.execute(text("select 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        gw.app.store().count()
        checks["vector_store"] = "ok"
    except Exception as exc:
        checks["vector_store"] = f"unreachable: {type(exc).__name__}"
    try:
        gw.app.agent  # noqa: B018 - builds the model chain, tools and prompts
        checks["models"] = "ok"
    except Exception as exc:
        checks["models"] = f"not loaded: {type(exc).__name__}"
    if gw.limits.shared:
        checks["rate_limits"] = "ok" if gw.limits.check_storage() else "unreachable"
    if any(v != "ok" for v in checks.values()):
        raise Problem(503, "not ready", type="not-ready", checks=checks)
    return {"status": "ready", "checks": checks}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    gw = gateway(request)
    return Response(generate_latest(gw.registry), media_type=CONTENT_TYPE_LATEST)
