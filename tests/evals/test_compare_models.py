"""`compare_models` from Python (what `keel compare` runs): one suite run per model, the rows
and the Pareto frontier."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.errors import UsageError
from keel.evals import ModelComparison, compare_models, load_dataset, load_suite
from keel.settings import get_settings

CLOSED = "http://127.0.0.1:9/v1"  # nothing listens: the OpenAI model fails fast, offline


@pytest.fixture
def bot(ingested_bot: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEEL_OPENAI_BASE_URL", CLOSED)
    get_settings.cache_clear()
    return ingested_bot


def test_compare_models_rows_and_frontier(bot: Path) -> None:
    suite = bot / "evals" / "support.yaml"
    models = ["keel:extractive", "openai:gpt-4o-mini"]
    comparison = compare_models(suite, models)
    assert isinstance(comparison, ModelComparison)
    assert comparison.suite == "support-bot" and comparison.quality_metric == "recall_at_k"
    assert comparison.higher_is_better is True
    assert [r.model for r in comparison.rows] == models

    extractive, unreachable = comparison.row(models[0]), comparison.row(models[1])
    parsed = load_suite(suite)
    cases = len(load_dataset(parsed.dataset_path).cases) * parsed.repeats
    assert extractive.n == unreachable.n == cases
    assert extractive.errors == 0 and extractive.quality == pytest.approx(1.0)
    assert unreachable.errors > 0
    assert list(extractive.metrics) == list(parsed.metrics)
    assert extractive.cost_per_1000 == 0.0  # a local model is free
    assert extractive.pareto and models[0] in comparison.frontier
    assert [row["model"] for row in comparison.to_json()] == models
    assert comparison.table().row_count == 2


def test_compare_models_needs_two_models(bot: Path) -> None:
    with pytest.raises(UsageError, match="at least two"):
        compare_models(bot / "evals" / "support.yaml", ["keel:extractive"])
