"""Experiment: the character n-gram scale for the shipped weights, and what it does to documents.

    python benchmarks/injection_ngram_scale.py [--data ../shared/data] [--scales 0,1,2,3]
        [--wheels DIR]

``benchmarks/injection_charngrams.py`` chose the n-gram block's weight (``ngram_scale``) for
recall on corpora never trained on; with the scale it chose (5) the detector retrained on the
shared data flagged twice the document passages at the request threshold. This measures, for
each candidate scale, the training script's own recipe (the shared data, its split, its five
group-aware folds; the shipped C and embedding scale, so that only the n-gram scale changes):

development side only (what the choice may read):
  out-of-fold recall at the 1 % and 3 % thresholds (the thresholds from those scores, one
  false-positive budget per kind of negative, as the training script sets them); the share
  of the standard library's docstring chunks (ordinary documentation never trained on; the
  context threshold's calibration set, never in the test split) flagged at those request
  thresholds by the model fitted on the whole development split; and documentation from a
  source never trained on: each development passage source (package READMEs, SciFact
  abstracts) left out in turn, the model and its thresholds made without it, the share of its
  passages flagged;

test side (reported, never used to choose):
  held-out recall and false-positive rate at the 1 % and 3 % thresholds, per kind and source
  (document passages, the example apps' documents), and the context guard: the context
  threshold calibrated as the training script calibrates it (and, as an alternative, also
  over the development passages' out-of-fold scores), the chunks dropped on the example's
  docs, the scaffold's docs and 500 SciFact abstracts, and the planted indirect injections
  caught (and how many the document rule catches alone).

Choice rules: rule A, fixed before any test figure was read: the largest scale whose
docstring chunks flagged at the 3 % and 1 % request thresholds are no more than with no
n-gram block and whose out-of-fold recall at 3 % is no lower. Rule B, added after rule A's
choice failed on the test side's documents: rule A, and the left-out passage sources flagged
no more than with no n-gram block. With ``--wheels DIR`` it also runs ``benchmarks/guards.py``'s
leave-one-corpus-out at every scale (the corpus wheels in training, the held-out corpus
never), with the FPR of its thresholds on the test side's passages beside guards.py's.

Results go to ``benchmarks/results/injection_ngram_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from guards import _loco_fit, load_corpora, loco_negatives, loco_training_rows  # noqa: E402

CACHE = REPO / "benchmarks" / "results" / "cache"


def _doc_examples(train: Any, name: str, chunks: list[str]) -> list[Any]:
    return [train.Example(c, 0, name, "passage") for c in chunks]


def _document_scores(train: Any, feats: Any, docs: list[Any], model: Any) -> np.ndarray:
    """Scores of documentation chunks (not in training) under ``model``."""
    return np.asarray(train.scores_for(feats, docs, list(range(len(docs))), model))


def _doc_reasons(det: Any, feats: Any) -> np.ndarray:
    """Whether each chunk holds an order addressed to the AI (the context guard's rule)."""
    return np.asarray([not det.DOCUMENT_HEURISTICS.isdisjoint(r) for r in feats.reasons])


def ship_recipe(data: Path, scales: list[float]) -> dict[str, Any]:
    from keel.guardrails import calibration as cal
    from keel.guardrails import injection as det
    from keel.rag.embeddings import Embedder
    from keel.settings import get_settings

    loaded = load_corpora(data)
    train, examples = loaded.train, loaded.examples
    clusters, splits = loaded.clusters, loaded.splits
    folds = train.assign_folds(examples, clusters, splits)
    embedder = Embedder(cache_dir=get_settings().cache_dir)
    feats = train.featurise(examples, embedder, CACHE)
    shipped = det.load_weights()["model"]
    c, emb_scale = float(shipped["C"]), float(shipped["embedding_scale"])
    labels = np.asarray([e.label for e in examples])
    dev = [i for i, s in enumerate(splits) if s == "dev"]
    test = [i for i, s in enumerate(splits) if s == "test"]
    groups = train._masks(examples, test)

    doc_sets = {
        "stdlib docstrings": cal.stdlib_doc_chunks(),
        "example docs": cal.folder_chunks(REPO / "examples" / "support_bot" / "docs"),
        "scaffold docs": cal.folder_chunks(REPO / "src" / "keel" / "_scaffold" / "app" / "docs"),
        "scifact (500 abstracts)": cal.scifact_chunks(data / "scifact", 500),
    }
    cases = cal.indirect_cases(doc_sets["example docs"])
    reached = [cs for cs in cases if cs.reaches_context]
    doc_sets["indirect"] = [chunk for cs in reached for chunk in cs.chunks]
    owner = [k for k, cs in enumerate(reached) for _ in cs.chunks]
    doc_docs = {k: _doc_examples(train, k, v) for k, v in doc_sets.items()}
    doc_feats = {k: train.featurise(v, embedder, CACHE) for k, v in doc_docs.items()}

    out: dict[str, Any] = {"C": c, "embedding_scale": emb_scale, "scales": {}}
    for ngram_scale in scales:
        started = time.perf_counter()
        oof = np.zeros(len(examples))
        for k in range(train.FOLDS):
            fit_idx = [i for i in dev if folds[i] != k]
            held = [i for i in dev if folds[i] == k]
            m = train.fit_on(feats, examples, fit_idx, c, emb_scale, ngram_scale)
            oof[held] = train.scores_for(feats, examples, held, m)
        thresholds = train.kind_thresholds(examples, dev, oof[dev])
        final = train.fit_on(feats, examples, dev, c, emb_scale, ngram_scale)
        dev_labels = labels[dev]
        row: dict[str, Any] = {"thresholds": thresholds, "dev": {}, "test": {}, "context": {}}
        scores = {k: _document_scores(train, doc_feats[k], doc_docs[k], final) for k in doc_sets}
        std = scores["stdlib docstrings"]
        for key, t in thresholds.items():
            row["dev"][f"oof_recall@{key}"] = round(
                float((oof[dev][dev_labels == 1] >= t).mean()), 4
            )
            row["dev"][f"stdlib_flagged@{key}"] = int((std >= t).sum())
        row["dev"]["stdlib_chunks"] = len(std)
        test_scores = train.scores_for(feats, examples, test, final)
        for key, t in thresholds.items():
            row["test"][f"fpr_{key}"] = train.operating_point(test_scores, labels[test], groups, t)
        # documentation from a domain never trained on, on the development side: each passage
        # source left out in turn (thresholds from out-of-fold scores without it)
        for src in ("package_docs", "scifact_abstract"):
            fit_idx = [i for i in dev if examples[i].source != src]
            rows = [i for i in dev if examples[i].source == src]
            o = np.zeros(len(examples))
            for k in range(train.FOLDS):
                part = [i for i in fit_idx if folds[i] != k]
                held = [i for i in fit_idx if folds[i] == k]
                m = train.fit_on(feats, examples, part, c, emb_scale, ngram_scale)
                o[held] = train.scores_for(feats, examples, held, m)
            th = train.kind_thresholds(examples, fit_idx, o[fit_idx])
            m = train.fit_on(feats, examples, fit_idx, c, emb_scale, ngram_scale)
            s_src = train.scores_for(feats, examples, rows, m)
            for key, t in th.items():
                row["dev"][f"unseen_{src}@{key}"] = round(float((s_src >= t).mean()), 4)
        # the context guard, its threshold calibrated as the training script does
        t_ctx = train.threshold_for(std, train.CONTEXT_FPR)
        dev_passages = [i for i in dev if examples[i].kind == "passage"]
        row["context"]["threshold_with_dev_passages_oof"] = max(
            t_ctx, train.threshold_for(oof[dev_passages], train.CONTEXT_FPR)
        )
        row["context"]["threshold"] = t_ctx
        for name in ("example docs", "scaffold docs", "scifact (500 abstracts)"):
            flagged = (scores[name] >= t_ctx) | _doc_reasons(det, doc_feats[name])
            row["context"][name] = f"{int(flagged.sum())}/{len(flagged)}"
        hit = (scores["indirect"] >= t_ctx) | _doc_reasons(det, doc_feats["indirect"])
        caught = {owner[j] for j in np.flatnonzero(hit)}
        row["context"]["indirect caught"] = f"{len(caught)}/{len(reached)}"
        t_alt = row["context"]["threshold_with_dev_passages_oof"]
        for name in ("example docs", "scaffold docs", "scifact (500 abstracts)"):
            flagged = (scores[name] >= t_alt) | _doc_reasons(det, doc_feats[name])
            row["context"][f"alt {name}"] = f"{int(flagged.sum())}/{len(flagged)}"
        hit = (scores["indirect"] >= t_alt) | _doc_reasons(det, doc_feats["indirect"])
        row["context"]["alt indirect caught"] = f"{len({owner[j] for j in np.flatnonzero(hit)})}"
        heur = {owner[j] for j in np.flatnonzero(_doc_reasons(det, doc_feats["indirect"]))}
        row["context"]["indirect caught by the document rule alone"] = len(heur)
        row["seconds"] = round(time.perf_counter() - started)
        out["scales"][f"{ngram_scale:g}"] = row
        t3, t1 = row["test"]["fpr_0.03"], row["test"]["fpr_0.01"]
        print(
            f"scale {ngram_scale:g}: dev {row['dev']} | test recall@3 {t3['recall']} "
            f"fpr@3 {t3['fpr']} passages@3 {t3.get('fpr.passage')} app_docs@3 "
            f"{t3.get('fpr.app_docs')} recall@1 {t1['recall']} fpr@1 {t1['fpr']} passages@1 "
            f"{t1.get('fpr.passage')} | context {row['context']} ({row['seconds']}s)",
            flush=True,
        )
    base = out["scales"].get("0")
    if base is not None:
        # rule A (fixed before any test figure was read) and rule B (rule A and documentation
        # from a passage source never trained on; added after rule A's choice failed on the
        # test side's documents): the largest scale that passes, 0 when none does
        def no_worse(s: float, keys: tuple[str, ...], higher_is_better: tuple[str, ...]) -> bool:
            row = out["scales"][f"{s:g}"]["dev"]
            return all(row[k] <= base["dev"][k] for k in keys) and all(
                row[k] >= base["dev"][k] for k in higher_is_better
            )

        rule_a = ("stdlib_flagged@0.01", "stdlib_flagged@0.03")
        rule_b = (
            *rule_a,
            *(
                f"unseen_{src}@{k}"
                for src in ("package_docs", "scifact_abstract")
                for k in ("0.01", "0.03")
            ),
        )
        for name, keys in (("rule_a", rule_a), ("rule_b", rule_b)):
            ok = [s for s in scales if s > 0 and no_worse(s, keys, ("oof_recall@0.03",))]
            out[f"choice_{name}"] = max(ok) if ok else 0.0
            print(f"choice by development-side {name}: scale {out[f'choice_{name}']:g}", flush=True)
    return out


def loco(data: Path, wheels: Path, scales: list[float]) -> dict[str, Any]:
    """``benchmarks/guards.py``'s leave-one-corpus-out at each n-gram scale."""
    from keel.guardrails import injection as det
    from keel.rag.embeddings import Embedder
    from keel.settings import get_settings

    loaded = load_corpora(data, wheels)
    train, examples = loaded.train, loaded.examples
    splits = loaded.splits
    embedder = Embedder(cache_dir=get_settings().cache_dir)
    feats = train.featurise(examples, embedder, CACHE)
    shipped = det.load_weights()["model"]
    c, emb_scale = float(shipped["C"]), float(shipped["embedding_scale"])
    corpora = [s for s in train.PUBLIC_ATTACK_CORPORA if any(e.source == s for e in examples)]
    negatives_test = loco_negatives(examples, splits)
    passages_test = [
        i for i, e in enumerate(examples) if splits[i] == "test" and e.kind == "passage"
    ]
    out: dict[str, Any] = {}
    for ngram_scale in scales:
        rows: dict[str, Any] = {}
        started = time.perf_counter()
        for corpus in corpora:
            fit_idx = loco_training_rows(examples, splits, corpus)
            fitted, th = _loco_fit(train, feats, examples, fit_idx, c, emb_scale, ngram_scale)
            held = [i for i, e in enumerate(examples) if e.source == corpus]
            s_held = train.scores_for(feats, examples, held, fitted)
            s_neg = train.scores_for(feats, examples, negatives_test, fitted)
            s_pas = train.scores_for(feats, examples, passages_test, fitted)
            row: dict[str, Any] = {"attacks": len(held)}
            for key in ("0.01", "0.03"):
                row[f"recall@{key}"] = round(float((s_held >= th[key]).mean()), 4)
                row[f"fpr@{key}"] = round(float((s_neg >= th[key]).mean()), 4)
                row[f"passages@{key}"] = round(float((s_pas >= th[key]).mean()), 4)
            rows[corpus] = row
            print(f"  scale {ngram_scale:g} held out {corpus:<16} {row}", flush=True)
        rows["seconds"] = round(time.perf_counter() - started)
        out[f"{ngram_scale:g}"] = rows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--scales", default="0,1,2,3")
    parser.add_argument("--wheels", type=Path, default=None)
    parser.add_argument("--skip-recipe", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    scales = [float(s) for s in args.scales.split(",")]
    data = args.data.resolve()
    result: dict[str, Any] = {}
    if not args.skip_recipe:
        result["recipe"] = ship_recipe(data, scales)
    if args.wheels is not None:
        result["loco"] = loco(data, args.wheels, scales)
    out = REPO / "benchmarks" / "results" / "injection_ngram_scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
