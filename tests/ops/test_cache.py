"""The semantic cache: the store on its own (SQLite and PostgreSQL), then inside App turns."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from keel.agents.hooks import Hooks, RunContext
from keel.app import App
from keel.db import make_engine
from keel.errors import GuardTripped
from keel.ops.cache import Partition, SemanticCache, partition_key
from keel.testing import ScriptedChatModel


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _part(
    cache: SemanticCache, key_id: str | None = "k1", release: str = "r1", index: str = "i1"
) -> Partition:
    key = partition_key(cache.app, release, index, key_id, None)
    return Partition(key, release, index, key_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return make_engine(None, tmp_path / ".keel")
    return make_engine(request.getfixturevalue("pg_url"), tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(engine: Engine, clock: Clock) -> SemanticCache:
    # a fresh app name per test: the PostgreSQL database is shared between runs
    return SemanticCache(
        engine, f"app-{uuid.uuid4().hex[:8]}", threshold=0.9, ttl_s=60, max_entries=3, clock=clock
    )


# -- the store ------------------------------------------------------------------------------


def test_hit_at_or_above_the_threshold_and_miss_below(cache: SemanticCache) -> None:
    p = _part(cache)
    entry = cache.store(p, "q", _unit(1, 0, 0), {"text": "A"})
    hit = cache.lookup(p.key, _unit(1, 0.1, 0))  # cosine 0.995
    assert hit is not None and hit.entry_id == entry and hit.payload == {"text": "A"}
    assert hit.question == "q" and hit.similarity == pytest.approx(0.995, abs=1e-3)
    assert cache.lookup(p.key, _unit(1, 1, 0)) is None  # cosine 0.707
    nearest = cache.nearest(p.key, _unit(1, 1, 0))
    assert nearest is not None and nearest[0] == entry
    assert nearest[1] == pytest.approx(0.7071, abs=1e-3)


def test_an_empty_partition_misses(cache: SemanticCache) -> None:
    assert cache.lookup(_part(cache).key, _unit(1, 0)) is None
    assert cache.nearest(_part(cache).key, _unit(1, 0)) is None


def test_partitions_never_share(cache: SemanticCache) -> None:
    cache.store(_part(cache, "k1"), "q", _unit(1, 0), {"text": "A"})
    for other in (
        _part(cache, "k2"),
        _part(cache, None),
        _part(cache, release="r2"),
        _part(cache, index="i2"),
    ):
        assert cache.lookup(other.key, _unit(1, 0)) is None
    assert cache.lookup(_part(cache, "k1").key, _unit(1, 0)) is not None


def test_partition_keys_tell_the_local_caller_and_scopes_apart() -> None:
    keys = {
        partition_key("a", "r", "i", None, None),
        partition_key("a", "r", "i", "None", None),
        partition_key("a", "r", "i", "k", None),
        partition_key("a", "r", "i", "k", []),
        partition_key("a", "r", "i", "k", ["chat"]),
        partition_key("b", "r", "i", "k", None),
    }
    assert len(keys) == 6
    assert partition_key("a", "r", "i", "k", ["x", "y"]) == partition_key(
        "a", "r", "i", "k", ["y", "x"]
    )


def test_entries_expire_after_ttl(cache: SemanticCache, clock: Clock) -> None:
    p = _part(cache)
    cache.store(p, "q", _unit(1, 0), {"text": "A"})
    clock.now += 59
    assert cache.lookup(p.key, _unit(1, 0)) is not None
    clock.now += 2
    assert cache.lookup(p.key, _unit(1, 0)) is None
    assert cache.purge_expired() == 1
    assert cache.stats()["entries"] == 0


def test_oldest_entries_beyond_max_entries_go(cache: SemanticCache) -> None:
    p = _part(cache)
    first = cache.store(p, "q0", _unit(1, 0, 0, 0), {"text": "0"})
    for i in range(1, 4):
        cache.store(p, f"q{i}", _unit(*[1.0 if j == i else 0.0 for j in range(4)]), {"text": "x"})
    assert cache.stats()["entries"] == 3
    assert cache.lookup(p.key, _unit(1, 0, 0, 0)) is None
    assert cache.entry(first) is None


def test_another_instance_sees_writes_and_clears(
    engine: Engine, cache: SemanticCache, clock: Clock
) -> None:
    other = SemanticCache(engine, cache.app, threshold=0.9, ttl_s=60, max_entries=3, clock=clock)
    p = _part(cache)
    assert other.lookup(p.key, _unit(1, 0)) is None  # loaded (empty) into memory
    cache.store(p, "q", _unit(1, 0), {"text": "A"})
    assert other.lookup(p.key, _unit(1, 0)) is not None  # reloaded: the table changed
    cache.clear()
    assert other.lookup(p.key, _unit(1, 0)) is None


def test_clear_one_key_and_stats(cache: SemanticCache) -> None:
    cache.store(_part(cache, "k1"), "q", _unit(1, 0), {"text": "A"})
    cache.store(_part(cache, "k2"), "q", _unit(1, 0), {"text": "B"})
    stats = cache.stats()
    assert stats["entries"] == 2 and {p["key_id"] for p in stats["partitions"]} == {"k1", "k2"}
    assert cache.clear("k1") == 1
    assert cache.lookup(_part(cache, "k1").key, _unit(1, 0)) is None
    assert cache.lookup(_part(cache, "k2").key, _unit(1, 0)) is not None


# -- in App turns (the bundled embedding model) ---------------------------------------------

Q = "How do I cancel my subscription?"
PARAPHRASE = "How can I cancel my subscription?"
LOOKALIKE = "How do I cancel my order?"


@pytest.fixture
def cached_app(make_app: Callable[..., App]) -> Callable[..., tuple[App, ScriptedChatModel]]:
    def factory(script: list[Any] | None = None, **raw: Any) -> tuple[App, ScriptedChatModel]:
        model = ScriptedChatModel(script=script or [f"answer {i}" for i in range(10)])
        cfg = {"cache": {"enabled": True, "threshold": 0.9}, **raw}
        return make_app(cfg, model=model), model

    return factory


def test_the_cache_is_off_by_default(make_app: Callable[..., App]) -> None:
    model = ScriptedChatModel(script=["one", "two"])
    app = make_app({}, model=model)
    assert app.config.cache.enabled is False
    first, second = app.ask(Q), app.ask(Q)
    assert (first.text, second.text) == ("one", "two") and len(model.calls) == 2
    assert second.cache_hit is False and second.cache is None


def test_a_paraphrase_hits_and_the_thread_records_the_turn(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    app, model = cached_app()
    first = app.ask(Q)
    assert first.cache == {"hit": False, "similarity": None, "entry_id": None}
    hit = app.ask(PARAPHRASE)
    assert len(model.calls) == 1
    assert hit.cache_hit is True and hit.text == first.text == "answer 0"
    assert hit.cache is not None and hit.cache["similarity"] >= 0.9 and hit.cache["entry_id"]
    assert hit.usage == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    assert hit.cost_usd in (0.0, None) and hit.model_seconds == 0.0
    assert hit.trace_id and hit.trace_id != first.trace_id and hit.thread_id != first.thread_id
    assert [(m.type, m.text) for m in app.history(hit.thread_id)] == [
        ("human", PARAPHRASE),
        ("ai", "answer 0"),
    ]
    # the thread goes on normally after a hit, and a follow-up is never looked up
    follow = app.ask(Q, hit.thread_id)
    assert follow.text == "answer 1" and follow.cache is None
    assert len(app.history(hit.thread_id)) == 4


def test_a_lookalike_question_misses(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    app, model = cached_app()
    app.ask(Q)
    other = app.ask(LOOKALIKE)
    assert other.cache_hit is False and other.text == "answer 1" and len(model.calls) == 2
    assert other.cache is not None and other.cache["similarity"] < 0.9


def test_callers_never_share(cached_app: Callable[..., tuple[App, ScriptedChatModel]]) -> None:
    app, model = cached_app()
    app.ask(Q, owner="key-a")
    assert app.ask(Q, owner="key-b").cache_hit is False
    assert app.ask(Q).cache_hit is False  # the local caller has its own partition
    assert app.ask(Q, owner="key-a", scopes=["chat"]).cache_hit is False  # other scopes
    assert app.ask(PARAPHRASE, owner="key-a").cache_hit is True
    assert len(model.calls) == 4


def test_a_new_index_or_release_invalidates(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
    tmp_path: Path,
    write: Callable[..., None],
) -> None:
    app, _ = cached_app()
    app.ask(Q)
    assert app.ask(Q).cache_hit is True
    write(tmp_path, {"docs/billing.md": "# Billing\n\nCancel under Settings, Billing.\n"})
    app.ingest()
    assert app.ask(Q).cache_hit is False  # another index version
    assert app.ask(Q).cache_hit is True
    app.release_id = "rel-0123456789ab"
    assert app.ask(Q).cache_hit is False  # another release
    app.release_id = None
    assert app.ask(Q).cache_hit is True


def test_another_app_version_does_not_hit(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    app, _ = cached_app()
    app.ask(Q)
    changed, _ = cached_app(agent={"max_steps": 5})  # same database, other config
    assert changed.version != app.version
    assert changed.ask(Q).cache_hit is False


def test_entries_expire(cached_app: Callable[..., tuple[App, ScriptedChatModel]]) -> None:
    app, _ = cached_app(cache={"enabled": True, "ttl_s": 30})
    clock = Clock()
    app.cache.clock = clock
    app.ask(Q)
    clock.now += 31
    assert app.ask(Q).cache_hit is False


def test_tool_calling_turns_are_not_cached(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    script = [
        ScriptedChatModel.tool_call("calculator", {"expression": "2+2"}),
        "It is 4.",
        "Still 4.",
    ]
    app, model = cached_app(script, tools={"enabled": ["keel:calculator"]})
    first = app.ask("What is 2+2?")
    assert first.tool_calls and first.text == "It is 4."
    again = app.ask("What is 2+2?")
    assert again.cache_hit is False and again.text == "Still 4." and len(model.calls) == 3


def test_refusals_and_seeded_history_are_not_cached(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from keel.agents.graph import REFUSAL_TEXT

    app, _ = cached_app([REFUSAL_TEXT, "with history", "fresh"])
    app.ask(Q)
    seeded = app.ask(Q, history=[HumanMessage("hi"), AIMessage("hello")])
    assert seeded.cache is None and seeded.text == "with history"
    assert app.ask(Q).text == "fresh"  # neither the refusal nor the seeded turn was kept
    assert app.cache.stats()["entries"] == 1


def test_a_refusal_in_other_words_is_not_cached(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    """The cache and the evaluation's refusal metric share one definition of a refusal
    (``ops.refusal.is_refusal``): an "I'm not sure" answer counts as one for both."""
    from keel.ops.refusal import is_refusal

    hedge = "I'm not sure; the documents do not say how to cancel."
    assert is_refusal(hedge)
    app, _ = cached_app([hedge, "fresh"])
    assert app.ask(Q).text == hedge
    assert app.ask(Q).text == "fresh"  # the hedge was not kept
    assert app.cache.stats()["entries"] == 1


def test_input_guards_run_before_the_cache(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]],
) -> None:
    app, model = cached_app()

    def block(text: str, ctx: RunContext) -> str:
        if "BLOCK" in text:
            raise GuardTripped("blocked", point="input")
        return text

    app.hooks = Hooks(input=[block])
    app.ask(Q)
    tripped = app.ask(f"{Q} BLOCK")  # would be a hit: the guard stops it first
    assert tripped.stop_reason == "guardrail" and tripped.cache is None
    assert tripped.text != "answer 0" and len(model.calls) == 1


def test_a_hit_is_traced(cached_app: Callable[..., tuple[App, ScriptedChatModel]]) -> None:
    app, _ = cached_app()
    miss = app.ask(Q)
    hit = app.ask(PARAPHRASE)
    app.tracing.flush()
    rows = {r["trace_id"]: r for r in app.tracing.list()}
    assert rows[miss.trace_id]["cache_hit"] is False
    assert rows[hit.trace_id]["cache_hit"] is True
    trace = app.tracing.get(hit.trace_id)
    assert trace is not None
    (turn,) = trace["spans"]
    assert turn["name"] == "keel.turn"
    attrs = turn["attributes"]
    assert attrs["keel.cache.hit"] is True
    assert attrs["keel.cache.entry_id"] == hit.cache["entry_id"]  # type: ignore[index]
    assert attrs["keel.cache.similarity"] == hit.cache["similarity"]  # type: ignore[index]
    names = [s["name"] for s in turn["children"]]
    assert "keel.cache" in names and not any(n.startswith("chat ") for n in names)
    span = next(s for s in turn["children"] if s["name"] == "keel.cache")
    assert span["attributes"]["keel.cache.hit"] is True


def test_a_streamed_hit(cached_app: Callable[..., tuple[App, ScriptedChatModel]]) -> None:
    app, _ = cached_app()
    list(app.stream(Q))  # streamed answers are cached too
    events = list(app.stream(PARAPHRASE))
    assert [e["type"] for e in events] == ["token", "done"]
    assert events[0]["text"] == "answer 0"
    assert events[-1]["answer"]["cache_hit"] is True
    assert events[-1]["answer"]["text"] == "answer 0"


def test_a_broken_cache_is_a_miss_never_a_failed_turn(
    cached_app: Callable[..., tuple[App, ScriptedChatModel]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = cached_app()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database down")

    monkeypatch.setattr(app.cache, "nearest", broken)
    monkeypatch.setattr(app.cache, "store", broken)
    answer = app.ask(Q)
    assert answer.text == "answer 0" and answer.cache_hit is False
