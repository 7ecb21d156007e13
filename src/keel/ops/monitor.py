"""Production monitoring of an app: drift checks over the trace store, kept in the keel database.

:func:`check_drift` gathers what :func:`keel.ops.drift.detect_drift` compares: the current
sample is the most recent traced questions (a count, or a time window such as ``24h``); the
reference is either the questions of an evaluated dataset (train/serve skew) or the
production window just before the current one (``reference_window``: the same count or
duration, earlier). The top retrieval score of each question is its best *dense* (cosine)
match in the app's collection, computed now for both samples, so both are scored against the
same index. Refusals come from the traced answers (production samples only). Each check is
recorded (``keel_drift_checks``); the gateway exposes the last one as Prometheus gauges.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
from keel.errors import UsageError
from keel.ops.drift import MIN_ROWS, DriftReport, detect_drift
from keel.ops.semconv import TURN_SPAN

drift_checks = Table(
    "keel_drift_checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(256), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("alert", Boolean, nullable=False),
    Column("reference", Text, nullable=False),
    Column("window", Text, nullable=False),
    Column("report", Text, nullable=False),
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Window:
    """The most recent ``count`` questions, or those of the last ``seconds``."""

    count: int | None = None
    seconds: float | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Window:
        raw = text.strip()
        if raw.isdigit():
            count = int(raw)
            if count < MIN_ROWS:
                raise UsageError(f"--window needs at least {MIN_ROWS} questions, not {count}")
            return cls(count=count, text=raw)
        m = _DURATION.match(raw)
        if m is None or float(m.group(1)) <= 0:
            raise UsageError(
                f"--window {text!r}: give a number of questions (200) or a duration (30m, 24h, 7d)"
            )
        return cls(seconds=float(m.group(1)) * _UNITS[m.group(2)], text=raw)


def _rows(app: Any, window: Window, *, before: int = 0) -> list[dict[str, Any]]:
    """Traced questions of a window; ``before=1`` is the same-sized window just earlier."""
    now = datetime.now(UTC)
    if window.count is not None:
        rows = [
            r
            for r in app.tracing.list(limit=window.count * (before + 1) * 2 + 50)
            if r.get("question") and r.get("name") == TURN_SPAN
        ]
        return rows[window.count * before : window.count * (before + 1)]
    assert window.seconds is not None
    until = now - timedelta(seconds=window.seconds * before)
    since = until - timedelta(seconds=window.seconds)
    rows = app.tracing.list(since=since, until=until, limit=100_000)
    return [r for r in rows if r.get("question") and r.get("name") == TURN_SPAN]


def _top_scores(app: Any, questions: Sequence[str]) -> list[float] | None:
    if app.store().count() == 0:
        return None
    scores = []
    for q in questions:
        hits = app.search(q, 1, mode="dense")
        scores.append(float(hits[0].score) if hits else 0.0)
    return scores


def _refusals(rows: Sequence[dict[str, Any]]) -> list[bool]:
    from keel.ops.refusal import is_refusal

    return [is_refusal(str(r.get("answer") or "")) for r in rows]


def check_drift(
    app: Any,
    *,
    window: Window,
    reference_questions: Sequence[str] | None = None,
    reference_window: bool = False,
    reference_label: str = "",
    record: bool = True,
    **options: Any,
) -> DriftReport:
    """Compare recent traced questions with a reference sample (see the module docstring).

    ``options`` go to :func:`detect_drift` (``alpha``, ``ood_threshold``, ...).
    """
    if (reference_questions is None) == (not reference_window):
        raise UsageError("give a reference: an evaluated dataset or a past production window")
    app.tracing.flush()
    current = _rows(app, window)
    if len(current) < MIN_ROWS:
        raise UsageError(
            f"only {len(current)} traced questions in the window {window.text!r} (need "
            f"{MIN_ROWS}; is [tracing] capture off?)"
        )
    cur_q = [str(r["question"]) for r in current]
    ref_refusals: list[bool] | None = None
    if reference_window:
        past = _rows(app, window, before=1)
        if len(past) < MIN_ROWS:
            raise UsageError(
                f"only {len(past)} traced questions in the window before the current one "
                f"(need {MIN_ROWS})"
            )
        ref_q = [str(r["question"]) for r in past]
        ref_refusals = _refusals(past)
        label = reference_label or f"production window before the last {window.text}"
    else:
        assert reference_questions is not None
        ref_q = list(reference_questions)
        label = reference_label or "evaluated dataset"
    report = detect_drift(
        app.embedder.encode(ref_q),
        app.embedder.encode(cur_q),
        reference_top_scores=_top_scores(app, ref_q),
        current_top_scores=_top_scores(app, cur_q),
        reference_refusals=ref_refusals,
        current_refusals=_refusals(current) if ref_refusals is not None else None,
        **options,
    )
    if record:
        record_check(app.engine, app.name, report, reference=label, window=window.text)
    return report


def record_check(
    engine: Engine, app: str, report: DriftReport, *, reference: str, window: str
) -> None:
    create_tables(engine, metadata, [drift_checks])
    with engine.begin() as conn:
        conn.execute(
            drift_checks.insert().values(
                app=app,
                at=datetime.now(UTC),
                alert=report.alert,
                reference=reference,
                window=window,
                report=json.dumps(report.to_dict(), default=float),
            )
        )


def last_check(engine: Engine, app: str) -> dict[str, Any] | None:
    """The app's last recorded drift check: the report's figures plus ``at``, ``reference``,
    ``window`` and ``age_seconds``; None when there was none."""
    create_tables(engine, metadata, [drift_checks])
    query = (
        select(drift_checks)
        .where(drift_checks.c.app == app)
        .order_by(drift_checks.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    m = row._mapping
    at = m["at"] if m["at"].tzinfo else m["at"].replace(tzinfo=UTC)
    out: dict[str, Any] = json.loads(m["report"])
    out.update(
        at=at.isoformat(),
        reference=m["reference"],
        window=m["window"],
        alert=bool(m["alert"]),
        age_seconds=(datetime.now(UTC) - at).total_seconds(),
    )
    return out
