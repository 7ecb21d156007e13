"""A real uvicorn server on loopback for the security tests: attacks go over HTTP, as an
attacker's would, against an app built from a keel.toml-like mapping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from keel.api import create_app
from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings
from keel.testing import ScriptedChatModel, unused_port


@dataclass
class Site:
    """A served app: its base URL, an HTTP client and a way to mint keys."""

    app: App
    api: Any
    url: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def key(self, *scopes: str, name: str = "tester") -> str:
        plain, _ = self.api.state.gateway.keys.create(name, list(scopes))
        return str(plain)

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def post(self, path: str, key: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(key), **kwargs.pop("headers", {})}
        return self.http.post(path, headers=headers, **kwargs)

    def get(self, path: str, key: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, headers=self.auth(key), **kwargs)

    def chat(self, key: str, message: str, **extra: Any) -> httpx.Response:
        return self.post("/v1/chat", key, json={"message": message, **extra})


@pytest.fixture
def site(tmp_path: Path, model_cache_dir: Path) -> Iterator[Callable[..., Site]]:
    """``site(raw_config, script=[...], files={...})``: the app served on a free port."""
    running: list[tuple[uvicorn.Server, threading.Thread, App, Site]] = []

    def start(
        raw: dict[str, Any] | None = None,
        *,
        script: list[Any] | None = None,
        files: dict[str, str] | None = None,
        model: Any = None,
    ) -> Site:
        for rel, text in (files or {}).items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        raw = {"app": {"name": "secbot"}, **(raw or {})}
        raw.setdefault("limits", {}).setdefault("requests_per_minute", 10_000)
        app = App(
            config_from_dict(raw, base_dir=tmp_path),
            settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
            # model="config": the model keel.toml names (keel:extractive by default)
            model=None
            if model == "config"
            else model or ScriptedChatModel(script=script or ["ok"] * 50),
        )
        api = create_app(app)
        port = unused_port()
        server = uvicorn.Server(
            uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        served = Site(app=app, api=api, url=f"http://127.0.0.1:{port}")
        running.append((server, thread, app, served))
        return served

    yield start
    for server, thread, app, served in running:
        served.http.close()
        server.should_exit = True
        thread.join(timeout=10)
        app.close()


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and "Traceback" not in r.text
    return body


@pytest.fixture
def problem() -> Callable[[httpx.Response, int], dict[str, Any]]:
    """``problem(response, status)``: the response is a problem+json document with this
    status (and no stack trace); its body."""
    return _problem
