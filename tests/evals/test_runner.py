"""The suite runner: bounded concurrency, failures and timeouts, repeats and CIs, round trips."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from keel.app import App
from keel.errors import ConfigError
from keel.evals.metrics import NO_JUDGE
from keel.evals.runner import RunResult, bootstrap_ci, run_suite
from keel.evals.suites import Suite, load_suite
from keel.testing import ScriptedChatModel

CASES = [
    {"id": f"q{i}", "input": f"Question number {i}?", "reference": f"Answer {i}."} for i in range(6)
]


def _question(messages: list[BaseMessage]) -> str:
    return str(messages[-1].text)


def _write_suite(tmp_path: Path, cases: list[dict[str, Any]], **extra: Any) -> Suite:
    import json

    import yaml

    (tmp_path / "keel.toml").write_text('[app]\nname = "evals-test"\n')
    evals = tmp_path / "evals"
    evals.mkdir(exist_ok=True)
    (evals / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    body: dict[str, Any] = {
        "name": "t",
        "dataset": "cases.jsonl",
        "metrics": {"non_llm_string_similarity": {"threshold": 0.5}, "latency_ms": {}},
        "concurrency": 4,
        "timeout_s": 10,
        "retries": 0,
    }
    body.update(extra)
    (evals / "t.yaml").write_text(yaml.safe_dump(body))
    return load_suite(evals / "t.yaml")


def _model(reply: Callable[[list[BaseMessage]], str], calls: int = 100) -> ScriptedChatModel:
    return ScriptedChatModel(script=[reply] * calls)


def test_load_suite_resolves_paths_and_validates(tmp_path: Path) -> None:
    suite = _write_suite(tmp_path, CASES, baseline="baseline.json")
    assert suite.app_path == (tmp_path / "keel.toml").resolve()
    assert suite.dataset_path == (tmp_path / "evals" / "cases.jsonl").resolve()
    assert suite.baseline_path == (tmp_path / "evals" / "baseline.json").resolve()
    assert suite.threshold("non_llm_string_similarity") == 0.5
    bad = tmp_path / "evals" / "bad.yaml"
    for text, reason in [
        ("dataset: c.jsonl\nmetrics: {recal_at_k: {}}\n", "unknown metric 'recal_at_k'"),
        ("dataset: c.jsonl\nmetrics: {mrr: {k: 3}}\n", "unknown option"),
        ("dataset: c.jsonl\nmetrics: {mrr: {}}\nrepeat: 2\n", "repeat"),
        ("dataset: c.jsonl\nmetrics: {mrr: {}}\nconcurrency: 0\n", "concurrency"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_suite(bad)
        assert reason in str(exc.value) and "\n" not in str(exc.value)


def test_concurrency_is_bounded(tmp_path: Path, make_app: Callable[..., App]) -> None:
    lock = threading.Lock()
    active = {"now": 0, "max": 0}

    def reply(messages: list[BaseMessage]) -> str:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.05)
        with lock:
            active["now"] -= 1
        return "Answer."

    suite = _write_suite(tmp_path, CASES * 1, concurrency=3, repeats=2)
    seen: list[tuple[int, int]] = []
    run = run_suite(
        suite, app=make_app(model=_model(reply)), progress=lambda d, t: seen.append((d, t))
    )
    assert 2 <= active["max"] <= 3
    assert len(run.cases) == 12 and seen[-1] == (12, 12)
    assert [(c.case_id, c.repeat) for c in run.cases] == [
        (f"q{i}", r) for i in range(6) for r in range(2)
    ]
    assert all(c.trace_id and c.error is None for c in run.cases)
    assert len({c.thread_id for c in run.cases}) == 12


def test_failures_and_timeouts_are_recorded(tmp_path: Path, make_app: Callable[..., App]) -> None:
    def reply(messages: list[BaseMessage]) -> str:
        q = _question(messages)
        if "number 1?" in q:
            raise ValueError("scripted failure")
        if "number 2?" in q:
            time.sleep(0.8)
        return "Answer " + q.split()[-1].rstrip("?") + "."

    suite = _write_suite(tmp_path, CASES[:4], timeout_s=0.3, retries=1)
    run = run_suite(suite, app=make_app(model=_model(reply)))
    by_id = {c.case_id: c for c in run.cases}
    assert by_id["q1"].error and by_id["q1"].attempts == 2
    assert by_id["q1"].scores == {"non_llm_string_similarity": None, "latency_ms": None}
    assert by_id["q2"].error == "timed out after 0.3 s"
    assert by_id["q0"].error is None and by_id["q3"].error is None
    assert by_id["q0"].scores["non_llm_string_similarity"] == pytest.approx(1.0)
    assert run.aggregates["non_llm_string_similarity"]["n"] == 2


def test_repeats_ci_skips_and_round_trip(tmp_path: Path, make_app: Callable[..., App]) -> None:
    def reply(messages: list[BaseMessage]) -> str:
        q = _question(messages).split()[-1].rstrip("?")
        return f"Answer {q}." if q in "012" else f"Something else entirely {q}"

    cases = [*CASES, {"id": "noref", "input": "No reference here?"}]
    metrics = {"non_llm_string_similarity": {}, "faithfulness": {}, "latency_ms": {}}
    suite = _write_suite(tmp_path, cases, repeats=3, metrics=metrics, concurrency=2)
    run = run_suite(suite, app=make_app(model=_model(reply)))
    agg = run.aggregates["non_llm_string_similarity"]
    assert agg["n"] == 6 and agg["ci_low"] <= agg["mean"] <= agg["ci_high"]
    assert agg["ci_low"] < agg["ci_high"]
    assert run.skipped_metrics["faithfulness"] == NO_JUDGE
    assert "faithfulness" not in run.aggregates
    assert run.skipped_metrics["non_llm_string_similarity"] == (
        "the case has no reference (3 of 21 results)"
    )
    assert "noref" not in run.per_case("non_llm_string_similarity")
    assert run.dataset_version and run.app_version
    assert run.model and run.model == run.cases[0].model
    again = RunResult.from_json(run.to_json())
    assert again == run
    path = tmp_path / "out" / "run.json"
    run.save(path)
    assert RunResult.load(path) == run


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    a = bootstrap_ci([0.0, 1.0, 0.5, 0.25])
    assert a == bootstrap_ci([0.0, 1.0, 0.5, 0.25])  # seeded
    assert a[1] < a[0] < a[2]


def test_builds_the_app_from_the_suite(tmp_path: Path) -> None:
    suite = _write_suite(tmp_path, CASES[:2])
    run = run_suite(suite, model=_model(lambda m: "Answer 0."))
    assert [c.error for c in run.cases] == [None, None]
    assert run.per_case("non_llm_string_similarity")["q0"] == pytest.approx(1.0)


def _echo(messages: list[BaseMessage]) -> str:
    return "Answer " + _question(messages).split()[-1].rstrip("?") + "."


def test_run_suite_works_inside_a_running_event_loop(
    tmp_path: Path, make_app: Callable[..., App]
) -> None:
    """A notebook or an async app calls ``run_suite`` with a loop already running: it runs on
    a loop of its own in a worker thread instead of failing in ``asyncio.run``."""
    import asyncio

    suite = _write_suite(tmp_path, CASES[:3])
    app = make_app(model=_model(_echo))

    async def host() -> RunResult:
        return run_suite(suite, app=app)

    run = asyncio.run(host())
    assert [c.error for c in run.cases] == [None, None, None]
    assert run.aggregates["non_llm_string_similarity"]["mean"] == pytest.approx(1.0)


def test_gc_freeze_is_opt_in(
    tmp_path: Path, make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gc.freeze`` is process-wide: a run freezes only when the suite
    (``concurrency_gc_freeze``) or the caller (``gc_freeze=True``) asks, and hands the objects
    back afterwards."""
    import gc

    frozen: list[int] = []

    def reply(messages: list[BaseMessage]) -> str:
        frozen.append(gc.get_freeze_count())
        return _echo(messages)

    app = make_app(model=_model(reply))
    run_suite(_write_suite(tmp_path, CASES[:2]), app=app)
    assert frozen and max(frozen) == 0  # default: nothing frozen
    frozen.clear()
    run_suite(_write_suite(tmp_path, CASES[:2], concurrency_gc_freeze=True), app=app)
    assert min(frozen) > 0 and gc.get_freeze_count() == 0
    frozen.clear()
    run_suite(_write_suite(tmp_path, CASES[:2]), app=app, gc_freeze=True)
    assert min(frozen) > 0 and gc.get_freeze_count() == 0
