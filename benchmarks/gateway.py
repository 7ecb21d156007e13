"""Gateway overhead and throughput, measured side by side in one run.

    python benchmarks/gateway.py [--requests 2000] [--concurrency 16] [--instances 2]

A server process runs ``keel serve``'s app (one uvicorn worker) over a scripted model that
answers instantly; this process drives it over loopback:

1. in process, the same app's ``App.ask`` (no HTTP): median latency, the baseline;
2. HTTP, one request at a time: median and p99 latency; overhead = HTTP p50 - in-process p50;
3. HTTP, ``--concurrency`` clients: throughput (requests/s) and p50 / p99;
4. streaming: extra time to the first SSE event over HTTP against ``App.stream``'s first event
   in process.

Targets on a 2-core machine with one worker: overhead p50 <= 3 ms, >= 200 requests/s.

With ``--instances N`` (N >= 2) it also measures what sharing costs, in the same run:

5. the distributed lock a turn takes on its thread: p50 of one lease taken and given back on
   loopback Redis, on the PostgreSQL keel database and on SQLite (target <= 1 ms on Redis);
6. throughput at ``--concurrency`` of N ``keel serve`` apps (one uvicorn worker each) sharing
   one PostgreSQL keel database and Redis, clients spread over them, against one instance on
   the same services: the ratio N / 1. Needs PostgreSQL and Redis (``--database-url``,
   ``--redis-url``; the defaults are this machine's loopback services). It makes and drops
   a database of its own (``keel_bench_gateway``) and uses Redis database 15.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keel.testing import unused_port

if TYPE_CHECKING:
    from keel.ops.locks import Leases

SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import uvicorn
    from keel.api import create_app
    from keel.app import App
    from keel.config import config_from_dict
    from keel.settings import Settings
    from keel.testing import ScriptedChatModel

    base, port, key_file = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    data_dir = Path(sys.argv[4]) if len(sys.argv) > 4 else base / ".keel-server"
    app = App(
        config_from_dict({"app": {"name": "bench"}, "agent": {"retrieve": False},
                          "limits": {"requests_per_minute": 10_000_000,
                                     "tokens_per_day": 10_000_000_000}}, base_dir=base),
        settings=Settings(data_dir=data_dir),
        model=ScriptedChatModel(script=[lambda m: "Order ORD-1 has shipped."] * 10_000_000),
    )
    api = create_app(app)
    if not key_file.exists():  # the first instance makes the key; the others share its database
        key, _ = api.state.gateway.keys.create("bench", ["chat"])
        key_file.write_text(key)
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    """
)


def start_server(
    base: Path, key_file: Path, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """One server process, once it answers /healthz and its key exists."""
    import httpx

    port = unused_port()
    extra = [str(data_dir)] if data_dir else []
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(base), str(port), str(key_file), *extra],
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if key_file.exists() and httpx.get(f"{url}/healthz").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.1)


