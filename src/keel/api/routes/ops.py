"""Feedback, health, readiness and metrics."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import text

from keel.api.keys import ApiKey
from keel.api.problems import COMMON, Problem, documented
from keel.api.routes._common import gateway
from keel.api.schemas import FeedbackRequest


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """A query parameter the route does not declare is refused (400), not ignored."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None or not request.query_params:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise Problem(400, f"unknown query parameter: {', '.join(unknown)}")


_log = logging.getLogger(__name__)
_NAMES_WITHDRAWN = "a tuned model it names was withdrawn"
router = APIRouter(
    tags=["operations"],
    responses=documented(*COMMON),
    dependencies=[Depends(refuse_unknown_query)],
)


@router.post("/v1/feedback", status_code=201, summary="Feedback on an answer, by trace id")
def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    key = gateway(request).authenticate(request, "feedback")
    return store_feedback(request, key, body)


def store_feedback(request: Request, key: ApiKey, body: FeedbackRequest) -> dict[str, Any]:
    """Keep feedback from an authenticated key (``/v1/feedback`` and the web console): only
    on a trace of the key's own thread (any trace for an admin key); an unknown trace, or
    another key's, is 404. A key's new rating of a trace replaces its earlier one."""
    from keel.ops.feedback import FeedbackStore

    gw = gateway(request)
    thread_id = _rateable_trace(request, key, body)
    fid = FeedbackStore(gw.app.engine).add(
        body.trace_id,
        body.score,
        comment=body.comment,
        correction=body.correction,
        thread_id=thread_id,
        key_id=key.id,
    )
    gw.metrics.feedback(gw.release_of(body.trace_id), body.score)
    gw.maybe_check_canary()
    return {"id": fid, "trace_id": body.trace_id}


def _rateable_trace(request: Request, key: ApiKey, body: FeedbackRequest) -> str | None:
    """The (stored) thread of a traced turn ``key`` may rate; 404 when there is no such turn
    or it belongs to another key's thread (the two are not told apart)."""
    from sqlalchemy import select

    from keel.agents.checkpoints import client_thread_id
    from keel.ops.tracing import traces_table

    gw = gateway(request)
    gw.app.tracing.flush()
    t = traces_table
    query = select(t.c.thread_id, t.c.key_id).where(t.c.trace_id == body.trace_id)
    with gw.app.engine.connect() as conn:
        row = conn.execute(query).first()
    missing = Problem(404, f"no trace {body.trace_id!r}")
    if row is None:
        raise missing
    thread_id, turn_key = row
    owner = turn_key
    if thread_id:
        exists, thread_owner = gw.app.threads.owner_of(thread_id)
        if exists:
            owner = thread_owner
    if not key.is_admin and (owner is None or owner != key.id):
        raise missing
    named = body.thread_id
    if (
        named is not None
        and thread_id
        and named not in (thread_id, client_thread_id(thread_id, key.id))
    ):
        raise Problem(422, f"trace {body.trace_id!r} is not in thread {named!r}")
    return str(thread_id) if thread_id is not None else None


