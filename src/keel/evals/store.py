"""Eval runs kept in the keel database (``keel_eval_runs``): every ``keel eval`` run is
recorded with its gate verdict, so the web console can list, show and compare them.

A row holds the run's summary (suite, pass/fail, app version, model, dataset version, case
count, aggregates) in columns, and the whole :class:`~keel.evals.runner.RunResult`, the gate
result and the baseline it was gated against as JSON. NaN and infinities are stored as null,
so the JSON stays strict on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import builtins
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Text,
    select,
)

from keel.db import create_tables, metadata
from keel.evals.reports import _clean
from keel.evals.runner import RunResult

eval_runs = Table(
    "keel_eval_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("suite", String(256), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("passed", Boolean, nullable=False),
    Column("app_version", String(64)),
    Column("model", String(256)),
    Column("dataset_version", String(64)),
    Column("cases", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("aggregates", Text, nullable=False),
    Column("gate", Text),
    Column("run", Text, nullable=False),
    Column("baseline", Text),
)


def _dumps(value: Any) -> str:
    return json.dumps(_clean(value), ensure_ascii=False, allow_nan=False, default=str)


_clock_lock = threading.Lock()
_last = datetime.min.replace(tzinfo=UTC)


def _now() -> datetime:
    """Now, strictly after the last run recorded in this process, so the list has an order."""
    global _last
    with _clock_lock:
        _last = max(datetime.now(UTC), _last + timedelta(microseconds=1))
        return _last


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class EvalRunStore:
    """Record, list and read back eval runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata, [eval_runs])

    def record(
        self,
        run: RunResult,
        *,
        suite: str,
        passed: bool,
        app_version: str | None,
        gate: dict[str, Any] | None,
        baseline: RunResult | None = None,
    ) -> str:
        """Store ``run`` with its gate verdict (``asdict(GateResult)``); returns the run id."""
        run_id = "run-" + uuid.uuid4().hex[:16]
        with self.engine.begin() as conn:
            conn.execute(
                eval_runs.insert().values(
                    id=run_id,
                    suite=suite,
                    created_at=_now(),
                    passed=bool(passed),
                    app_version=app_version,
                    model=run.model or None,
                    dataset_version=run.dataset_version or None,
                    cases=len(run.cases),
                    errors=len(run.errors),
                    aggregates=_dumps(run.aggregates),
                    gate=_dumps(gate) if gate is not None else None,
                    run=_dumps(run.to_json()),
                    baseline=_dumps(baseline.to_json()) if baseline is not None else None,
                )
            )
        return run_id

    @staticmethod
    def _meta(row: Any) -> dict[str, Any]:
        m = row._mapping
        return {
            "id": m["id"],
            "suite": m["suite"],
            "created_at": _utc(m["created_at"]).isoformat(timespec="seconds"),
            "passed": bool(m["passed"]),
            "app_version": m["app_version"],
            "model": m["model"],
            "dataset_version": m["dataset_version"],
            "cases": m["cases"],
            "errors": m["errors"],
            "aggregates": json.loads(m["aggregates"]),
        }

    def list(self, limit: int = 50, *, suite: str | None = None) -> builtins.list[dict[str, Any]]:
        """The newest runs first: their summaries (no cases)."""
        t = eval_runs
        query = select(*(c for c in t.c if c.name not in ("run", "gate", "baseline"))).order_by(
            t.c.created_at.desc(), t.c.id
        )
        if suite is not None:
            query = query.where(t.c.suite == suite)
        with self.engine.connect() as conn:
            return [self._meta(r) for r in conn.execute(query.limit(limit))]

    def get(self, run_id: str) -> tuple[dict[str, Any], RunResult] | None:
        """``(meta, run)`` for a run id (``meta["gate"]`` and ``meta["baseline"]`` included),
        or None when there is no such run."""
        with self.engine.connect() as conn:
            row = conn.execute(select(eval_runs).where(eval_runs.c.id == run_id)).first()
        if row is None:
            return None
        meta = self._meta(row)
        m = row._mapping
        meta["gate"] = json.loads(m["gate"]) if m["gate"] else None
        meta["baseline"] = RunResult.from_json(json.loads(m["baseline"])) if m["baseline"] else None
        return meta, RunResult.from_json(json.loads(m["run"]))


__all__ = ["EvalRunStore", "eval_runs"]
