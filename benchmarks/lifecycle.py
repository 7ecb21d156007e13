"""Lifecycle benchmarks: drift detection power and false-alarm rate (and, later, the cache).

    python benchmarks/lifecycle.py [--data ../shared/data] [--resamples 50] [--alpha 0.01]

Drift (``keel.ops.drift.detect_drift``) on real query embeddings from the bundled model:

* reference: a random half of the SciFact queries (capped at ``max_samples`` = 500 rows);
* unshifted current: a sample from the *other* half (same distribution, disjoint queries) —
  the share of resamples that alert is the false-alarm rate;
* shifted current: the same kind of sample with the support bot's eval questions
  (``examples/support_bot/evals/cases.jsonl``) mixed in at 25%, 50% and 100% — the share of
  resamples that alert is the detection power for that mix.

There are only 12 support questions, so for current samples bigger than 12 at a high mix they
are drawn with replacement (all 12 first, then repeats). Only the embeddings are compared here
(MMD permutation test); no retrieval scores or refusals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIXES = (0.0, 0.25, 0.5, 1.0)


def _read_jsonl(path: Path, field: str) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [str(json.loads(line)[field]) for line in f if line.strip()]


def _support_rows(k: int, pool: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices into ``pool`` support questions: distinct while they last, then repeats."""
    if k <= pool:
        return rng.choice(pool, size=k, replace=False)
    return np.concatenate([rng.permutation(pool), rng.choice(pool, size=k - pool, replace=True)])


def drift_benchmark(
    data: Path, *, resamples: int, alpha: float, sizes: tuple[int, ...], permutations: int
) -> dict[int, dict[float, float]]:
    """Alert rate per current-sample size and support-question mix (mix 0 = false alarms)."""
    from keel.ops.drift import detect_drift
    from keel.rag.embeddings import Embedder

    scifact = _read_jsonl(data / "scifact" / "queries.jsonl", "text")
    support = _read_jsonl(REPO / "examples" / "support_bot" / "evals" / "cases.jsonl", "input")
    embedder = Embedder()
    start = time.perf_counter()
    sci = np.asarray(embedder.encode(scifact), dtype=np.float64)
    sup = np.asarray(embedder.encode(support), dtype=np.float64)
    print(
        f"embedded {len(scifact)} SciFact + {len(support)} support queries with "
        f"{embedder.model_id} ({embedder.backend}) in {time.perf_counter() - start:.1f} s"
    )

    rates: dict[int, dict[float, float]] = {}
    start = time.perf_counter()
    calls = 0
    for size in sizes:
        rates[size] = {}
        for mix in MIXES:
            alerts = 0
            for r in range(resamples):
                rng = np.random.default_rng(10_000 * size + r)
                order = rng.permutation(len(sci))
                half = len(sci) // 2
                reference, other = sci[order[:half]], sci[order[half:]]
                k = round(mix * size)
                from_ref = other[rng.choice(len(other), size=size - k, replace=False)]
                current = np.vstack([from_ref, sup[_support_rows(k, len(sup), rng)]])
                report = detect_drift(
                    reference, current, alpha=alpha, permutations=permutations, seed=r
                )
                alerts += report.alert
                calls += 1
            rates[size][mix] = alerts / resamples
    elapsed = time.perf_counter() - start
    print(f"{calls} detect_drift calls in {elapsed:.1f} s ({1000 * elapsed / calls:.0f} ms each)")
    return rates


def cache_benchmark() -> None:
    """Semantic cache: hit latency vs a full run, hit rate on paraphrases, false-hit rate.

    Placeholder: measured when the semantic cache lands.
    """
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 24, 48])
    args = parser.parse_args()

    print("== drift: alert rate (mix 0% = false-alarm rate, others = power) ==")
    rates = drift_benchmark(
        args.data,
        resamples=args.resamples,
        alpha=args.alpha,
        sizes=tuple(args.sizes),
        permutations=args.permutations,
    )
    print(
        f"alpha={args.alpha}, {args.resamples} resamples, {args.permutations} permutations; "
        "reference = random half of SciFact queries (<= 500 rows)"
    )
    header = "current n | " + " | ".join(f"mix {m:>4.0%}" for m in MIXES)
    print(header)
    print("-" * len(header))
    for size, by_mix in rates.items():
        print(f"{size:>9} | " + " | ".join(f"{by_mix[m]:>8.2f}" for m in MIXES))

    # ---------------------------------------------------------------------------------------
    # Semantic cache — PLACEHOLDER, filled in when the semantic cache lands.
    # ---------------------------------------------------------------------------------------
    print("\n== semantic cache ==")
    cache_benchmark()
    print("not measured yet (placeholder: measured when the semantic cache lands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
