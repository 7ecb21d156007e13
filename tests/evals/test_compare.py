from __future__ import annotations

from rich.console import Console

from keel.evals.compare import compare_runs, compare_table
from keel.evals.runner import CaseResult, RunResult


def make_run(model: str, quality: float | None, latencies: list[float], cost: float | None):
    cases = [
        CaseResult(
            case_id=f"c{i}",
            repeat=0,
            input="q",
            output="a",
            contexts=[],
            doc_ids=[],
            tool_calls=[],
            trace_id=f"t{i}",
            latency_ms=lat,
            cost_usd=cost,
            guard_events=[],
            scores={"correct": quality},
        )
        for i, lat in enumerate(latencies)
    ]
    aggregates = {} if quality is None else {"correct": {"mean": quality, "n": len(cases)}}
    return RunResult(
        suite="s",
        dataset_version="d",
        app_version="v",
        model=model,
        started_at="now",
        cases=cases,
        aggregates=aggregates,
        skipped_metrics={},
    )


def test_pareto_frontier():
    runs = {
        "big": make_run("big", 0.9, [900, 1000, 1100, 3000], 0.01),  # best quality
        "small": make_run("small", 0.7, [100, 100, 120, 200], 0.001),  # fastest, cheapest
        "mid": make_run("mid", 0.8, [400, 500, 600, 700], 0.005),  # a trade-off
        "worse": make_run("worse", 0.6, [500, 500, 500, 500], 0.01),  # dominated by mid
        "same_as_mid_but_dearer": make_run("x", 0.8, [400, 500, 600, 700], 0.02),
    }
    rows = compare_runs(runs, quality_metric="correct")
    by = {r.model: r for r in rows}
    assert [r.model for r in rows] == list(runs)
    assert {m for m, r in by.items() if r.pareto} == {"big", "small", "mid"}
    assert by["small"].p50_ms == 110.0 and by["big"].p50_ms == 1050.0
    assert 1100 < by["big"].p95_ms <= 3000
    assert by["mid"].cost_per_1000 == 5.0 and by["mid"].quality == 0.8


def test_unknown_cost_is_not_compared_on_cost():
    runs = {
        "local": make_run("local", 0.7, [300, 300], None),  # cost unknown
        "api": make_run("api", 0.7, [300, 300], 0.001),
        "slow_local": make_run("slow", 0.6, [900, 900], None),
    }
    rows = {r.model: r for r in compare_runs(runs, quality_metric="correct")}
    assert rows["local"].cost_per_1000 is None
    # local and api tie on quality and latency: cost is not comparable, neither dominates
    assert rows["local"].pareto and rows["api"].pareto
    assert not rows["slow_local"].pareto


def test_lower_is_better_quality_and_missing_quality():
    runs = {
        "a": make_run("a", 0.2, [100], 0.001),  # e.g. an error rate: lower is better
        "b": make_run("b", 0.4, [100], 0.001),
        "c": make_run("c", None, [50], 0.001),  # no score, but faster
    }
    rows = {
        r.model: r for r in compare_runs(runs, quality_metric="correct", higher_is_better=False)
    }
    assert rows["a"].pareto and not rows["b"].pareto
    assert rows["c"].quality is None and rows["c"].pareto


def test_compare_table_renders():
    rows = compare_runs(
        {"m1": make_run("m1", 0.5, [10, 20], None), "m2": make_run("m2", 0.9, [30, 40], 0.002)},
        quality_metric="correct",
    )
    console = Console(record=True, width=140)
    console.print(compare_table(rows, quality_metric="correct"))
    text = console.export_text()
    assert "m1" in text and "m2" in text and "unknown" in text and "★" in text
    assert "2.0000" in text
