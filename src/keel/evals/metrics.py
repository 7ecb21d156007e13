"""The metrics a suite can name: keel's own and RAGAS's, in one registry.

:data:`METRICS` maps a name to its :class:`MetricSpec`: what it needs (``none``, an embedding
model, or a ``judge`` model), which case fields it needs (a reference answer, reference
contexts, reference document ids, expected tool calls), and whether higher is better.
:func:`ascore_case` / :func:`score_case` score one case's result; a metric whose needs are
not met returns ``None`` and :func:`skip_reason` says why (the runner records it: a metric is
never scored silently).

RAGAS metrics are the ``ragas.metrics.collections`` classes called with their ``ascore``
keyword arguments; ``non_llm_context_recall`` and ``non_llm_context_precision_with_reference``
are single-turn metrics scored on a ``SingleTurnSample``. ``semantic_similarity`` runs RAGAS's
``SemanticSimilarity`` on keel's own embedder, wrapped as a RAGAS embeddings object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from keel.ops.refusal import is_refusal
from keel.settings import offline_defaults

# RAGAS_DO_NOT_TRACK (and the Hugging Face switches) before ragas is first imported.
offline_defaults()

if TYPE_CHECKING:
    from keel.evals.datasets import Case
    from keel.rag.embeddings import Embedder

Needs = Literal["none", "embeddings", "judge"]
NO_JUDGE = "needs a judge model; none configured (set `judge:` in the suite)"
NO_EMBEDDER = "needs an embedding model; none available"


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is and what it needs."""

    name: str
    needs: Needs
    higher_is_better: bool
    description: str
    requires: tuple[str, ...] = ()
    """Case fields that must be set: reference, reference_contexts, reference_doc_ids,
    expected_tool_calls."""
    options: tuple[str, ...] = ()
    """Options the suite may set for this metric (besides ``threshold``)."""
    source: Literal["keel", "ragas"] = "keel"


def _spec(
    name: str,
    needs: Needs,
    higher: bool,
    description: str,
    requires: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    source: Literal["keel", "ragas"] = "keel",
) -> tuple[str, MetricSpec]:
    return name, MetricSpec(name, needs, higher, description, requires, options, source)


_REF = ("reference",)
_CTX = ("reference_contexts",)
_IDS = ("reference_doc_ids",)
_TOOLS = ("expected_tool_calls",)

METRICS: dict[str, MetricSpec] = dict(
    [
        # keel's own, no model needed
        _spec(
            "recall_at_k",
            "none",
            True,
            "Share of the reference documents among the top k retrieved chunks' documents.",
            _IDS,
            ("k",),
        ),
        _spec(
            "mrr",
            "none",
            True,
            "1 / rank of the first retrieved chunk from a reference document (0 if none).",
            _IDS,
        ),
        _spec(
            "ndcg_at_k",
            "none",
            True,
            "nDCG of the top k retrieved chunks, a reference document relevant once.",
            _IDS,
            ("k",),
        ),
        _spec(
            "citation_recall",
            "none",
            True,
            "Share of the reference documents the answer cites.",
            _IDS,
        ),
        _spec("latency_ms", "none", False, "Wall time of the turn in milliseconds."),
        _spec(
            "cost_usd",
            "none",
            False,
            "Cost of the turn in US dollars (skipped when the price is unknown).",
        ),
        _spec("guard_trips", "none", False, "Guard decisions with outcome 'fail' during the turn."),
        _spec("refusal", "none", False, '1.0 when the answer is an "I don\'t know" refusal.'),
        _spec(
            "tool_call_accuracy",
            "none",
            True,
            "Expected tool calls made in order, with matching arguments, over max(expected, made).",
            _TOOLS,
        ),
        # RAGAS, no model needed
        _spec(
            "non_llm_context_recall",
            "none",
            True,
            "RAGAS NonLLMContextRecall: reference contexts found among the retrieved ones.",
            _CTX,
            ("threshold_similarity",),
            "ragas",
        ),
        _spec(
            "non_llm_context_precision_with_reference",
            "none",
            True,
            "RAGAS NonLLMContextPrecisionWithReference: rank-weighted context precision.",
            _CTX,
            ("threshold_similarity",),
            "ragas",
        ),
        _spec(
            "non_llm_string_similarity",
            "none",
            True,
            "RAGAS NonLLMStringSimilarity (1 - normalized Levenshtein by default).",
            _REF,
            ("distance_measure",),
            "ragas",
        ),
        _spec(
            "rouge_score",
            "none",
            True,
            "RAGAS RougeScore (rougeL F-measure by default).",
            _REF,
            ("rouge_type", "mode"),
            "ragas",
        ),
        _spec("bleu_score", "none", True, "RAGAS BleuScore (sacrebleu).", _REF, (), "ragas"),
        _spec(
            "exact_match",
            "none",
            True,
            "RAGAS ExactMatch: the answer equals the reference.",
            _REF,
            (),
            "ragas",
        ),
        _spec(
            "string_presence",
            "none",
            True,
            "RAGAS StringPresence: the reference occurs in the answer.",
            _REF,
            (),
            "ragas",
        ),
        _spec(
            "tool_call_f1",
            "none",
            True,
            "RAGAS ToolCallF1: set F1 of (name, args) of made vs expected tool calls.",
            _TOOLS,
            (),
            "ragas",
        ),
        # RAGAS, embeddings
        _spec(
            "semantic_similarity",
            "embeddings",
            True,
            "RAGAS SemanticSimilarity on keel's embedder: cosine of answer and reference.",
            _REF,
            (),
            "ragas",
        ),
        # RAGAS, judge model
        _spec(
            "faithfulness",
            "judge",
            True,
            "RAGAS Faithfulness: claims of the answer supported by the retrieved contexts.",
            (),
            (),
            "ragas",
        ),
        _spec(
            "response_relevancy",
            "judge",
            True,
            "RAGAS AnswerRelevancy: questions generated from the answer match the input.",
            (),
            (),
            "ragas",
        ),
        _spec(
            "context_precision",
            "judge",
            True,
            "RAGAS ContextPrecision (with reference): useful contexts ranked first.",
            _REF,
            (),
            "ragas",
        ),
        _spec(
            "factual_correctness",
            "judge",
            True,
            "RAGAS FactualCorrectness: claims of the answer vs the reference (F1).",
            _REF,
            ("mode",),
            "ragas",
        ),
    ]
)


