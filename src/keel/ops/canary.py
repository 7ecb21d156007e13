"""Canary health: is the canary release significantly worse than stable?

Both releases are measured over the same period (since the canary was deployed) from the
trace store: each traced turn carries the release that served it (``release_id``), its
status (``error`` when the turn failed) and its guard outcome (``tripped`` when a guard
stopped it); human feedback links to traces, and a score below 0.5 is negative. Feedback
counts distinct raters (one observation per key and release, its mean score), so one key
posting many ratings weighs as one.

For each rate the canary's count is compared with stable's by a one-sided Fisher exact test
(is the canary's rate higher?). A rate condemns the canary only when the canary has at least
``min_sample`` observations of it, the p-value is below ``alpha`` divided by the number of
rates tested (Bonferroni: three rates, one family-wise error rate), and the canary's rate
exceeds stable's by more than ``margin``. Too little data is never a reason to roll back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, case, func, select

from keel.db import create_tables
from keel.db import metadata as feedback_metadata
from keel.errors import UsageError
from keel.ops.feedback import feedback as feedback_table
from keel.ops.releases import ReleaseStore
from keel.ops.semconv import TURN_SPAN
from keel.ops.tracing import migrate, traces_table

NEGATIVE_BELOW = 0.5
RATES = ("error", "guard_trip", "negative_feedback")


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is rolled back automatically (``[deploy]`` in keel.toml)."""

    min_sample: int = 50
    alpha: float = 0.01
    margin: float = 0.02


@dataclass
class Verdict:
    """The outcome of one canary check."""

    canary: str
    stable: str | None
    rollback: bool
    reasons: list[str] = field(default_factory=list)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "canary": self.canary,
            "stable": self.stable,
            "rollback": self.rollback,
            "reasons": self.reasons,
            "health": self.health,
            "tests": self.tests,
        }


def _empty() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "error_rate": 0.0,
        "guard_trips": 0,
        "guard_trip_rate": 0.0,
        "feedback": 0,
        "negative_feedback": 0,
        "negative_rate": 0.0,
        "p50_ms": None,
    }


