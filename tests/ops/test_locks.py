"""Leases (keel.ops.locks): one holder at a time across processes, on Redis and on the keel
database, released on every exit path and expiring when a holder dies."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.db import make_engine
from keel.ops.locks import DatabaseLeases, Leases, RedisLeases


@pytest.fixture(params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(kind, url): the SQLite keel database, or Redis (skips when Redis is not running)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        yield "redis", url
    else:
        yield "sqlite", f"sqlite:///{tmp_path / 'keel.db'}"


def _leases(kind: str, url: str, ttl_s: float = 30.0) -> Leases:
    backend = RedisLeases(url) if kind == "redis" else DatabaseLeases(make_engine(url, Path()))
    return Leases(backend, ttl_s=ttl_s)


def test_one_holder_at_a_time_and_release(target: tuple[str, str]) -> None:
    leases = _leases(*target)
    name = f"t-{time.time_ns()}"
    first = leases.try_acquire(name)
    assert first is not None
    assert leases.try_acquire(name) is None  # held
    first.release()
    with leases.try_acquire(name) as again:  # type: ignore[union-attr]
        assert again is not None
    assert leases.try_acquire(name) is not None  # released by the with block


def test_an_expired_lease_is_taken_and_the_old_holder_cannot_release_it(
    target: tuple[str, str],
) -> None:
    leases = _leases(*target, ttl_s=0.3)
    name = f"t-{time.time_ns()}"
    old = leases.try_acquire(name)
    assert old is not None
    old._stop.set()  # a holder that stopped renewing (its process froze)
    time.sleep(0.5)
    new = leases.try_acquire(name)
    assert new is not None
    old.release()  # too late: it must not free the new holder's lease
    assert leases.try_acquire(name) is None
    new.release()


def test_a_held_lease_is_renewed_past_its_ttl(target: tuple[str, str]) -> None:
    leases = _leases(*target, ttl_s=0.3)
    name = f"t-{time.time_ns()}"
    held = leases.try_acquire(name)
    assert held is not None
    time.sleep(0.8)  # well past the ttl: renewed in the background
    assert leases.try_acquire(name) is None
    held.release()


HOLDER = """
import sys, time
from pathlib import Path
from typing import Any
from keel.db import make_engine
from keel.ops.locks import DatabaseLeases, Leases, RedisLeases
kind, url, name, hold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
backend = RedisLeases(url) if kind == "redis" else DatabaseLeases(make_engine(url, Path()))
lease = Leases(backend, ttl_s=1.0).try_acquire(name)
print("held" if lease else "busy", flush=True)
time.sleep(hold)
"""


def _holder(kind: str, url: str, name: str, hold: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, kind, url, name, str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_processes_and_a_killed_holder(target: tuple[str, str]) -> None:
    """Another process holds the lease: this one is refused. The holder is killed (no
    release): the lease expires after its ttl and is taken."""
    kind, url = target
    name = f"t-{time.time_ns()}"
    holder = _holder(kind, url, name, hold=60)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        leases = _leases(kind, url)
        assert leases.try_acquire(name) is None
        second = _holder(kind, url, name, hold=0)
        assert second.communicate(timeout=60)[0].strip() == "busy"
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 10
        lease = None
        while lease is None and time.monotonic() < deadline:
            lease = leases.try_acquire(name)
            time.sleep(0.1)
        assert lease is not None  # expired within its 1 s ttl
        lease.release()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.postgres
def test_database_leases_on_postgres(pg_url: str) -> None:
    leases = _leases("postgres", pg_url)
    name = f"t-{time.time_ns()}"
    held = leases.try_acquire(name)
    assert held is not None and leases.try_acquire(name) is None
    second = _holder("postgres", pg_url, name, hold=0)
    assert second.communicate(timeout=60)[0].strip() == "busy"
    held.release()
    again = leases.try_acquire(name)
    assert again is not None
    again.release()


RELEASER = """
import sys, time
from pathlib import Path
from typing import Any
from keel.db import make_engine
from keel.ops.locks import DatabaseLeases, Leases
leases = Leases(DatabaseLeases(make_engine(None, Path(sys.argv[1]))))
lease = leases.try_acquire(sys.argv[2])
print("held" if lease else "busy", flush=True)
time.sleep(float(sys.argv[3]))
print(time.time(), flush=True)
lease.release()
"""


def test_an_ingest_waits_for_another_process_ingesting_the_same_collection(
    make_app: Any, tmp_path: Path, settings: Any
) -> None:
    """Another process (a gateway's upload job, a CLI ingest) holds the collection: this
    ingest starts only once it let go, so neither takes the other's run for an interrupted
    one."""
    app = make_app({"app": {"name": "ing"}})
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "a.md").write_text("# A\n\nRefunds take 30 days.\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", RELEASER, str(settings.data_dir), "ing:ingest:docs", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        report = app.ingest([tmp_path / "docs"])
        finished = time.time()
        released = float(holder.stdout.readline())
        assert report.added and finished > released
    finally:
        holder.kill()
        holder.wait()
