"""Private by default, proven: the main paths run with outbound sockets blocked, and any
attempt to reach a non-loopback address fails the test (as it would leak data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from keel.testing import unused_port

BLOCKER = textwrap.dedent(
    """
    import ipaddress, os, socket

    _real = socket.socket.connect
    _log = os.environ["KEEL_TEST_CONNECT_LOG"]

    def _guard(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = False
            if not ok:
                with open(_log, "a") as f:
                    f.write(repr(address) + "\\n")
                raise OSError("outbound connection blocked by the privacy test")
        return _real(self, address)

    socket.socket.connect = _guard
    _resolve = socket.getaddrinfo

    def _getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            with open(_log, "a") as f:
                f.write("resolve " + repr(host) + "\\n")
            raise socket.gaierror("name resolution blocked by the privacy test")
        return _resolve(host, *args, **kwargs)

    socket.getaddrinfo = _getaddrinfo
    """
)


def _blocked_env(tmp_path: Path, model_cache_dir: Path) -> tuple[dict[str, str], Path]:
    """The environment of a keel process whose outbound connections are blocked and logged."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "connections.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "OTEL_"))},
        "PYTHONPATH": str(site),
        "KEEL_TEST_CONNECT_LOG": str(log),
        "KEEL_CACHE_DIR": str(model_cache_dir),
        "HOME": str(tmp_path / "home"),  # no ~/.guardrailsrc or other user settings
    }
    return env, log


def test_cli_ingest_ask_eval_serve_and_chat_make_no_outbound_connection(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    env, log = _blocked_env(tmp_path, model_cache_dir)
    keel = [sys.executable, "-m", "keel.cli"]

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*keel, *args], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path, **kw
        )  # type: ignore[call-overload]

    assert run("init", "app").returncode == 0
    config = str(tmp_path / "app" / "keel.toml")
    # the guards and tracing paths too: the scaffold's default policy (injection detector
    # included) plus the grounding guard a generative model would get
    with open(config, "a") as f:
        f.write('\n[guards.output.grounding]\non_fail = "fix"\n')
    assert run("--config", config, "ingest", "--json").returncode == 0
    asked = run("--config", config, "ask", "which formats can I add?", "--json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["citations"]
    # the language guard ran too (its identifier's model is read from the installed wheel)
    assert "language" in {e["name"] for e in json.loads(asked.stdout)["events"]}
    suite = str(tmp_path / "app" / "evals" / "smoke.yaml")
    evaluated = run("--config", config, "eval", suite, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["passed"] is True

    key = run("--config", config, "keys", "create", "--name", "t", "--scopes", "chat").stdout
    port = unused_port()
    server = subprocess.Popen(
        [*keel, "--config", config, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        import time

        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.stderr.read() if server.stderr else ""
            time.sleep(0.2)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat",
            json={"message": "how do I search?"},
            headers={"Authorization": f"Bearer {key.strip()}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    finally:
        server.terminate()
        server.wait(timeout=20)
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"outbound connections were attempted:\n{attempts}"


def test_keel_tune_trains_and_gates_with_no_outbound_connection(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    """Training (the Hugging Face trainer, sentence-transformers) runs offline: no hub, no
    telemetry, no experiment tracker."""
    env, log = _blocked_env(tmp_path, model_cache_dir)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "keel.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )

    assert run("init", "app").returncode == 0
    config = str(tmp_path / "app" / "keel.toml")
    assert run("--config", config, "ingest").returncode == 0
    for kind in ("embeddings", "reranker"):
        tuned = run("--config", config, "tune", kind, "--max-pairs", "8", "--batch-size", "8")
        assert tuned.returncode == 0, tuned.stderr
        assert f"tuned {kind}" in tuned.stdout and "deployable" in tuned.stdout
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"outbound connections were attempted:\n{attempts}"


def test_the_int8_support_encoder_is_made_with_no_outbound_connection(tmp_path: Path) -> None:
    """`keel guard check -v grounding` scores a paraphrase with the support encoder a new app
    uses; in a fresh cache folder that means the ONNX export and its int8 copy are made here."""
    cache = tmp_path / "fresh-cache"
    env, log = _blocked_env(tmp_path, cache)
    context = tmp_path / "context.txt"
    context.write_text(
        "Exports are ZIP files of Markdown notes, made from Settings > Data > Export."
    )
    lines = tmp_path / "answer.txt"
    lines.write_text("You can download all your notes as a ZIP archive from the data settings.\n")
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "keel.cli",
            "guard",
            "check",
            "-v",
            "grounding",
            str(lines),
            "--context",
            str(context),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout.splitlines()[0])["outcome"] == "pass"
    assert any(cache.glob("onnx/*qint8*/onnx/model_qint8_*.onnx"))  # made here, offline
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"outbound connections were attempted:\n{attempts}"
