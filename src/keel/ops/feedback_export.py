"""Human feedback joined to the turns it rates, as evaluation cases.

:func:`export_feedback` turns each row of ``keel_feedback`` (oldest first) into one case::

    {"id": "fb-<feedback id>", "input": question, "answer": answer text,
     "contexts": [retrieved texts], "reference_doc_ids": [doc ids of the retrieved chunks],
     "correction": ..., "reference": correction or None, "score": ..., "comment": ...,
     "trace_id": ..., "thread_id": ...,
     "provenance": {"source": "feedback", "feedback_id": ..., "created_at": ISO time, ...}}

The turn itself (question, answer, hits) comes from ``turns(trace_id)``, a lookup the caller
provides (the app reads its trace store). When the lookup is missing or does not know the
trace, the case is still exported with ``input``/``answer`` ``None`` and no contexts: the
rating and the correction are worth keeping. Lineage the turn carries (``app_version``,
``index_version``, ``model``, ``prompt_versions``) is copied into ``provenance``.

:func:`write_jsonl` writes cases one JSON object per line (the evaluation dataset format).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from keel.errors import StoreError, UsageError
from keel.ops.feedback import feedback

__all__ = ["TurnLookup", "export_feedback", "write_jsonl"]

TurnLookup = Callable[[str], Mapping[str, Any] | None]

_LINEAGE = ("app_version", "index_version", "model", "prompt_versions", "git_commit")


def _utc(moment: datetime) -> datetime:
    """Aware UTC (a naive time is taken as UTC, as the feedback store writes it)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def export_feedback(
    engine: Engine,
    *,
    max_score: float | None = None,
    since: datetime | None = None,
    turns: TurnLookup | None = None,
) -> list[dict[str, Any]]:
    """One evaluation case per feedback row, oldest first.

    ``max_score`` keeps rows with ``score <= max_score`` (the poorly rated answers);
    ``since`` keeps rows created at or after it (naive: UTC).
    """
    query = select(feedback).order_by(feedback.c.created_at, feedback.c.id)
    if max_score is not None:
        query = query.where(feedback.c.score <= max_score)
    if since is not None:
        query = query.where(feedback.c.created_at >= _utc(since))
    try:
        if not inspect(engine).has_table(feedback.name):
            return []  # no feedback was ever given
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read feedback: {exc}".splitlines()[0]) from exc
    looked_up: dict[str, Mapping[str, Any] | None] = {}
    cases = []
    for row in rows:
        trace_id = row["trace_id"]
        if turns is not None and trace_id not in looked_up:
            looked_up[trace_id] = turns(trace_id)  # once per trace: rows may share one
        cases.append(_case(row, looked_up.get(trace_id)))
    return cases


def _case(row: Mapping[str, Any], turn: Mapping[str, Any] | None) -> dict[str, Any]:
    turn = turn or {}
    hits = [h for h in turn.get("hits") or [] if isinstance(h, Mapping)]
    doc_ids: list[str] = []
    for hit in hits:
        doc_id = hit.get("doc_id")
        if doc_id is not None and str(doc_id) not in doc_ids:
            doc_ids.append(str(doc_id))
    created = row["created_at"]
    provenance: dict[str, Any] = {
        "source": "feedback",
        "feedback_id": row["id"],
        "trace_id": row["trace_id"],
        "created_at": _utc(created).isoformat() if isinstance(created, datetime) else created,
    }
    provenance.update({k: turn[k] for k in _LINEAGE if turn.get(k) is not None})
    correction = row.get("correction")
    return {
        "id": f"fb-{row['id']}",
        "input": turn.get("question"),
        "answer": turn.get("answer"),
        "contexts": [str(h.get("text") or "") for h in hits],
        "reference_doc_ids": doc_ids,
        "correction": correction,
        "reference": correction or None,
        "score": row["score"],
        "comment": row.get("comment"),
        "trace_id": row["trace_id"],
        "thread_id": row.get("thread_id"),
        "provenance": provenance,
    }


def write_jsonl(cases: Iterable[Mapping[str, Any]], path_or_stream: str | Path | IO[str]) -> int:
    """Write ``cases`` as JSON Lines to a file path (replaced whole) or a text stream.

    Returns how many cases were written.
    """
    if isinstance(path_or_stream, str | Path):
        path = Path(path_or_stream).expanduser()
        if path.is_dir():
            raise UsageError(f"{path} is a folder, not a file to write cases to")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8", newline="\n") as out:
                count = _write(cases, out)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return count
    return _write(cases, path_or_stream)


def _write(cases: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    count = 0
    for case in cases:
        out.write(json.dumps(case, ensure_ascii=False, default=str) + "\n")
        count += 1
    return count
