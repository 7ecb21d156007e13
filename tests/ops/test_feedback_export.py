"""Feedback rows joined to their turns become evaluation cases (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from keel.db import make_engine
from keel.ops.feedback import FeedbackStore, feedback
from keel.ops.feedback_export import export_feedback, write_jsonl


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(None, tmp_path)
    else:
        eng = make_engine(request.getfixturevalue("pg_url"), tmp_path)
    FeedbackStore(eng)  # creates the table
    yield eng
    eng.dispose()


T0 = datetime(2031, 1, 10, 12, 0, tzinfo=UTC)


def add(
    engine: Engine,
    fid: str,
    trace_id: str,
    score: float,
    at: datetime,
    **extra: Any,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            feedback.insert().values(id=fid, trace_id=trace_id, score=score, created_at=at, **extra)
        )


def mine(cases: list[dict[str, Any]], unique: str) -> list[dict[str, Any]]:
    """Only this test's cases (the PostgreSQL database is shared by every run)."""
    return [c for c in cases if c["trace_id"].endswith(unique)]


TURNS: dict[str, dict[str, Any]] = {
    "tr-1": {
        "question": "When did ORD-1 ship?",
        "answer": "On 3 May [1].",
        "hits": [
            {"doc_id": "orders", "chunk_id": "orders:0", "text": "ORD-1 shipped 3 May"},
            {"doc_id": "faq", "chunk_id": "faq:2", "text": "Shipping takes 2 days"},
            {"doc_id": "orders", "chunk_id": "orders:5", "text": "ORD-2 is pending"},
        ],
        "app_version": "v-abc",
        "index_version": "i-123",
        "model": "openai:gpt-4o-mini",
    },
}


def lookup(unique: str) -> Any:
    calls: list[str] = []

    def turns(trace_id: str) -> Mapping[str, Any] | None:
        calls.append(trace_id)
        return TURNS.get(trace_id.removesuffix(f"-{unique}"))

    turns.calls = calls  # type: ignore[attr-defined]
    return turns


def test_rows_become_cases_joined_to_their_turns(engine: Engine, unique: str) -> None:
    tr1, tr2 = f"tr-1-{unique}", f"tr-2-{unique}"
    add(
        engine,
        f"a{unique}",
        tr1,
        0.0,
        T0,
        thread_id="th-1",
        key_id="k1",
        comment="wrong date",
        correction="It shipped on 4 May.",
    )
    add(engine, f"b{unique}", tr2, 1.0, T0 + timedelta(minutes=1), comment="great")
    add(engine, f"c{unique}", tr1, 0.5, T0 + timedelta(minutes=2))
    turns = lookup(unique)
    cases = mine(export_feedback(engine, turns=turns), unique)

    assert [c["id"] for c in cases] == [f"fb-a{unique}", f"fb-b{unique}", f"fb-c{unique}"]
    first = cases[0]
    assert first == {
        "id": f"fb-a{unique}",
        "input": "When did ORD-1 ship?",
        "answer": "On 3 May [1].",
        "contexts": ["ORD-1 shipped 3 May", "Shipping takes 2 days", "ORD-2 is pending"],
        "reference_doc_ids": ["orders", "faq"],
        "correction": "It shipped on 4 May.",
        "reference": "It shipped on 4 May.",
        "score": 0.0,
        "comment": "wrong date",
        "trace_id": tr1,
        "thread_id": "th-1",
        "provenance": {
            "source": "feedback",
            "feedback_id": f"a{unique}",
            "trace_id": tr1,
            "created_at": "2031-01-10T12:00:00+00:00",
            "app_version": "v-abc",
            "index_version": "i-123",
            "model": "openai:gpt-4o-mini",
        },
    }
    # a trace the lookup does not know: still exported, with the rating and comment
    unknown = cases[1]
    assert unknown["input"] is None and unknown["answer"] is None
    assert unknown["contexts"] == [] and unknown["reference_doc_ids"] == []
    assert unknown["reference"] is None and unknown["correction"] is None
    assert unknown["score"] == 1.0 and unknown["comment"] == "great"
    assert unknown["provenance"] == {
        "source": "feedback",
        "feedback_id": f"b{unique}",
        "trace_id": unknown["trace_id"],
        "created_at": "2031-01-10T12:01:00+00:00",
    }
    assert cases[2]["contexts"] == first["contexts"]
    # each trace is looked up once, however many ratings it has
    assert sorted(c for c in turns.calls if c.endswith(unique)) == [tr1, tr2]


def test_without_a_turn_lookup(engine: Engine, unique: str) -> None:
    add(engine, f"a{unique}", f"tr-1-{unique}", 0.2, T0, correction="Better answer")
    [case] = mine(export_feedback(engine), unique)
    assert case["input"] is None and case["answer"] is None and case["contexts"] == []
    assert case["reference"] == "Better answer" and case["score"] == 0.2


