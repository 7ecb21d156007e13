from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from keel.db import make_engine
from keel.errors import UsageError
from keel.ops.releases import Release, ReleaseStore, diff_content, release_id, route


def _content(**overrides: Any) -> dict[str, Any]:
    content: dict[str, Any] = {
        "config": {"model": {"id": "openai:gpt-4o-mini", "temperature": 0.0}, "top_k": 4},
        "prompts": {"system": "You are helpful.\nCite sources.\n", "examples": ["q1", "q2"]},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "search",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
        "models": ["openai:gpt-4o-mini", "local:bge-small"],
        "index_version": "idx-1",
        "git_commit": "abc123",
    }
    content.update(overrides)
    return content


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(None, tmp_path / ".keel")


@pytest.fixture
def store(engine: Engine) -> ReleaseStore:
    return ReleaseStore(engine, "demo")


# -- content addressing ---------------------------------------------------------------------


def test_id_is_sha256_of_canonical_json(store: ReleaseStore) -> None:
    content = _content()
    rel = store.create(content, note="first")
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert rel.id == "rel-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert rel.app == "demo" and rel.note == "first"
    assert rel.content == content
    assert rel.deployable is True and rel.gate is None
    assert rel.created_at.tzinfo is not None


def test_create_is_idempotent_and_key_order_free(store: ReleaseStore) -> None:
    a = store.create(_content(), note="one")
    reordered = dict(reversed(list(copy.deepcopy(_content()).items())))
    b = store.create(reordered, note="two")
    assert b == a  # the existing release, its note kept
    assert len(store.list()) == 1


def test_different_content_different_id(store: ReleaseStore) -> None:
    a = store.create(_content())
    b = store.create(_content(index_version="idx-2"))
    assert a.id != b.id
    assert release_id(_content()) == a.id


def test_non_json_content_is_rejected(store: ReleaseStore) -> None:
    with pytest.raises(UsageError):
        store.create({"config": {1, 2}})


def test_gate_sets_deployable(store: ReleaseStore) -> None:
    failed = store.create(_content(git_commit="f"), gate={"passed": False, "suite": "s"})
    passed = store.create(_content(git_commit="p"), gate={"passed": True, "score": 0.9})
    forced = store.create(_content(git_commit="x"), deployable=False)
    assert failed.deployable is False and failed.gate == {"passed": False, "suite": "s"}
    assert passed.deployable is True and passed.gate == {"passed": True, "score": 0.9}
    assert forced.deployable is False
    assert store.get(failed.id) == failed


def test_get_by_prefix_and_ambiguity(store: ReleaseStore) -> None:
    made: list[Release] = [store.create(_content(git_commit=str(i))) for i in range(40)]
    first = made[0]
    assert store.get(first.id) == first
    assert store.get(first.id[:10]) == first
    assert store.get(first.id[4:12]) == first  # "rel-" may be left out
    assert store.get("rel-zzzz") is None
    # 40 ids over 16 first hex digits: some first digit is shared
    by_digit: dict[str, int] = {}
    for rel in made:
        by_digit[rel.id[4]] = by_digit.get(rel.id[4], 0) + 1
    shared = next(d for d, n in by_digit.items() if n > 1)
    with pytest.raises(UsageError, match="ambiguous"):
        store.get("rel-" + shared)
    assert store.get("rel-%") is None  # LIKE wildcards are literal


def test_apps_are_separate(engine: Engine) -> None:
    a = ReleaseStore(engine, "a").create(_content())
    b_store = ReleaseStore(engine, "b")
    assert b_store.get(a.id) is None
    assert b_store.create(_content()).app == "b"


def test_list_newest_first(store: ReleaseStore) -> None:
    ids = [store.create(_content(git_commit=str(i))).id for i in range(3)]
    assert [r.id for r in store.list()] == list(reversed(ids))


# -- diff -----------------------------------------------------------------------------------


def test_diff_paths(store: ReleaseStore) -> None:
    a = store.create(_content())
    changed = _content(index_version="idx-2")
    changed["config"]["model"]["id"] = "openai:gpt-4o"
    changed["config"]["new_flag"] = True
    changed["prompts"]["system"] = "You are helpful.\nCite every source.\n"
    changed["prompts"]["examples"] = ["q1", "q2", "q3"]
    changed["tools"][0]["function"]["parameters"]["properties"]["k"] = {"type": "integer"}
    changed["models"] = ["openai:gpt-4o", "local:bge-small"]
    b = store.create(changed)
    changes = {c["path"]: c for c in store.diff(a.id, b.id[:9])}
    assert set(changes) == {
        "config.model.id",
        "config.new_flag",
        "prompts.system",
        "prompts.examples.2",
        "tools.0.function.parameters.properties.k.type",
        "models.0",
        "index_version",
    }
    assert changes["config.model.id"]["a"] == "openai:gpt-4o-mini"
    assert changes["config.model.id"]["b"] == "openai:gpt-4o"
    assert changes["config.new_flag"] == {"path": "config.new_flag", "a": None, "b": True}
    assert changes["index_version"]["a"] == "idx-1" and changes["index_version"]["b"] == "idx-2"
    system = changes["prompts.system"]
    assert system["a"] == "You are helpful.\nCite sources.\n"
    assert "-Cite sources.\n" in system["patch"] and "+Cite every source.\n" in system["patch"]
    assert "patch" in changes["prompts.examples.2"]
    assert "patch" not in changes["models.0"]
    assert store.diff(a.id, a.id) == []


