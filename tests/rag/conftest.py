"""Fixtures for the knowledge-pipeline tests.

``chroma_server_url`` starts a real ``chroma run`` server on loopback for the whole session.
The 1.x server is a Rust binary: it has no product telemetry (no PostHog client; the Python
``anonymized_telemetry`` setting does not apply to it), and its only exporter is OpenTelemetry,
which is installed only when a config file has an ``open_telemetry:`` section. Started with
``--path/--port/--host`` it uses the built-in single-node config (``persist_path`` only, no
``open_telemetry``), so it traces to stdout only and opens no outbound connection. We still drop
``OTEL_*``/``CHROMA_*``/``CONFIG_PATH`` from its environment so nothing inherited can switch an
exporter on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

_START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        port = _free_port()
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
