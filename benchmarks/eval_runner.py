"""The eval runner's concurrency: 200 cases against a model that takes 50 ms per call.

    python benchmarks/eval_runner.py [--cases 200] [--concurrency 16] [--delay 0.05] [--runs 3]

One warm-up run first (the metric libraries' imports, the app's stores): a one-time cost
of the process, not of running cases. The app has retrieval off (``agent.retrieve =
false``) and a scripted model whose every call sleeps 50 ms and returns a fixed answer, so
the ideal wall time is cases × delay / concurrency. Then ``--runs`` timed runs of the suite,
side by side in this process; each prints its wall time, ratio to the ideal and process CPU
time, and the verdict (target <= 1.25) is on their median, since a busy machine stretches
a run's wall time (not its CPU time).

What bounds the ratio: the Python work of a case holds the GIL, so the run cannot be faster
than cases × CPU per case, whatever the concurrency; and 200 cases on 16 workers is 13 calls
in a row for half of them, so even with no work at all the ratio is 13 / 12.5 = 1.04.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from langchain_core.messages import BaseMessage

from keel.app import App
from keel.config import config_from_dict
from keel.evals.runner import run_suite
from keel.evals.suites import load_suite
from keel.settings import Settings, get_settings, offline_defaults
from keel.testing import ScriptedChatModel

TARGET = 1.25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    offline_defaults()

    base = Path(tempfile.mkdtemp(prefix="keel-bench-evals-"))
    evals = base / "evals"
    evals.mkdir()
    with (evals / "cases.jsonl").open("w", encoding="utf-8") as f:
        for i in range(args.cases):
            case = {"id": f"c{i:04d}", "input": f"Question {i}?", "reference": "A fixed answer."}
            f.write(json.dumps(case) + "\n")
    (evals / "bench.yaml").write_text(
        "name: bench\ndataset: cases.jsonl\n"
        "metrics: {non_llm_string_similarity: {}, latency_ms: {}}\n"
        f"concurrency: {args.concurrency}\ntimeout_s: 30\nretries: 0\n",
        encoding="utf-8",
    )

    def reply(messages: list[BaseMessage]) -> str:
        time.sleep(args.delay)
        return "A fixed answer."

    warm = 2 * args.concurrency
    model = ScriptedChatModel(script=[reply] * (args.cases * args.runs + warm))
    config = config_from_dict(
        {
            "app": {"name": "bench-evals"},
            "agent": {"retrieve": False},
        },
        base_dir=base,
    )
    settings = Settings(data_dir=base / ".keel", cache_dir=get_settings().cache_dir)
    app = App(config, settings=settings, model=model)
    try:
        suite = load_suite(evals / "bench.yaml")
        # Warm up once (imports of the metric libraries, the app's stores, the model): a
        # one-time cost of the process, not of running cases.
        warm_cases = evals / "warm.jsonl"
        warm_cases.write_text(
            "".join(
                json.dumps({"id": f"w{i}", "input": "warm up?", "reference": "A fixed answer."})
                + "\n"
                for i in range(warm)
            ),
            encoding="utf-8",
        )
        run_suite(suite.model_copy(update={"dataset_path": warm_cases}), app=app)
        timed = []
        for _ in range(args.runs):
            start, cpu_start = time.perf_counter(), time.process_time()
            # gc.freeze is opt-in (process-wide); the benchmark asks for it, as a CI job may
            run = run_suite(suite, app=app, gc_freeze=True)
            timed.append(
                (time.perf_counter() - start, time.process_time() - cpu_start, len(run.errors))
            )
    finally:
        app.close()

    ideal = args.cases * args.delay / args.concurrency
    print(
        f"cases: {args.cases}  concurrency: {args.concurrency}  delay: {args.delay * 1000:.0f} ms"
    )
    print(f"ideal: {ideal:.3f} s")
    for n, (wall, cpu, errors) in enumerate(timed, 1):
        print(
            f"run {n}: wall {wall:.3f} s  ratio {wall / ideal:.3f}  errors {errors}  "
            f"cpu {cpu:.3f} s ({cpu / args.cases * 1000:.1f} ms per case, all threads)"
        )
    ratio = statistics.median(wall / ideal for wall, _, _ in timed)
    errors = sum(e for _, _, e in timed)
    print(f"ratio: {ratio:.3f} (median of {args.runs}; target <= {TARGET})")
    return 0 if ratio <= TARGET and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
