"""Retention: delete what Keel recorded once it is older than the app's ``[retention]``
periods (traces and spans, feedback, usage rows, semantic cache entries; threads through the
app). ``keel prune`` runs it; the gateway runs it every ``interval_s`` under a lease, so one
instance at a time does. Deletes are idempotent: two runs at once delete nothing twice."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, or_, select

__all__ = ["PruneReport", "prune_records"]


@dataclass(frozen=True)
class PruneReport:
    """How many rows each kind lost (None: no period set for it)."""

    traces: int | None = None
    spans: int | None = None
    feedback: int | None = None
    usage: int | None = None
    cache: int | None = None
    threads: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def _cutoff(days: float | None, now: datetime) -> datetime | None:
    return now - timedelta(days=days) if days is not None else None


def prune_records(
    engine: Engine,
    app: str,
    *,
    traces_days: float | None = None,
    feedback_days: float | None = None,
    usage_days: float | None = None,
    cache_days: float | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Delete this app's records older than each period (threads are the app's own job)."""
    from keel.db import load_all_tables

    now = now or datetime.now(UTC)
    tables = load_all_tables().tables
    out: dict[str, Any] = {}
    cutoff = _cutoff(traces_days, now)
    if cutoff is not None:
        traces, spans = tables["keel_traces"], tables["keel_spans"]
        old = select(traces.c.trace_id).where(traces.c.app == app, traces.c.started_at < cutoff)
        with engine.begin() as conn:
            out["spans"] = conn.execute(delete(spans).where(spans.c.trace_id.in_(old))).rowcount
            out["traces"] = conn.execute(
                delete(traces).where(traces.c.app == app, traces.c.started_at < cutoff)
            ).rowcount
    cutoff = _cutoff(feedback_days, now)
    if cutoff is not None:
        fb, traces = tables["keel_feedback"], tables["keel_traces"]
        mine = select(traces.c.trace_id).where(traces.c.app == app)
        every = select(traces.c.trace_id)
        with engine.begin() as conn:  # this app's, or rows whose trace is already gone
            out["feedback"] = conn.execute(
                delete(fb).where(
                    fb.c.created_at < cutoff,
                    or_(fb.c.trace_id.in_(mine), fb.c.trace_id.not_in(every)),
                )
            ).rowcount
    cutoff = _cutoff(usage_days, now)
    if cutoff is not None:
        usage, per_user = tables["keel_usage"], tables["keel_usage_end_users"]
        with engine.begin() as conn:  # per key and day, shared by the database's apps
            out["usage"] = conn.execute(delete(usage).where(usage.c.day < cutoff.date())).rowcount
            out["usage"] += conn.execute(
                delete(per_user).where(per_user.c.day < cutoff.date())
            ).rowcount
    cutoff = _cutoff(cache_days, now)
    if cutoff is not None:
        cache = tables["keel_semantic_cache"]
        with engine.begin() as conn:
            out["cache"] = conn.execute(
                delete(cache).where(cache.c.app == app, cache.c.created_at < cutoff)
            ).rowcount
    return PruneReport(**{k: int(v or 0) for k, v in out.items()})
