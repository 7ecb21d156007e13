"""A person's data: find it, export it, erase it.

Turns carry an end-user id (OpenAI's ``user`` / ``safety_identifier``, the native route's
``X-Keel-User`` header, the console's signed-in key), which Keel records on the thread, the
turn's trace, the usage ledger and any semantic cache entry the turn made. What a person's
data is, store by store:

- threads (``keel_threads``) and their checkpoints (the conversation itself);
- traces (``keel_traces``) and their spans (``keel_spans``): the person's turns, and every
  turn of their threads;
- feedback on those traces (``keel_feedback``: ratings, comments, corrections);
- usage per end user (``keel_usage_end_users``);
- semantic cache entries their questions made (``keel_semantic_cache``);
- tuned models trained on their feedback (``keel tune --from feedback``): erasure withdraws
  them (:meth:`keel.tuning.artefacts.ArtefactStore.withdraw`): the weights, learnt from their
  questions, are deleted, and a config naming one is refused until a new one is trained.

:func:`export_user` gathers all of it as JSON; :func:`erase_user` deletes it everywhere and
records the erasure in the audit log under a hash of the id (never the id itself). Eval
datasets written to files (``keel evals from-traces --out``) are the operator's files: their
cases carry the trace id they came from (``provenance.trace_id``), which the export lists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select

from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.app import App

__all__ = ["Erasure", "erase_user", "export_user", "subject_ref"]


@dataclass(frozen=True)
class Erasure:
    """What :func:`erase_user` removed, per store."""

    threads: int
    traces: int
    spans: int
    feedback: int
    usage: int
    cache_entries: int
    artefacts: int = 0  # tuned models trained on their feedback, withdrawn

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def subject_ref(user: str) -> str:
    """How the audit log names a person: a hash, so the log keeps no personal data."""
    return "user:" + hashlib.sha256(user.encode()).hexdigest()[:16]


def _check(user: str) -> str:
    if not isinstance(user, str) or not user.strip() or len(user) > 256:
        raise UsageError("a user id needs 1-256 characters")
    return user


def _where_user(app: App, user: str) -> tuple[list[str], list[str]]:
    """The person's thread ids and trace ids in this app."""
    from keel.agents.checkpoints import threads
    from keel.ops.tracing import traces_table

    with app.engine.connect() as conn:
        tids = list(
            conn.execute(
                select(threads.c.thread_id).where(
                    threads.c.app == app.name, threads.c.end_user == user
                )
            ).scalars()
        )
        t = traces_table
        mine = t.c.end_user == user
        query = select(t.c.trace_id).where(
            t.c.app == app.name, or_(mine, t.c.thread_id.in_(tids)) if tids else mine
        )
        trace_ids = list(conn.execute(query).scalars())
    return tids, trace_ids


def export_user(app: App, user: str) -> dict[str, Any]:
    """Everything Keel holds about ``user`` in ``app``, as JSON-ready data."""
    from keel.ops.cache import cache_table
    from keel.ops.cost import end_user_usage_table
    from keel.ops.feedback import feedback

    _check(user)
    app.tracing.flush()
    tids, trace_ids = _where_user(app, user)
    threads_out = []
    for tid in tids:
        messages = app.history(tid)
        threads_out.append(
            {
                "thread_id": tid,
                "messages": [{"role": m.type, "content": m.text} for m in messages],
            }
        )
    traces_out = [t for t in (app.tracing.get(i) for i in trace_ids) if t is not None]
    usage = end_user_usage_table()
    with app.engine.connect() as conn:
        rated = [
            dict(r._mapping)
            for r in conn.execute(select(feedback).where(feedback.c.trace_id.in_(trace_ids)))
        ]
        used = [
            dict(r._mapping) for r in conn.execute(select(usage).where(usage.c.end_user == user))
        ]
        c = cache_table
        cached = [
            {"id": r.id, "question": r.question, "payload": json.loads(r.payload),
             "created_at": r.created_at}
            for r in conn.execute(
                select(c.c.id, c.c.question, c.c.payload, c.c.created_at).where(
                    c.c.app == app.name, c.c.end_user == user
                )
            )
        ]  # fmt: skip
    exported: dict[str, Any] = json.loads(
        json.dumps(
            {
                "user": user,
                "app": app.name,
                "threads": threads_out,
                "traces": traces_out,
                "feedback": rated,
                "usage": used,
                "cache_entries": cached,
            },
            default=str,
        )
    )
    return exported


def erase_user(app: App, user: str, *, actor: str = "cli") -> Erasure:
    """Delete everything Keel holds about ``user`` in ``app`` (see the module)."""
    from keel.ops.audit import AuditLog
    from keel.ops.cache import cache_table
    from keel.ops.cost import end_user_usage_table
    from keel.ops.feedback import feedback
    from keel.ops.tracing import spans_table, traces_table
    from keel.tuning.artefacts import ArtefactStore

    _check(user)
    app.tracing.flush()
    tids, trace_ids = _where_user(app, user)
    for tid in tids:  # the conversation itself
        app.resources.checkpointer.delete_thread(tid)
        app.threads.forget(tid)
    usage = end_user_usage_table()
    with app.engine.begin() as conn:
        n_feedback = conn.execute(
            delete(feedback).where(feedback.c.trace_id.in_(trace_ids))
        ).rowcount
        n_spans = conn.execute(
            delete(spans_table).where(spans_table.c.trace_id.in_(trace_ids))
        ).rowcount
        n_traces = conn.execute(
            delete(traces_table).where(traces_table.c.trace_id.in_(trace_ids))
        ).rowcount
        n_usage = conn.execute(delete(usage).where(usage.c.end_user == user)).rowcount
        c = cache_table
        n_cache = conn.execute(delete(c).where(c.c.app == app.name, c.c.end_user == user)).rowcount
    withdrawn = ArtefactStore(app.data_dir).withdraw(
        trace_ids, f"trained on feedback of {subject_ref(user)}, whose data was erased"
    )
    done = Erasure(
        threads=len(tids),
        traces=int(n_traces or 0),
        spans=int(n_spans or 0),
        feedback=int(n_feedback or 0),
        usage=int(n_usage or 0),
        cache_entries=int(n_cache or 0),
        artefacts=len(withdrawn),
    )
    AuditLog(app.engine, app.name).record(
        actor, "privacy.erased", subject_ref(user), done.to_dict()
    )
    return done
