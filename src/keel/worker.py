"""Ingestion jobs on a task queue: the gateway accepts the work, any worker process runs it.

A job is a row of ``keel_ingest_jobs`` (:mod:`keel.ops.jobs`) that holds its work until it
ends; the queue carries only the job's id. The queue is `huey <https://huey.readthedocs.io>`_
on the services the app already uses, so a single-database install needs nothing more:

- ``KEEL_REDIS_URL`` set: Redis (``RedisHuey``);
- else ``KEEL_DATABASE_URL`` on PostgreSQL: the same database (``PostgresHuey``, tables
  ``keel_huey_*``, LISTEN/NOTIFY wakes the workers);
- else SQLite beside the keel database (``queue.sqlite3`` in the data directory).

``keel worker`` runs workers; ``keel serve`` runs one in the gateway's process unless told that
workers run elsewhere (``KEEL_EMBEDDED_WORKER=false``). A job runs under a lease
(``{app}:job:{id}``, kept alive while it runs, expiring 30 s after its process dies); a worker
starting, and every worker each minute, puts back on the queue the running jobs whose lease
is free (their worker died: the collection's ingest lease and manifest make the re-run
consistent) and jobs queued for over :data:`STALE_S` (their queue message may be lost; a job
delivered twice runs once). A job is tried :data:`MAX_ATTEMPTS` times.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from keel.errors import UsageError

if TYPE_CHECKING:
    from huey import Huey
    from huey.consumer import Consumer

    from keel.app import App
    from keel.ops.jobs import JobRecord, JobStore
    from keel.rag.types import Document, Skipped

__all__ = ["MAX_ATTEMPTS", "IngestWork", "JobQueue", "UploadedFile"]

_log = logging.getLogger("keel.worker")

MAX_ATTEMPTS = 3
"""How often a job is started before it is marked failed (its worker died each time)."""

STALE_S = 120.0
"""A job queued for this long is put on the queue again."""


@dataclass(frozen=True)
class UploadedFile:
    name: str  # a checked file name, never a path
    data: bytes


@dataclass(frozen=True)
class IngestWork:
    """What a job ingests: JSON ``documents`` or uploaded ``files`` (loaded by the worker),
    for the key ``key_id``. A key without ``admin`` never replaces a document another key
    (or the app) created: such documents are skipped and reported."""

    kind: Literal["documents", "files"]
    key_id: str
    admin: bool
    documents: list[dict[str, Any]] = field(default_factory=list)
    files: list[UploadedFile] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # access labels of every document

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [
            {"name": f.name, "data": base64.b64encode(f.data).decode("ascii")} for f in self.files
        ]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> IngestWork:
        data = json.loads(text)
        files = [UploadedFile(f["name"], base64.b64decode(f["data"])) for f in data["files"]]
        return cls(
            kind=data["kind"],
            key_id=data["key_id"],
            admin=bool(data["admin"]),
            documents=list(data["documents"]),
            files=files,
            labels=list(data.get("labels") or []),  # jobs queued before labels had none
        )


def _huey(app: App) -> Huey:
    settings = app.settings
    name = f"keel-{app.name}"
    if settings.redis_url:
        from huey import RedisHuey

        return RedisHuey(name, url=settings.redis_url)
    url = settings.database_url or ""
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        from huey import PostgresHuey

        dsn = "postgresql://" + url.split("://", 1)[1]
        return PostgresHuey(name, dsn=dsn, table_prefix="keel_huey")
    from huey import SqliteHuey

    app.data_dir.mkdir(parents=True, exist_ok=True)
    # several processes share the file: wait for its lock as long as keel.db does
    return SqliteHuey(name, filename=str(app.data_dir / "queue.sqlite3"), timeout=30)


class JobQueue:
    """The ingestion jobs of one app and the queue that runs them (see the module)."""

    def __init__(self, app: App) -> None:
        from huey import crontab

        from keel.ops.jobs import JobStore

        self.app = app
        self.jobs: JobStore = JobStore(app.engine, app.name)
        self.huey = _huey(app)
        self._run = self.huey.task(name="keel.ingest")(self.execute)
        self.huey.periodic_task(crontab(minute="*"), name="keel.reclaim")(self.reclaim)
        self._embedded: Consumer | None = None
        self._lock = threading.Lock()

    # -- producing -----------------------------------------------------------------------------
    def submit(self, work: IngestWork) -> JobRecord:
        """Record a job with its work and put it on the queue."""
        job = self.jobs.create(work.key_id, work.to_json())
        self._run(job.id)
        return job

    # -- consuming -----------------------------------------------------------------------------
    def execute(self, job_id: str) -> None:
        """Run one job (the queue's task): under its lease, once, recording the outcome."""
        job = self.jobs.get(job_id)
        if job is None or job.state in ("done", "failed"):
            return
        lease = self.app.resources.leases.try_acquire(f"{self.app.name}:job:{job_id}")
        if lease is None:
            return  # another worker runs it
        with lease:
            job = self.jobs.get(job_id)
            if job is None or job.state in ("done", "failed"):
                return
            try:
                if job.attempts >= MAX_ATTEMPTS:
                    raise RuntimeError(
                        f"gave up after {job.attempts} attempts (its worker stopped each time)"
                    )
                self.jobs.running(job_id)
                raw = self.jobs.payload(job_id)
                if raw is None:
                    raise RuntimeError("the job's work is gone")
                report = self._ingest(IngestWork.from_json(raw))
                self.jobs.done(job_id, report)
            except Exception as exc:  # recorded on the job; the worker goes on
                try:
                    self.jobs.failed(job_id, f"{type(exc).__name__}: {exc}")
                except Exception:  # the database itself failed: retried after STALE_S
                    _log.exception("ingestion job %s failed and could not be recorded", job_id)

    def _ingest(self, work: IngestWork) -> dict[str, Any]:
        with _items(self.app, work) as items:
            report = self.app.ingest_documents(
                items if work.admin else _owned(self.app, work.key_id, items),
                created_by=work.key_id,
                labels=work.labels,
            )
        return report.to_dict()

    def reclaim(self, queued_for_s: float = STALE_S) -> list[str]:
        """Put back on the queue the jobs whose worker died (see the module); their ids."""
        again = []
        for job in self.jobs.unfinished(queued_for_s):
            lease = self.app.resources.leases.try_acquire(f"{self.app.name}:job:{job.id}")
            if lease is None:
                continue  # running: its worker keeps the lease
            with lease:  # its state is read and written while no worker can finish it
                if not self.jobs.requeued(job.id):
                    continue  # it ended after it was listed
            self._run(job.id)
            again.append(job.id)
        if again:
            _log.warning("ingestion jobs started again (their worker stopped): %s", again)
        return again

    def consumer(self, workers: int = 1) -> Consumer:
        """A huey consumer with ``workers`` threads (``keel worker`` runs it)."""
        if workers < 1:
            raise UsageError("a worker needs at least one thread")
        return self.huey.create_consumer(
            workers=workers, worker_type="thread", max_delay=1.0, check_worker_health=True
        )

    def run_embedded(self) -> None:
        """Run one worker thread in this process (``keel serve`` without separate workers);
        idempotent. Jobs left by a worker that died are put back on the queue first."""
        with self._lock:
            if self._embedded is not None:
                return
            from huey.consumer import Consumer

            class _Embedded(Consumer):  # type: ignore[misc]
                def _set_signal_handlers(self) -> None:
                    """The host process (the web server) owns the signals."""

            consumer = _Embedded(self.huey, workers=1, worker_type="thread", max_delay=1.0)
            consumer.start()
            self._embedded = consumer
        try:
            self.reclaim()
        except Exception:  # the gateway serves on; the periodic reclaim tries again
            _log.warning("could not look for ingestion jobs to start again", exc_info=True)

    def stop_embedded(self) -> None:
        with self._lock:
            consumer, self._embedded = self._embedded, None
        if consumer is not None:
            consumer.stop(graceful=True)


@contextmanager
def _items(app: App, work: IngestWork) -> Iterator[Iterable[Document | Skipped]]:
    """The documents of a job: as given, or loaded from its files in a folder of its own
    (removed when the job ends, however it ends)."""
    from keel.rag.types import Document

    if work.kind == "documents":
        yield [_document(d) for d in work.documents]
        return
    tmp = Path(tempfile.mkdtemp(prefix="keel-job-"))
    try:
        for f in work.files:
            (tmp / Path(f.name).name).write_bytes(f.data)
        from keel.rag.loaders import iter_documents

        cap = app.config.limits.max_upload_bytes
        budget = app.config.rag.pdf_budget()

        def loaded() -> Iterator[Document | Skipped]:
            for item in iter_documents([tmp], root=tmp, max_bytes=cap, pdf=budget):
                if isinstance(item, Document):
                    yield replace(item, id=f"uploads/{item.id}", source=f"uploads/{item.source}")
                else:
                    yield item

        yield loaded()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _document(data: dict[str, Any]) -> Document:
    from keel.rag.access import label_metadata, without_labels
    from keel.rag.types import Document

    return Document(
        id=str(data["id"]),
        text=str(data["text"]),
        source=str(data["source"]),
        title=str(data.get("title") or ""),
        format=data.get("format", "text"),
        metadata={
            **without_labels(data.get("metadata") or {}),
            **(label_metadata(data["labels"]) if data.get("labels") else {}),
        },
    )


def _owned(
    app: App, key_id: str, items: Iterable[Document | Skipped]
) -> Iterator[Document | Skipped]:
    """The items of a job, re-checked as it runs (another key may have created one of the
    documents meanwhile, or a file may load as several): a document the key did not create
    is skipped, and reported as such."""
    from keel.rag.types import Document, Skipped

    for item in items:
        if isinstance(item, Document):
            by = app.manifest().creators([item.id])
            if item.id in by and by[item.id] != key_id:
                yield Skipped(item.source, "created by another key: not replaced")
                continue
        yield item