@router.get("/healthz", summary="The process is up (no auth)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Models loaded, stores reachable, the database writable, the data directory the "
    "one the app started with (no auth)",
)
def readyz(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    checks: dict[str, str] = {}
    try:
        with gw.app.engine.connect() as conn:
            conn.execute(text("select 1"))
        checks["database"] = gw.storage.database_problem() or "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    moved = gw.storage.data_dir_problem()
    if moved is not None or gw.storage.data_dir.exists():
        checks["data_dir"] = moved or "ok"
    try:
        gw.app.store().count()
        checks["vector_store"] = "ok"
    except Exception as exc:
        checks["vector_store"] = f"unreachable: {type(exc).__name__}"
    try:
        gw.app.agent  # noqa: B018 - builds the model chain, tools and prompts
        withdrawn = gw.app.resources.tuned.problem()
        if withdrawn is not None:
            _log.warning("not ready: %s", withdrawn)
        checks["models"] = "a tuned model it loaded was withdrawn" if withdrawn else "ok"
    except Exception as exc:
        _log.warning("the app's models do not load", exc_info=True)
        checks["models"] = f"not loaded: {type(exc).__name__}"
    state = gw.deployment()
    notes: dict[str, str] = {}
    for role in ("stable", "canary"):
        if not state[role]:
            continue
        if role == "canary":
            # A canary that cannot serve is not served, and is no reason to take this instance
            # out: stable serves its share (and auto_rollback rolls it back).
            problem = gw.served.canary_problem(state[role])
            checks["canary_release"] = "ok"
            if problem is not None:
                notes["canary_release"] = f"not served: {problem.said}"
            continue
        try:
            withdrawn = gw.served.withdrawn(state[role])
            gw.release_app(state[role]).agent  # noqa: B018 - builds it
            checks[f"{role}_release"] = "ok" if withdrawn is None else _NAMES_WITHDRAWN
        except Exception as exc:
            _log.warning("the %s release %s does not load", role, state[role], exc_info=True)
            checks[f"{role}_release"] = f"not loaded: {type(exc).__name__}"
    if gw.limits.shared:
        checks["rate_limits"] = "ok" if gw.limits.check_storage() else "unreachable"
    said: dict[str, Any] = {"checks": checks, **notes}
    if any(v != "ok" for v in checks.values()):
        raise Problem(503, "not ready", type="not-ready", **said)
    return {"status": "ready", **said}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from keel.ops.monitor import last_check

    gw = gateway(request)
    gw.deployment()
    gw.metrics.drift_check(last_check(gw.app.engine, gw.app.name))
    return Response(generate_latest(gw.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/deployment", summary="The serving releases, their health and the last checks")
def deployment(request: Request) -> dict[str, Any]:
    """Stable and canary (with the canary's traffic share), why the canary is not served
    (``canary_not_served``: it does not build on this instance, or names a withdrawn model;
    null while it serves), each release's health since the canary was deployed, the last
    canary verdict of this gateway, the release switch history and the last drift check. Needs
    the ``admin`` scope."""
    from keel.ops.canary import canary_since, release_health
    from keel.ops.monitor import last_check

    gw = gateway(request)
    gw.authenticate(request, "admin")
    gw.app.tracing.flush()  # the latest turns count
    state = gw.releases.state()
    ids = [r for r in (state["stable"], state["canary"]) if r]
    history = gw.releases.history()
    since = canary_since(history, state["canary"])
    unservable = gw.served.canary_problem(state["canary"]) if state["canary"] else None
    return {
        **state,
        "canary_not_served": unservable.detail if unservable is not None else None,
        "health": release_health(gw.app.engine, gw.app.name, ids, since=since),
        "last_verdict": gw.last_verdict,
        "history": [{**e, "at": e["at"].isoformat()} for e in history[:50]],
        "drift": last_check(gw.app.engine, gw.app.name),
    }


_ISO = r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$"


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(422, f"not a valid ISO 8601 time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/v1/traces", summary="Recent traces, filtered")
def traces(
    request: Request,
    since: str | None = Query(default=None, pattern=_ISO, description="ISO 8601 time"),
    until: str | None = Query(default=None, pattern=_ISO, description="ISO 8601 time"),
    app_version: str | None = None,
    status: Literal["ok", "error"] | None = None,
    thread_id: str | None = None,
    min_latency_ms: float | None = Query(default=None, ge=0),
    guard_outcome: Literal["none", "pass", "flagged", "tripped"] | None = None,
    release_id: str | None = Query(default=None, max_length=32),
    limit: int = Query(default=50, ge=1, le=1000),
) -> dict[str, Any]:
    gw = gateway(request)
    gw.authenticate(request, "traces:read")
    gw.app.tracing.flush()
    rows = gw.app.tracing.list(
        since=_time(since),
        until=_time(until),
        app_version=app_version,
        status=status,
        thread_id=thread_id,
        min_latency_ms=min_latency_ms,
        guard_outcome=guard_outcome,
        release_id=release_id,
        limit=limit,
    )
    return {"traces": rows}


@router.get("/v1/traces/{trace_id}", summary="A trace: its span tree with inputs and outputs")
def trace(trace_id: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    gw.authenticate(request, "traces:read")
    gw.app.tracing.flush()
    found = gw.app.tracing.get(trace_id)
    if found is None:
        raise Problem(404, f"no trace {trace_id!r}")
    return found


@router.get("/v1/audit", summary="The audit log (admin keys)")
def audit(
    request: Request,
    since: str | None = Query(default=None, pattern=_ISO, description="ISO 8601 time"),
    limit: int = Query(default=200, ge=1, le=10_000),
) -> dict[str, Any]:
    """Administrative and security events, oldest first, with the chain's verdict."""
    gw = gateway(request)
    gw.authenticate(request, "admin")
    start = _time(since)
    entries = gw.audit.entries(since=start.timestamp() if start else None, limit=limit)
    broken = gw.audit.verify()
    return {
        "entries": [e.to_dict() for e in entries],
        "intact": broken is None,
        "broken_at": broken.seq if broken else None,
    }


@router.get("/v1/usage", summary="Requests, tokens and cost per key and end user (admin keys)")
def usage(
    request: Request,
    day: str | None = Query(
        default=None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="UTC day (default: today)"
    ),
) -> dict[str, Any]:
    """The day's usage per API key (``keys``) and per key and end user (``end_users``: the
    ``user`` / ``safety_identifier`` an OpenAI-style request named)."""
    from datetime import date

    gw = gateway(request)
    gw.authenticate(request, "admin")
    try:
        wanted = date.fromisoformat(day) if day else None
    except ValueError as exc:
        raise Problem(400, f"day: not a date: {day!r}") from exc
    return {"keys": gw.ledger.per_key(wanted), "end_users": gw.ledger.per_end_user(wanted)}


@router.get("/v1/users/{user_id}", summary="Everything held about one end user (admin keys)")
def export_end_user(user_id: str, request: Request) -> dict[str, Any]:
    """The person's threads, traces, feedback, usage and cache entries (``keel privacy
    export``)."""
    from keel.privacy import export_user

    gw = gateway(request)
    gw.authenticate(request, "admin")
    return export_user(gw.app, user_id)


@router.delete("/v1/users/{user_id}", summary="Erase one end user's data (admin keys)")
def erase_end_user(user_id: str, request: Request) -> dict[str, Any]:
    """Delete the person's threads and checkpoints, traces and spans, feedback, usage and
    cache entries everywhere (``keel privacy erase``); answers what was removed."""
    from keel.privacy import erase_user

    gw = gateway(request)
    key = gw.authenticate(request, "admin")
    return {"erased": erase_user(gw.app, user_id, actor=key.id).to_dict()}
