"""Tracing overhead: per-request time with tracing and the span store on, against off.

    python benchmarks/tracing_overhead.py [--n 400]

Two apps, identical but for ``[tracing] enabled``, answer the same turn (retrieval over the
support bot's docs, a tool call, an answer: the spans of every component), alternating so
machine noise hits both alike. With tracing on, every turn's spans go through the batching
exporter into the SQLite span store (capture "redacted": PII and secrets redacted). Prints the
median per-request time of each and their ratio (target <= 1.10).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def make(base: Path, tracing: bool, n: int) -> Any:
    from keel.app import App
    from keel.config import load_config
    from keel.settings import Settings, get_settings
    from keel.testing import ScriptedChatModel

    shutil.copytree(REPO / "examples" / "support_bot", base, ignore=shutil.ignore_patterns(".keel"))
    config = load_config(base / "keel.toml")
    config = config.model_copy(
        update={"tracing": config.tracing.model_copy(update={"enabled": tracing})}
    )
    script: list[Any] = []
    for _ in range(n):
        script += [
            ScriptedChatModel.tool_call("plan_price", {"plan": "plus", "seats": 3}),
            "Three Plus seats cost $24.0 a month [1].",
        ]
    app = App(
        config,
        settings=Settings(data_dir=base / ".keel", cache_dir=get_settings().cache_dir),
        model=ScriptedChatModel(script=script),
    )
    app.ingest()
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="keel-bench-tracing-"))
    warm = 20
    on = make(work / "on", True, args.n + warm)
    off = make(work / "off", False, args.n + warm)
    question = "How much do three Plus seats cost per month?"
    for _ in range(warm):
        on.ask(question)
        off.ask(question)
    t_on, t_off = [], []
    for i in range(args.n):
        for app, bucket in ((on, t_on), (off, t_off)) if i % 2 == 0 else ((off, t_off), (on, t_on)):
            t0 = time.perf_counter()
            app.ask(question)
            bucket.append((time.perf_counter() - t0) * 1000)
    on.tracing.flush()
    spans = on.tracing.store.exported
    m_on, m_off = statistics.median(t_on), statistics.median(t_off)
    print(
        f"turns per app: {args.n} (after {warm} warm-up); spans stored: {spans}, "
        f"dropped: {on.tracing.store.dropped}"
    )
    print(f"tracing off  median {m_off:7.2f} ms")
    print(f"tracing on   median {m_on:7.2f} ms")
    print(f"ratio on / off: {m_on / m_off:.3f} (target <= 1.10)")
    on.close()
    off.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
