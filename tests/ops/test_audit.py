"""The audit log: append-only and hash-chained (a changed, inserted or removed row is found),
one chain across processes, and the administrative events of the CLI and the gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from keel.db import make_engine
from keel.ops.audit import AuditLog, audit_table


def _log(tmp_path: Path) -> AuditLog:
    return AuditLog(make_engine(None, tmp_path / ".keel"), "app")


def test_an_intact_chain_and_a_changed_row(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for i in range(5):
        log.record("cli", "key.created", f"k{i}", {"n": i})
    assert log.verify() is None
    assert [e.target for e in log.entries()] == ["k0", "k1", "k2", "k3", "k4"]
    with log.engine.begin() as conn:  # someone rewrites history
        conn.execute(update(audit_table).where(audit_table.c.seq == 3).values(actor="someone"))
    broken = log.verify()
    assert broken is not None and broken.seq == 3 and "hash" in broken.reason


def test_a_removed_row_breaks_the_chain(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for i in range(4):
        log.record("cli", "cache.cleared", str(i))
    with log.engine.begin() as conn:
        conn.execute(delete(audit_table).where(audit_table.c.seq == 2))
    broken = log.verify()
    assert broken is not None and broken.seq == 3 and "follow" in broken.reason


APPENDER = """
import sys
from pathlib import Path
from keel.db import make_engine
from keel.ops.audit import AuditLog
log = AuditLog(make_engine(None, Path(sys.argv[1])), "app")
for i in range(40):
    log.record(sys.argv[2], "documents.ingested", str(i))
"""


def test_two_processes_append_one_chain(tmp_path: Path) -> None:
    data = tmp_path / ".keel"
    _log(tmp_path)  # the table exists before both start
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(data), name]) for name in "ab"]
    for p in procs:
        assert p.wait(timeout=300) == 0
    log = _log(tmp_path)
    assert log.verify() is None
    with log.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_table)).scalar() == 80


@pytest.fixture
def bot(tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from keel.settings import get_settings

    (tmp_path / "keel.toml").write_text('[app]\nname = "audited"\n[agent]\nretrieve = false\n')
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    get_settings.cache_clear()
    return tmp_path / "keel.toml"


def test_cli_actions_are_audited_and_verified(bot: Path) -> None:
    from keel.cli import cli

    runner = CliRunner()
    cfg = ["--config", str(bot)]
    made = runner.invoke(cli, [*cfg, "keys", "create", "--name", "ops", "--json"])
    assert made.exit_code == 0, made.output
    key_id = json.loads(made.stdout)["id"]
    assert runner.invoke(cli, [*cfg, "keys", "revoke", key_id]).exit_code == 0
    release = runner.invoke(cli, [*cfg, "release", "create", "--quiet"])
    assert release.exit_code == 0, release.output
    rid = release.stdout.strip()
    assert runner.invoke(cli, [*cfg, "release", "deploy", rid]).exit_code == 0
    listed = runner.invoke(cli, [*cfg, "audit", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    actions = [(e["action"], e["target"]) for e in json.loads(listed.stdout)]
    assert actions == [
        ("key.created", key_id),
        ("key.revoked", key_id),
        ("release.created", rid),
        ("release.stable", rid),
    ]
    assert runner.invoke(cli, [*cfg, "audit", "verify"]).exit_code == 0
    bad_since = runner.invoke(cli, [*cfg, "audit", "list", "--since", "yesterday"])
    assert bad_since.exit_code == 2
    engine = make_engine(None, bot.parent / ".keel")
    with engine.begin() as conn:
        conn.execute(update(audit_table).where(audit_table.c.seq == 2).values(target="x"))
    broken = runner.invoke(cli, [*cfg, "audit", "verify"])
    assert broken.exit_code == 1 and "row 2" in broken.output


def test_a_read_only_database_is_a_store_error_at_once(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from keel.errors import StoreError

    _log(tmp_path).record("cli", "key.created", "k0")  # the table exists
    db = tmp_path / ".keel" / "keel.db"
    assert db.exists()
    read_only = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    with pytest.raises(StoreError, match="audit log cannot be written"):
        AuditLog(read_only, "app").record("cli", "key.created", "k1")
    assert [e.target for e in _log(tmp_path).entries()] == ["k0"]