def test_max_score_and_since_filters(engine: Engine, unique: str) -> None:
    add(engine, f"a{unique}", f"t-a-{unique}", 0.0, T0)
    add(engine, f"b{unique}", f"t-b-{unique}", 0.5, T0 + timedelta(hours=1))
    add(engine, f"c{unique}", f"t-c-{unique}", 0.51, T0 + timedelta(hours=2))
    add(engine, f"d{unique}", f"t-d-{unique}", 1.0, T0 + timedelta(hours=3))

    def ids(**kw: Any) -> list[str]:
        return [
            c["provenance"]["feedback_id"][0] for c in mine(export_feedback(engine, **kw), unique)
        ]

    assert ids() == ["a", "b", "c", "d"]
    assert ids(max_score=0.5) == ["a", "b"]  # inclusive
    assert ids(max_score=0.0) == ["a"]
    assert ids(since=T0 + timedelta(hours=1)) == ["b", "c", "d"]  # inclusive
    # the same moment in another time zone, and a naive time taken as UTC
    east = timezone(timedelta(hours=5))
    assert ids(since=(T0 + timedelta(hours=2)).astimezone(east)) == ["c", "d"]
    assert ids(since=datetime(2031, 1, 10, 14, 0)) == ["c", "d"]
    assert ids(since=T0 + timedelta(hours=1), max_score=0.6) == ["b", "c"]


def test_cases_are_oldest_first_whatever_the_insert_order(engine: Engine, unique: str) -> None:
    add(engine, f"z{unique}", f"t-z-{unique}", 0.1, T0 + timedelta(seconds=30))
    add(engine, f"y{unique}", f"t-y-{unique}", 0.1, T0)
    add(engine, f"x{unique}", f"t-x-{unique}", 0.1, T0 + timedelta(seconds=10))
    cases = mine(export_feedback(engine), unique)
    assert [c["provenance"]["feedback_id"][0] for c in cases] == ["y", "x", "z"]


def test_the_feedback_store_round_trip(engine: Engine, unique: str) -> None:
    store = FeedbackStore(engine)
    fid = store.add(f"tr-1-{unique}", 0.25, comment="meh", thread_id="th", key_id="k")
    [case] = mine(export_feedback(engine, turns=lookup(unique)), unique)
    assert case["id"] == f"fb-{fid}" and case["input"] == "When did ORD-1 ship?"
    assert datetime.fromisoformat(case["provenance"]["created_at"]).tzinfo is not None


def test_a_database_without_feedback_exports_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert export_feedback(engine) == []
    engine.dispose()


def test_write_jsonl_to_a_path_and_a_stream(engine: Engine, unique: str, tmp_path: Path) -> None:
    add(engine, f"a{unique}", f"tr-1-{unique}", 0.0, T0, comment="naïve — wrong")
    add(engine, f"b{unique}", f"tr-2-{unique}", 0.3, T0 + timedelta(seconds=1))
    cases = mine(export_feedback(engine, turns=lookup(unique)), unique)

    out = tmp_path / "evals" / "feedback.jsonl"  # the folder is created
    assert write_jsonl(cases, out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == cases
    assert "naïve — wrong" in lines[0]  # UTF-8, not escaped
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind

    assert write_jsonl(cases[:1], out) == 1  # a second export replaces the file
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1

    stream = io.StringIO()
    assert write_jsonl(iter(cases), stream) == 2
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == cases
    assert write_jsonl([], io.StringIO()) == 0


_RATER = """
import sys, time
from pathlib import Path
from keel.db import make_engine
from keel.ops.feedback import FeedbackStore

url, data_dir, trace, score, start = sys.argv[1:6]  # start: run_at_once's
store = FeedbackStore(make_engine(url or None, Path(data_dir)))
while time.time() < float(start):
    time.sleep(0.005)
for i in range(150):  # both processes rate trace 0, then 1, ... with one key, as retries do
    store.add(f"{trace}-{i}", float(score), key_id="k1", comment=score)
"""


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_rating_one_trace_with_one_key_keep_one_row(
    db: str,
    tmp_path: Path,
    unique: str,
    request: pytest.FixtureRequest,
    at_once: Callable[..., None],
) -> None:
    """A key's rating replaces its earlier one even when two processes (two gateway workers)
    store the key's rating of a trace at once: one row, never two (it read nothing before
    the other process wrote, and added a second row)."""
    url = request.getfixturevalue("pg_url") if db == "postgres" else ""
    data_dir = tmp_path / ".keel"
    store = FeedbackStore(make_engine(url or None, data_dir))
    trace = f"race{unique}"
    at_once(_RATER, [[url, str(data_dir), trace, score] for score in ("0", "1")])
    rows = [r for r in store.all() if r["trace_id"].startswith(f"{trace}-")]
    per_trace = Counter(r["trace_id"] for r in rows)
    assert len(per_trace) == 150 and set(per_trace.values()) == {1}, per_trace.most_common(3)
