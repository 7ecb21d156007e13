"""Retention: `[retention]` periods delete what is older (traces with their spans, feedback,
usage rows, cache entries, threads) and keep what is not; `keel prune` and the gateway apply
them, one instance at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, insert, select

from keel.app import App
from keel.db import load_all_tables

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


def _row(table: Table, **values: Any) -> dict[str, Any]:
    """``values`` plus a placeholder for every other required column."""
    row = dict(values)
    for c in table.columns:
        if c.name in row or (c.nullable and not c.primary_key) or c.autoincrement is True:
            continue
        kind = str(c.type).upper()
        if "DATETIME" in kind or "TIMESTAMP" in kind:
            row[c.name] = NOW
        elif kind == "DATE":
            row[c.name] = NOW.date()
        elif "INT" in kind or "FLOAT" in kind or "DOUBLE" in kind or "REAL" in kind:
            row[c.name] = 0
        elif "BOOL" in kind:
            row[c.name] = False
        else:
            row[c.name] = f"{c.name}-{id(values)}"[:30]
    return row


def _plant(app: App) -> None:
    t = load_all_tables().tables
    with app.engine.begin() as conn:
        for tid, at in (("a" * 32, OLD), ("b" * 32, NOW)):
            conn.execute(
                insert(t["keel_traces"]).values(
                    _row(t["keel_traces"], trace_id=tid, app=app.name, started_at=at)
                )
            )
            conn.execute(
                insert(t["keel_spans"]).values(
                    _row(t["keel_spans"], trace_id=tid, span_id=tid[:16])
                )
            )
            conn.execute(
                insert(t["keel_feedback"]).values(
                    _row(t["keel_feedback"], id=tid[:32], trace_id=tid, created_at=at, score=1.0)
                )
            )
        for day in (OLD.date(), NOW.date()):
            conn.execute(insert(t["keel_usage"]).values(_row(t["keel_usage"], key_id="k", day=day)))
            per_user = t["keel_usage_end_users"]
            conn.execute(insert(per_user).values(_row(per_user, key_id="k", end_user="u", day=day)))


def _count(app: App, name: str) -> int:
    table = load_all_tables().tables[name]
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def test_prune_deletes_what_is_older_than_each_period(make_app: Callable[..., App]) -> None:
    app = make_app({"retention": {"traces_days": 30, "feedback_days": 30, "usage_days": 30}})
    _plant(app)
    report = app.prune()
    assert report == {
        "traces": 1,
        "spans": 1,
        "feedback": 1,
        "usage": 2,  # the key's old day and its end user's
        "cache": None,
        "threads": None,
    }
    assert _count(app, "keel_usage_end_users") == 1
    assert [_count(app, n) for n in ("keel_traces", "keel_spans", "keel_feedback")] == [1, 1, 1]
    usage = load_all_tables().tables["keel_usage"]
    with app.engine.connect() as conn:  # the recent day stayed
        assert conn.execute(select(usage.c.day)).scalars().all() == [NOW.date()]
    assert app.prune()["traces"] == 0  # idempotent
    from keel.ops.audit import AuditLog

    assert [e.action for e in AuditLog(app.engine, app.name).entries()] == ["retention.pruned"]


def test_keel_prune_on_the_command_line(
    tmp_path: Any, model_cache_dir: Any, monkeypatch: Any
) -> None:
    from typer.testing import CliRunner

    from keel.cli import cli
    from keel.settings import get_settings

    (tmp_path / "keel.toml").write_text('[app]\nname = "p"\n[retention]\ncache_days = 7\n')
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(cli, ["--config", str(tmp_path / "keel.toml"), "prune", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {
            "traces": None,
            "spans": None,
            "feedback": None,
            "usage": None,
            "cache": 0,
            "threads": None,
        }
    finally:
        get_settings.cache_clear()


def test_the_gateway_prunes_one_instance_at_a_time(make_app: Callable[..., App]) -> None:
    from keel.api import create_app

    app = make_app({"retention": {"traces_days": 30}})
    _plant(app)
    gw = create_app(app).state.gateway
    held = gw.leases.try_acquire(f"{app.name}:retention")  # another instance is pruning
    assert held is not None
    assert gw.prune_now() is None and _count(app, "keel_traces") == 2
    held.release()
    report = gw.prune_now()
    assert report is not None and report["traces"] == 1
