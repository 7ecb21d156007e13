"""Tracing: OpenTelemetry spans for every component, kept in the keel database.

Each :class:`~keel.app.App` has its own ``TracerProvider`` (never the process-global one, so
several apps, and the tests, stay apart). Spans go through a ``BatchSpanProcessor`` to
:class:`StoreExporter` (the ``keel_spans`` / ``keel_traces`` tables, SQLite or Postgres), and
to an OTLP/HTTP exporter when ``KEEL_OTLP_ENDPOINT`` is set. Exporting happens in the
processor's thread: a slow or broken store never blocks or fails a request; spans it could not
write are counted (:attr:`StoreExporter.dropped`).

Span names: ``keel.turn`` (one turn: ask, stream or resume; the root unless the gateway's
``http`` span is), ``keel.retrieve``, ``chat <model>`` (a model call, GenAI semantic
conventions), ``execute_tool <tool>``, ``keel.guard <validator>``. Lineage rides on the turn
span: ``keel.app.version``, ``keel.index.version``, ``keel.prompt.*``, ``gen_ai.request.model``,
``keel.git.commit``, and ``keel.release.id`` when the gateway serves releases;
``keel.cache.hit`` when the semantic cache is on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    inspect,
    select,
    text,
)

from keel.db import create_tables, metadata
from keel.ops.semconv import GUARD_OUTCOME

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.trace import Span, Tracer


spans_table = Table(
    "keel_spans",
    metadata,
    Column("span_id", String(16), primary_key=True),
    Column("trace_id", String(32), nullable=False, index=True),
    Column("parent_id", String(16)),
    Column("name", String(256), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attributes", Text, nullable=False),
    Column("events", Text, nullable=False),
)

traces_table = Table(
    "keel_traces",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, index=True),
    Column("duration_ms", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("app", String(256)),
    Column("app_version", String(64), index=True),
    Column("index_version", String(64)),
    Column("model", String(256)),
    Column("thread_id", String(256), index=True),
    Column("key_id", String(64)),
    Column("guard_outcome", String(16)),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("cost_usd", Float),
    Column("question", Text),
    Column("answer", Text),
    # schema version 2
    Column("release_id", String(32), index=True),
    Column("end_user", String(256), index=True),
    Column("cache_hit", Boolean),
)

# Versioned schema: each entry upgrades from the previous version; recorded per component.
schema_versions = Table(
    "keel_schema_versions",
    metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)
SCHEMA = "tracing"


def _add_release_columns(conn: Connection) -> None:
    """Version 2: the release that served a trace, and whether the semantic cache answered."""
    existing = {c["name"] for c in inspect(conn).get_columns("keel_traces")}
    if "release_id" not in existing:
        conn.execute(text("ALTER TABLE keel_traces ADD COLUMN release_id VARCHAR(32)"))
        conn.execute(
            text("CREATE INDEX IF NOT EXISTS ix_keel_traces_release_id ON keel_traces (release_id)")
        )
    if "cache_hit" not in existing:
        conn.execute(text("ALTER TABLE keel_traces ADD COLUMN cache_hit BOOLEAN"))


# Each entry upgrades from the previous version: tables to create (new installs get the
# current columns at once) and a step that brings an older install's tables up to date.
MIGRATIONS: list[tuple[int, Sequence[Table], Callable[[Connection], None] | None]] = [
    (1, (spans_table, traces_table), None),
    (2, (), _add_release_columns),
]


def migrate(engine: Engine) -> int:
    """Create or upgrade the tracing tables; returns the schema version now in place.

    Processes that start on one new database at once (``keel serve --workers N``, two
    instances) race to record the version: the one that loses rolls back, reads the version
    the winner wrote and finds nothing left to do."""
    import time

    from sqlalchemy.exc import IntegrityError

    for attempt in range(20):
        try:
            return _migrate(engine)
        except IntegrityError:
            if attempt == 19:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")  # pragma: no cover


def _migrate(engine: Engine) -> int:
    create_tables(engine, metadata, [schema_versions])
    with engine.begin() as conn:
        current = conn.execute(
            select(schema_versions.c.version).where(schema_versions.c.component == SCHEMA)
        ).scalar_one_or_none()
    current = current or 0
    for version, tables, step in MIGRATIONS:
        if version <= current:
            continue
        create_tables(engine, metadata, list(tables))
        with engine.begin() as conn:
            if step is not None:
                step(conn)
            if current == 0:
                conn.execute(insert(schema_versions).values(component=SCHEMA, version=version))
            else:
                conn.execute(
                    schema_versions.update()
                    .where(schema_versions.c.component == SCHEMA)
                    .values(version=version)
                )
        current = version
    return current


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_jsonable(v) for v in value]
    return str(value)


class StoreExporter(SpanExporter):
    """An OpenTelemetry ``SpanExporter`` into the keel database; never raises."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dropped = 0
        self.exported = 0
        self._lock = threading.Lock()
        migrate(engine)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows, traces = [], []
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None or span.start_time is None or span.end_time is None:
                continue
            attrs = {k: _jsonable(v) for k, v in (span.attributes or {}).items()}
            status = span.status.status_code.name.lower() if span.status else "unset"
            if status == "unset":
                status = "ok"
            row = {
                "span_id": _hex(ctx.span_id, 16),
                "trace_id": _hex(ctx.trace_id, 32),
                "parent_id": _hex(span.parent.span_id, 16) if span.parent else None,
                "name": span.name[:256],
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "duration_ms": (span.end_time - span.start_time) / 1e6,
                "status": status,
                "attributes": json.dumps(attrs, ensure_ascii=False, default=str),
                "events": json.dumps(
                    [
                        {
                            "name": e.name,
                            "at_ns": e.timestamp,
                            "attributes": {
                                k: _jsonable(v) for k, v in (e.attributes or {}).items()
                            },
                        }
                        for e in span.events
                    ],
                    ensure_ascii=False,
                    default=str,
                ),
            }
            rows.append(row)
            if attrs.get("keel.summary"):
                traces.append(_summary(row, attrs))
        if not rows:
            return SpanExportResult.SUCCESS
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(spans_table), rows)
                if traces:
                    ids = [t["trace_id"] for t in traces]
                    conn.execute(delete(traces_table).where(traces_table.c.trace_id.in_(ids)))
                    conn.execute(insert(traces_table), traces)
        except Exception:  # the store is slow, down or full: count, never fail a request
            with self._lock:
                self.dropped += len(rows)
            return SpanExportResult.FAILURE
        with self._lock:
            self.exported += len(rows)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _event(event: Any) -> dict[str, Any]:
    attributes = {k: _jsonable(v) for k, v in (event.attributes or {}).items()}
    return {"name": event.name, "at_ns": event.timestamp, "attributes": attributes}


