"""Ingestion jobs on the task queue (keel.worker): run by a worker, started again when their
worker died, given up after MAX_ATTEMPTS; the queue on SQLite here, Redis and PostgreSQL in
tests/api/test_instances.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import update

from keel.app import App
from keel.ops.jobs import JobRecord, jobs_table
from keel.worker import MAX_ATTEMPTS, IngestWork, JobQueue, UploadedFile


def _wait(queue: JobQueue, job_id: str, timeout: float = 60.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        job = queue.jobs.get(job_id)
        assert job is not None
        if job.state in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


@pytest.fixture
def queue(make_app: Callable[..., App]) -> Iterator[JobQueue]:
    q = JobQueue(make_app())
    yield q
    q.stop_embedded()


def _docs(*ids: str) -> IngestWork:
    docs = [{"id": i, "text": f"{i} explains refunds.", "source": f"api/{i}"} for i in ids]
    return IngestWork("documents", "k1", admin=True, documents=docs)


def test_a_worker_runs_a_queued_job_and_its_work_is_dropped(queue: JobQueue) -> None:
    job = queue.submit(_docs("a", "b"))
    assert job.state == "queued" and queue.jobs.payload(job.id) is not None
    queue.run_embedded()
    done = _wait(queue, job.id)
    assert done.state == "done", done.error
    assert done.report is not None and done.report["added"] == 2 and done.attempts == 1
    assert queue.jobs.payload(job.id) is None  # nothing kept once it ended
    assert [h.doc_id for h in queue.app.search("refunds", 5)] != []


def test_uploaded_files_are_loaded_by_the_worker(queue: JobQueue) -> None:
    work = IngestWork(
        "files", "k1", admin=False, files=[UploadedFile("faq.md", b"# FAQ\n\nRefunds in 30 days.")]
    )
    job = queue.submit(work)
    queue.run_embedded()
    done = _wait(queue, job.id)
    assert done.state == "done", done.error
    assert queue.app.manifest().creators(["uploads/faq.md"]) == {"uploads/faq.md": "k1"}


def _as_left_by_a_dead_worker(queue: JobQueue, job_id: str, attempts: int) -> None:
    with queue.app.engine.begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job_id)
            .values(state="running", attempts=attempts, updated_at=time.time() - 3600)
        )


def test_a_job_whose_worker_died_is_started_again(queue: JobQueue) -> None:
    job = queue.jobs.create("k1", _docs("c").to_json())  # never reached a queue
    _as_left_by_a_dead_worker(queue, job.id, attempts=1)
    assert queue.reclaim() == [job.id]
    queue.run_embedded()
    done = _wait(queue, job.id)
    assert done.state == "done" and done.attempts == 2


def test_a_job_that_is_running_is_left_alone(queue: JobQueue) -> None:
    job = queue.jobs.create("k1", _docs("d").to_json())
    _as_left_by_a_dead_worker(queue, job.id, attempts=1)
    lease = queue.app.resources.leases.try_acquire(f"{queue.app.name}:job:{job.id}")
    assert lease is not None  # its worker is alive and holds the lease
    with lease:
        assert queue.reclaim() == []
        queue.execute(job.id)  # a second delivery does not run it twice
        running = queue.jobs.get(job.id)
        assert running is not None and running.state == "running" and running.attempts == 1


def test_a_job_that_ends_after_reclaim_lists_it_stays_as_it_ended(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reclaim lists the unfinished jobs, then takes each one's lease: a job whose worker
    finished it in between (another process) is not put back, run again and failed for its
    work being gone."""
    job = queue.jobs.create("k1", _docs("f").to_json())
    _as_left_by_a_dead_worker(queue, job.id, attempts=1)
    listed = queue.jobs.unfinished(0)  # as reclaim saw it: running
    assert [j.id for j in listed] == [job.id]
    queue.jobs.done(job.id, {"added": 1})  # its worker finishes, and lets go of the lease
    monkeypatch.setattr(queue.jobs, "unfinished", lambda _s: listed)
    assert queue.reclaim() == []
    ended = queue.jobs.get(job.id)
    assert ended is not None and ended.state == "done" and ended.report == {"added": 1}


def test_a_job_is_given_up_after_max_attempts(queue: JobQueue) -> None:
    job = queue.jobs.create("k1", _docs("e").to_json())
    _as_left_by_a_dead_worker(queue, job.id, attempts=MAX_ATTEMPTS)
    queue.execute(job.id)
    failed = queue.jobs.get(job.id)
    assert failed is not None and failed.state == "failed"
    assert failed.error is not None and "gave up after 3 attempts" in failed.error
    assert queue.jobs.payload(job.id) is None


def test_a_failing_job_records_its_error_and_the_worker_goes_on(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(queue.app, "ingest_documents", broken)
    bad = queue.submit(_docs("f"))
    queue.run_embedded()
    failed = _wait(queue, bad.id)
    assert failed.state == "failed" and failed.error == "OSError: disk full"
    monkeypatch.undo()
    good = queue.submit(_docs("g"))
    assert _wait(queue, good.id).state == "done"


def test_a_job_with_no_work_left_fails_clearly(queue: JobQueue) -> None:
    job = queue.jobs.create("k1", None)
    queue.execute(job.id)
    failed = queue.jobs.get(job.id)
    assert failed is not None and failed.error == "RuntimeError: the job's work is gone"
