"""Evaluation with a real model: the support bot answered by SmolLM2 behind llama.cpp's
server, judged by the same model with structured output (the verdict's JSON schema, which the
server enforces with a grammar), RAGAS LLM metrics producing numbers, and `keel compare` of
the embedded model against the real one. Mechanics, not skill: every judge call must come back
as a readable verdict, every metric as a number or a reported per-case reason."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from keel.cli import _common, cli
from keel.evals.judges import PairwiseJudge, RubricJudge, judge_model
from keel.settings import get_settings

pytestmark = [pytest.mark.llm, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_bot"
JUDGE_METRICS = ["faithfulness", "response_relevancy", "context_precision", "factual_correctness"]


@pytest.fixture
def llm_bot(
    tmp_path: Path, llm_env: dict[str, str], llm_model: dict[str, Any], model_cache_dir: Path
) -> Iterator[Path]:
    """A copy of the support bot on the real model, its docs ingested, with a suite of its
    first case judged by the real model."""
    root = tmp_path / "support_bot"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".keel", "__pycache__"))
    toml = (root / "keel.toml").read_text()
    model = "\n".join(f"{k} = {json.dumps(v)}" for k, v in llm_model.items())
    toml = toml.replace('id = "keel:extractive"', model).replace(
        'enabled = ["tools:plan_price", "tools:open_ticket", "keel:calculator"]', "enabled = []"
    )
    toml += '\n[costs.prices."openai:smollm2"]\ninput_per_million = 0\noutput_per_million = 0\n'
    (root / "keel.toml").write_text(toml)
    cases = (root / "evals" / "cases.jsonl").read_text().splitlines()[:1]
    (root / "evals" / "two.jsonl").write_text("\n".join(cases) + "\n")
    suite = {
        "name": "support-bot-llm",
        "app": "../keel.toml",
        "dataset": "two.jsonl",
        "judge": "openai:smollm2",
        "metrics": {"recall_at_k": {"k": 5}, **{m: {} for m in JUDGE_METRICS}},
        "concurrency": 1,
        "timeout_s": 300,
        "retries": 0,
    }
    (root / "evals" / "llm.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    mp.setenv("KEEL_DATA_DIR", str(root / ".keel"))
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["--config", str(root / "keel.toml"), "ingest"])
    assert result.exit_code == 0, result.output
    yield root
    mp.undo()
    get_settings.cache_clear()


def test_the_suite_with_an_llm_judge_and_ragas_metrics_produces_scores(llm_bot: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", str(llm_bot / "evals" / "llm.yaml"), "--json"])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    cases = data["run"]["cases"]
    assert all(c["error"] is None for c in cases), [c["error"] for c in cases]
    for metric in JUDGE_METRICS:
        scored = [c["scores"][metric] for c in cases if c["scores"].get(metric) is not None]
        unscored = [c["score_errors"][metric] for c in cases if metric in c["score_errors"]]
        # each case is judged to a number or reported with its reason: never silently skipped
        assert len(scored) + len(unscored) == len(cases), metric
        assert all(0.0 <= s <= 1.0 for s in scored), (metric, scored)
        if unscored:  # and then the gate says so, and fails
            assert data["passed"] is False
            assert any(metric in r for r in data["gate"]["reasons"])
    # structured output made the weak judge's verdicts readable: most metrics scored
    judged = sum(1 for m in JUDGE_METRICS for c in cases if c["scores"].get(m) is not None)
    assert judged >= len(JUDGE_METRICS) * len(cases) // 2, data["gate"]["reasons"]


def test_rubric_and_pairwise_judges_read_a_real_models_structured_verdict(
    llm_env: dict[str, str],
) -> None:
    model = judge_model("openai:smollm2")
    rubric = RubricJudge(model, model_id="openai:smollm2", rubric="Is the answer correct?")
    score = rubric.score(
        question="What is the capital of France?", answer="Paris is the capital of France."
    )
    assert 1 <= score.raw <= 5 and 0.0 <= score.score <= 1.0
    pairwise = PairwiseJudge(model, model_id="openai:smollm2", criteria="Which is correct?")
    verdict = pairwise.compare(
        question="What is 2 + 2?", answer_a="2 + 2 = 4.", answer_b="2 + 2 = 5."
    )
    assert verdict.winner in ("a", "b", "tie")
    assert verdict.first_order in ("a", "b", "tie") and verdict.swapped_order in ("a", "b", "tie")


def test_keel_compare_runs_the_embedded_and_the_real_model_side_by_side(
    llm_bot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = {
        "name": "compare",
        "app": "../keel.toml",
        "dataset": "two.jsonl",
        "metrics": {"recall_at_k": {"k": 5}, "refusal": {}, "latency_ms": {}},
        "concurrency": 1,
        "timeout_s": 300,
    }
    (llm_bot / "evals" / "compare.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    args = ["compare", str(llm_bot / "evals" / "compare.yaml")]
    args += ["--model", "keel:extractive", "--model", "openai:smollm2"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"keel:extractive", "openai:smollm2"}
    real = rows["openai:smollm2"]
    assert real["errors"] == 0 and real["n"] == 1
    assert set(real["metrics"]) == {"recall_at_k", "refusal", "latency_ms"}
    assert real["tokens_per_request"] > 100  # the server's usage
    assert real["cost_per_1000"] == 0.0  # priced as local
    assert real["p95_ms"] >= real["p50_ms"] > 0
    # wide enough for every column: the CLI's console took COLUMNS once, when it was made
    # (pytest-xdist's workers set it to 80), so COLUMNS given to this call may not count
    monkeypatch.setattr(_common.out, "_width", 200)
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.output
    assert "Pareto frontier on recall_at_k" in table.output
    for column in ("recall_at_k", "refusal", "latency_ms", "tokens / req", "$ / 1000 req"):
        assert column in table.output


def test_generate_with_the_real_model_keeps_what_succeeded_and_says_what_failed(
    tmp_path: Path, llm_env: dict[str, str], llm_model: dict[str, Any], model_cache_dir: Path
) -> None:
    """`keel evals generate --llm` on a small app: RAGAS's extractors and synthesizers run on
    the real model; whatever it produced is written as cases, every failed step is reported
    with its reason, and the run never dies for one bad reply."""
    docs = tmp_path / "app" / "docs"
    docs.mkdir(parents=True)
    (docs / "refunds.md").write_text(
        "# Refunds\n\nAnnual plans can be refunded in full within 30 days of purchase. "
        "Monthly plans can be refunded within 7 days of the charge. The Owner requests a "
        "refund from Settings > Billing > Invoices.\n"
    )
    (docs / "security.md").write_text(
        "# Two-factor authentication\n\nTurn on two-factor authentication in Settings > "
        "Security. You need an authenticator app. Recovery codes let you sign in when you "
        "lose your phone.\n"
    )
    model = "\n".join(f"{k} = {json.dumps(v)}" for k, v in llm_model.items())
    (tmp_path / "app" / "keel.toml").write_text(f'[app]\nname = "gen"\n\n[model]\n{model}\n')
    mp = pytest.MonkeyPatch()
    mp.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    mp.setenv("KEEL_DATA_DIR", str(tmp_path / "app" / ".keel"))
    get_settings.cache_clear()
    try:
        config = ["--config", str(tmp_path / "app" / "keel.toml")]
        assert CliRunner().invoke(cli, [*config, "ingest"]).exit_code == 0
        out = tmp_path / "gen.jsonl"
        args = [*config, "evals", "generate", "--out", str(out), "--size", "2", "--seed", "0"]
        result = CliRunner().invoke(cli, [*args, "--llm", "openai:smollm2"])
        assert result.exit_code == 0, result.output
        assert "case(s) appended" in result.output and "step(s) failed" in result.output
        kept = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        for case in kept:
            assert case["input"].strip() and case["provenance"]["llm"] == "openai:smollm2"
        failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
        assert kept or failed  # something was produced, or it says why not
    finally:
        mp.undo()
        get_settings.cache_clear()
