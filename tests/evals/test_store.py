"""Eval runs in the keel database: recorded with their verdict, listed newest first, read
back whole (NaN scores come back as None)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from keel.db import make_engine
from keel.evals.gate import gate
from keel.evals.runner import CaseResult, RunResult
from keel.evals.store import EvalRunStore


def case(cid: str, recall: float) -> CaseResult:
    return CaseResult(
        case_id=cid,
        repeat=0,
        input=f"question {cid}",
        output="an answer",
        contexts=["a passage"],
        doc_ids=["docs/a.md"],
        tool_calls=[],
        trace_id="0" * 32,
        latency_ms=12.0,
        cost_usd=None,
        guard_events=[],
        scores={"recall_at_k": recall, "latency_ms": 12.0},
    )


def run_of(suite: str, recalls: dict[str, float]) -> RunResult:
    values = list(recalls.values())
    return RunResult(
        suite=suite,
        dataset_version="ds1",
        app_version="app1",
        model="scripted",
        started_at="2025-01-01T00:00:00+00:00",
        cases=[case(cid, r) for cid, r in recalls.items()],
        aggregates={"recall_at_k": {"mean": sum(values) / len(values), "ci_low": math.nan}},
        skipped_metrics={},
    )


def test_record_list_get(tmp_path: Path) -> None:
    store = EvalRunStore(make_engine(None, tmp_path))
    assert store.list() == [] and store.get("run-nope") is None
    first = run_of("smoke", {"a": 1.0, "b": 0.5})
    verdict = gate(first, thresholds={"recall_at_k": 0.9}, higher_is_better={"recall_at_k": True})
    a = store.record(
        first, suite="smoke", passed=verdict.passed, app_version="app1", gate=asdict(verdict)
    )
    b = store.record(
        run_of("smoke", {"a": 1.0, "b": 1.0}),
        suite="smoke",
        passed=True,
        app_version="app2",
        gate=None,
        baseline=first,
    )
    c = store.record(
        run_of("other", {"x": 1.0}), suite="other", passed=True, app_version=None, gate=None
    )

    assert [r["id"] for r in store.list()] == [c, b, a]
    assert [r["id"] for r in store.list(suite="smoke")] == [b, a]  # newest first
    assert len(store.list(limit=1)) == 1
    summary = store.list(suite="smoke")[1]
    assert summary["passed"] is False and summary["cases"] == 2 and summary["errors"] == 0
    assert summary["aggregates"]["recall_at_k"] == {"mean": 0.75, "ci_low": None}

    found = store.get(a)
    assert found is not None
    meta, run = found
    assert meta["gate"]["passed"] is False and meta["gate"]["reasons"]
    assert meta["baseline"] is None and meta["app_version"] == "app1"
    assert [c.case_id for c in run.cases] == ["a", "b"] and run.cases[1].scores[
        "recall_at_k"
    ] == 0.5
    meta_b, _ = store.get(b) or ({}, None)
    assert meta_b["gate"] is None and meta_b["baseline"].cases[1].scores["recall_at_k"] == 0.5
