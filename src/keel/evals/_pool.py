"""Running a run's attempts in worker threads: bounded concurrency, a timeout per attempt and
retries.

``App.ask`` is synchronous and holds the GIL for its Python work, so the cases of a run share
one core whatever the concurrency. What the pool is for is to keep that core busy while cases
wait on their model: each worker thread takes the next attempt as soon as it finishes one,
without a round trip through the event loop (which would be one more thread to hand the GIL
to, per case). The event loop only watches: every ``POLL_S`` (or sooner, at the next deadline)
it reports progress, and it gives up on attempts past their timeout.

A timed-out attempt cannot be interrupted (it is a thread): it is abandoned, its result is
dropped when it comes, the case is retried or recorded as timed out, and a fresh worker takes
the abandoned one's place, so the run keeps its concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
POLL_S = 0.1


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """How one job ended: its value, or the error of its last attempt."""

    value: T | None
    error: str | None
    latency_ms: float
    attempts: int


@dataclass(eq=False)
class _Attempt:
    job: int
    number: int  # 1 for the first try
    started: float = 0.0  # perf_counter() when a worker took it
    abandoned: bool = False  # timed out: its result is dropped


async def run_jobs(
    run: Callable[[int], T],
    count: int,
    *,
    concurrency: int,
    timeout_s: float,
    retries: int,
    describe: Callable[[BaseException], str] = repr,
    progress: Callable[[int, int], None] | None = None,
    thread_name: str = "keel-eval",
) -> list[Outcome[T]]:
    """``run(i)`` for every job ``i`` in ``range(count)``, at most ``concurrency`` at once in
    worker threads; an attempt that raises or takes longer than ``timeout_s`` is tried again,
    up to ``retries`` more times. The outcomes come back in job order. ``progress(done,
    count)`` is called from the event loop as jobs finish."""
    if count == 0:
        return []
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    lock = threading.Lock()
    queue: deque[_Attempt] = deque(_Attempt(i, 1) for i in range(count))
    running: list[_Attempt] = []
    outcomes: list[Outcome[T] | None] = [None] * count
    counts = {"done": 0, "workers": 0, "started": 0}

    def settle(attempt: _Attempt, outcome: Outcome[T]) -> None:  # the lock is held
        outcomes[attempt.job] = outcome
        counts["done"] += 1
        if counts["done"] == count:
            loop.call_soon_threadsafe(finished.set)

    def failed(attempt: _Attempt, error: str, latency_ms: float) -> None:  # the lock is held
        if attempt.number <= retries:
            queue.append(_Attempt(attempt.job, attempt.number + 1))
        else:
            settle(attempt, Outcome(None, error, latency_ms, attempt.number))

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    counts["workers"] -= 1
                    return
                attempt = queue.popleft()
                attempt.started = time.perf_counter()
                running.append(attempt)
            value: T | None = None
            error: str | None = None
            try:
                value = run(attempt.job)
            except Exception as exc:  # a failing attempt is recorded; the run goes on
                error = describe(exc)
            latency_ms = (time.perf_counter() - attempt.started) * 1000.0
            with lock:
                if attempt.abandoned:  # the watchdog gave up on it and replaced this worker
                    return
                running.remove(attempt)
                if error is None:
                    settle(attempt, Outcome(value, None, latency_ms, attempt.number))
                else:
                    failed(attempt, error, latency_ms)

    def staff() -> None:  # the lock is held: a worker for each queued attempt, up to the bound
        for _ in range(min(concurrency - counts["workers"], len(queue))):
            counts["workers"] += 1
            counts["started"] += 1
            name = f"{thread_name}-{counts['started']}"
            threading.Thread(target=work, name=name, daemon=True).start()

    def watch() -> float:
        """Give up on attempts past their deadline; seconds until the next deadline."""
        now = time.perf_counter()
        wait = POLL_S
        with lock:
            for attempt in list(running):
                overdue = now - attempt.started - timeout_s
                if overdue < 0:
                    wait = min(wait, -overdue)
                    continue
                attempt.abandoned = True
                running.remove(attempt)
                counts["workers"] -= 1
                failed(attempt, f"timed out after {timeout_s:g} s", (now - attempt.started) * 1e3)
            staff()
        return wait

    reported = 0
    try:
        with lock:
            staff()
        while not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=watch())
            if progress is not None and counts["done"] != reported:
                reported = counts["done"]
                progress(reported, count)
    finally:
        with lock:  # cancelled: workers take nothing more
            queue.clear()
    done = [o for o in outcomes if o is not None]
    assert len(done) == count
    return done
