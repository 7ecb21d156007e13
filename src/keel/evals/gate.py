"""The CI gate: thresholds per metric and a paired bootstrap comparison with a baseline.

A run passes when every metric's aggregate mean meets its threshold (a minimum for
higher-is-better metrics, a maximum for lower-is-better ones such as latency or cost) and no
metric regressed against the baseline. A regression needs both:

* significance: the upper bound of the paired bootstrap 95% confidence interval of the mean
  per-case difference is below 0, and
* size: the mean difference is worse than ``-margin``.

Differences are ``current - baseline`` per case id (each side the mean over its repeats), with
the sign flipped for lower-is-better metrics, so a negative difference always means *worse*.
Cases present in only one of the two runs are left out of the comparison and counted in the
verdict. Scores that wobble between runs (a nondeterministic app, a noisy judge) do not move
the confidence interval below zero, so they never fail the gate on their own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from keel.evals.runner import RunResult


@dataclass
class MetricVerdict:
    """The gate's view of one metric. ``diff`` and its CI are sign-adjusted: negative is worse."""

    metric: str
    mean: float | None
    threshold: float | None
    passes_threshold: bool
    baseline_mean: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    regression: bool = False  # significant AND beyond the margin
    higher_is_better: bool = True
    margin: float = 0.0
    n_pairs: int = 0
    only_current: int = 0
    only_baseline: int = 0
    note: str | None = None
    n_scored: int = 0  # cases with a score
    n_unscored: int = 0  # answered cases it could not be computed for (see CaseResult)


@dataclass
class GateResult:
    passed: bool
    verdicts: list[MetricVerdict]
    worse_cases: list[dict[str, Any]] = field(default_factory=list)
    """``{case_id, metric, baseline, current, diff}``: per metric, worst first; ``diff`` is
    sign-adjusted (negative is worse)."""
    reasons: list[str] = field(default_factory=list)

    def verdict(self, metric: str) -> MetricVerdict:
        for v in self.verdicts:
            if v.metric == metric:
                return v
        raise KeyError(metric)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _per_case(run: RunResult, metric: str) -> dict[str, float]:
    return {cid: float(v) for cid, v in run.per_case(metric).items() if _finite(v)}


def _mean(run: RunResult, metric: str) -> float | None:
    agg = run.aggregates.get(metric)
    if agg is not None and _finite(agg.get("mean")):
        return float(agg["mean"])
    values = list(_per_case(run, metric).values())
    return float(np.mean(values)) if values else None


