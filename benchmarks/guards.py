"""Guardrail quality and latency, in one run.

    python benchmarks/guards.py [--data ../shared/data]

1. Prompt injection: the shipped detector scored on the held-out test split that
   ``scripts/train_injection_detector.py`` makes (groups of near-duplicates never straddle the
   split; some domains are test-only): recall at the 1% and 3% false-positive thresholds, and
   the false-positive rate on ordinary questions. Target: recall >= 90% at <= 3% FPR.
2. PII: precision, recall and F2 per entity type on ``pii/presidio_synth_dev.json``.
   Target: F2 >= 0.90 for EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN,
   IP_ADDRESS (the other types reported as they are).
3. Latency per validator on a 2 KB text (p50, p99), through guardrails-ai Guards.
4. The whole input + output stack for one turn of the support bot, p50: input injection, PII
   and secrets on the question (its embedding is computed once, by retrieval, and reused by
   the detector, so it is not counted here), output PII, secrets, prompt leakage and
   grounding on the answer. Target: p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORE = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")

TEXT_2KB = (
    "Hello support team, my name is Ada Lovelace and I have a question about my invoice. "
    "You can reach me at ada.lovelace@example.com or on +44 20 7946 0958 during the day. "
    "The card on file ends in 4242 but last month you charged 4111 1111 1111 1111 twice. "
    "Please refund the second charge to IBAN GB82 WEST 1234 5698 7654 32 instead. "
    "Our office is at 221B Baker Street, London, and our server is at 203.0.113.7. "
) * 5
TEXT_2KB = TEXT_2KB[:2048]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _training_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "train_injection_detector", REPO / "scripts" / "train_injection_detector.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def injection(data: Path, embedder: Any) -> dict[str, Any]:
    from keel.guardrails.injection import InjectionDetector

    train = _training_module()
    examples, _ = train.load_examples(data / "injection", data / "scifact", data / "pii")
    splits = train.assign_splits(examples)
    test = [e for e, s in zip(examples, splits, strict=True) if s == "test"]
    out: dict[str, Any] = {"test_attacks": sum(e.label for e in test), "test_negatives": 0}
    out["test_negatives"] = len(test) - out["test_attacks"]
    for fpr in (0.01, 0.03):
        detector = InjectionDetector(embedder, fpr=fpr)
        results = detector.score_many([e.text for e in test])
        flagged = [r.flagged for r in results]
        attacks = [f for f, e in zip(flagged, test, strict=True) if e.label == 1]
        negatives = [f for f, e in zip(flagged, test, strict=True) if e.label == 0]
        questions = [
            f for f, e in zip(flagged, test, strict=True) if e.label == 0 and e.kind == "question"
        ]
        out[f"fpr_{fpr}"] = {
            "threshold": round(results[0].threshold, 4),
            "recall": round(sum(attacks) / len(attacks), 4),
            "fpr": round(sum(negatives) / len(negatives), 4),
            "fpr_ordinary_questions": round(sum(questions) / max(1, len(questions)), 4),
        }
    return out


def pii(data: Path) -> dict[str, Any]:
    from keel.guardrails.measure import evaluate_pii, load_presidio

    return evaluate_pii(load_presidio(data / "pii" / "presidio_synth_dev.json"))


def validator_latency(embedder: Any) -> dict[str, dict[str, float]]:
    from keel.config import GuardsSection
    from keel.guardrails.runner import GuardRunner, Services

    system = (REPO / "examples" / "support_bot" / "prompts" / "system.md").read_text()
    passages = [TEXT_2KB[:1000], TEXT_2KB[1000:]]
    options: dict[str, dict[str, Any]] = {
        "injection": {},
        "pii": {},
        "secrets": {},
        "grounding": {},
        "prompt_leak": {},
        "topic_denylist": {"topics": ["medical diagnosis", "investment advice"]},
        "length": {"max_chars": 4000},
        "json_schema": {"schema": {"type": "object"}},
    }
    out = {}
    for name, opts in options.items():
        runner = GuardRunner(
            GuardsSection(output={name: {"on_fail": "noop", **opts}}),
            Services(embedder=lambda: embedder, system_prompt=lambda: system, canary="c"),
        )
        rule = runner.rules["output"][0]
        # Each run sees a different text (a number varied), so no cache serves repeats.
        times = []
        for i in range(60):
            text = f"{i} {TEXT_2KB}"[:2048]
            _, decision = runner.run(rule, text, passages=passages, memory={})
            if i >= 10:
                times.append(decision.latency_ms)
        out[name] = {"p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3)}
    return out


def stack(embedder: Any) -> dict[str, float]:
    """One turn of the support bot with the recommended guard stack."""
    import tempfile

    from keel.agents.hooks import RunContext
    from keel.app import App
    from keel.settings import Settings, get_settings

    guards = {
        "input": {"injection": {}, "pii": {"on_fail": "fix"}, "secrets": {"on_fail": "fix"}},
        "output": {
            "pii": {"on_fail": "fix"},
            "secrets": {"on_fail": "fix"},
            "prompt_leak": {},
            "grounding": {"on_fail": "fix"},
        },
    }
    base = Path(tempfile.mkdtemp(prefix="keel-bench-guards-"))
    app = App.from_config(
        REPO / "examples" / "support_bot" / "keel.toml",
        settings=Settings(data_dir=base, cache_dir=get_settings().cache_dir),
    )
    app.config = app.config.model_copy(update={"guards": app.config.guards.model_validate(guards)})
    app.ingest()
    runner = app.guards
    questions = [
        json.loads(line)["input"]
        for line in (REPO / "examples/support_bot/evals/cases.jsonl").read_text().splitlines()
        if line.strip()
    ]
    answers = [app.ask(q) for q in questions]  # real extractive answers and their passages
    times = []
    for round_no in range(5):
        for q, a in zip(questions, answers, strict=True):
            question = f"{q} ({round_no})"  # a new question each round: nothing cached
            ctx = RunContext(app=app.name, thread_id="bench", scopes=None)
            # Retrieval embeds the question first; the injection detector reuses that vector
            # (embed_query's cache), so it is retrieval's cost, not the guards'.
            embedder.embed_query(question)
            t0 = time.perf_counter()
            runner.on_input(question, ctx)
            from keel.agents.graph import hit_from_dict

            ctx.hits = [hit_from_dict(h) for h in a.hits]
            runner.on_output(a.text, ctx)
            times.append((time.perf_counter() - t0) * 1000)
    app.close()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(pct(times, 99), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--parts",
        default="injection,pii,latency,stack",
        help="comma-separated subset of: injection, pii, latency, stack",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    data = args.data.resolve()
    if not (data / "injection").is_dir() or not (data / "pii").is_dir():
        print(f"error: {data} has no injection/ and pii/ data", file=sys.stderr)
        return 2

    from keel.rag.embeddings import Embedder
    from keel.settings import get_settings

    embedder = Embedder(cache_dir=get_settings().cache_dir)
    embedder.encode(["warm up"])

    result: dict[str, Any] = {}
    if "injection" in parts:
        result["injection"] = injection(data, embedder)
        print("prompt injection, held-out test split:")
        inj = result["injection"]
        print(f"  {inj['test_attacks']} attacks, {inj['test_negatives']} negatives")
        for fpr in (0.01, 0.03):
            r = inj[f"fpr_{fpr}"]
            print(
                f"  at the {fpr:.0%} threshold ({r['threshold']}): recall {r['recall']:.3f}, "
                f"FPR {r['fpr']:.4f}, FPR on ordinary questions {r['fpr_ordinary_questions']:.4f}"
            )
    if "pii" in parts:
        result["pii"] = pii(data)
        print("\nPII on presidio_synth_dev (type: precision recall F2, support):")
        for kind, m in sorted(result["pii"].items(), key=lambda kv: -kv[1].get("support", 0)):
            mark = "  core" if kind in CORE else ""
            print(
                f"  {kind:<18} {m['precision']:.3f} {m['recall']:.3f} {m['f2']:.3f}  "
                f"({m.get('support', 0)}){mark}"
            )
    if "latency" in parts:
        result["latency"] = validator_latency(embedder)
        print("\nvalidator latency on a 2 KB text (through guardrails-ai):")
        for name, t in result["latency"].items():
            print(f"  {name:<15} p50 {t['p50_ms']:7.3f} ms   p99 {t['p99_ms']:7.3f} ms")
    if "stack" in parts:
        result["stack"] = stack(embedder)
        s = result["stack"]
        print(
            f"\nwhole input + output stack per support-bot turn: p50 {s['p50_ms']} ms, "
            f"p99 {s['p99_ms']} ms (target p50 <= 10)"
        )
    (Path(__file__).parent / "results").mkdir(exist_ok=True)
    (Path(__file__).parent / "results" / "guards.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
