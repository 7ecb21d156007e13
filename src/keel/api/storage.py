"""Is the gateway's storage still usable? The data directory is the one it started with, and
the database takes writes. ``/readyz`` asks both; every request asks the first (one ``stat``),
so a data directory removed or replaced while serving answers 503 instead of empty answers."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, String, Table

from keel.db import create_tables, metadata

if TYPE_CHECKING:
    from keel.app import App

_log = logging.getLogger(__name__)

# Written to and rolled back by the readiness probe: it never holds a row.
probe = Table(
    "keel_ready_probe",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int


def _identity(path: Path) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Identity(st.st_dev, st.st_ino)


class StorageCheck:
    """Remembers the data directory the app started with and checks the storage against it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.data_dir = app.data_dir
        self._started = _identity(self.data_dir)
        self._logged = False

    def data_dir_problem(self) -> str | None:
        """Why the data directory is not the one the app started with (None: it is)."""
        if self._started is None:  # none at start (every store is a shared service)
            return None
        now = _identity(self.data_dir)
        if now is None:
            return self._noticed("the data directory is gone")
        if now != self._started:
            return self._noticed("the data directory was replaced while serving")
        return None

    def _noticed(self, problem: str) -> str:
        """``problem``, said without the path (it reaches callers without a key): the path
        goes to the log, once."""
        if not self._logged:
            self._logged = True
            _log.error("%s: %s", problem, self.data_dir)
        return problem

    def database_problem(self) -> str | None:
        """Why the keel database does not take a write (None: it does). The probe's row is
        rolled back, so nothing is left behind."""
        try:
            engine = self.app.engine
            create_tables(engine, metadata, [probe])
            with engine.connect() as conn:
                tx = conn.begin()
                try:
                    conn.execute(probe.insert().values(id=uuid.uuid4().hex, at=datetime.now(UTC)))
                finally:
                    tx.rollback()
        except Exception as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            _log.warning("the keel database does not take a write: %s", reason)
            return f"not writable: {type(exc).__name__}"
        return None
