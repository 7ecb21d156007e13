"""One person's data, planted through every path that records it (the OpenAI route's `user`,
the native route's X-Keel-User, streamed and not, feedback, usage, the semantic cache), is
exported whole and then erased everywhere: afterwards no table and no checkpoint holds the
person's id or a unique string they wrote, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, select, table, text
from typer.testing import CliRunner

from keel.api.server import create_app
from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings
from keel.testing import ScriptedChatModel


def _holding(engine: Engine, needles: list[str]) -> dict[str, set[str]]:
    """Which tables of a database hold any of ``needles`` (in any column, text or bytes)."""
    found: dict[str, set[str]] = {}
    raw = [n.encode() for n in needles]
    with engine.connect() as conn:
        for name in inspect(engine).get_table_names():
            columns = [c["name"] for c in inspect(engine).get_columns(name)]
            query = select(*[text(f'"{c}"') for c in columns]).select_from(table(name))
            for row in conn.execute(query):
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    blob = value if isinstance(value, bytes) else str(value).encode()
                    for needle, needle_raw in zip(needles, raw, strict=True):
                        if needle_raw in blob:
                            found.setdefault(needle, set()).add(name)
    return found


@pytest.fixture(params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, model_cache_dir: Path
) -> Iterator[tuple[App, TestClient, list[Engine]]]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir, database_url=url)
    config = config_from_dict(
        {"app": {"name": f"erase-{uuid.uuid4().hex[:8]}"}, "agent": {"retrieve": False},
         "cache": {"enabled": True}},
        base_dir=tmp_path,
    )  # fmt: skip
    app = App(
        config, settings=settings, model=ScriptedChatModel(script=["Refunds take 30 days."] * 6)
    )
    client = TestClient(create_app(app), raise_server_exceptions=False)
    stores = [app.engine]
    if url is None:  # threads are checkpointed beside the keel database
        stores.append(create_engine(f"sqlite:///{tmp_path / '.keel' / 'checkpoints.db'}"))
    yield app, client, stores
    client.close()
    app.close()
    for engine in stores[1:]:
        engine.dispose()


def test_one_person_is_exported_then_erased_everywhere(
    served: tuple[App, TestClient, list[Engine]],
) -> None:
    app, client, stores = served
    user = f"person-{uuid.uuid4().hex[:12]}"
    secret = f"plover-{uuid.uuid4().hex[:12]}"  # something only this person wrote
    gw = client.app.state.gateway  # type: ignore[attr-defined]
    key, _ = gw.keys.create("app", ["chat", "feedback"])
    admin, _ = gw.keys.create("ops", ["admin"])
    h = {"Authorization": f"Bearer {key}"}

    asked = client.post(
        "/v1/chat/completions",
        json={"model": app.name, "user": user,
              "messages": [{"role": "user", "content": f"How long for refunds, {secret}?"}]},
        headers=h,
    )  # fmt: skip
    assert asked.status_code == 200, asked.text
    trace_id = asked.json()["keel"]["trace_id"]
    streamed = client.post(
        "/v1/chat",
        json={"message": f"And my card {secret}?", "stream": True},
        headers={**h, "X-Keel-User": user},
    )
    assert streamed.status_code == 200 and "event: done" in streamed.text
    rated = client.post(
        "/v1/feedback",
        json={"trace_id": trace_id, "score": 0, "comment": f"wrong for {secret}"},
        headers=h,
    )
    assert rated.status_code == 201, rated.text
    app.tracing.flush()

    planted = _holding(stores[0], [user, secret])
    for extra in stores[1:]:
        for needle, tables in _holding(extra, [user, secret]).items():
            planted.setdefault(needle, set()).update(tables)
    assert {"keel_threads", "keel_traces", "keel_usage_end_users", "keel_semantic_cache"} <= (
        planted[user]
    ), planted
    assert {"keel_spans", "keel_feedback", "keel_semantic_cache"} <= planted[secret], planted
    assert any("checkpoint" in t for t in planted[secret]), planted

    exported = client.get(f"/v1/users/{user}", headers={"Authorization": f"Bearer {admin}"})
    assert exported.status_code == 200, exported.text
    data = exported.json()
    assert len(data["threads"]) == 2 and len(data["traces"]) >= 2
    assert data["feedback"][0]["comment"] == f"wrong for {secret}"
    assert data["usage"][0]["requests"] == 2 and len(data["cache_entries"]) == 2
    assert secret in json.dumps(data["threads"])
    assert client.get(f"/v1/users/{user}", headers=h).status_code == 403

    erased = client.delete(f"/v1/users/{user}", headers={"Authorization": f"Bearer {admin}"})
    assert erased.status_code == 200, erased.text
    report = erased.json()["erased"]
    assert report["threads"] == 2 and report["feedback"] == 1 and report["cache_entries"] == 2
    assert report["traces"] >= 2 and report["usage"] == 1

    left: dict[str, set[str]] = {}
    for engine in stores:
        for needle, tables in _holding(engine, [user, secret]).items():
            left.setdefault(needle, set()).update(tables)
    assert left == {}, f"still held after erasure: {left}"
    audit = client.get("/v1/audit", headers={"Authorization": f"Bearer {admin}"}).json()
    assert [e["action"] for e in audit["entries"]][-1] == "privacy.erased"


def test_keel_privacy_on_the_command_line(tmp_path: Path, model_cache_dir: Path) -> None:
    from keel.cli import cli

    (tmp_path / "keel.toml").write_text('[app]\nname = "cli-privacy"\n[agent]\nretrieve = false\n')
    env = {"KEEL_DATA_DIR": str(tmp_path / ".keel"), "KEEL_CACHE_DIR": str(model_cache_dir)}
    app = App.from_config(
        tmp_path / "keel.toml",
        model=ScriptedChatModel(script=["hello"]),
        settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
    )
    app.ask("hi there", "t-cli", end_user="ann")
    app.close()
    runner = CliRunner()
    config = ["--config", str(tmp_path / "keel.toml")]
    exported = runner.invoke(cli, [*config, "privacy", "export", "--user", "ann"], env=env)
    assert exported.exit_code == 0, exported.output
    data: dict[str, Any] = json.loads(exported.output)
    assert [t["thread_id"] for t in data["threads"]] == ["t-cli"]
    erased = runner.invoke(cli, [*config, "privacy", "erase", "--user", "ann", "--json"], env=env)
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.output)["threads"] == 1
    bad = runner.invoke(cli, [*config, "privacy", "erase", "--user", ""], env=env)
    assert bad.exit_code == 2