# -- reading a result ------------------------------------------------------------------------
def _get(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, Mapping):
        return result.get(name, default)
    return getattr(result, name, default)


def _case_field(case: Case, name: str) -> Any:
    return getattr(case, name)


def not_applicable(reason: str) -> bool:
    """Whether a :func:`skip_reason` says the metric does not apply to the case (it has no
    reference for it, or the case itself failed), rather than that it could not be computed
    (no judge, a judge that is not usable, no embedding model, an unknown price)."""
    return reason == "the case failed" or reason.startswith("the case has no ")


def skip_reason(
    name: str, case: Case, result: Any, *, embedder: Any = None, judge: Any = None
) -> str | None:
    """Why ``name`` cannot score this case (``None``: it can)."""
    spec = METRICS.get(name)
    if spec is None:
        return f"unknown metric {name!r}"
    if _get(result, "error"):
        return "the case failed"
    if spec.needs == "judge" and judge is None:
        return NO_JUDGE
    if spec.needs == "judge" and not _is_ragas_llm(judge):
        return (
            f"the judge ({type(judge).__name__}) is not a RAGAS InstructorLLM, which RAGAS "
            "judge metrics need"
        )
    if (spec.needs == "embeddings" or name == "response_relevancy") and embedder is None:
        return NO_EMBEDDER
    for required in spec.requires:
        if not _case_field(case, required):
            return f"the case has no {required}"
    if name == "cost_usd" and _get(result, "cost_usd") is None:
        return "the model's price is unknown"
    return None


def _is_ragas_llm(judge: Any) -> bool:
    with _quiet():
        from ragas.llms.base import InstructorBaseRagasLLM

    return isinstance(judge, InstructorBaseRagasLLM)


class _quiet(warnings.catch_warnings):
    """RAGAS deprecation and runtime warnings, kept out of the caller's warning filters."""

    def __enter__(self) -> None:
        super().__enter__()
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)


# -- keel's own metrics ----------------------------------------------------------------------
def _k(options: Mapping[str, Any]) -> int:
    k = options.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    return k


def recall_at_k(doc_ids: list[str], reference: list[str], k: int) -> float:
    top = set(doc_ids[:k])
    refs = set(reference)
    return len(refs & top) / len(refs)


def mrr(doc_ids: list[str], reference: list[str]) -> float:
    refs = set(reference)
    for rank, doc in enumerate(doc_ids, start=1):
        if doc in refs:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(doc_ids: list[str], reference: list[str], k: int) -> float:
    refs = set(reference)
    seen: set[str] = set()
    dcg = 0.0
    for i, doc in enumerate(doc_ids[:k], start=1):
        if doc in refs and doc not in seen:
            seen.add(doc)
            dcg += 1.0 / math.log2(i + 1)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(refs), k) + 1))
    return dcg / ideal


