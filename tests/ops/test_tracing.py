"""Traces of every component, queryable; spans reach a real OTLP receiver; lineage."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from keel.api import create_app
from keel.app import App
from keel.settings import Settings
from keel.testing import ScriptedChatModel

TOOLS = """
from keel.tools import tool

@tool
def lookup_order(order_id: str) -> str:
    \"\"\"Look up an order.\"\"\"
    return f"{order_id}: shipped"
"""


def flatten(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for span in spans:
        out.append(span)
        out.extend(flatten(span["children"]))
    return out


@pytest.fixture
def traced(make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]) -> App:
    write(
        tmp_path,
        {
            "docs/orders.md": "# Orders\n\nOrders ship in two days. Call +1 415 555 0132.\n",
            "order_tools.py": TOOLS,
        },
    )
    model = ScriptedChatModel(
        script=[
            ScriptedChatModel.tool_call("lookup_order", {"order_id": "ORD-1"}),
            "ORD-1 has shipped; orders ship in two days [1].",
        ]
        * 5
    )
    app = make_app(
        {
            "tools": {"enabled": ["order_tools"]},
            "guards": {"input": {"pii": {"on_fail": "fix"}}},
            "costs": {
                "prices": {
                    "ScriptedChatModel": {"input_per_million": 1.0, "output_per_million": 2.0}
                }
            },
        },
        model=model,
    )
    app.ingest()
    return app


def test_one_http_chat_is_one_trace_with_every_component(traced: App) -> None:
    api = create_app(traced)
    client = TestClient(api)
    admin, _ = api.state.gateway.keys.create("ops", ["chat", "traces:read"])
    auth = {"Authorization": f"Bearer {admin}"}
    r = client.post(
        "/v1/chat", json={"message": "where is ORD-1? mail ada@example.com"}, headers=auth
    )
    answer = r.json()
    trace_id = answer["trace_id"]
    assert answer["cost_usd"] is not None and answer["cost_usd"] > 0

    listed = client.get("/v1/traces", headers=auth).json()["traces"]
    assert listed[0]["trace_id"] == trace_id
    row = listed[0]
    assert row["app_version"] == traced.version and row["index_version"] == traced.index_version()
    assert row["guard_outcome"] == "flagged" and row["cost_usd"] == answer["cost_usd"]
    assert "<EMAIL_ADDRESS_1>" in row["question"] and "ada@example.com" not in row["question"]

    tree = client.get(f"/v1/traces/{trace_id}", headers=auth).json()
    (root,) = tree["spans"]
    assert root["name"] == "POST /v1/chat" and root["attributes"]["http.route"] == "/v1/chat"
    names = [s["name"] for s in flatten(tree["spans"])]
    assert "keel.turn" in names and "keel.retrieve" in names
    assert "chat ScriptedChatModel" in names and "execute_tool lookup_order" in names
    assert "keel.guard pii" in names
    spans = {s["name"]: s for s in flatten(tree["spans"])}
    model = spans["chat ScriptedChatModel"]["attributes"]
    assert model["gen_ai.operation.name"] == "chat" and model["gen_ai.usage.input_tokens"] > 0
    assert spans["execute_tool lookup_order"]["attributes"]["keel.tool.status"] == "ok"
    turn = spans["keel.turn"]["attributes"]
    assert turn["keel.prompt.system_version"] == traced.prompts.system_version
    # the thread as stored: its id scoped to the key that named it (keel.key.id)
    assert turn["keel.thread.id"] == f"{turn['keel.key.id']}:{answer['thread_id']}"
    assert spans["keel.retrieve"]["attributes"]["keel.retrieve.doc_ids"] == ["docs/orders.md"]
    # the retrieved phone number is redacted on the span too
    assert "415 555" not in json.dumps(tree)
    assert client.get("/v1/traces", headers={"Authorization": "Bearer x"}).status_code == 401
    chat_only, _ = api.state.gateway.keys.create("c", ["chat"])
    forbidden = client.get("/v1/traces", headers={"Authorization": f"Bearer {chat_only}"})
    assert forbidden.status_code == 403

    metrics = client.get("/metrics").text
    assert 'keel_tool_calls_total{status="ok",tool="lookup_order"} 1.0' in metrics
    assert "keel_model_tokens_total" in metrics and "keel_cost_usd_total" in metrics
    assert 'keel_guard_decisions_total{outcome="fail",point="input",validator="pii"}' in metrics


def test_keel_traces_cli_renders_the_tree(
    traced: App, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = traced.ask("where is ORD-1?")
    traced.tracing.flush()
    (tmp_path / "keel.toml").write_text(
        '[tools]\nenabled = ["order_tools"]\n[guards.input.pii]\non_fail = "fix"\n'
    )
    monkeypatch.setenv("KEEL_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(settings.cache_dir))
    from keel.cli import cli
    from keel.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        config = str(tmp_path / "keel.toml")
        listed = runner.invoke(cli, ["--config", config, "traces", "list", "--json"])
        assert json.loads(listed.stdout)[0]["trace_id"] == answer.trace_id
        shown = runner.invoke(cli, ["--config", config, "traces", "show", answer.trace_id])
        assert shown.exit_code == 0, shown.output
        for part in (
            "keel.turn",
            "keel.retrieve",
            "execute_tool lookup_order",
            "keel.app.version",
            "keel.index.version",
        ):
            assert part in shown.stdout
        missing = runner.invoke(cli, ["--config", config, "traces", "show", "0" * 32])
        assert missing.exit_code == 2
    finally:
        get_settings.cache_clear()


def test_a_broken_store_never_fails_a_request(traced: App) -> None:
    store = traced.tracing.store

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database is down")

    store.engine = type("E", (), {"begin": broken})()  # type: ignore[assignment]
    answer = traced.ask("where is ORD-1?")
    assert answer.text.startswith("ORD-1")
    traced.tracing.flush()
    assert store.dropped > 0


class _Receiver(BaseHTTPRequestHandler):
    spans: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                type(self).spans.extend(scope.spans)
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def otlp_receiver() -> Iterator[str]:
    """A real OTLP/HTTP receiver on loopback: it decodes the protobuf export requests."""
    _Receiver.spans = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_spans_reach_an_otlp_receiver(
    make_app: Callable[..., App], settings: Settings, otlp_receiver: str
) -> None:
    otlp = settings.model_copy(update={"otlp_endpoint": otlp_receiver})
    app = make_app(
        {"agent": {"retrieve": False}}, model=ScriptedChatModel(script=["hi"]), app_settings=otlp
    )
    answer = app.ask("hello")
    app.tracing.flush()
    names = {s.name for s in _Receiver.spans}
    assert "keel.turn" in names and "chat ScriptedChatModel" in names
    turn = next(s for s in _Receiver.spans if s.name == "keel.turn")
    assert turn.trace_id.hex() == answer.trace_id


def test_capture_off_keeps_inputs_out_of_spans(make_app: Callable[..., App]) -> None:
    app = make_app(
        {"agent": {"retrieve": False}, "tracing": {"capture": "off"}},
        model=ScriptedChatModel(script=["the answer"]),
    )
    answer = app.ask("my secret question")
    app.tracing.flush()
    blob = json.dumps(app.tracing.get(answer.trace_id))
    assert "my secret question" not in blob and "the answer" not in blob


def test_a_version_1_trace_store_is_upgraded_in_place(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect, text

    from keel.ops.tracing import StoreExporter, migrate

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:  # the tables as schema version 1 made them
        conn.execute(
            text(
                "CREATE TABLE keel_traces (trace_id VARCHAR(32) PRIMARY KEY, name VARCHAR(256)"
                " NOT NULL, started_at DATETIME NOT NULL, duration_ms FLOAT NOT NULL, status"
                " VARCHAR(16) NOT NULL, app VARCHAR(256), app_version VARCHAR(64),"
                " index_version VARCHAR(64), model VARCHAR(256), thread_id VARCHAR(256),"
                " key_id VARCHAR(64), guard_outcome VARCHAR(16), input_tokens INTEGER,"
                " output_tokens INTEGER, cost_usd FLOAT, question TEXT, answer TEXT)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO keel_traces (trace_id, name, started_at, duration_ms, status)"
                " VALUES ('t1', 'keel.turn', '2026-01-01 00:00:00', 1.0, 'ok')"
            )
        )
        conn.execute(
            text(
                "CREATE TABLE keel_schema_versions (component VARCHAR(64) PRIMARY KEY,"
                " version INTEGER NOT NULL)"
            )
        )
        conn.execute(text("INSERT INTO keel_schema_versions VALUES ('tracing', 1)"))

    assert migrate(engine) == 2
    columns = {c["name"] for c in inspect(engine).get_columns("keel_traces")}
    assert {"release_id", "cache_hit"} <= columns
    with engine.connect() as conn:  # nothing stored was lost
        assert conn.execute(text("SELECT trace_id FROM keel_traces")).scalars().all() == ["t1"]
    assert migrate(engine) == 2  # idempotent
    StoreExporter(engine)  # and usable


def test_a_process_that_loses_the_race_to_record_the_schema_version_finds_it_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting on one new database (seen in CI with two instances on
    PostgreSQL: a duplicate key on keel_schema_versions) both read "no version"; the other
    one migrates in between, here deterministically, and this one must not fail."""
    from sqlalchemy import create_engine, inspect

    from keel.ops import tracing

    engine = create_engine(f"sqlite:///{tmp_path / 'race.db'}")
    real = tracing.create_tables
    raced: list[bool] = []

    def create_tables(engine_: Any, metadata_: Any, tables: list[Any]) -> None:
        real(engine_, metadata_, tables)
        if tracing.spans_table in tables and not raced:
            raced.append(True)
            tracing.migrate(engine_)  # the other process, all the way

    monkeypatch.setattr(tracing, "create_tables", create_tables)
    assert tracing.migrate(engine) == 2 and raced
    assert {"release_id", "cache_hit"} <= {
        c["name"] for c in inspect(engine).get_columns("keel_traces")
    }


def test_span_names_are_spelled_once() -> None:
    """Span names and guard attribute keys live in keel.ops.semconv; no other module spells
    them (they are read back by the trace store, the CLI, the console and monitoring)."""
    import re
    from pathlib import Path

    import keel

    src = Path(keel.__file__).parent
    pattern = re.compile(r"[\"'](keel\.turn|keel\.retrieve|keel\.guard\.\w+)[\"']")
    spelled = [
        f"{path.relative_to(src)}: {m.group(1)}"
        for path in src.rglob("*.py")
        if path.name != "semconv.py"
        for m in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert spelled == []
