"""Running a suite: every case (× repeats) through the app, then every metric, then the
aggregates (mean and a 95% bootstrap confidence interval over cases).

Cases run concurrently, at most ``suite.concurrency`` at once, in worker threads that each
take the next case as soon as they finish one (:mod:`keel.evals._pool`; ``App.ask`` is
synchronous), each attempt with a timeout and ``suite.retries`` retries. A case that still
fails is recorded with its ``error`` and ``None`` scores, and the run goes on. Every case
runs in its own thread of conversation and keeps the trace id of its turn: an ephemeral turn
(``App.ask(..., ephemeral=True)``), traced but not checkpointed nor recorded in the thread
index, since a case is never continued (durable SQLite checkpoints, serialised across the
runner's threads, cost more than the turn). A metric that cannot score a case (no judge
configured, no reference on the case) is left out of that case and the reason is recorded in
``RunResult.skipped_metrics``: nothing is scored silently.

A timed-out ``App.ask`` cannot be interrupted: its worker thread finishes in the background,
its answer dropped, while a fresh worker takes its place and the case is retried or recorded
as failed. With ``concurrency_gc_freeze`` (or ``gc_freeze=True``), the garbage collector
leaves alone what existed before the run while the cases run (:func:`_young_collections`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.evals._pool import run_jobs
from keel.evals.datasets import Case, load_dataset
from keel.evals.metrics import METRICS, NO_JUDGE, ascore_case, not_applicable, skip_reason
from keel.evals.suites import Suite, load_suite

if TYPE_CHECKING:
    from keel.agents.answer import Answer
    from keel.app import App

Progress = Callable[[int, int], None]
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass
class CaseResult:
    """One case × repeat: what the app did and the scores it got."""

    case_id: str
    repeat: int
    input: str
    output: str
    contexts: list[str]
    doc_ids: list[str]
    tool_calls: list[dict[str, Any]]
    trace_id: str
    latency_ms: float
    cost_usd: float | None
    guard_events: list[dict[str, Any]]
    scores: dict[str, float | None]
    error: str | None = None
    cited_doc_ids: list[str] = field(default_factory=list)
    stop_reason: str = ""
    thread_id: str = ""
    attempts: int = 1
    model: str = ""
    usage: dict[str, int] = field(default_factory=dict)  # the model's tokens ({}: unknown)
    score_errors: dict[str, str] = field(default_factory=dict)
    """Metric -> why it could not be computed for this case (a judge that failed or is
    missing): counted against the gate unless the suite allows it (``allow_skipped``)."""


@dataclass
class RunResult:
    """A whole run: every case result, the aggregates per metric and the skipped metrics."""

    suite: str
    dataset_version: str
    app_version: str
    model: str
    started_at: str
    cases: list[CaseResult]
    aggregates: dict[str, dict[str, float]]
    skipped_metrics: dict[str, str]
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = "keel.eval.run/1"
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        case_fields = {f.name for f in fields(CaseResult)}
        run_fields = {f.name for f in fields(cls)} - {"cases"}
        cases = [
            CaseResult(**{k: v for k, v in c.items() if k in case_fields})
            for c in data.get("cases", [])
        ]
        return cls(cases=cases, **{k: v for k, v in data.items() if k in run_fields})

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunResult:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def per_case(self, metric: str) -> dict[str, float]:
        """Case id → the mean of the metric over the case's repeats (None scores left out)."""
        sums: dict[str, list[float]] = {}
        for c in self.cases:
            value = c.scores.get(metric)
            if value is not None and math.isfinite(value):
                sums.setdefault(c.case_id, []).append(float(value))
        return {cid: sum(v) / len(v) for cid, v in sums.items()}

    @property
    def errors(self) -> list[CaseResult]:
        return [c for c in self.cases if c.error is not None]