def _summary(row: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    def num(key: str) -> Any:
        value = attrs.get(key)
        return value if isinstance(value, int | float) else None

    return {
        "trace_id": row["trace_id"],
        "name": row["name"],
        "started_at": datetime.fromtimestamp(row["start_ns"] / 1e9, UTC),
        "duration_ms": row["duration_ms"],
        "status": row["status"],
        "app": attrs.get("keel.app.name"),
        "app_version": attrs.get("keel.app.version"),
        "index_version": attrs.get("keel.index.version"),
        "model": attrs.get("gen_ai.request.model"),
        "thread_id": attrs.get("keel.thread.id"),
        "key_id": attrs.get("keel.key.id"),
        "end_user": attrs.get("enduser.id"),
        "guard_outcome": attrs.get(GUARD_OUTCOME),
        "input_tokens": num("gen_ai.usage.input_tokens"),
        "output_tokens": num("gen_ai.usage.output_tokens"),
        "cost_usd": num("keel.cost.usd"),
        "question": attrs.get("keel.input"),
        "answer": attrs.get("keel.output"),
        "release_id": attrs.get("keel.release.id"),
        "cache_hit": attrs.get("keel.cache.hit") if "keel.cache.hit" in attrs else None,
    }


@dataclass(frozen=True)
class TurnRecord:
    """What a traced turn asked, answered and retrieved, and what answered it (read from its
    turn span and retrieval span)."""

    trace_id: str
    question: str | None
    answer: str | None
    chunk_ids: tuple[str, ...]
    app_version: str | None
    index_version: str | None
    model: str | None
    prompt_versions: dict[str, Any]
    git_commit: str | None


class Tracing:
    """One app's tracer provider, exporters and span store."""

    def __init__(
        self,
        engine: Engine,
        *,
        service: str,
        otlp_endpoint: str | None = None,
        enabled: bool = True,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.enabled = enabled
        self.engine = engine
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": "keel", "keel.app.name": service})
        )
        self.store = StoreExporter(engine)
        if enabled:
            self.provider.add_span_processor(
                BatchSpanProcessor(self.store, max_queue_size=8192, schedule_delay_millis=500)
            )
            if otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                endpoint = otlp_endpoint.rstrip("/")
                if not endpoint.endswith("/v1/traces"):
                    endpoint += "/v1/traces"
                self.provider.add_span_processor(
                    BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5))
                )
        self.tracer: Tracer = self.provider.get_tracer("keel")

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name) as span:
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(key, value)
            yield span

    def flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        self.provider.shutdown()

    # -- reading back ----------------------------------------------------------------------------
    def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        app_version: str | None = None,
        status: str | None = None,
        thread_id: str | None = None,
        min_latency_ms: float | None = None,
        guard_outcome: str | None = None,
        key_id: str | None = None,
        release_id: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        t = traces_table
        conds = []
        if since is not None:
            conds.append(t.c.started_at >= since)
        if until is not None:
            conds.append(t.c.started_at <= until)
        if app_version:
            conds.append(t.c.app_version == app_version)
        if status:
            conds.append(t.c.status == status)
        if thread_id:
            conds.append(t.c.thread_id == thread_id)
        if min_latency_ms is not None:
            conds.append(t.c.duration_ms >= min_latency_ms)
        if guard_outcome:
            conds.append(t.c.guard_outcome == guard_outcome)
        if key_id:
            conds.append(t.c.key_id == key_id)
        if release_id:
            conds.append(t.c.release_id == release_id)
        query = select(t).order_by(t.c.started_at.desc()).limit(limit)
        if conds:
            query = query.where(and_(*conds))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["started_at"] = row["started_at"].isoformat() if row["started_at"] else None
        return rows

    def turn(self, trace_id: str) -> TurnRecord | None:
        """The turn a trace recorded (None: no such trace)."""
        from keel.ops.semconv import RETRIEVE_SPAN, TURN_SPAN, find_span

        found = self.get(trace_id)
        if found is None:
            return None
        turn = find_span(found["spans"], TURN_SPAN)
        retrieve = find_span(found["spans"], RETRIEVE_SPAN)
        attrs = turn["attributes"] if turn else {}
        ids = retrieve["attributes"].get("keel.retrieve.chunk_ids", []) if retrieve else []
        return TurnRecord(
            trace_id=trace_id,
            question=attrs.get("keel.input"),
            answer=attrs.get("keel.output"),
            chunk_ids=tuple(ids),
            app_version=attrs.get("keel.app.version"),
            index_version=attrs.get("keel.index.version"),
            model=attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model"),
            prompt_versions={
                k.removeprefix("keel.prompt."): v
                for k, v in attrs.items()
                if k.startswith("keel.prompt.")
            },
            git_commit=attrs.get("keel.git.commit"),
        )

    def get(self, trace_id: str) -> dict[str, Any] | None:
        """A trace: its summary and its span tree (children nested, in start order)."""
        with self.engine.connect() as conn:
            summary = conn.execute(
                select(traces_table).where(traces_table.c.trace_id == trace_id)
            ).first()
            rows = conn.execute(
                select(spans_table)
                .where(spans_table.c.trace_id == trace_id)
                .order_by(spans_table.c.start_ns)
            ).all()
        if not rows:
            return None
        nodes: dict[str, dict[str, Any]] = {}
        for r in rows:
            nodes[r.span_id] = {
                "span_id": r.span_id,
                "parent_id": r.parent_id,
                "name": r.name,
                "start_ns": r.start_ns,
                "duration_ms": round(r.duration_ms, 3),
                "status": r.status,
                "attributes": json.loads(r.attributes),
                "events": json.loads(r.events),
                "children": [],
            }
        roots: list[dict[str, Any]] = []
        for node in nodes.values():
            parent = nodes.get(node["parent_id"] or "")
            (parent["children"] if parent else roots).append(node)
        out: dict[str, Any] = dict(summary._mapping) if summary else {"trace_id": trace_id}
        started = out.get("started_at")
        if isinstance(started, datetime):
            out["started_at"] = started.isoformat()
        out["spans"] = roots
        return out
