"""Gateway overhead and throughput, measured side by side in one run.

    python benchmarks/gateway.py [--requests 2000] [--concurrency 16]

A server process runs ``keel serve``'s app (one uvicorn worker) over a scripted model that
answers instantly; this process drives it over loopback:

1. in process, the same app's ``App.ask`` (no HTTP): median latency, the baseline;
2. HTTP, one request at a time: median and p99 latency; overhead = HTTP p50 - in-process p50;
3. HTTP, ``--concurrency`` clients: throughput (requests/s) and p50 / p99;
4. streaming: extra time to the first SSE event over HTTP against ``App.stream``'s first event
   in process.

Targets on a 2-core machine with one worker: overhead p50 <= 3 ms, >= 200 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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
    app = App(
        config_from_dict({"app": {"name": "bench"}, "agent": {"retrieve": False},
                          "limits": {"requests_per_minute": 10_000_000,
                                     "tokens_per_day": 10_000_000_000}}, base_dir=base),
        settings=Settings(data_dir=base / ".keel-server"),
        model=ScriptedChatModel(script=[lambda m: "Order ORD-1 has shipped."] * 10_000_000),
    )
    api = create_app(app)
    key, _ = api.state.gateway.keys.create("bench", ["chat"])
    key_file.write_text(key)
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    import httpx

    from keel.app import App
    from keel.config import config_from_dict
    from keel.settings import Settings
    from keel.testing import ScriptedChatModel

    base = Path(tempfile.mkdtemp(prefix="keel-bench-gw-"))
    port = free_port()
    key_file = base / "key"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(base), str(port), str(key_file)],
        env={**os.environ},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if key_file.exists() and httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
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
        async def load() -> tuple[float, list[float]]:
            latencies: list[float] = []
            limits = httpx.Limits(max_connections=args.concurrency)
            async with httpx.AsyncClient(
                base_url=url, headers=headers, timeout=60, limits=limits
            ) as aclient:
                queue = list(range(args.requests))

                async def worker() -> None:
                    while queue:
                        queue.pop()
                        t0 = time.perf_counter()
                        r = await aclient.post("/v1/chat", json=body)
                        latencies.append((time.perf_counter() - t0) * 1000)
                        assert r.status_code == 200, r.text

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                return time.perf_counter() - started, latencies

        wall, conc = asyncio.run(load())
    finally:
        server.terminate()
        server.wait(timeout=10)

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
    print(json.dumps(result, indent=2))
    print(
        f"HTTP overhead p50 {result['overhead_p50_ms']} ms (target <= 3); "
        f"throughput {result['throughput_rps']} requests/s with one worker (target >= 200)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
