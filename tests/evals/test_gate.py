from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from keel.evals.gate import gate, paired_bootstrap_ci
from keel.evals.runner import CaseResult, RunResult


def make_run(scores: dict[str, dict[str, list[float]]], *, skipped: dict[str, str] | None = None):
    """scores: metric -> case_id -> one value per repeat."""
    cases: dict[tuple[str, int], CaseResult] = {}
    for metric, per_case in scores.items():
        for cid, values in per_case.items():
            for r, v in enumerate(values):
                c = cases.setdefault(
                    (cid, r),
                    CaseResult(
                        case_id=cid,
                        repeat=r,
                        input=f"q {cid}",
                        output=f"a {cid}",
                        contexts=[],
                        doc_ids=[],
                        tool_calls=[],
                        trace_id=f"t-{cid}-{r}",
                        latency_ms=10.0,
                        cost_usd=None,
                        guard_events=[],
                        scores={},
                    ),
                )
                c.scores[metric] = v
    aggregates = {}
    for metric, per_case in scores.items():
        means = [float(np.mean(v)) for v in per_case.values()]
        aggregates[metric] = {
            "mean": float(np.mean(means)),
            "ci_low": 0.0,
            "ci_high": 1.0,
            "n": float(len(means)),
        }
    return RunResult(
        suite="s",
        dataset_version="d1",
        app_version="a1",
        model="m",
        started_at="2025-01-01",
        cases=list(cases.values()),
        aggregates=aggregates,
        skipped_metrics=skipped or {},
    )


def one(metric: str, values: dict[str, float], **kw: Any):
    return make_run({metric: {k: [v] for k, v in values.items()}}, **kw)


HIB = {"recall": True, "latency": False}


def test_threshold_higher_is_better():
    run = one("recall", {"a": 0.8, "b": 0.6})  # mean 0.7
    assert gate(run, thresholds={"recall": 0.65}, higher_is_better=HIB).passed
    res = gate(run, thresholds={"recall": 0.75}, higher_is_better=HIB)
    assert not res.passed
    assert not res.verdicts[0].passes_threshold
    assert "recall" in res.reasons[0] and "0.75" in res.reasons[0]


def test_threshold_lower_is_better_is_a_maximum():
    run = one("latency", {"a": 100.0, "b": 300.0})  # mean 200
    assert gate(run, thresholds={"latency": 250.0}, higher_is_better=HIB).passed
    res = gate(run, thresholds={"latency": 150.0}, higher_is_better=HIB)
    assert not res.passed and "maximum" in res.reasons[0]


def test_no_threshold_and_no_baseline_passes():
    run = one("recall", {"a": 0.0})
    assert gate(run, thresholds={"recall": None}, higher_is_better=HIB).passed


def test_skipped_metric_does_not_fail_but_is_noted():
    run = make_run({"recall": {"a": [1.0]}}, skipped={"faithfulness": "needs a judge model"})
    res = gate(run, thresholds={"recall": 0.5, "faithfulness": 0.7}, higher_is_better=HIB)
    assert res.passed
    v = res.verdict("faithfulness")
    assert v.mean is None and v.note is not None and "judge" in v.note


def test_metric_with_threshold_but_no_scores_fails():
    run = one("recall", {"a": 1.0})
    res = gate(run, thresholds={"other": 0.5}, higher_is_better=HIB)
    assert not res.passed and "no scores" in res.reasons[0]


def test_real_regression_fails_and_names_worse_cases():
    ids = [f"c{i}" for i in range(20)]
    base = one("recall", {c: 0.9 for c in ids})
    cur_values = {c: 0.9 for c in ids}
    cur_values.update({"c3": 0.1, "c7": 0.3, "c11": 0.5, "c15": 0.4})
    cur = one("recall", cur_values)
    res = gate(cur, thresholds={"recall": None}, higher_is_better=HIB, baseline=base)
    assert not res.passed
    v = res.verdicts[0]
    assert v.regression and v.diff is not None and v.diff < -0.02
    assert v.ci_high is not None and v.ci_high < 0
    assert v.baseline_mean == pytest.approx(0.9)
    assert [w["case_id"] for w in res.worse_cases] == ["c3", "c7", "c15", "c11"]
    assert res.worse_cases[0] == {
        "case_id": "c3",
        "metric": "recall",
        "baseline": 0.9,
        "current": 0.1,
        "diff": pytest.approx(-0.8),
    }
    assert "c3" in res.reasons[0] and "regressed" in res.reasons[0]


def test_noise_around_the_same_means_does_not_fail():
    rng = np.random.default_rng(42)
    ids = [f"c{i}" for i in range(40)]
    truth = {c: float(rng.uniform(0.3, 0.9)) for c in ids}

    def noisy_run():
        # a flaky judge: three repeats, each off by up to +-0.15
        return make_run(
            {
                "faith": {
                    c: [float(np.clip(truth[c] + rng.normal(0, 0.1), 0, 1)) for _ in range(3)]
                    for c in ids
                }
            }
        )

    failures = 0
    for _ in range(20):
        res = gate(
            noisy_run(), thresholds={"faith": None}, higher_is_better={}, baseline=noisy_run()
        )
        failures += not res.passed
    assert failures == 0


