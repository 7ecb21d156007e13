"""Model comparison for ``keel compare``: quality x latency x cost, with the Pareto frontier.

:func:`compare_models` runs the same suite once per model configuration and compares the
runs (:func:`compare_runs` compares runs already in hand). A model is
on the Pareto frontier when no other model is at least as good on every objective and better
on one: quality (the suite's primary metric), p50 latency (lower is better) and cost per 1,000
requests (lower is better). A model whose cost is unknown is not comparable on cost: between
it and another model, cost is left out of the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

if TYPE_CHECKING:
    from keel.evals.runner import RunResult
    from keel.evals.suites import Suite


@dataclass
class ModelRow:
    model: str
    quality: float | None
    p50_ms: float
    p95_ms: float
    cost_per_1000: float | None
    pareto: bool
    n: int = 0
    errors: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)  # every suite metric
    tokens_per_request: float | None = None  # mean total tokens (None: the server said none)


def _quality(run: RunResult, metric: str) -> float | None:
    agg = run.aggregates.get(metric)
    if agg is not None and isinstance(agg.get("mean"), (int, float)):
        mean = float(agg["mean"])
        if math.isfinite(mean):
            return mean
    values = [v for v in run.per_case(metric).values() if math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _dominates(x: ModelRow, y: ModelRow, higher_is_better: bool) -> bool:
    """Whether x dominates y: no worse on every comparable objective and better on one."""
    # quality: unknown quality is the worst possible
    sign = 1.0 if higher_is_better else -1.0
    qx = -math.inf if x.quality is None else sign * x.quality
    qy = -math.inf if y.quality is None else sign * y.quality
    pairs: list[tuple[float, float]] = [(qx, qy), (-x.p50_ms, -y.p50_ms)]
    if x.cost_per_1000 is not None and y.cost_per_1000 is not None:
        pairs.append((-x.cost_per_1000, -y.cost_per_1000))
    # NaN latency (no cases) compares False both ways: never dominates nor is better
    no_worse = all(a >= b for a, b in pairs)
    better = any(a > b for a, b in pairs)
    return no_worse and better


def compare_runs(
    runs: Mapping[str, RunResult],
    *,
    quality_metric: str,
    higher_is_better: bool = True,
    metrics: Sequence[str] = (),
) -> list[ModelRow]:
    """One row per model (in the order given), the Pareto frontier marked. ``metrics``: every
    metric to report (the frontier is judged on ``quality_metric``)."""
    rows: list[ModelRow] = []
    for model, run in runs.items():
        tokens = [c.usage.get("total_tokens", 0) for c in run.cases if c.usage]
        latencies = np.array([c.latency_ms for c in run.cases], dtype=np.float64)
        if latencies.size:
            p50, p95 = (float(v) for v in np.percentile(latencies, [50, 95]))
        else:
            p50 = p95 = math.nan
        costs = [c.cost_usd for c in run.cases if c.cost_usd is not None]
        rows.append(
            ModelRow(
                model=model,
                quality=_quality(run, quality_metric),
                p50_ms=p50,
                p95_ms=p95,
                cost_per_1000=float(np.mean(costs)) * 1000.0 if costs else None,
                pareto=False,
                n=len(run.cases),
                errors=sum(1 for c in run.cases if c.error is not None),
                metrics={m: _quality(run, m) for m in (metrics or [quality_metric])},
                tokens_per_request=float(np.mean(tokens)) if tokens else None,
            )
        )
    for row in rows:
        row.pareto = not any(
            _dominates(other, row, higher_is_better) for other in rows if other is not row
        )
    return rows


def _num(value: float | None, fmt: str) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return format(value, fmt)


def compare_table(rows: Sequence[ModelRow], *, quality_metric: str = "quality") -> Table:
    """A rich table, one row per model: every metric (the frontier's first), p50 / p95
    latency, tokens per request, cost per 1,000 requests, the Pareto frontier."""
    names = list(rows[0].metrics) if rows and rows[0].metrics else [quality_metric]
    table = Table(title=f"Model comparison (★ = Pareto frontier on {quality_metric})")
    table.add_column("Model")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("tokens / req", justify="right")
    table.add_column("$ / 1000 req", justify="right")
    table.add_column("Errors", justify="right")
    table.add_column("Pareto", justify="center")
    for row in rows:
        values = row.metrics or {quality_metric: row.quality}
        table.add_row(
            row.model,
            *(_num(values.get(name), ".3f") for name in names),
            _num(row.p50_ms, ".0f"),
            _num(row.p95_ms, ".0f"),
            "unknown" if row.tokens_per_request is None else _num(row.tokens_per_request, ".0f"),
            "unknown" if row.cost_per_1000 is None else _num(row.cost_per_1000, ".4f"),
            f"{row.errors}/{row.n}",
            "★" if row.pareto else "",
            style="bold" if row.pareto else None,
        )
    return table


@dataclass(frozen=True)
class ModelComparison:
    """One suite run per model, compared: what ``keel compare`` prints."""

    suite: str
    quality_metric: str
    """The metric the Pareto frontier is judged on (the suite's first)."""
    higher_is_better: bool
    rows: list[ModelRow]
    """One per model, in the order the models were given."""

    @property
    def frontier(self) -> list[str]:
        """The models on the Pareto frontier."""
        return [r.model for r in self.rows if r.pareto]

    def row(self, model: str) -> ModelRow:
        for r in self.rows:
            if r.model == model:
                return r
        raise KeyError(model)

    def to_json(self) -> list[dict[str, Any]]:
        """The rows as plain data (``keel compare --json``)."""
        return [asdict(r) for r in self.rows]

    def table(self) -> Table:
        return compare_table(self.rows, quality_metric=self.quality_metric)


def compare_models(suite: Suite | str | Path, models: Sequence[str]) -> ModelComparison:
    """Run ``suite`` (a suite or its file) once per model id on the suite's app (the app's
    own model and fallbacks replaced by that one model) and compare the runs: quality on
    every suite metric, p50 / p95 latency, tokens and cost per request, the Pareto frontier
    on the suite's first metric. A model that fails counts its errors; it does not stop the
    comparison."""
    from keel.app import App
    from keel.config import load_config
    from keel.errors import UsageError
    from keel.evals.metrics import METRICS
    from keel.evals.runner import run_suite
    from keel.evals.suites import load_suite

    if len(models) < 2:
        raise UsageError("give at least two models to compare")
    parsed = suite if not isinstance(suite, str | Path) else load_suite(suite)
    runs: dict[str, RunResult] = {}
    for model_id in models:
        config = load_config(parsed.app_path)
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"id": model_id, "fallbacks": []})}
        )
        app = App(config)
        try:
            runs[model_id] = run_suite(parsed, app=app)
        finally:
            app.close()
    quality = next(iter(parsed.metrics))
    higher_is_better = METRICS[quality].higher_is_better
    rows = compare_runs(
        runs,
        quality_metric=quality,
        higher_is_better=higher_is_better,
        metrics=list(parsed.metrics),
    )
    return ModelComparison(parsed.name, quality, higher_is_better, rows)


__all__ = ["ModelComparison", "ModelRow", "compare_models", "compare_runs", "compare_table"]
