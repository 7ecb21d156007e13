"""Keel's own metrics on hand-made results, RAGAS non-LLM metrics, skip reasons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keel.app import App
from keel.evals.datasets import Case
from keel.evals.metrics import METRICS, NO_JUDGE, score_case, skip_reason


def _case(**kw: Any) -> Case:
    return Case(id=kw.pop("id", "c1"), input=kw.pop("input", "How do refunds work?"), **kw)


def _result(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "output": "",
        "contexts": [],
        "doc_ids": [],
        "tool_calls": [],
        "latency_ms": 12.5,
        "cost_usd": None,
        "guard_events": [],
        "cited_doc_ids": [],
        "error": None,
    }
    base.update(kw)
    return base


def test_registry_is_complete() -> None:
    for name in (
        "recall_at_k", "mrr", "ndcg_at_k", "citation_recall", "latency_ms", "cost_usd",
        "guard_trips", "refusal", "tool_call_accuracy", "non_llm_context_recall",
        "non_llm_context_precision_with_reference", "non_llm_string_similarity", "rouge_score",
        "bleu_score", "exact_match", "string_presence", "semantic_similarity", "faithfulness",
        "response_relevancy", "context_precision", "factual_correctness", "tool_call_f1",
    ):  # fmt: skip
        assert name in METRICS
    assert METRICS["faithfulness"].needs == "judge"
    assert METRICS["semantic_similarity"].needs == "embeddings"
    assert not METRICS["latency_ms"].higher_is_better


def test_retrieval_metrics() -> None:
    case = _case(reference_doc_ids=["a.md", "b.md"])
    result = _result(doc_ids=["x.md", "a.md", "a.md", "y.md", "z.md", "b.md"])
    assert score_case("recall_at_k", case, result, options={"k": 5}) == 0.5
    assert score_case("recall_at_k", case, result, options={"k": 6}) == 1.0
    assert score_case("mrr", case, result) == 0.5
    ndcg = score_case("ndcg_at_k", case, result, options={"k": 3})
    assert ndcg is not None and 0.3 < ndcg < 0.5  # (1/log2 3) / (1 + 1/log2 3)
    perfect = _result(doc_ids=["a.md", "b.md"])
    assert score_case("ndcg_at_k", case, perfect, options={"k": 5}) == pytest.approx(1.0)
    assert score_case("mrr", case, _result(doc_ids=["q.md"])) == 0.0
    assert score_case("citation_recall", case, _result(cited_doc_ids=["b.md"])) == 0.5


def test_operational_metrics() -> None:
    case = _case()
    events = [
        {"point": "input", "name": "pii", "outcome": "fail"},
        {"point": "output", "name": "toxicity", "outcome": "pass"},
        {"point": "output", "name": "secrets", "outcome": "fail"},
    ]
    result = _result(latency_ms=42.0, cost_usd=0.002, guard_events=events)
    assert score_case("latency_ms", case, result) == 42.0
    assert score_case("cost_usd", case, result) == 0.002
    assert score_case("guard_trips", case, result) == 2.0
    assert score_case("cost_usd", case, _result()) is None
    assert skip_reason("cost_usd", case, _result()) == "the model's price is unknown"
    refusal = _result(output="I don't know: the documents I have do not answer this.")
    assert score_case("refusal", case, refusal) == 1.0
    assert score_case("refusal", case, _result(output="Refunds take 5 days.")) == 0.0


def test_tool_call_metrics() -> None:
    case = _case(expected_tool_calls=[{"name": "plan_price", "args": {"plan": "plus"}}])
    made = [
        {"name": "plan_price", "args": {"plan": "plus", "seats": 3}, "status": "ok"},
        {"name": "calculator", "args": {"expression": "1+1"}, "status": "ok"},
    ]
    assert score_case("tool_call_accuracy", case, _result(tool_calls=made[:1])) == 1.0
    assert score_case("tool_call_accuracy", case, _result(tool_calls=made)) == 0.5
    assert score_case("tool_call_accuracy", case, _result()) == 0.0
    exact = [{"name": "plan_price", "args": {"plan": "plus"}}]
    assert score_case("tool_call_f1", case, _result(tool_calls=exact)) == 1.0
    assert score_case("tool_call_f1", case, _result(tool_calls=made)) == 0.0
    assert score_case("tool_call_f1", _case(), _result()) is None  # no expected calls


def test_ragas_string_metrics_are_sane() -> None:
    ref = "Annual plans can be refunded in full within 30 days of purchase."
    case = _case(reference=ref)
    same = _result(output=ref)
    other = _result(output="Dark mode is under Settings, Appearance.")
    for name in ("non_llm_string_similarity", "rouge_score", "bleu_score", "exact_match"):
        hi, lo = score_case(name, case, same), score_case(name, case, other)
        assert hi == pytest.approx(1.0), name
        assert lo is not None and lo < 0.5, name
    assert score_case("string_presence", case, _result(output=f"Yes. {ref}")) == 1.0
    assert score_case("string_presence", case, other) == 0.0


def test_ragas_context_metrics() -> None:
    passage = "Annual plans can be refunded in full within 30 days of purchase."
    case = _case(reference_contexts=[passage])
    good = _result(contexts=[passage, "Dark mode is under Settings."])
    bad = _result(contexts=["Dark mode is under Settings, Appearance, Theme."])
    assert score_case("non_llm_context_recall", case, good) == 1.0
    assert score_case("non_llm_context_recall", case, bad) == 0.0
    assert score_case("non_llm_context_precision_with_reference", case, good) == pytest.approx(1.0)
    assert score_case("non_llm_context_precision_with_reference", case, bad) == pytest.approx(0.0)
    assert score_case("non_llm_context_recall", case, _result()) == 0.0  # nothing retrieved


def test_missing_needs_give_none_with_a_reason() -> None:
    case = _case()
    result = _result(output="Refunds take 5 days.", contexts=["Refunds take 5 days."])
    for name in ("faithfulness", "response_relevancy", "context_precision"):
        assert score_case(name, case, result) is None
    assert skip_reason("faithfulness", case, result) == NO_JUDGE
    assert skip_reason("rouge_score", case, result) == "the case has no reference"
    assert skip_reason("recall_at_k", case, result) == "the case has no reference_doc_ids"
    assert "judge" in str(skip_reason("faithfulness", case, result, judge=object()))
    assert skip_reason("semantic_similarity", _case(reference="x"), result) is not None
    assert skip_reason("mrr", case, _result(error="boom")) == "the case failed"


def test_semantic_similarity_on_keel_embedder(make_app: Callable[..., App], tmp_path: Path) -> None:
    embedder = make_app().embedder
    case = _case(reference="You can get your money back within 30 days of buying.")
    para = _result(output="Refunds are possible for thirty days after the purchase.")
    unrelated = _result(output="The mobile app supports dark mode on Android.")
    a = score_case("semantic_similarity", case, para, embedder=embedder)
    b = score_case("semantic_similarity", case, unrelated, embedder=embedder)
    assert a is not None and b is not None and a > b
    same = score_case(
        "semantic_similarity", case, _result(output=case.reference), embedder=embedder
    )
    assert same == pytest.approx(1.0, abs=1e-4)


def test_unknown_metric() -> None:
    with pytest.raises(KeyError):
        score_case("nope", _case(), _result())