def test_margin_respected():
    ids = [f"c{i}" for i in range(30)]
    base = one("recall", {c: 0.80 for c in ids})
    # every case 0.01 worse: significant (zero variance) but within the 0.02 margin
    cur = one("recall", {c: 0.79 for c in ids})
    res = gate(cur, thresholds={"recall": None}, higher_is_better=HIB, baseline=base)
    assert res.passed
    v = res.verdicts[0]
    assert v.ci_high is not None and v.ci_high < 0 and not v.regression
    assert res.worse_cases == []
    res = gate(cur, thresholds={"recall": None}, higher_is_better=HIB, baseline=base, margin=0.005)
    assert not res.passed and len(res.worse_cases) == 30
    # a per-metric margin overrides the default
    res = gate(
        cur,
        thresholds={"recall": None},
        higher_is_better=HIB,
        baseline=base,
        margin=0.005,
        margins={"recall": 0.05},
    )
    assert res.passed


def test_lower_is_better_sign():
    ids = [f"c{i}" for i in range(10)]
    base = one("latency", {c: 100.0 for c in ids})
    slower = one("latency", {c: 150.0 + i for i, c in enumerate(ids)})
    res = gate(
        slower, thresholds={"latency": None}, higher_is_better=HIB, baseline=base, margin=5.0
    )
    assert not res.passed
    v = res.verdicts[0]
    assert v.diff is not None and v.diff < 0 and v.regression
    assert res.worse_cases[0]["case_id"] == "c9"  # the slowest first
    faster = one("latency", {c: 50.0 for c in ids})
    res = gate(faster, thresholds={"latency": None}, higher_is_better=HIB, baseline=base)
    assert res.passed and res.verdicts[0].diff == pytest.approx(50.0)
    assert res.worse_cases == []


def test_cases_only_in_one_run_are_ignored_and_counted():
    base = one("recall", {"a": 0.9, "b": 0.9, "c": 0.9, "gone": 0.9})
    cur = one("recall", {"a": 0.9, "b": 0.9, "c": 0.9, "new1": 0.0, "new2": 0.0})
    res = gate(cur, thresholds={"recall": None}, higher_is_better=HIB, baseline=base)
    v = res.verdicts[0]
    assert res.passed and not v.regression
    assert (v.n_pairs, v.only_current, v.only_baseline) == (3, 2, 1)
    assert v.diff == pytest.approx(0.0)


def test_no_common_cases():
    res = gate(
        one("recall", {"a": 0.1}),
        thresholds={"recall": None},
        higher_is_better=HIB,
        baseline=one("recall", {"b": 0.9}),
    )
    assert res.passed and res.verdicts[0].note is not None


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(25)]
    base = one("recall", {c: float(rng.uniform()) for c in ids})
    cur = one("recall", {c: float(rng.uniform()) for c in ids})
    a = gate(cur, thresholds={"recall": 0.1}, higher_is_better=HIB, baseline=base, seed=7)
    b = gate(cur, thresholds={"recall": 0.1}, higher_is_better=HIB, baseline=base, seed=7)
    assert a == b
    c = gate(cur, thresholds={"recall": 0.1}, higher_is_better=HIB, baseline=base, seed=8)
    assert (c.verdicts[0].ci_low, c.verdicts[0].ci_high) != (
        a.verdicts[0].ci_low,
        a.verdicts[0].ci_high,
    )


def test_bootstrap_ci_covers_the_mean():
    d = np.random.default_rng(0).normal(0.5, 1.0, size=200)
    low, high = paired_bootstrap_ci(d, seed=0, resamples=4000)
    assert low < d.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * d.std() / np.sqrt(200), rel=0.2)


def test_a_run_whose_cases_errored_fails_the_gate() -> None:
    run = make_run({"recall": {"a": [1.0], "b": [1.0], "c": [1.0]}})
    run.cases[1].error = "ModelError: every model failed (openai:local); connection refused"
    result = gate(run, thresholds={"recall": None}, higher_is_better={"recall": True})
    assert not result.passed
    assert result.reasons[0].startswith("1 of 3 cases errored (max_error_rate 0)")
    assert "connection refused" in result.reasons[0]
    tolerant = gate(
        run, thresholds={"recall": None}, higher_is_better={"recall": True}, max_error_rate=0.5
    )
    assert tolerant.passed


def test_a_metric_that_could_not_be_computed_fails_unless_allowed() -> None:
    run = make_run({"recall": {"a": [1.0], "b": [1.0]}, "faithfulness": {"a": [0.8]}})
    run.cases[1].score_errors["faithfulness"] = "scoring failed: judge gave no readable verdict"
    thresholds = {"recall": None, "faithfulness": None}
    hib = {"recall": True, "faithfulness": True}
    result = gate(run, thresholds=thresholds, higher_is_better=hib)
    assert not result.passed
    (reason,) = result.reasons
    assert reason.startswith("faithfulness: could not be computed for 1 of 2 cases (judged: 1)")
    verdict = result.verdict("faithfulness")
    assert (verdict.n_scored, verdict.n_unscored) == (1, 1)
    allowed = gate(run, thresholds=thresholds, higher_is_better=hib, allow_skipped=["faithfulness"])
    assert allowed.passed