def bootstrap_ci(
    values: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """Mean and 95% percentile bootstrap interval of ``values`` (the mean twice if n < 2)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(resamples, len(data)))
    means = data[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return mean, float(min(low, mean)), float(max(high, mean))


def aggregate(run: RunResult, metrics: list[str]) -> dict[str, dict[str, float]]:
    """Per metric: mean over cases (each the mean of its repeats) and its bootstrap CI."""
    out: dict[str, dict[str, float]] = {}
    for metric in metrics:
        per_case = run.per_case(metric)
        if not per_case:
            continue
        values = [per_case[cid] for cid in sorted(per_case)]
        mean, low, high = bootstrap_ci(values)
        out[metric] = {"mean": mean, "ci_low": low, "ci_high": high, "n": float(len(values))}
    return out


def _result_from_answer(case: Case, repeat: int, answer: Answer, latency_ms: float) -> CaseResult:
    cited: list[str] = []
    for c in answer.citations:
        doc = str(c.get("doc_id", ""))
        if doc and doc not in cited:
            cited.append(doc)
    return CaseResult(
        case_id=case.id,
        repeat=repeat,
        input=case.input,
        output=answer.text,
        contexts=[str(h.get("text", "")) for h in answer.hits],
        doc_ids=[str(h.get("doc_id", "")) for h in answer.hits],
        tool_calls=[dict(tc) for tc in answer.tool_calls],
        trace_id=answer.trace_id,
        latency_ms=latency_ms,
        cost_usd=answer.cost_usd,
        guard_events=[dict(e) for e in answer.events if "point" in e],
        scores={},
        cited_doc_ids=cited,
        stop_reason=answer.stop_reason,
        thread_id=answer.thread_id,
        model=answer.model,
        usage=dict(answer.usage),
    )


def _failed(case: Case, repeat: int, error: str, latency_ms: float, attempts: int) -> CaseResult:
    return CaseResult(
        case_id=case.id,
        repeat=repeat,
        input=case.input,
        output="",
        contexts=[],
        doc_ids=[],
        tool_calls=[],
        trace_id="",
        latency_ms=latency_ms,
        cost_usd=None,
        guard_events=[],
        scores={},
        error=error,
        attempts=attempts,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _judge_for(suite: Suite, judge: Any, app: App) -> tuple[Any, str | None]:
    """The judge for RAGAS judge metrics (built by :func:`keel.evals.judges.ragas_llm`, its
    calls cached in the app's database), or why there is none."""
    from keel.evals.judges import JudgeCache, ragas_llm
    from keel.evals.metrics import _is_ragas_llm

    if judge is not None and _is_ragas_llm(judge):
        return judge, None
    target = judge if judge is not None else suite.judge
    if target is None:
        return None, NO_JUDGE
    try:
        return ragas_llm(target, cache=JudgeCache(app.engine), settings=app.settings), None
    except Exception as exc:  # any failure to build the judge is reported, not raised
        name = target if isinstance(target, str) else type(target).__name__
        return None, f"judge {name!r} could not be built: {_describe(exc)}"


async def arun_suite(
    suite: Suite | str | Path,
    *,
    app: App | None = None,
    model: Any = None,
    progress: Progress | None = None,
    judge: Any = None,
    gc_freeze: bool | None = None,
) -> RunResult:
    """Run ``suite`` (a :class:`Suite` or a suite file) and score it.

    ``app``: run against this app instead of building one from ``suite.app_path`` (with
    ``model``, a chat model object such as a ``ScriptedChatModel``, when given). ``progress``
    is called with ``(done, total)`` as cases finish. ``judge``: the judge model for RAGAS judge
    metrics, a chat model (or a RAGAS LLM, used as it is); default: ``suite.judge`` (a model
    id). Either way it goes through :func:`keel.evals.judges.ragas_llm`, its calls cached in
    the app's database, so a rerun replays the judge at no cost. ``gc_freeze``: freeze the
    process's existing objects while the cases run (``gc.freeze``, process-wide); default:
    the suite's ``concurrency_gc_freeze`` (off).
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    freeze = suite.concurrency_gc_freeze if gc_freeze is None else gc_freeze
    dataset = load_dataset(suite.dataset_path)
    owned = app is None
    if app is None:
        from keel.app import App

        app = App.from_config(suite.app_path, model=model)
    try:
        return await _run(suite, app, dataset.cases, dataset.version, progress, judge, freeze)
    finally:
        if owned:
            app.close()


async def _run(
    suite: Suite,
    app: App,
    cases: list[Case],
    dataset_version: str,
    progress: Progress | None,
    judge: Any,
    gc_freeze: bool = False,
) -> RunResult:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    # Build the app's shared parts (database tables, agent graph, checkpointer) once, before
    # the concurrent turns: first use from several threads at once would race to create them.
    app_version = await asyncio.to_thread(_warm_up, app)
    jobs = [(case, repeat) for case in cases for repeat in range(suite.repeats)]

    def ask(job: int) -> tuple[Answer, float]:
        case, repeat = jobs[job]
        history = None
        if case.conversation:
            from langchain_core.messages import convert_to_messages

            history = list(convert_to_messages(case.history))
        tid = f"eval-{case.id}-{repeat}-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        answer = app.ask(case.input, thread_id=tid, history=history, ephemeral=True)
        return answer, (time.perf_counter() - t0) * 1000.0

    with _young_collections(gc_freeze):
        outcomes = await run_jobs(
            ask,
            len(jobs),
            concurrency=suite.concurrency,
            timeout_s=suite.timeout_s,
            retries=suite.retries,
            describe=_describe,
            progress=progress,
        )
    results: list[CaseResult] = []
    for (case, repeat), outcome in zip(jobs, outcomes, strict=True):
        if outcome.value is None:
            error = outcome.error or "no answer"
            results.append(_failed(case, repeat, error, outcome.latency_ms, outcome.attempts))
            continue
        answer, latency = outcome.value
        result = _result_from_answer(case, repeat, answer, latency)
        result.attempts = outcome.attempts
        results.append(result)

    names = list(suite.metrics)
    needs_embedder = any(
        METRICS[m].needs == "embeddings" or m == "response_relevancy" for m in names
    )
    embedder = app.embedder if needs_embedder else None
    needs_judge = any(METRICS[m].needs == "judge" for m in names)
    judge_obj, judge_reason = _judge_for(suite, judge, app) if needs_judge else (None, None)

    by_id = {c.id: c for c in cases}
    skipped: dict[str, dict[str, int]] = {}
    ok = [r for r in results if r.error is None]
    for r in results:
        for metric in names:
            r.scores[metric] = None
    for r in ok:
        case = by_id[r.case_id]
        for metric in names:
            reason = skip_reason(metric, case, r, embedder=embedder, judge=judge_obj)
            if reason is not None:
                if reason == NO_JUDGE and judge_reason:
                    reason = judge_reason
                counts = skipped.setdefault(metric, {})
                counts[reason] = counts.get(reason, 0) + 1
                if not not_applicable(reason):
                    r.score_errors[metric] = reason
                continue
            try:
                r.scores[metric] = await ascore_case(
                    metric,
                    case,
                    r,
                    options=suite.options(metric),
                    embedder=embedder,
                    judge=judge_obj,
                )
            except Exception as exc:  # a metric that breaks on one case is reported
                reason = f"scoring failed: {_describe(exc)}"
                counts = skipped.setdefault(metric, {})
                counts[reason] = counts.get(reason, 0) + 1
                r.score_errors[metric] = reason[:500]

    skipped_metrics = {
        metric: "; ".join(
            reason if n == len(ok) else f"{reason} ({n} of {len(ok)} results)"
            for reason, n in sorted(counts.items())
        )
        for metric, counts in skipped.items()
    }
    answered = Counter(r.model for r in results if r.model)
    model_name = answered.most_common(1)[0][0] if answered else _model_of(app)
    run = RunResult(
        suite=suite.name,
        dataset_version=dataset_version,
        app_version=app_version,
        model=model_name,
        started_at=started,
        cases=results,
        aggregates={},
        skipped_metrics=skipped_metrics,
    )
    run.aggregates = aggregate(run, names)
    run.wall_seconds = time.perf_counter() - t_start
    return run


@contextmanager
def _young_collections(enabled: bool = True) -> Iterator[None]:
    """While the cases run, the garbage collector leaves alone what existed before the run.

    A process that has imported LangChain, LangGraph, RAGAS and torch tracks some 300,000
    objects, and a full collection walks them all: about 0.18 s here, with every case of the
    run stopped (they share the GIL). Frozen (``gc.freeze``), they are left out of the
    run's collections; the run's own garbage is collected as usual, and they are handed back
    (``gc.unfreeze``) when the run ends. A process that freezes objects itself is left as it
    is. Off unless asked for (``enabled``): freezing is process-wide, and a host process
    (a notebook, a web app) did not ask for it.
    """
    if not enabled or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _warm_up(app: App) -> str:
    version = app.version
    _ = app.graph
    _ = app.threads
    if app.config.tracing.enabled:
        _ = app.tracing
    return version


def _model_of(app: App) -> str:
    try:
        return str(app.agent.chain.models[0][0])
    except Exception:  # no agent could be built: fall back to the configured id
        return str(app.config.model.id)


def run_suite(
    suite: Suite | str | Path,
    *,
    app: App | None = None,
    model: Any = None,
    progress: Progress | None = None,
    judge: Any = None,
    gc_freeze: bool | None = None,
) -> RunResult:
    """:func:`arun_suite` from synchronous code, also inside a running event loop (a
    notebook, an async app): there it runs on a loop of its own in a worker thread."""

    def run() -> RunResult:
        return asyncio.run(
            arun_suite(
                suite, app=app, model=model, progress=progress, judge=judge, gc_freeze=gc_freeze
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


__all__ = [
    "CaseResult",
    "RunResult",
    "aggregate",
    "arun_suite",
    "bootstrap_ci",
    "run_suite",
]