def test_diff_type_change_and_empty_containers() -> None:
    changes = diff_content({"config": {"x": 1, "e": {}}}, {"config": {"x": "1", "e": []}})
    assert [c["path"] for c in changes] == ["config.e", "config.x"]


def test_diff_unknown_release(store: ReleaseStore) -> None:
    a = store.create(_content())
    with pytest.raises(UsageError):
        store.diff(a.id, "rel-000000000000")


# -- deployment state -----------------------------------------------------------------------


def test_rollout_promote_rollback_with_history(store: ReleaseStore) -> None:
    assert store.state() == {"stable": None, "canary": None, "weight": 0.0}
    assert store.history() == []
    v1 = store.create(_content(git_commit="1"))
    v2 = store.create(_content(git_commit="2"))
    v3 = store.create(_content(git_commit="3"))

    store.set_stable(v1.id[:8], "initial")
    store.set_canary(v2.id, 0.1, "try v2")
    assert store.state() == {"stable": v1.id, "canary": v2.id, "weight": 0.1}
    promoted = store.promote("v2 looks good")
    assert promoted == v2
    assert store.state() == {"stable": v2.id, "canary": None, "weight": 0.0}

    store.set_canary(v3.id, 0.25, "try v3")
    store.rollback("v3 error rate too high")
    assert store.state() == {"stable": v2.id, "canary": None, "weight": 0.0}

    events = store.history()
    assert [(e["action"], e["from"], e["to"], e["weight"], e["reason"]) for e in events] == [
        ("rollback", v3.id, v2.id, 0.25, "v3 error rate too high"),
        ("canary", None, v3.id, 0.25, "try v3"),
        ("promote", v1.id, v2.id, 0.1, "v2 looks good"),
        ("canary", None, v2.id, 0.1, "try v2"),
        ("stable", None, v1.id, 0.0, "initial"),
    ]
    assert all(e["at"].tzinfo is not None for e in events)
    assert events[0]["at"] >= events[-1]["at"]


def test_clear_canary_and_stable_over_canary(store: ReleaseStore) -> None:
    v1 = store.create(_content(git_commit="1"))
    v2 = store.create(_content(git_commit="2"))
    store.set_stable(v1.id, "initial")
    store.set_canary(v2.id, 0.5, "try")
    store.set_canary(None, 0.0, "stop")
    assert store.state() == {"stable": v1.id, "canary": None, "weight": 0.0}
    assert store.history()[0]["action"] == "clear_canary"
    store.set_canary(v2.id, 0.5, "again")
    store.set_stable(v2.id, "straight to stable")
    assert store.state() == {"stable": v2.id, "canary": None, "weight": 0.0}


def test_canary_rules(store: ReleaseStore) -> None:
    v1 = store.create(_content(git_commit="1"))
    bad = store.create(_content(git_commit="bad"), gate={"passed": False})
    store.set_stable(v1.id, "initial")
    with pytest.raises(UsageError, match="not deployable"):
        store.set_canary(bad.id, 0.1, "should fail")
    for weight in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(UsageError):
            store.set_canary(store.create(_content(git_commit="ok")).id, weight, "w")
    with pytest.raises(UsageError):
        store.set_canary(v1.id, 0.1, "already stable")
    with pytest.raises(UsageError):
        store.set_canary("rel-ffffffffffff", 0.1, "unknown")
    with pytest.raises(UsageError):
        store.promote("nothing to promote")
    with pytest.raises(UsageError):
        store.rollback("nothing to roll back")
    with pytest.raises(UsageError):
        store.set_stable("rel-ffffffffffff", "unknown")
    assert store.state() == {"stable": v1.id, "canary": None, "weight": 0.0}
    assert len(store.history()) == 1


# -- routing --------------------------------------------------------------------------------