def paired_bootstrap_ci(
    diffs: np.ndarray[Any, np.dtype[np.float64]],
    *,
    seed: int = 0,
    resamples: int = 2000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diffs`` (already paired), vectorised."""
    n = len(diffs)
    if n == 0:
        raise ValueError("no differences to resample")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bound memory for large suites
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def gate(
    run: RunResult,
    *,
    thresholds: Mapping[str, float | None],
    higher_is_better: Mapping[str, bool],
    baseline: RunResult | None = None,
    margin: float = 0.02,
    margins: Mapping[str, float] | None = None,
    seed: int = 0,
    resamples: int = 2000,
    max_named_cases: int = 5,
    max_error_rate: float = 0.0,
    allow_skipped: Collection[str] = (),
) -> GateResult:
    """Judge ``run`` on ``thresholds`` (metric -> threshold or None) and against ``baseline``.

    The metrics judged are the keys of ``thresholds``. ``margins`` overrides ``margin`` per
    metric (latency in ms needs a different margin than a 0..1 score).

    A run that did not run fails: more errored cases than ``max_error_rate`` (a share, 0 by
    default), or a metric that could not be computed for an answered case (no judge, a judge
    that gave no readable verdict, no embedding model) unless it is in ``allow_skipped``.
    A metric that does not apply to some cases (they have no reference for it) is skipped
    there without failing; its verdict carries the reason in ``note``. A metric with a
    threshold but no score at all fails it.
    """
    verdicts: list[MetricVerdict] = []
    worse: list[dict[str, Any]] = []
    reasons: list[str] = []
    margins = margins or {}
    run_failed = False
    errored = run.errors
    if run.cases and len(errored) / len(run.cases) > max_error_rate:
        run_failed = True
        first = errored[0]
        reasons.append(
            f"{len(errored)} of {len(run.cases)} cases errored (max_error_rate "
            f"{_fmt(max_error_rate)}); first: {first.case_id}: {first.error}"
        )

    for metric, threshold in thresholds.items():
        hib = higher_is_better.get(metric, True)
        m_margin = float(margins.get(metric, margin))
        mean = _mean(run, metric)
        verdict = MetricVerdict(
            metric=metric,
            mean=mean,
            threshold=threshold,
            passes_threshold=True,
            higher_is_better=hib,
            margin=m_margin,
        )
        verdicts.append(verdict)
        verdict.n_scored = len(_per_case(run, metric))
        unscored = [c for c in run.cases if metric in c.score_errors]
        verdict.n_unscored = len({c.case_id for c in unscored})
        if unscored and metric not in allow_skipped:
            verdict.passes_threshold = False
            reasons.append(
                f"{metric}: could not be computed for {verdict.n_unscored} of "
                f"{verdict.n_unscored + verdict.n_scored} cases (judged: {verdict.n_scored}); "
                f"first: {unscored[0].case_id}: {unscored[0].score_errors[metric]}"
            )
        skipped = run.skipped_metrics.get(metric)
        if skipped is not None and mean is None:
            verdict.note = f"skipped: {skipped}"
            continue

        if threshold is not None:
            if mean is None:
                verdict.passes_threshold = False
                reasons.append(f"{metric}: no scores (threshold {_fmt(threshold)})")
            elif hib and mean < threshold:
                verdict.passes_threshold = False
                reasons.append(f"{metric}: mean {_fmt(mean)} < threshold {_fmt(threshold)}")
            elif not hib and mean > threshold:
                verdict.passes_threshold = False
                reasons.append(
                    f"{metric}: mean {_fmt(mean)} > threshold {_fmt(threshold)} (a maximum)"
                )

        if baseline is None:
            continue
        verdict.baseline_mean = _mean(baseline, metric)
        cur = _per_case(run, metric)
        base = _per_case(baseline, metric)
        common = sorted(set(cur) & set(base))
        verdict.n_pairs = len(common)
        verdict.only_current = len(set(cur) - set(base))
        verdict.only_baseline = len(set(base) - set(cur))
        if not common:
            verdict.note = "no cases in common with the baseline"
            continue
        sign = 1.0 if hib else -1.0
        diffs = np.array([sign * (cur[c] - base[c]) for c in common], dtype=np.float64)
        verdict.diff = float(diffs.mean())
        verdict.ci_low, verdict.ci_high = paired_bootstrap_ci(diffs, seed=seed, resamples=resamples)
        metric_worse = sorted(
            (
                {
                    "case_id": c,
                    "metric": metric,
                    "baseline": base[c],
                    "current": cur[c],
                    "diff": float(d),
                }
                for c, d in zip(common, diffs, strict=True)
                if d < -m_margin
            ),
            key=lambda row: (row["diff"], row["case_id"]),
        )
        if len(common) < 2:
            verdict.note = "one case in common with the baseline: too few to judge a regression"
        elif verdict.ci_high < 0 and verdict.diff < -m_margin:
            verdict.regression = True
            named = ", ".join(
                f"{row['case_id']} ({row['diff']:+.3g})" for row in metric_worse[:max_named_cases]
            )
            more = len(metric_worse) - max_named_cases
            reasons.append(
                f"{metric}: regressed vs baseline by {verdict.diff:+.4g} "
                f"(95% CI [{verdict.ci_low:+.4g}, {verdict.ci_high:+.4g}], "
                f"margin {_fmt(m_margin)}, {len(common)} paired cases)"
                + (f"; worse cases: {named}" if named else "")
                + (f" and {more} more" if more > 0 else "")
            )
        worse.extend(metric_worse)

    # metrics that regressed first, then the rest; within a metric the worst case first
    regressed = {v.metric for v in verdicts if v.regression}
    order = {v.metric: i for i, v in enumerate(verdicts)}
    worse.sort(key=lambda r: (r["metric"] not in regressed, order[r["metric"]]))
    passed = not run_failed and all(v.passes_threshold and not v.regression for v in verdicts)
    return GateResult(passed=passed, verdicts=verdicts, worse_cases=worse, reasons=reasons)


__all__ = ["GateResult", "MetricVerdict", "gate", "paired_bootstrap_ci"]