def _args_match(expected: Mapping[str, Any], made: Mapping[str, Any]) -> bool:
    return all(k in made and made[k] == v for k, v in expected.items())


def tool_call_accuracy(expected: list[dict[str, Any]], made: list[dict[str, Any]]) -> float:
    """Expected calls matched in order (name equal, expected args a subset of the made ones)
    by distinct made calls, over max(len(expected), len(made))."""
    if not expected and not made:
        return 1.0
    matched, position = 0, 0
    for call in expected:
        for j in range(position, len(made)):
            if made[j].get("name") == call.get("name") and _args_match(
                call.get("args") or {}, made[j].get("args") or {}
            ):
                matched += 1
                position = j + 1
                break
    return matched / max(len(expected), len(made))


def _keel_score(name: str, case: Case, result: Any, options: Mapping[str, Any]) -> float:
    doc_ids = list(_get(result, "doc_ids", []) or [])
    if name == "recall_at_k":
        return recall_at_k(doc_ids, case.reference_doc_ids, _k(options))
    if name == "mrr":
        return mrr(doc_ids, case.reference_doc_ids)
    if name == "ndcg_at_k":
        return ndcg_at_k(doc_ids, case.reference_doc_ids, _k(options))
    if name == "citation_recall":
        cited = set(_get(result, "cited_doc_ids", []) or [])
        refs = set(case.reference_doc_ids)
        return len(refs & cited) / len(refs)
    if name == "latency_ms":
        return float(_get(result, "latency_ms", 0.0))
    if name == "cost_usd":
        return float(_get(result, "cost_usd"))
    if name == "guard_trips":
        events = _get(result, "guard_events", []) or []
        return float(sum(1 for e in events if e.get("outcome") == "fail"))
    if name == "refusal":
        return 1.0 if is_refusal(str(_get(result, "output", ""))) else 0.0
    if name == "tool_call_accuracy":
        return tool_call_accuracy(case.expected_tool_calls, list(_get(result, "tool_calls", [])))
    raise KeyError(name)


# -- RAGAS -----------------------------------------------------------------------------------
def keel_ragas_embeddings(embedder: Embedder) -> Any:
    """Keel's :class:`~keel.rag.embeddings.Embedder` as a RAGAS embeddings object."""
    with _quiet():
        from ragas.embeddings.base import BaseRagasEmbedding

    class KeelRagasEmbeddings(BaseRagasEmbedding):
        def __init__(self, inner: Embedder) -> None:
            super().__init__()
            self.inner = inner

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return [float(x) for x in self.inner.encode([text])[0]]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return await asyncio.to_thread(self.embed_text, text)

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return [[float(x) for x in row] for row in self.inner.encode(texts)]

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return await asyncio.to_thread(self.embed_texts, texts)

    return KeelRagasEmbeddings(embedder)


_instances: dict[tuple[Any, ...], Any] = {}
_instances_lock = threading.Lock()


