"""The runner's worker threads: job order, the concurrency bound, retries, timeouts that do
not cost the run its concurrency, progress, cancellation, and the run's garbage collection."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from keel.evals._pool import run_jobs
from keel.evals.runner import _young_collections


class Tracker:
    """Counts the jobs running at once (a stuck one apart)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.started: list[int] = []

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_outcomes_in_job_order_within_the_bound() -> None:
    tracker = Tracker()
    threads: set[str] = set()

    def run(job: int) -> int:
        with tracker:
            threads.add(threading.current_thread().name)
            time.sleep(0.01 * (job % 3))
        return job * job

    seen: list[tuple[int, int]] = []
    outcomes = asyncio.run(
        run_jobs(
            run,
            12,
            concurrency=3,
            timeout_s=10,
            retries=0,
            progress=lambda d, t: seen.append((d, t)),
        )
    )
    assert [o.value for o in outcomes] == [i * i for i in range(12)]
    assert all(o.error is None and o.attempts == 1 for o in outcomes)
    assert tracker.peak <= 3 and len(threads) <= 3
    assert seen[-1] == (12, 12) and seen == sorted(seen)
    assert asyncio.run(run_jobs(run, 0, concurrency=3, timeout_s=1, retries=0)) == []


def test_failures_are_retried_and_then_recorded() -> None:
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def run(job: int) -> str:
        with lock:
            tries[job] = tries.get(job, 0) + 1
            n = tries[job]
        if job == 0 and n == 1:
            raise ConnectionError("flaky")
        if job == 1:
            raise ValueError("always broken")
        return "ok"

    outcomes = asyncio.run(
        run_jobs(run, 3, concurrency=2, timeout_s=10, retries=2, describe=lambda e: str(e))
    )
    assert (outcomes[0].value, outcomes[0].attempts) == ("ok", 2)
    assert (outcomes[1].value, outcomes[1].error, outcomes[1].attempts) == (
        None,
        "always broken",
        3,
    )
    assert (outcomes[2].value, outcomes[2].attempts) == ("ok", 1)


def test_a_stuck_attempt_is_abandoned_and_its_worker_replaced() -> None:
    release = threading.Event()
    tracker = Tracker()
    late: list[int] = []

    def run(job: int) -> int:
        if job == 0:
            release.wait(5)  # stuck far past the timeout
            late.append(job)
            return -1
        with tracker:
            time.sleep(0.1)
        return job

    # 20 jobs of 0.1 s on the two free workers far outlast the 0.3 s timeout of job 0
    outcomes = asyncio.run(run_jobs(run, 21, concurrency=3, timeout_s=0.3, retries=0))
    release.set()
    assert outcomes[0].value is None and outcomes[0].error == "timed out after 0.3 s"
    assert outcomes[0].latency_ms >= 300
    assert [o.value for o in outcomes[1:]] == list(range(1, 21))
    # while job 0 was stuck, a fresh worker kept three jobs running (not two)
    assert tracker.peak == 3


def test_a_timed_out_attempt_is_retried_and_its_late_answer_dropped() -> None:
    tries: list[int] = []
    lock = threading.Lock()
    finished = threading.Event()

    def run(job: int) -> str:
        with lock:
            tries.append(job)
            first = len(tries) == 1
        if first:
            time.sleep(0.5)
            finished.set()
            return "late"
        return "in time"

    outcomes = asyncio.run(run_jobs(run, 1, concurrency=1, timeout_s=0.2, retries=1))
    assert (outcomes[0].value, outcomes[0].attempts) == ("in time", 2)
    assert finished.wait(5)  # the abandoned attempt ended in the background, unused


def test_a_cancelled_run_starts_nothing_more() -> None:
    started: list[int] = []

    def run(job: int) -> int:
        started.append(job)
        time.sleep(0.05)
        return job

    async def main() -> None:
        task = asyncio.create_task(run_jobs(run, 100, concurrency=1, timeout_s=10, retries=0))
        while not started:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    time.sleep(0.2)  # the worker finishes the job it holds and takes no other
    assert 1 <= len(started) <= 2


def test_the_run_collects_only_its_own_garbage() -> None:
    assert gc.get_freeze_count() == 0
    before = len(gc.get_objects())
    with _young_collections():
        assert gc.get_freeze_count() >= before * 0.9  # what existed is frozen for the run
    assert gc.get_freeze_count() == 0  # and handed back after it

    gc.freeze()  # a process that freezes objects itself is left as it is
    try:
        frozen = gc.get_freeze_count()  # (objects freed meanwhile leave the frozen set)
        with _young_collections():
            assert frozen * 0.9 <= gc.get_freeze_count() <= frozen
        assert frozen * 0.9 <= gc.get_freeze_count() <= frozen  # still frozen: not ours
    finally:
        gc.unfreeze()
