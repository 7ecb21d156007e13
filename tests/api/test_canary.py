"""Releases through the gateway: stable and canary served side by side (sticky per thread
and key), per-release metrics, promote, and automatic rollback of a canary made worse."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from keel.api import create_app
from keel.app import App
from keel.config import config_from_dict
from keel.ops.canary import CanaryPolicy, judge_canary
from keel.ops.releases import ReleaseStore
from keel.settings import Settings
from keel.testing import unused_port

# The embedded model with retrieval off answers at once (it says it does not know), so a
# turn costs milliseconds and needs no knowledge base.
BASE: dict[str, Any] = {
    "app": {"name": "canary-bot"},
    "agent": {"retrieve": False},
    "limits": {"requests_per_minute": 10_000},
    "deploy": {"refresh_s": 0, "check_interval_s": 0, "min_sample": 15, "alpha": 0.01},
}


@pytest.fixture
def release_app(tmp_path: Path, model_cache_dir: Path) -> Iterator[Callable[[dict[str, Any]], App]]:
    settings = Settings(
        data_dir=tmp_path / ".keel",
        cache_dir=model_cache_dir,
        openai_base_url=f"http://127.0.0.1:{unused_port()}/v1",
        openai_api_key="sk-test",
    )
    made: list[App] = []

    def build(overrides: dict[str, Any]) -> App:
        raw = {**BASE, **overrides}
        app = App(config_from_dict(raw, base_dir=tmp_path), settings=settings)
        made.append(app)
        return app

    yield build
    for app in made:
        app.close()


def _record(app: App, note: str) -> str:
    return ReleaseStore(app.engine, app.name).create(app.release_content(), note=note).id


def _ask(client: TestClient, key: str, thread: str) -> dict[str, Any]:
    r = client.post(
        "/v1/chat",
        json={"message": "How long do refunds take?", "thread_id": thread},
        headers={"Authorization": f"Bearer {key}"},
    )
    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
    assert r.status_code == 200 or "detail" in body, r.text
    return {"status": r.status_code, **body}


def test_create_canary_promote_then_a_worse_canary_is_rolled_back(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    disk = release_app({})
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    v2 = _record(
        release_app({"guards": {"message": "Sorry, v2 cannot help with that request."}}), "v2"
    )
    # v3 is worse: its model is a server that is down, so every turn fails.
    v3 = _record(
        release_app({"model": {"id": "openai:gpt-4o-mini", "max_retries": 0, "timeout_s": 2}}),
        "v3",
    )
    store.set_stable(v1, "first release")

    api = create_app(disk)
    gw = api.state.gateway
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = gw.keys.create("tester", ["admin"])
    try:
        assert {_ask(client, key, f"t{i}")["release_id"] for i in range(5)} == {v1}

        # canary: a sticky share of threads goes to v2
        store.set_canary(v2, 0.5, "try v2")
        served = {f"t{i}": _ask(client, key, f"t{i}")["release_id"] for i in range(40)}
        assert set(served.values()) == {v1, v2}
        assert 8 <= sum(r == v2 for r in served.values()) <= 32
        again = {t: _ask(client, key, t)["release_id"] for t in list(served)[:10]}
        assert again == {t: served[t] for t in again}  # the same thread stays on its release

        metrics = client.get("/metrics").text
        assert f'keel_release_requests_total{{outcome="ok",release="{v2}"}}' in metrics
        assert f'keel_release_traffic_weight{{release="{v2}",role="canary"}} 0.5' in metrics
        view = client.get("/v1/deployment", headers={"Authorization": f"Bearer {key}"}).json()
        assert view["canary"] == v2 and view["health"][v2]["requests"] > 0
        on_v2 = client.get(
            "/v1/traces",
            params={"release_id": v2, "limit": 1000},
            headers={"Authorization": f"Bearer {key}"},
        ).json()["traces"]
        assert len(on_v2) == view["health"][v2]["requests"]
        assert {t["release_id"] for t in on_v2} == {v2}

        store.promote("v2 is as good")
        promoted = [_ask(client, key, f"t{i}") for i in range(10)]
        assert {a.get("release_id") for a in promoted} == {v2}, [
            a for a in promoted if a["status"] != 200
        ]

        # a canary that fails every turn is rolled back by the gateway itself
        store.set_canary(v3, 0.5, "try v3")
        outcomes = [_ask(client, key, f"u{i}") for i in range(80)]
        failed = [o for o in outcomes if o["status"] != 200]
        assert failed, "some turns went to the broken canary"
        state = store.state()
        assert state == {"stable": v2, "canary": None, "weight": 0.0}
        last = store.history()[0]
        assert last["action"] == "rollback" and last["from"] == v3
        assert last["reason"].startswith("automatic: error rate")
        # once rolled back, everything is served by stable again
        assert {_ask(client, key, f"u{i}")["release_id"] for i in range(10)} == {v2}
        assert f'keel_release_rollbacks_total{{release="{v3}"}} 1.0' in client.get("/metrics").text
        assert gw.served.built() == {v2}  # the rolled-back release is let go
    finally:
        client.close()


def test_a_canary_tripping_guards_is_rolled_back_with_the_reason(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    disk = release_app({})
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    strict = {"guards": {"input": {"length": {"on_fail": "exception", "max_chars": 5}}}}
    v2 = _record(release_app(strict), "too strict")
    store.set_stable(v1, "first")
    store.set_canary(v2, 0.5, "try it")
    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("tester", ["chat"])
    try:
        answers = [_ask(client, key, f"g{i}") for i in range(80)]
        tripped = [a for a in answers if a.get("stop_reason") == "guardrail"]
        assert tripped and all(a["release_id"] == v2 for a in tripped)
        assert store.state()["canary"] is None
        reason = store.history()[0]["reason"]
        assert reason.startswith("automatic: guard trip rate") and "Fisher" in reason
    finally:
        client.close()


def test_too_little_data_or_an_equal_canary_is_never_rolled_back() -> None:
    def health(requests: int, errors: int) -> dict[str, Any]:
        return {
            "requests": requests,
            "errors": errors,
            "guard_trips": 0,
            "feedback": 0,
            "negative_feedback": 0,
        }

    policy = CanaryPolicy(min_sample=50, alpha=0.01, margin=0.02)
    few = judge_canary("c", "s", {"c": health(10, 10), "s": health(500, 0)}, policy)
    assert not few.rollback  # 100% errors, but only 10 requests
    same = judge_canary("c", "s", {"c": health(200, 6), "s": health(800, 24)}, policy)
    assert not same.rollback  # 3% vs 3%
    worse = judge_canary("c", "s", {"c": health(200, 30), "s": health(800, 24)}, policy)
    assert worse.rollback and "error rate 0.150 (30/200)" in worse.reasons[0]
    small = judge_canary(
        "c", "s", {"c": health(5000, 160), "s": health(5000, 100)}, CanaryPolicy(margin=0.05)
    )
    assert not small.rollback  # significant, but within the margin


def test_negative_feedback_counts_against_the_release_that_answered(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    disk = release_app({"deploy": {**BASE["deploy"], "auto_rollback": False}})
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    v2 = _record(release_app({"guards": {"message": "v2"}}), "v2")
    store.set_stable(v1, "first")
    store.set_canary(v2, 0.5, "try")
    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("tester", ["chat", "feedback", "admin"])
    auth = {"Authorization": f"Bearer {key}"}
    try:
        for i in range(30):
            a = _ask(client, key, f"f{i}")
            score = 0.0 if a["release_id"] == v2 else 1.0
            r = client.post(
                "/v1/feedback", json={"trace_id": a["trace_id"], "score": score}, headers=auth
            )
            assert r.status_code == 201
        view = client.get("/v1/deployment", headers=auth).json()
        h1, h2 = view["health"][v1], view["health"][v2]
        assert h2["negative_feedback"] == h2["feedback"] > 0 and h1["negative_feedback"] == 0
        assert h1["requests"] + h2["requests"] == 30
        text = client.get("/metrics").text
        assert f'keel_release_feedback_total{{rating="negative",release="{v2}"}}' in text
        assert store.state()["canary"] == v2  # auto_rollback is off
    finally:
        client.close()


def test_a_release_whose_tools_the_code_lacks_is_refused(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    disk = release_app({})
    content = disk.release_content()
    content["tools"] = [{"type": "function", "function": {"name": "gone", "parameters": {}}}]
    with pytest.raises(Exception, match="tools only on one side: gone"):
        App.from_release("rel-x", content, base=disk)


def test_keel_release_check_judges_and_rolls_back(
    release_app: Callable[[dict[str, Any]], App],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from keel.cli import cli
    from keel.settings import get_settings

    manual = {"deploy": {**BASE["deploy"], "auto_rollback": False}}
    disk = release_app(manual)
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    broken = {"model": {"id": "openai:gpt-4o-mini", "max_retries": 0, "timeout_s": 2}}
    v2 = _record(release_app({**manual, **broken}), "v2")
    store.set_stable(v1, "first")
    store.set_canary(v2, 0.5, "try")
    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("tester", ["chat"])
    try:
        for i in range(60):
            _ask(client, key, f"c{i}")
    finally:
        client.close()
    disk.tracing.flush()

    (tmp_path / "keel.toml").write_text(
        '[app]\nname = "canary-bot"\n[agent]\nretrieve = false\n'
        "[deploy]\nmin_sample = 15\nauto_rollback = false\n"
    )
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    get_settings.cache_clear()
    runner = CliRunner()
    cfg = ["--config", str(tmp_path / "keel.toml")]
    try:
        dry = runner.invoke(cli, [*cfg, "release", "check", "--dry-run", "--json"])
        assert dry.exit_code == 1, dry.output
        verdict = json.loads(dry.stdout)
        assert verdict["rollback"] and verdict["canary"] == v2
        assert store.state()["canary"] == v2  # a dry run changes nothing
        real = runner.invoke(cli, [*cfg, "release", "check"])
        assert real.exit_code == 1 and "rolled back" in real.output
        assert store.state()["canary"] is None
        assert runner.invoke(cli, [*cfg, "release", "check"]).exit_code == 2  # no canary
    finally:
        get_settings.cache_clear()


def test_one_key_rating_many_turns_counts_once_and_cannot_force_a_rollback(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    """The review's attack: one chat+feedback key rated the canary's turns negative again and
    again until the gateway rolled it back. Feedback now counts distinct raters."""
    disk = release_app({"deploy": {**BASE["deploy"], "auto_rollback": True}})
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    v2 = _record(release_app({"guards": {"message": "v2"}}), "v2")
    store.set_stable(v1, "first")
    store.set_canary(v2, 0.5, "try")
    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("mallory", ["chat", "feedback"])
    admin, _ = api.state.gateway.keys.create("ops", ["admin"])
    auth = {"Authorization": f"Bearer {key}"}
    try:
        rated = {v1: 0, v2: 0}
        for i in range(60):
            a = _ask(client, key, f"m{i}")
            score = 0.0 if a["release_id"] == v2 else 1.0
            for _ in range(2):  # rating again replaces the rating
                r = client.post(
                    "/v1/feedback", json={"trace_id": a["trace_id"], "score": score}, headers=auth
                )
                assert r.status_code == 201, r.text
            rated[a["release_id"]] += 1
        assert rated[v2] >= 15  # enough ratings that counting them would roll back
        view = client.get("/v1/deployment", headers={"Authorization": f"Bearer {admin}"}).json()
        h1, h2 = view["health"][v1], view["health"][v2]
        assert h2["feedback"] == h2["negative_feedback"] == 1  # one rater
        assert h1["feedback"] == 1 and h1["negative_feedback"] == 0
        assert store.state()["canary"] == v2  # not rolled back
    finally:
        client.close()


def _unbuildable(app: App, store: ReleaseStore) -> str:
    """A release recorded with a tool the code lacks: it does not build on this instance."""
    content = app.release_content()
    content["tools"] = [{"type": "function", "function": {"name": "gone", "parameters": {}}}]
    return store.create(content, note="names a tool this code lacks").id


@pytest.mark.parametrize("auto_rollback", [True, False])
def test_a_canary_that_does_not_build_gives_its_share_to_stable(
    release_app: Callable[[dict[str, Any]], App], auto_rollback: bool
) -> None:
    """A canary this instance cannot build (here: its tools are not in the code) never fails
    its share of threads and never takes the instance out of readiness: stable answers them.
    With auto_rollback it is rolled back at once, for every instance, with the reason;
    without, it stays deployed, not served, and /readyz says why."""
    disk = release_app({"deploy": {**BASE["deploy"], "auto_rollback": auto_rollback}})
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    store.set_stable(v1, "first release")
    broken = _unbuildable(disk, store)
    store.set_canary(broken, 0.9, "most threads to a release that does not build")

    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("tester", ["admin"])
    try:
        answers = [_ask(client, key, f"t{i}") for i in range(12)]
        assert {(a["status"], a.get("release_id")) for a in answers} == {(200, v1)}, answers
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        if auto_rollback:
            assert store.state() == {"stable": v1, "canary": None, "weight": 0.0}
            last = store.history()[0]
            assert last["action"] == "rollback" and last["from"] == broken
            assert last["reason"].startswith("automatic: it cannot serve: does not build:")
            assert "tools only on one side: gone" in last["reason"]
            assert "canary_release" not in ready.json()
            metrics = client.get("/metrics").text
            assert f'keel_release_rollbacks_total{{release="{broken}"}} 1.0' in metrics
        else:
            assert store.state()["canary"] == broken
            # /readyz needs no key: it says what kind of failure, never its message
            assert ready.json()["canary_release"] == "not served: does not build (UsageError)"
            assert ready.json()["checks"]["canary_release"] == "ok"
            view = client.get("/v1/deployment", headers={"Authorization": f"Bearer {key}"})
            detail = view.json()["canary_not_served"]
            assert detail.startswith("does not build: UsageError:"), detail
            assert "tools only on one side: gone" in detail
    finally:
        client.close()


def test_a_verdict_on_one_canary_never_rolls_back_the_next(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    """A rollback names the canary it judged: when another process has deployed a new canary
    meanwhile, the new one stays."""
    from keel.errors import UsageError

    disk = release_app({})
    store = ReleaseStore(disk.engine, disk.name)
    v1 = _record(disk, "v1")
    v2, v3 = (_record(release_app({"guards": {"message": n}}), n) for n in ("v2", "v3"))
    store.set_stable(v1, "first")
    store.set_canary(v3, 0.5, "v3 replaced v2 meanwhile")
    with pytest.raises(UsageError, match=f"release {v2} is no longer the canary"):
        store.rollback("judged v2", canary=v2)
    assert store.state()["canary"] == v3
    store.rollback("judged v3", canary=v3)
    assert store.state()["canary"] is None


def test_a_stable_release_that_does_not_build_answers_503_not_400(
    release_app: Callable[[dict[str, Any]], App],
) -> None:
    """It is the deployment's fault, not the caller's: 503 release-unavailable on the native and
    the OpenAI routes, without the build error's message, and /readyz is not ready."""
    disk = release_app({})
    store = ReleaseStore(disk.engine, disk.name)
    broken = _unbuildable(disk, store)
    store.set_stable(broken, "a release this code cannot serve")
    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("tester", ["admin"])
    try:
        native = _ask(client, key, "t1")
        assert native["status"] == 503 and native["type"].endswith("/release-unavailable")
        assert "gone" not in native["detail"], native
        openai = client.post(
            "/v1/chat/completions",
            json={"model": "canary-bot", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert openai.status_code == 503, openai.text
        assert openai.json()["error"]["code"] == "release_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["stable_release"] == "not loaded: UsageError"
    finally:
        client.close()
