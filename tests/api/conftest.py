from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from keel.api import create_app
from keel.app import App
from keel.evals.gate import gate
from keel.evals.runner import CaseResult, RunResult
from keel.evals.store import EvalRunStore
from keel.testing import ScriptedChatModel, send_chat_completion, unused_port

TOOLS = '''
from keel.tools import tool

@tool(side_effects="write", requires_approval=True, scopes=["orders:write"])
def refund_order(order_id: str) -> str:
    """Refund an order.

    Args:
        order_id: The order id.
    """
    return f"refunded {order_id}"
'''


class Server:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app: App) -> None:
        self.api = create_app(app)
        self.port = unused_port()
        config = uvicorn.Config(self.api, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def serve() -> type[Server]:
    return Server


class Gateway:
    """An in-process gateway over a scripted model, and keys to call it with."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.api = create_app(app)
        self.client = TestClient(self.api, raise_server_exceptions=False)
        self.keys = self.api.state.gateway.keys

    def key(self, *scopes: str, name: str = "test") -> str:
        plain, _ = self.keys.create(name, list(scopes) or ["chat"])
        return plain

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gateway(
    make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]
) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def factory(script: list[Any] | None = None, **raw: Any) -> Gateway:
        write(tmp_path, {"gw_tools.py": TOOLS, "docs/a.md": "# Refunds\n\nRefunds take 30 days.\n"})
        cfg = {"tools": {"enabled": ["gw_tools"]}, **raw}
        app = make_app(cfg, model=ScriptedChatModel(script=list(script or [])))
        gw = Gateway(app)
        made.append(gw)
        return gw

    yield factory
    for gw in made:
        gw.client.close()


def _case(cid: str, recall: float) -> CaseResult:
    return CaseResult(
        case_id=cid,
        repeat=0,
        input=f"<b>question</b> {cid}",
        output="an answer",
        contexts=[],
        doc_ids=[],
        tool_calls=[],
        trace_id="0" * 32,
        latency_ms=10.0,
        cost_usd=None,
        guard_events=[],
        scores={"recall_at_k": recall},
    )


def _run(recalls: dict[str, float]) -> RunResult:
    return RunResult(
        suite="smoke",
        dataset_version="ds1",
        app_version="app1",
        model="scripted",
        started_at="2025-01-01T00:00:00+00:00",
        cases=[_case(c, r) for c, r in recalls.items()],
        aggregates={"recall_at_k": {"mean": sum(recalls.values()) / len(recalls)}},
        skipped_metrics={},
    )


def _record_runs(engine: Any) -> tuple[str, str]:
    store = EvalRunStore(engine)
    good = _run({"alpha": 1.0, "beta": 1.0, "gamma": 1.0})
    verdict = gate(good, thresholds={"recall_at_k": 0.5}, higher_is_better={"recall_at_k": True})
    a = store.record(good, suite="smoke", passed=True, app_version="app1", gate=asdict(verdict))
    worse = _run({"alpha": 1.0, "beta": 0.0, "gamma": 0.5})
    b = store.record(worse, suite="smoke", passed=False, app_version="app2", gate=None)
    return a, b


@pytest.fixture
def record_eval_runs() -> Callable[[Any], tuple[str, str]]:
    """``record_eval_runs(engine)`` stores two runs of a suite ``smoke`` (the second worse on
    cases beta and gamma) and returns their ids."""
    return _record_runs


class ModelServer:
    """An OpenAI-compatible chat-completions server on loopback that answers ``reply`` after
    ``delay_s`` seconds and keeps the headers of every request it got (``seen``)."""

    def __init__(self, reply: str = "Hello.", delay_s: float = 0.0) -> None:
        import http.server

        outer = self
        self.reply, self.delay_s = reply, delay_s
        self.seen: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.seen.append({k.lower(): v for k, v in self.headers.items()})
                time.sleep(outer.delay_s)
                send_chat_completion(self, outer.reply, prompt_tokens=5, completion_tokens=2)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model_server() -> Iterator[Callable[..., ModelServer]]:
    """Start fake OpenAI-compatible model servers (stopped after the test)."""
    made: list[ModelServer] = []

    def start(reply: str = "Hello.", delay_s: float = 0.0) -> ModelServer:
        made.append(ModelServer(reply, delay_s))
        return made[-1]

    yield start
    for server in made:
        server.close()
