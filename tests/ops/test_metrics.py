"""Prometheus metrics: each call updates the documented series, in the registry given."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from keel.ops.metrics import CONTENT_TYPE, LABEL_MAX_CHARS, OVERFLOW_LABEL, Metrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_model_call(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.model_call("openai:gpt-4o", 0.8, 120, 30)
    metrics.model_call("openai:gpt-4o", 1.7, 80, 10)
    metrics.model_call("openai:gpt-4o", 2.0, 0, 0, error=True)
    m = {"model": "openai:gpt-4o"}
    assert value(registry, "keel_model_latency_seconds_count", **m) == 3
    assert value(registry, "keel_model_latency_seconds_sum", **m) == pytest.approx(4.5)
    assert value(registry, "keel_model_latency_seconds_bucket", le="1.0", **m) == 1
    assert value(registry, "keel_model_tokens_total", kind="input", **m) == 200
    assert value(registry, "keel_model_tokens_total", kind="output", **m) == 40
    assert value(registry, "keel_model_errors_total", **m) == 1


def test_tool_call(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.tool_call("lookup_order", "ok", 0.02)
    metrics.tool_call("lookup_order", "ok", 0.03)
    metrics.tool_call("lookup_order", "error", 0.5)
    assert value(registry, "keel_tool_calls_total", tool="lookup_order", status="ok") == 2
    assert value(registry, "keel_tool_calls_total", tool="lookup_order", status="error") == 1
    assert value(registry, "keel_tool_latency_seconds_count", tool="lookup_order") == 3
    assert value(registry, "keel_tool_latency_seconds_sum", tool="lookup_order") == pytest.approx(
        0.55
    )


def test_guard_decision(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.guard_decision("injection", "input", "fail")
    metrics.guard_decision("injection", "input", "fail")
    metrics.guard_decision("pii", "output", "pass")
    labels = {"validator": "injection", "point": "input", "outcome": "fail"}
    assert value(registry, "keel_guard_decisions_total", **labels) == 2
    assert (
        value(
            registry, "keel_guard_decisions_total", validator="pii", point="output", outcome="pass"
        )
        == 1
    )


def test_retrieval_counts_empty_results_and_observes_top_scores(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.retrieval(5, 0.0325)  # RRF: first in both lists
    metrics.retrieval(3, 0.82)  # cosine
    metrics.retrieval(0, None)
    assert value(registry, "keel_retrieval_requests_total") == 3
    assert value(registry, "keel_retrieval_empty_total") == 1
    assert value(registry, "keel_retrieval_top_score_count") == 2
    # buckets fine enough to tell RRF scores apart
    assert value(registry, "keel_retrieval_top_score_bucket", le="0.03") == 0
    assert value(registry, "keel_retrieval_top_score_bucket", le="0.035") == 1
    assert value(registry, "keel_retrieval_top_score_bucket", le="0.9") == 2
    assert value(registry, "keel_retrieval_top_score_bucket", le="1.0") == 2


def test_cost(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.cost("openai:gpt-4o-mini", 0.00025)
    metrics.cost("openai:gpt-4o-mini", 0.0005)
    metrics.cost("keel:extractive", 0.0)
    assert value(registry, "keel_cost_usd_total", model="openai:gpt-4o-mini") == pytest.approx(
        0.00075
    )
    assert registry.get_sample_value("keel_cost_usd_total", {"model": "keel:extractive"}) is None


def realistic_answer() -> dict[str, object]:
    """What ``Answer.to_dict()`` returns for a turn with retrieval, a tool and guards."""
    return {
        "text": "Order ORD-1 shipped on 3 May [1].",
        "thread_id": "t-1",
        "stop_reason": "done",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "citations": [{"n": 1, "doc_id": "d1", "chunk_id": "d1:0", "source": "docs/orders.md"}],
        "tool_calls": [
            {
                "id": "call_1",
                "name": "lookup_order",
                "args": {"order_id": "ORD-1"},
                "status": "ok",
                "content": "shipped",
                "error": None,
                "seconds": 0.012,
            },
            {
                "id": "call_2",
                "name": "refund",
                "args": {},
                "status": "refused",
                "content": "not allowed",
                "error": "scope",
                "seconds": 0.0,
            },
        ],
        "pending_approval": None,
        "usage": {"input_tokens": 420, "output_tokens": 37, "total_tokens": 457},
        "model": "openai:gpt-4o-mini",
        "events": [
            {
                "point": "input",
                "name": "injection",
                "outcome": "pass",
                "action": "exception",
                "latency_ms": 1.2,
                "reason": "",
            },
            {
                "point": "output",
                "name": "pii",
                "outcome": "fail",
                "action": "fix",
                "latency_ms": 0.4,
                "reason": "email",
            },
            {"note": "not a guard decision"},
        ],
        "hits": [
            {"doc_id": "d1", "chunk_id": "d1:0", "text": "ORD-1 shipped 3 May", "score": 0.0328},
            {"doc_id": "d2", "chunk_id": "d2:4", "text": "Refunds take 5 days", "score": 0.0161},
        ],
    }


def test_answer_records_everything_a_turn_shows(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.answer(realistic_answer(), 1.25)
    m = {"model": "openai:gpt-4o-mini"}
    assert value(registry, "keel_model_tokens_total", kind="input", **m) == 420
    assert value(registry, "keel_model_tokens_total", kind="output", **m) == 37
    # no per-call model timing in the answer: the turn time is not passed off as model time
    assert value(registry, "keel_model_latency_seconds_count", **m) == 0
    assert value(registry, "keel_tool_calls_total", tool="lookup_order", status="ok") == 1
    assert value(registry, "keel_tool_calls_total", tool="refund", status="refused") == 1
    assert value(registry, "keel_tool_latency_seconds_sum", tool="lookup_order") == 0.012
    g = "keel_guard_decisions_total"
    assert value(registry, g, validator="injection", point="input", outcome="pass") == 1
    assert value(registry, g, validator="pii", point="output", outcome="fail") == 1
    assert value(registry, "keel_retrieval_requests_total") == 1
    assert value(registry, "keel_retrieval_empty_total") == 0
    assert value(registry, "keel_retrieval_top_score_sum") == pytest.approx(0.0328)
    assert value(registry, "keel_turn_latency_seconds_count") == 1
    assert value(registry, "keel_turn_latency_seconds_sum") == 1.25
    assert value(registry, "keel_cost_usd_total", **m) == 0  # no cost in the answer


def test_answer_uses_model_seconds_and_cost_when_present(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    answer = {**realistic_answer(), "model_seconds": 0.9, "cost_usd": 0.0000852}
    metrics.answer(answer, 1.25)
    m = {"model": "openai:gpt-4o-mini"}
    assert value(registry, "keel_model_latency_seconds_sum", **m) == 0.9
    assert value(registry, "keel_cost_usd_total", **m) == pytest.approx(0.0000852)


def test_answer_without_retrieval_or_hits(metrics: Metrics, registry: CollectorRegistry) -> None:
    bare = {"text": "hi", "model": "keel:extractive", "usage": {}, "hits": []}
    metrics.answer(bare, 0.01)
    assert value(registry, "keel_retrieval_requests_total") == 1
    assert value(registry, "keel_retrieval_empty_total") == 1
    assert value(registry, "keel_retrieval_top_score_count") == 0
    metrics.answer(bare, 0.01, retrieved=False)  # an app with retrieval off
    assert value(registry, "keel_retrieval_requests_total") == 1
    assert value(registry, "keel_turn_latency_seconds_count") == 2
    metrics.answer({}, 0.01)  # nothing known: still counted, under "unknown"
    assert value(registry, "keel_turn_latency_seconds_count") == 3


def test_label_values_are_truncated_and_flattened(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    long_name = "t" * 200
    metrics.tool_call(long_name, "ok", 0.1)
    metrics.model_call("a\nb", 0.1, 1, 0)
    metrics.guard_decision("", "input", "pass")
    assert value(registry, "keel_tool_calls_total", tool="t" * LABEL_MAX_CHARS, status="ok") == 1
    assert value(registry, "keel_model_tokens_total", model="a b", kind="input") == 1
    assert (
        value(
            registry,
            "keel_guard_decisions_total",
            validator="unknown",
            point="input",
            outcome="pass",
        )
        == 1
    )


def test_label_cardinality_is_capped(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry, max_label_values=3)
    for i in range(10):  # a model inventing tool names
        metrics.tool_call(f"made_up_{i}", "unknown", 0.0)
    metrics.tool_call("made_up_0", "unknown", 0.0)  # an early value keeps its own series
    tools = {
        s.labels["tool"]
        for family in registry.collect()
        if family.name == "keel_tool_calls"
        for s in family.samples
        if s.name == "keel_tool_calls_total"
    }
    assert tools == {"made_up_0", "made_up_1", "made_up_2", OVERFLOW_LABEL}
    assert value(registry, "keel_tool_calls_total", tool=OVERFLOW_LABEL, status="unknown") == 7
    assert value(registry, "keel_tool_calls_total", tool="made_up_0", status="unknown") == 2


def test_two_apps_on_two_registries_do_not_clash() -> None:
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    m1, m2 = Metrics(r1), Metrics(r2)  # the same names twice: no "Duplicated timeseries"
    m1.cost("openai:gpt-4o", 1.0)
    m2.cost("openai:gpt-4o", 2.0)
    assert value(r1, "keel_cost_usd_total", model="openai:gpt-4o") == 1.0
    assert value(r2, "keel_cost_usd_total", model="openai:gpt-4o") == 2.0
    with pytest.raises(ValueError):
        Metrics(r1)  # the same registry twice is a programming error


def test_render_is_prometheus_text(metrics: Metrics) -> None:
    metrics.retrieval(0, None)
    text = metrics.render().decode()
    assert "# TYPE keel_retrieval_empty_total counter" in text
    assert "keel_retrieval_empty_total 1.0" in text
    assert "# TYPE keel_turn_latency_seconds histogram" in text
    assert CONTENT_TYPE.startswith("text/plain")


def test_every_documented_name_is_registered(metrics: Metrics) -> None:
    import keel.ops.metrics as module

    names = {
        "keel_model_latency_seconds",
        "keel_model_tokens_total",
        "keel_model_errors_total",
        "keel_tool_calls_total",
        "keel_tool_latency_seconds",
        "keel_guard_decisions_total",
        "keel_retrieval_requests_total",
        "keel_retrieval_empty_total",
        "keel_retrieval_top_score",
        "keel_cost_usd_total",
        "keel_turn_latency_seconds",
    }
    text = metrics.render().decode()
    assert module.__doc__ is not None
    for name in names:
        assert f"``{name}``" in module.__doc__, name
        base = name.removesuffix("_total")
        assert f"# TYPE {base}" in text, name