def test_route_is_sticky() -> None:
    for i in range(200):
        first = route(f"t{i}", "key-1", 0.3, salt="rel-a")
        assert all(route(f"t{i}", "key-1", 0.3, salt="rel-a") == first for _ in range(3))
    # the key is part of the hash: the same thread id under another key may differ
    answers = {route(f"t{i}", "key-1", 0.5, salt="s") for i in range(50)}
    assert answers == {True, False}
    differs = sum(
        route(f"t{i}", "key-1", 0.5, salt="s") != route(f"t{i}", "key-2", 0.5, salt="s")
        for i in range(200)
    )
    assert differs > 50
    # a larger weight only adds threads to the canary
    for i in range(200):
        if route(f"t{i}", None, 0.2, salt="s"):
            assert route(f"t{i}", None, 0.4, salt="s")


@pytest.mark.parametrize("weight", [0.05, 0.1, 0.5, 0.9])
def test_route_share_matches_weight(weight: float) -> None:
    share = sum(route(f"thread-{i}", "k", weight, salt="rel-x") for i in range(10_000)) / 10_000
    assert abs(share - weight) <= 0.02


def test_route_edges() -> None:
    threads = [f"t{i}" for i in range(1000)]
    assert not any(route(t, None, 0.0, salt="s") for t in threads)
    assert all(route(t, "k", 1.0, salt="s") for t in threads)


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> ReleaseStore:
    return ReleaseStore(make_engine(pg_url, tmp_path), f"test-{uuid.uuid4().hex}")


@pytest.mark.postgres
def test_postgres_create_get_list(pg_store: ReleaseStore) -> None:
    a = pg_store.create(_content(), gate={"passed": True})
    assert pg_store.create(_content()) == a
    assert pg_store.get(a.id[:9]) == a
    assert a.created_at.tzinfo is not None
    b = pg_store.create(_content(git_commit="2"))
    assert [r.id for r in pg_store.list()] == [b.id, a.id]
    assert [c["path"] for c in pg_store.diff(a.id, b.id)] == ["git_commit"]


@pytest.mark.postgres
def test_postgres_state_and_history(pg_store: ReleaseStore) -> None:
    v1 = pg_store.create(_content(git_commit="1"))
    v2 = pg_store.create(_content(git_commit="2"))
    assert pg_store.state() == {"stable": None, "canary": None, "weight": 0.0}
    pg_store.set_stable(v1.id, "initial")
    pg_store.set_canary(v2.id, 0.2, "try")
    assert pg_store.state() == {"stable": v1.id, "canary": v2.id, "weight": 0.2}
    assert pg_store.promote("good") == v2
    assert pg_store.state() == {"stable": v2.id, "canary": None, "weight": 0.0}
    assert [e["action"] for e in pg_store.history()] == ["promote", "canary", "stable"]


# -- two processes switching at once ---------------------------------------------------------

_SWITCHER = """
import sys, time
from collections.abc import Callable
from pathlib import Path
from keel.db import make_engine
from keel.errors import UsageError
from keel.ops.releases import ReleaseStore

url, data_dir, app, canary, start = sys.argv[1:6]  # start: run_at_once's
store = ReleaseStore(make_engine(url or None, Path(data_dir)), app)
while time.time() < float(start):
    time.sleep(0.005)
for i in range(40):
    for switch in (
        lambda: store.set_canary(canary, 0.5, "canary"),
        lambda: store.rollback("judged", canary=canary),
    ):
        try:
            switch()
        except UsageError:
            pass
"""


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_switching_at_once_take_turns(
    db: str, tmp_path: Path, request: pytest.FixtureRequest, at_once: Callable[..., None]
) -> None:
    """Two processes deploying and rolling back the same canary as fast as they can (two
    gateway workers judging it, an operator beside them): each switch reads the state the
    last one wrote, so the history replays to the state and never rolls back a canary twice
    (on SQLite, where there is no FOR UPDATE, the switches used to interleave)."""
    url = request.getfixturevalue("pg_url") if db == "postgres" else ""
    data_dir = tmp_path / ".keel"
    app = f"race-{uuid.uuid4().hex[:8]}"
    store = ReleaseStore(make_engine(url or None, data_dir), app)
    stable = store.create(_content(index_version="a")).id
    canary = store.create(_content(index_version="b")).id
    store.set_stable(stable, "first")
    at_once(_SWITCHER, [[url, str(data_dir), app, canary]] * 2)
    state: dict[str, str | None] = {"stable": None, "canary": None}
    for e in reversed(store.history()):  # oldest first
        if e["action"] == "stable":
            state["stable"] = e["to"]
        elif e["action"] == "canary":
            assert e["from"] == state["canary"], e  # it read what the last switch wrote
            state["canary"] = e["to"]
        elif e["action"] == "rollback":
            assert e["from"] == state["canary"] == canary, e  # never a canary rolled back twice
            assert e["to"] == state["stable"], e
            state["canary"] = None
    assert store.state()["canary"] == state["canary"]
    assert sum(e["action"] == "rollback" for e in store.history()) >= 40