def stop(servers: list[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait(timeout=10)


async def load(
    urls: list[str], headers: dict[str, str], requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """``requests`` chat turns from ``concurrency`` clients spread evenly over ``urls``."""
    import httpx

    body = {"message": "where is my order ORD-1?"}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) for url in urls
    ]
    queue = list(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            t0 = time.perf_counter()
            r = await client.post("/v1/chat", json=body)
            latencies.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
        return time.perf_counter() - started, latencies
    finally:
        for client in clients:
            await client.aclose()


def lease_p50(leases: Leases, n: int = 2000) -> float:
    """Median ms of one lease on a new name taken and given back: what a turn adds."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        lease = leases.try_acquire(f"bench:thread:{i}")
        assert lease is not None
        lease.release()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[n // 10 :])


def _admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://" + url.split("://", 1)[1], autocommit=True) as conn:
        conn.execute(statement)


def instances(args: argparse.Namespace) -> dict[str, float | int]:
    """Parts 5 and 6 (see the module)."""
    import redis
    from sqlalchemy import create_engine

    from keel.db import ensure_schema
    from keel.ops.locks import leases_for

    name = "keel_bench_gateway"
    _admin(args.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin(args.database_url, f"CREATE DATABASE {name}")
    database_url = args.database_url.rsplit("/", 1)[0] + "/" + name
    redis.Redis.from_url(args.redis_url).flushdb()
    try:
        # 5. the lock a turn takes, on each backend
        base = Path(tempfile.mkdtemp(prefix="keel-bench-lease-"))
        engines = {
            "redis": create_engine(database_url),
            "postgres": create_engine(database_url),
            "sqlite": create_engine(f"sqlite:///{base / 'keel.db'}"),
        }
        for engine in engines.values():
            ensure_schema(engine)  # as keel would, before anything writes
        lock = {
            f"lease_{backend}_p50_ms": round(
                lease_p50(leases_for(engine, args.redis_url if backend == "redis" else None)), 3
            )
            for backend, engine in engines.items()
        }
        for engine in engines.values():
            engine.dispose()

        # 6. N instances against one, on the same shared services, one after the other
        env = {"KEEL_DATABASE_URL": database_url, "KEEL_REDIS_URL": args.redis_url}
        base = Path(tempfile.mkdtemp(prefix="keel-bench-fleet-"))
        key_file = base / "key"
        fleet = [start_server(base, key_file, base / "i0", env)]
        try:
            headers = {"Authorization": f"Bearer {key_file.read_text()}"}
            one = [fleet[0][1]]
            asyncio.run(load(one, headers, 200, args.concurrency))  # warm
            wall_one, _ = asyncio.run(load(one, headers, args.requests, args.concurrency))
            for i in range(1, args.instances):
                fleet.append(start_server(base, key_file, base / f"i{i}", env))
            urls = [url for _, url in fleet]
            asyncio.run(load(urls, headers, 200 * len(urls), args.concurrency))  # warm
            wall_n, conc = asyncio.run(load(urls, headers, args.requests, args.concurrency))
        finally:
            stop([server for server, _ in fleet])
    finally:
        _admin(args.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return {
        **lock,
        "instances": args.instances,
        "throughput_one_instance_rps": round(args.requests / wall_one, 1),
        "throughput_n_instances_rps": round(args.requests / wall_n, 1),
        "throughput_ratio": round(wall_one / wall_n, 3),
        "n_instances_p50_ms": round(statistics.median(conc), 2),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--instances", type=int, default=1, help="also measure N >= 2 instances (see above)"
    )
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")

    import httpx

    from keel.app import App
    from keel.config import config_from_dict
    from keel.settings import Settings
    from keel.testing import ScriptedChatModel

    base = Path(tempfile.mkdtemp(prefix="keel-bench-gw-"))
    key_file = base / "key"
    server, url = start_server(base, key_file)
    try:
        headers = {"Authorization": f"Bearer {key_file.read_text()}"}
        body = {"message": "where is my order ORD-1?"}

        # 1. in process: the same app and graph, no HTTP
        local = App(
            config_from_dict({"agent": {"retrieve": False}}, base_dir=base),
            settings=Settings(data_dir=base / ".keel-local"),
            model=ScriptedChatModel(script=[lambda m: "Order ORD-1 has shipped."] * 10_000_000),
        )
        n_seq = max(200, args.requests // 5)
        for _ in range(30):
            local.ask(body["message"])
        inproc = []
        for _ in range(n_seq):
            t0 = time.perf_counter()
            local.ask(body["message"])
            inproc.append((time.perf_counter() - t0) * 1000)

        # 2. HTTP, sequential
        seq = []
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for _ in range(30):
                client.post("/v1/chat", json=body)
            for _ in range(n_seq):
                t0 = time.perf_counter()
                r = client.post("/v1/chat", json=body)
                seq.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text

            # 4. time to the first streamed event
            first_local, first_http = [], []
            for _ in range(100):
                t0 = time.perf_counter()
                stream = local.stream(body["message"])
                next(stream)
                first_local.append((time.perf_counter() - t0) * 1000)
                for _ in stream:
                    pass
                t0 = time.perf_counter()
                with client.stream("POST", "/v1/chat", json={**body, "stream": True}) as r:
                    lines = r.iter_lines()
                    next(lines)
                    first_http.append((time.perf_counter() - t0) * 1000)
                    for _ in lines:
                        pass

        # 3. HTTP, concurrent
        wall, conc = asyncio.run(load([url], headers, args.requests, args.concurrency))
    finally:
        stop([server])

    p50_in, p50_seq = statistics.median(inproc), statistics.median(seq)
    result = {
        "in_process_p50_ms": round(p50_in, 2),
        "http_sequential_p50_ms": round(p50_seq, 2),
        "http_sequential_p99_ms": round(pct(seq, 99), 2),
        "overhead_p50_ms": round(p50_seq - p50_in, 2),
        "concurrency": args.concurrency,
        "throughput_rps": round(args.requests / wall, 1),
        "http_concurrent_p50_ms": round(statistics.median(conc), 2),
        "http_concurrent_p99_ms": round(pct(conc, 99), 2),
        "first_event_in_process_p50_ms": round(statistics.median(first_local), 2),
        "first_event_http_p50_ms": round(statistics.median(first_http), 2),
        "first_event_extra_p50_ms": round(
            statistics.median(first_http) - statistics.median(first_local), 2
        ),
    }
    if args.instances > 1:
        result.update(instances(args))
    print(json.dumps(result, indent=2))
    print(
        f"HTTP overhead p50 {result['overhead_p50_ms']} ms (target <= 3); "
        f"throughput {result['throughput_rps']} requests/s with one worker (target >= 200)"
    )
    if args.instances > 1:
        print(
            f"{args.instances} instances / 1 on PostgreSQL + Redis: throughput x"
            f"{result['throughput_ratio']}; the thread lock per turn p50 "
            f"{result['lease_redis_p50_ms']} ms on Redis (target <= 1), "
            f"{result['lease_postgres_p50_ms']} ms on PostgreSQL, "
            f"{result['lease_sqlite_p50_ms']} ms on SQLite"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