def _instance(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    with _instances_lock:
        if key not in _instances:
            with _quiet():
                _instances[key] = make()
        return _instances[key]


def _ragas_metric(name: str, options: Mapping[str, Any], embedder: Any, judge: Any) -> Any:
    with _quiet():
        from ragas.metrics import collections as rc
        from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
        from ragas.metrics._context_recall import NonLLMContextRecall

    if name == "non_llm_context_recall":
        t = float(options.get("threshold_similarity", 0.5))
        return _instance((name, t), lambda: NonLLMContextRecall(threshold=t))
    if name == "non_llm_context_precision_with_reference":
        t = float(options.get("threshold_similarity", 0.5))
        return _instance((name, t), lambda: NonLLMContextPrecisionWithReference(threshold=t))
    if name == "non_llm_string_similarity":
        measure = str(options.get("distance_measure", "levenshtein")).lower()
        dm = rc.DistanceMeasure(measure)
        return _instance((name, measure), lambda: rc.NonLLMStringSimilarity(distance_measure=dm))
    if name == "rouge_score":
        rt, mode = options.get("rouge_type", "rougeL"), options.get("mode", "fmeasure")
        return _instance((name, rt, mode), lambda: rc.RougeScore(rouge_type=rt, mode=mode))
    if name == "bleu_score":
        return _instance((name,), rc.BleuScore)
    if name == "exact_match":
        return _instance((name,), rc.ExactMatch)
    if name == "string_presence":
        return _instance((name,), rc.StringPresence)
    if name == "tool_call_f1":
        return _instance((name,), rc.ToolCallF1)
    if name == "semantic_similarity":
        return _instance(
            (name, id(embedder)),
            lambda: rc.SemanticSimilarity(embeddings=keel_ragas_embeddings(embedder)),
        )
    if name == "faithfulness":
        return _instance((name, id(judge)), lambda: rc.Faithfulness(llm=judge))
    if name == "response_relevancy":
        return _instance(
            (name, id(judge), id(embedder)),
            lambda: rc.AnswerRelevancy(llm=judge, embeddings=keel_ragas_embeddings(embedder)),
        )
    if name == "context_precision":
        return _instance((name, id(judge)), lambda: rc.ContextPrecision(llm=judge))
    if name == "factual_correctness":
        mode = options.get("mode", "f1")
        return _instance(
            (name, id(judge), mode), lambda: rc.FactualCorrectness(llm=judge, mode=mode)
        )
    raise KeyError(name)


_REFERENCE_VS_RESPONSE = frozenset(
    {
        "non_llm_string_similarity",
        "rouge_score",
        "bleu_score",
        "exact_match",
        "string_presence",
        "semantic_similarity",
    }
)


async def _ragas_score(
    name: str,
    case: Case,
    result: Any,
    options: Mapping[str, Any],
    embedder: Any,
    judge: Any,
) -> float:
    metric = _ragas_metric(name, options, embedder, judge)
    output = str(_get(result, "output", "") or "")
    contexts = [str(c) for c in (_get(result, "contexts", []) or [])]
    reference = case.reference or ""
    with _quiet():
        if name in ("non_llm_context_recall", "non_llm_context_precision_with_reference"):
            from ragas import SingleTurnSample

            if not contexts:
                return 0.0
            sample = SingleTurnSample(
                retrieved_contexts=contexts, reference_contexts=list(case.reference_contexts)
            )
            value: Any = await metric.single_turn_ascore(sample)
            return float(value)
        if name == "tool_call_f1":
            from ragas.messages import AIMessage, HumanMessage, ToolCall

            made = [
                ToolCall(name=str(c.get("name")), args=dict(c.get("args") or {}))
                for c in (_get(result, "tool_calls", []) or [])
            ]
            expected = [
                ToolCall(name=str(c["name"]), args=dict(c.get("args") or {}))
                for c in case.expected_tool_calls
            ]
            messages: list[Any] = [HumanMessage(content=case.input)]
            if made:
                messages.append(AIMessage(content="", tool_calls=made))
            res = await metric.ascore(user_input=messages, reference_tool_calls=expected)
        elif name in _REFERENCE_VS_RESPONSE:
            res = await metric.ascore(reference=reference, response=output)
        elif name == "faithfulness":
            res = await metric.ascore(
                user_input=case.input, response=output, retrieved_contexts=contexts
            )
        elif name == "response_relevancy":
            res = await metric.ascore(user_input=case.input, response=output)
        elif name == "context_precision":
            res = await metric.ascore(
                user_input=case.input, reference=reference, retrieved_contexts=contexts
            )
        elif name == "factual_correctness":
            res = await metric.ascore(response=output, reference=reference)
        else:
            raise KeyError(name)
    return float(res.value)


# -- entry points ----------------------------------------------------------------------------
async def ascore_case(
    name: str,
    case: Case,
    result: Any,
    *,
    options: Mapping[str, Any] | None = None,
    embedder: Any = None,
    judge: Any = None,
) -> float | None:
    """The score of metric ``name`` for one case's result (a ``CaseResult`` or a mapping with
    its fields), or ``None`` when the metric's needs are not met (see :func:`skip_reason`)."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}")
    if skip_reason(name, case, result, embedder=embedder, judge=judge) is not None:
        return None
    opts = dict(options or {})
    if METRICS[name].source == "keel":
        value = _keel_score(name, case, result, opts)
    else:
        value = await _ragas_score(name, case, result, opts, embedder, judge)
    if not math.isfinite(value):
        return None
    return min(value, 1.0) if value > 1.0 and name not in _UNBOUNDED else value


_UNBOUNDED = frozenset({"latency_ms", "cost_usd", "guard_trips"})


def score_case(
    name: str,
    case: Case,
    result: Any,
    *,
    options: Mapping[str, Any] | None = None,
    embedder: Any = None,
    judge: Any = None,
) -> float | None:
    """:func:`ascore_case`, from synchronous code (also inside a running event loop)."""

    def run() -> float | None:
        return asyncio.run(
            ascore_case(name, case, result, options=options, embedder=embedder, judge=judge)
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


__all__ = [
    "METRICS",
    "NO_EMBEDDER",
    "NO_JUDGE",
    "MetricSpec",
    "ascore_case",
    "is_refusal",
    "keel_ragas_embeddings",
    "mrr",
    "ndcg_at_k",
    "recall_at_k",
    "score_case",
    "skip_reason",
    "tool_call_accuracy",
]
