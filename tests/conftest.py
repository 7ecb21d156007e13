"""Shared fixtures. Outbound network is blocked for the whole test run: only loopback and
Unix sockets may connect, so a test that tries to reach the internet fails loudly."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings, offline_defaults

offline_defaults()

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/15"


class NetworkBlocked(RuntimeError):
    pass


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _allowed(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _allowed(address):
        raise NetworkBlocked(f"tests may not connect to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _allowed(address):
        raise NetworkBlocked(f"tests may not connect to {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_network() -> Iterator[None]:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export per test session, in a temporary folder (no leftovers needed)."""
    return tmp_path_factory.mktemp("keel-model-cache")


@pytest.fixture
def settings(tmp_path: Path, model_cache_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir)


@pytest.fixture
def make_app(tmp_path: Path, settings: Settings) -> Iterator[Callable[..., App]]:
    """Build an App in tmp_path from a config mapping (the parsed keel.toml)."""
    apps: list[App] = []

    def factory(
        raw: dict[str, Any] | None = None,
        *,
        model: Any = None,
        app_settings: Settings | None = None,
    ) -> App:
        app = App(
            config_from_dict(raw or {}, base_dir=tmp_path),
            settings=app_settings or settings,
            model=model,
        )
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


def _postgres_reachable() -> str | None:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "not available here"
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_url() -> str:
    reason = _postgres_reachable()
    if reason is not None:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test) is not reachable: {reason}")
    return PG_URL


def _redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@pytest.fixture(scope="session")
def redis_url() -> str:
    reason = _redis_reachable()
    if reason is not None:
        pytest.skip(f"Redis at 127.0.0.1:6379 is not reachable: {reason}")
    return REDIS_URL


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def write() -> Callable[[Path, dict[str, str]], None]:
    """``write(root, {"docs/a.md": "..."})`` creates the files."""
    return write_files