def release_health(
    engine: Engine,
    app: str,
    release_ids: Sequence[str],
    *,
    since: datetime | None = None,
) -> dict[str, dict[str, Any]]:
    """Per release: requests, errors, guard trips and feedback (with their rates) and the
    median latency of its traced turns, since ``since``."""
    migrate(engine)
    t = traces_table
    out = {rid: _empty() for rid in release_ids}
    if not release_ids:
        return out
    conds = [t.c.release_id.in_(list(release_ids)), t.c.name == TURN_SPAN]
    if app:
        conds.append(t.c.app == app)
    if since is not None:
        conds.append(t.c.started_at >= since)
    where = and_(*conds)
    counts = select(
        t.c.release_id,
        func.count().label("requests"),
        func.sum(case((t.c.status == "error", 1), else_=0)).label("errors"),
        func.sum(case((t.c.guard_outcome == "tripped", 1), else_=0)).label("trips"),
    ).where(where)
    f = feedback_table
    # Feedback counts distinct raters: each key (feedback without a key: each rating) is one
    # observation per release, negative when its mean score is, so one key posting many
    # ratings cannot outweigh the others (nor force a rollback).
    rater = func.coalesce(f.c.key_id, f.c.id)
    per_rater = (
        select(t.c.release_id, rater.label("rater"), func.avg(f.c.score).label("mean"))
        .select_from(f.join(t, f.c.trace_id == t.c.trace_id))
        .where(where)
        .group_by(t.c.release_id, rater)
        .subquery()
    )
    fb = select(
        per_rater.c.release_id,
        func.count().label("feedback"),
        func.sum(case((per_rater.c.mean < NEGATIVE_BELOW, 1), else_=0)).label("negative"),
    )
    create_tables(engine, feedback_metadata, [feedback_table])
    with engine.connect() as conn:
        for row in conn.execute(counts.group_by(t.c.release_id)):
            h = out[row.release_id]
            h["requests"] = int(row.requests)
            h["errors"] = int(row.errors or 0)
            h["guard_trips"] = int(row.trips or 0)
        for row in conn.execute(fb.group_by(per_rater.c.release_id)):
            h = out[row.release_id]
            h["feedback"] = int(row.feedback)
            h["negative_feedback"] = int(row.negative or 0)
        for rid in release_ids:
            durations = (
                conn.execute(
                    select(t.c.duration_ms)
                    .where(and_(where, t.c.release_id == rid))
                    .order_by(t.c.duration_ms)
                    .limit(10_000)
                )
                .scalars()
                .all()
            )
            if durations:
                out[rid]["p50_ms"] = round(float(durations[len(durations) // 2]), 3)
    for h in out.values():
        n = h["requests"]
        h["error_rate"] = h["errors"] / n if n else 0.0
        h["guard_trip_rate"] = h["guard_trips"] / n if n else 0.0
        h["negative_rate"] = h["negative_feedback"] / h["feedback"] if h["feedback"] else 0.0
    return out


def _observations(health: dict[str, Any], rate: str) -> tuple[int, int]:
    """(events, trials) of one rate."""
    if rate == "error":
        return health["errors"], health["requests"]
    if rate == "guard_trip":
        return health["guard_trips"], health["requests"]
    return health["negative_feedback"], health["feedback"]


def judge_canary(
    canary: str,
    stable: str | None,
    health: dict[str, dict[str, Any]],
    policy: CanaryPolicy,
) -> Verdict:
    """Whether the canary is significantly worse than stable on any rate (see the module)."""
    from scipy.stats import fisher_exact

    verdict = Verdict(canary=canary, stable=stable, rollback=False, health=health)
    if stable is None:
        return verdict
    level = policy.alpha / len(RATES)
    for rate in RATES:
        xc, nc = _observations(health[canary], rate)
        xs, ns = _observations(health[stable], rate)
        test: dict[str, Any] = {
            "rate": rate,
            "canary": [xc, nc],
            "stable": [xs, ns],
            "p_value": None,
            "worse": False,
        }
        verdict.tests.append(test)
        if nc < policy.min_sample or ns == 0:
            test["note"] = f"needs {policy.min_sample} canary observations, has {nc}"
            continue
        rc, rs = xc / nc, xs / ns
        table = [[xc, nc - xc], [xs, ns - xs]]
        p = float(fisher_exact(table, alternative="greater").pvalue)
        test["p_value"] = p
        if p < level and rc - rs > policy.margin:
            test["worse"] = True
            verdict.rollback = True
            verdict.reasons.append(
                f"{rate.replace('_', ' ')} rate {rc:.3f} ({xc}/{nc}) vs stable {rs:.3f} "
                f"({xs}/{ns}): one-sided Fisher p={p:.2g} < {level:.2g}, "
                f"difference over the {policy.margin:.3f} margin"
            )
    return verdict


def canary_since(history: Sequence[dict[str, Any]], canary: str | None) -> datetime | None:
    """When ``canary`` was last deployed as the canary (``history``: newest first, as
    :meth:`ReleaseStore.history` gives it); None when no canary serves. Health is measured over
    that period, for both releases, so they are compared over the same time."""
    if canary is None:
        return None
    return next((e["at"] for e in history if e["action"] == "canary" and e["to"] == canary), None)


def canary_verdict(
    store: ReleaseStore, policy: CanaryPolicy, *, rollback: bool = True
) -> Verdict | None:
    """Judge the app's current canary against stable since the canary was deployed; with
    ``rollback``, a worse canary is rolled back (recorded with the reasons). None when no
    canary serves."""
    state = store.state()
    canary, stable = state["canary"], state["stable"]
    if canary is None:
        return None
    since = canary_since(store.history(), canary)
    ids = [canary] + ([stable] if stable else [])
    health = release_health(store.engine, store.app, ids, since=since)
    verdict = judge_canary(canary, stable, health, policy)
    if rollback and verdict.rollback:
        with contextlib.suppress(UsageError):  # rolled back (or replaced) meanwhile
            store.rollback("automatic: " + "; ".join(verdict.reasons), canary=canary)
    return verdict
