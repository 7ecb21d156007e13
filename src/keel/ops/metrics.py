"""Prometheus metrics of a keel app, in a registry the app owns (never the global one).

The names are a contract (dashboards and alerts depend on them):

==================================  =========  ===========================  =====================
name                                type       labels                       what
==================================  =========  ===========================  =====================
``keel_model_latency_seconds``      histogram  ``model``                    one model call
``keel_model_tokens_total``         counter    ``model``, ``kind``          tokens, ``kind`` is
                                                                            ``input``/``output``
``keel_model_errors_total``         counter    ``model``                    failed model calls
``keel_tool_calls_total``           counter    ``tool``, ``status``         tool calls by outcome
``keel_tool_latency_seconds``       histogram  ``tool``                     one tool call
``keel_guard_decisions_total``      counter    ``validator``, ``point``,    guard decisions
                                               ``outcome``
``keel_retrieval_requests_total``   counter                                 retrievals
``keel_retrieval_empty_total``      counter                                 retrievals with no hit
``keel_retrieval_top_score``        histogram                               best hit's score
``keel_cost_usd_total``             counter    ``model``                    USD spent
``keel_turn_latency_seconds``       histogram                               one whole turn
``keel_cache_requests_total``       counter    ``result``                   semantic cache
                                                                            lookups, ``result``
                                                                            is ``hit``/``miss``
``keel_release_requests_total``     counter    ``release``, ``outcome``     turns per release:
                                                                            ``ok``, ``error``,
                                                                            ``guard_tripped``
``keel_release_feedback_total``     counter    ``release``, ``rating``      feedback per release
``keel_release_traffic_weight``     gauge      ``release``, ``role``        serving share
``keel_release_rollbacks_total``    counter    ``release``                  automatic rollbacks
``keel_drift``                      gauge      ``measure``                  the last drift check
==================================  =========  ===========================  =====================

The cache hit rate is ``keel_cache_requests_total{result="hit"}`` over the sum of both
results; turns the cache does not consult (cache off, follow-up turns) count in neither. A
cache hit records no model latency and no retrieval (neither ran).

The empty-result rate is ``keel_retrieval_empty_total / keel_retrieval_requests_total``. The
top-score buckets resolve RRF scores (hybrid mode with ``fusion = "rrf"``: about 0.016 for a
first rank in one list, 0.033 in both with ``rrf_k = 60``), convex fusion scores (0..1) and
cosine similarities (dense mode, 0..1); BM25 scores above 1 land in ``+Inf``.

Label values are bounded: they are names from the configuration (model ids, tool and
validator names, hook points, statuses), never user text; each is cut to 64 characters, and a
label that has already seen ``max_label_values`` distinct values records further ones as
``_other`` (a model that invents tool names cannot blow up the series count).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "LABEL_MAX_CHARS", "OVERFLOW_LABEL", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
LABEL_MAX_CHARS = 64
OVERFLOW_LABEL = "_other"
UNKNOWN_LABEL = "unknown"

MODEL_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TOOL_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TURN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOP_SCORE_BUCKETS = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
)


def _clean(value: object) -> str:
    text = " ".join(str(value).split())  # no newlines or control whitespace
    return text[:LABEL_MAX_CHARS] or UNKNOWN_LABEL


class _Bounded:
    """Distinct values per label dimension, capped; later newcomers become ``_other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str, set[str]] = {}
        self.lock = threading.Lock()

    def __call__(self, dimension: str, value: object) -> str:
        text = _clean(value)
        with self.lock:
            seen = self.seen.setdefault(dimension, set())
            if text in seen:
                return text
            if len(seen) >= self.limit:
                return OVERFLOW_LABEL
            seen.add(text)
            return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Metrics:
    """Keel's metrics, registered in ``registry``.

    ``max_label_values`` caps the distinct values of each label dimension (model, tool,
    status, validator, point, outcome).
    """

    def __init__(self, registry: CollectorRegistry, *, max_label_values: int = 200) -> None:
        self.registry = registry
        self._label = _Bounded(max_label_values)
        r = registry
        self.model_latency = Histogram(
            "keel_model_latency_seconds",
            "Latency of one model call.",
            ["model"],
            buckets=MODEL_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_tokens = Counter(
            "keel_model_tokens_total", "Model tokens by kind.", ["model", "kind"], registry=r
        )
        self.model_errors = Counter(
            "keel_model_errors_total", "Failed model calls.", ["model"], registry=r
        )
        self.tool_calls = Counter(
            "keel_tool_calls_total", "Tool calls by status.", ["tool", "status"], registry=r
        )
        self.tool_latency = Histogram(
            "keel_tool_latency_seconds",
            "Latency of one tool call.",
            ["tool"],
            buckets=TOOL_LATENCY_BUCKETS,
            registry=r,
        )
        self.guard_decisions = Counter(
            "keel_guard_decisions_total",
            "Guard decisions by validator, hook point and outcome.",
            ["validator", "point", "outcome"],
            registry=r,
        )
        self.retrieval_requests = Counter(
            "keel_retrieval_requests_total", "Retrievals.", registry=r
        )
        self.retrieval_empty = Counter(
            "keel_retrieval_empty_total", "Retrievals that found nothing.", registry=r
        )
        self.retrieval_top_score = Histogram(
            "keel_retrieval_top_score",
            "Score of the best hit of a retrieval (fused, cosine or BM25 by mode).",
            buckets=TOP_SCORE_BUCKETS,
            registry=r,
        )
        self.cost_usd = Counter("keel_cost_usd_total", "Model cost in USD.", ["model"], registry=r)
        self.turn_latency = Histogram(
            "keel_turn_latency_seconds",
            "Wall time of one turn.",
            buckets=TURN_LATENCY_BUCKETS,
            registry=r,
        )
        self.release_requests = Counter(
            "keel_release_requests_total",
            "Turns by the release that served them and their outcome (ok, error, "
            "guard_tripped); release 'disk' is the app on disk, served while none is deployed.",
            ["release", "outcome"],
            registry=r,
        )
        self.release_feedback = Counter(
            "keel_release_feedback_total",
            "Human feedback by release and rating (positive, negative).",
            ["release", "rating"],
            registry=r,
        )
        self.release_weight = Gauge(
            "keel_release_traffic_weight",
            "Share of threads each serving release gets (role: stable, canary).",
            ["release", "role"],
            registry=r,
        )
        self.rollbacks = Counter(
            "keel_release_rollbacks_total",
            "Canaries rolled back automatically.",
            ["release"],
            registry=r,
        )
        self.drift = Gauge(
            "keel_drift",
            "The last drift check (`keel monitor drift`): mean_shift, mmd, mmd_p_value, "
            "top_score_ks, top_score_p_value, ood_rate, refusal_rate_change, alert (0/1), "
            "age_seconds.",
            ["measure"],
            registry=r,
        )
        self.cache_requests = Counter(
            "keel_cache_requests_total",
            "Semantic cache lookups by result (hit or miss).",
            ["result"],
            registry=r,
        )

    # -- what other parts call ---------------------------------------------------------------
    def model_call(
        self,
        model: str,
        seconds: float,
        input_tokens: int,
        output_tokens: int,
        error: bool = False,
    ) -> None:
        """One model call: its latency, tokens and whether it failed."""
        name = self._label("model", model)
        self.model_latency.labels(model=name).observe(max(0.0, seconds))
        self._tokens(name, input_tokens, output_tokens)
        if error:
            self.model_errors.labels(model=name).inc()

    def model_errors_of(self, attempts: Iterable[tuple[str, str]]) -> None:
        """The failed calls of a turn that ended in :class:`~keel.errors.ModelError` (its
        ``attempts``: ``(model id, error)``); their latency is not known, so only the error
        counter moves."""
        for model, _ in attempts:
            self.model_errors.labels(model=self._label("model", model)).inc()

    def tool_call(self, tool: str, status: str, seconds: float) -> None:
        """One tool call with its status (``ok``, ``error``, ``refused``, ...)."""
        name = self._label("tool", tool)
        self.tool_calls.labels(tool=name, status=self._label("status", status)).inc()
        self.tool_latency.labels(tool=name).observe(max(0.0, seconds))

    def guard_decision(self, validator: str, point: str, outcome: str) -> None:
        """One guard decision at a hook point."""
        self.guard_decisions.labels(
            validator=self._label("validator", validator),
            point=self._label("point", point),
            outcome=self._label("outcome", outcome),
        ).inc()

    def retrieval(self, hits: int, top_score: float | None) -> None:
        """One retrieval: how many hits and the best score (``None`` when there is none)."""
        self.retrieval_requests.inc()
        if hits <= 0:
            self.retrieval_empty.inc()
        if top_score is not None and hits > 0:
            self.retrieval_top_score.observe(top_score)

    def cost(self, model: str, usd: float) -> None:
        """USD spent on ``model`` (0 and negative amounts are ignored)."""
        if usd > 0:
            self.cost_usd.labels(model=self._label("model", model)).inc(usd)

    def answer(self, answer: Mapping[str, Any], seconds: float, *, retrieved: bool = True) -> None:
        """Everything one turn shows: ``answer`` is ``Answer.to_dict()``, ``seconds`` its wall time.

        Records each model call of ``model_calls`` (its latency, tokens and whether it failed:
        a retry or a fallback counts as a failed call of its model); an answer without them
        (recorded by an older Keel) records its tokens (``usage``, under ``answer["model"]``)
        and ``model_seconds`` instead; each
        tool call (``name``, ``status``, ``seconds``); each guard event (``name``, ``point``,
        ``outcome``); the retrieval (``len(hits)``, best hit score) unless ``retrieved`` is
        false (an app with retrieval off); ``cost_usd`` when present; and the turn latency.
        A semantic cache lookup (``cache``) counts as a hit or a miss; a hit (``cache_hit``)
        records no model latency and no retrieval.
        """
        model = str(answer.get("model") or UNKNOWN_LABEL)
        usage = answer.get("usage") or {}
        cache = answer.get("cache")
        hit = answer.get("cache_hit") is True
        if isinstance(cache, Mapping):
            self.cache_requests.labels(result="hit" if hit else "miss").inc()
        calls = list(_dicts(answer.get("model_calls")))
        for call in calls:
            self.model_call(
                str(call.get("model") or UNKNOWN_LABEL),
                _number(call.get("seconds")) or 0.0,
                int(call.get("input_tokens", 0) or 0),
                int(call.get("output_tokens", 0) or 0),
                error=bool(call.get("error")),
            )
        if not calls:
            model_seconds = _number(answer.get("model_seconds"))
            if model_seconds is not None and not hit:
                self.model_latency.labels(model=self._label("model", model)).observe(
                    max(0.0, model_seconds)
                )
            self._tokens(
                self._label("model", model),
                int(usage.get("input_tokens", 0) or 0),
                int(usage.get("output_tokens", 0) or 0),
            )
        for call in _dicts(answer.get("tool_calls")):
            self.tool_call(
                str(call.get("name") or UNKNOWN_LABEL),
                str(call.get("status") or UNKNOWN_LABEL),
                _number(call.get("seconds")) or 0.0,
            )
        for event in _dicts(answer.get("events")):
            if "point" in event and "outcome" in event:
                self.guard_decision(
                    str(event.get("name") or UNKNOWN_LABEL),
                    str(event["point"]),
                    str(event["outcome"]),
                )
        if retrieved and not hit:
            hits = list(_dicts(answer.get("hits")))
            scores = [s for s in (_number(h.get("score")) for h in hits) if s is not None]
            self.retrieval(len(hits), max(scores) if scores else None)
        usd = _number(answer.get("cost_usd"))
        if usd is not None:
            self.cost(model, usd)
        self.turn_latency.observe(max(0.0, seconds))

    def release_request(self, release: str | None, outcome: str) -> None:
        """One turn served by ``release`` (None: the app on disk) with its outcome."""
        self.release_requests.labels(
            release=self._label("release", release or "disk"),
            outcome=self._label("outcome", outcome),
        ).inc()

    def feedback(self, release: str | None, score: float) -> None:
        """One feedback score (0..1; below 0.5 is negative) on a turn of ``release``."""
        rating = "negative" if score < 0.5 else "positive"
        self.release_feedback.labels(
            release=self._label("release", release or "disk"), rating=rating
        ).inc()

    def deployment(self, state: Mapping[str, Any]) -> None:
        """Which releases serve, with their traffic shares."""
        self.release_weight.clear()
        weight = float(state.get("weight") or 0.0)
        if state.get("stable"):
            self.release_weight.labels(release=str(state["stable"]), role="stable").set(
                1.0 - weight if state.get("canary") else 1.0
            )
        if state.get("canary"):
            self.release_weight.labels(release=str(state["canary"]), role="canary").set(weight)

    def rollback(self, release: str) -> None:
        self.rollbacks.labels(release=self._label("release", release)).inc()

    def drift_check(self, check: Mapping[str, Any] | None) -> None:
        """The figures of the last stored drift check (nothing when there was none)."""
        self.drift.clear()
        if not check:
            return
        for measure in (
            "mean_shift",
            "mmd",
            "mmd_p_value",
            "top_score_ks",
            "top_score_p_value",
            "ood_rate",
            "refusal_rate_change",
            "age_seconds",
        ):
            value = _number(check.get(measure))
            if value is not None:
                self.drift.labels(measure=measure).set(value)
        self.drift.labels(measure="alert").set(1.0 if check.get("alert") else 0.0)

    # -- exposition --------------------------------------------------------------------------
    def render(self) -> bytes:
        """The registry in the Prometheus text format (serve with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def _tokens(self, model_label: str, input_tokens: int, output_tokens: int) -> None:
        if input_tokens > 0:
            self.model_tokens.labels(model=model_label, kind="input").inc(input_tokens)
        if output_tokens > 0:
            self.model_tokens.labels(model=model_label, kind="output").inc(output_tokens)


def _dicts(value: Any) -> Iterable[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return ()
    return (item for item in value if isinstance(item, Mapping))
