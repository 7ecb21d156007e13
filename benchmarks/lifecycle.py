"""Lifecycle benchmarks: drift detection power and false-alarm rate; the semantic cache.

    python benchmarks/lifecycle.py [--data ../shared/data] [--resamples 50] [--alpha 0.01]
    python benchmarks/lifecycle.py --parts cache [--threshold 0.95]
    python benchmarks/lifecycle.py --parts snapshot [--limit 5183]

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

Semantic cache (``keel.ops.cache``) on hand-written question pairs for the support bot
(``benchmarks/data/cache_pairs.jsonl``): *paraphrase* pairs (the second asks the same as the
first: a hit is right) and *look-alike* pairs (nearly the same words, another meaning: a hit
serves a wrong answer).

* similarity table: the cosine similarity of each pair's embeddings (bundled MiniLM), and per
  threshold the share of paraphrases that would hit and of look-alikes that would (falsely);
* end to end, at the configured threshold: the support bot (``keel:extractive``, its docs
  ingested) with the cache on; each pair gets its own API key (its own partition), asks the
  first question, then the second. A first turn that is not cacheable (a tool call, a
  refusal) leaves nothing to hit: those pairs are counted apart;
* latency: a cache hit's wall time against a full run of the same app with the cache off
  (medians; each paraphrase's second question is also asked of the app with the cache off,
  just before the cache-on app answers it), as a ratio.

Release snapshots (``keel.rag.snapshots``): SciFact's corpus ingested into an app, then the
snapshot a release takes of it (vectors copied, nothing embedded again): its time against the
ingest's, and the disk it adds (the embedded Chroma directory before and after).
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


THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97)


def _pairs() -> list[dict[str, str]]:
    path = REPO / "benchmarks" / "data" / "cache_pairs.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cache_benchmark(threshold: float | None) -> dict[str, object]:
    """Similarity table over thresholds, end-to-end hit / false-hit rates, latency ratio."""
    import shutil
    import statistics
    import tempfile
    import tomllib

    from keel.app import App
    from keel.config import config_from_dict
    from keel.settings import Settings, get_settings

    pairs = _pairs()
    para = [p for p in pairs if p["kind"] == "paraphrase"]
    look = [p for p in pairs if p["kind"] == "lookalike"]

    base = Path(tempfile.mkdtemp(prefix="keel-bench-cache-"))
    shutil.copytree(REPO / "examples" / "support_bot", base / "bot")
    raw = tomllib.loads((base / "bot" / "keel.toml").read_text(encoding="utf-8"))
    settings = Settings(data_dir=base / ".keel", cache_dir=get_settings().cache_dir)

    def app(cache: dict[str, object]) -> App:
        return App(
            config_from_dict({**raw, "cache": cache}, base_dir=base / "bot"), settings=settings
        )

    off = app({"enabled": False})
    off.ingest()
    on = app({"enabled": True, **({"threshold": threshold} if threshold is not None else {})})
    threshold = on.config.cache.threshold

    # -- similarity of each pair (what the cache compares) -------------------------------
    def sims(group: list[dict[str, str]]) -> np.ndarray:
        a = on.embedder.encode([p["a"] for p in group])
        b = on.embedder.encode([p["b"] for p in group])
        return np.asarray((a * b).sum(axis=1), dtype=np.float64)

    s_para, s_look = sims(para), sims(look)
    table = {t: (float((s_para >= t).mean()), float((s_look >= t).mean())) for t in THRESHOLDS}
    print(
        f"{len(para)} paraphrase pairs (similarity median {np.median(s_para):.3f}, min "
        f"{s_para.min():.3f}); {len(look)} look-alike pairs (median {np.median(s_look):.3f}, "
        f"max {s_look.max():.3f})"
    )
    print("threshold | paraphrase hit rate | look-alike false-hit rate")
    for t, (hit, false) in table.items():
        mark = "  <- configured" if abs(t - threshold) < 1e-9 else ""
        print(f"{t:>9.2f} | {hit:>19.2f} | {false:>25.2f}{mark}")
    worst = sorted(zip(s_look, look, strict=True), key=lambda x: -x[0])[:3]
    print("closest look-alikes: " + "; ".join(f"{s:.3f} {p['a']!r} / {p['b']!r}" for s, p in worst))

    # -- end to end on the support bot ------------------------------------------------------
    for q in ("warm up the models", "How do I export my notes?"):
        off.ask(q)
        on.ask(q, owner="warm")
    full: list[float] = []
    results: dict[str, dict[str, int]] = {}
    hit_s: list[float] = []
    miss_s: list[float] = []
    for n, p in enumerate(pairs):
        owner = f"pair-{n}"  # its own partition
        started = time.perf_counter()
        on.ask(p["a"], owner=owner)
        miss_s.append(time.perf_counter() - started)
        if p["kind"] == "paraphrase":  # a full run of the same question, just before
            started = time.perf_counter()
            off.ask(p["b"])
            full.append(time.perf_counter() - started)
        started = time.perf_counter()
        second = on.ask(p["b"], owner=owner)
        elapsed = time.perf_counter() - started
        r = results.setdefault(p["kind"], {"pairs": 0, "cacheable": 0, "hits": 0})
        r["pairs"] += 1
        cacheable = any(x["key_id"] == owner for x in on.cache.stats()["partitions"])
        r["cacheable"] += cacheable
        if second.cache_hit:
            r["hits"] += 1
            hit_s.append(elapsed)

    rp, rl = results["paraphrase"], results["lookalike"]
    print(
        f"end to end at threshold {threshold}: paraphrases served from the cache "
        f"{rp['hits']}/{rp['cacheable']} of the pairs whose first answer was cacheable "
        f"({rp['pairs'] - rp['cacheable']} first answers were not: a tool call or a refusal); "
        f"look-alikes served a wrong cached answer {rl['hits']}/{rl['cacheable']}"
    )
    full_p50 = statistics.median(full)
    miss_p50 = statistics.median(miss_s)
    out: dict[str, object] = {"threshold": threshold, "table": table, "results": results}
    print(
        f"latency: full run p50 {1000 * full_p50:.1f} ms (cache off, {len(full)} turns); "
        f"first turns with the cache on (miss + store) p50 {1000 * miss_p50:.1f} ms"
    )
    if hit_s:
        hit_p50 = statistics.median(hit_s)
        print(
            f"cache hit p50 {1000 * hit_p50:.1f} ms ({len(hit_s)} hits): "
            f"hit / full run = {hit_p50 / full_p50:.3f}"
        )
        out["ratio"] = hit_p50 / full_p50
    off.close()
    on.close()
    shutil.rmtree(base, ignore_errors=True)
    return out


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def snapshot_benchmark(data: Path, limit: int | None) -> None:
    import tempfile

    from keel.app import App
    from keel.config import config_from_dict
    from keel.settings import Settings

    corpus = data / "scifact" / "corpus.jsonl"
    with tempfile.TemporaryDirectory(prefix="keel-bench-snap-") as tmp:
        work = Path(tmp)
        lines = corpus.read_text(encoding="utf-8").splitlines()[:limit]
        (work / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        app = App(
            config_from_dict({"app": {"name": "snapshot-bench"}}, base_dir=work),
            settings=Settings(data_dir=work / ".keel"),
        )
        try:
            t0 = time.perf_counter()
            report = app.ingest(["corpus.jsonl"])
            ingest_s = time.perf_counter() - t0
            chroma = work / ".keel" / "chroma"
            before = _du(chroma)
            t0 = time.perf_counter()
            name = app.knowledge.snapshot()
            snap_s = time.perf_counter() - t0
            after = _du(chroma)
            t0 = time.perf_counter()
            again = app.knowledge.snapshot()  # already there: a manifest look-up
            again_s = time.perf_counter() - t0
            assert again == name
            chunks = app.store().count()
        finally:
            app.close()
    print(f"SciFact corpus: {len(report.added)} documents, {chunks} chunks")
    print(f"ingest (embed + index)      {ingest_s:8.1f} s")
    ratio = snap_s / ingest_s
    print(f"snapshot (copy vectors)     {snap_s:8.1f} s   ratio snapshot/ingest {ratio:.3f}")
    print(f"snapshot again (exists)     {again_s * 1000:8.1f} ms")
    print(
        f"disk: collection {before / 1e6:.1f} MB, with the snapshot {after / 1e6:.1f} MB "
        f"(x{after / before:.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 24, 48])
    parser.add_argument(
        "--parts", nargs="+", choices=["drift", "cache", "snapshot"], default=["drift", "cache"]
    )
    parser.add_argument("--limit", type=int, default=None, help="SciFact documents (snapshot).")
    parser.add_argument(
        "--threshold", type=float, default=None, help="Cache threshold (default: keel's)."
    )
    args = parser.parse_args()

    if "drift" in args.parts:
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

    if "cache" in args.parts:
        print("\n== semantic cache ==")
        cache_benchmark(args.threshold)
    if "snapshot" in args.parts:
        print("\n== release snapshot ==")
        snapshot_benchmark(args.data, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
