"""Experiment: hashed character n-grams next to the injection detector's features.

    python benchmarks/injection_charngrams.py --wheels DIR [--data ../shared/data]

The detector's logistic model reads ``[MiniLM embedding, heuristic indicators, log(1 + window
length)]``. This adds a block of hashed character n-grams of each window (scikit-learn's
``HashingVectorizer``: ``char_wb``, l2-normalised, no alternating sign) multiplied by
``ngram_scale`` after the dense block is standardised (the n-gram block is not centred, so it
stays sparse), and measures leave-one-corpus-out (LOCO) recall with the protocol of
``benchmarks/guards.py``'s ``leave_one_corpus_out``: for each public attack corpus X the
model is fitted on the development split without X (the shipped C and embedding scale),
thresholds for 1 % and 3 % come from 3-fold cross-validation on that training side, recall is
taken on every row of X, and the FPR of those thresholds on the test split's questions, benign
prompts and sentences.

The n-gram settings and ``ngram_scale`` are chosen per held-out corpus X without looking at X
or at the test split (nested): for every other public corpus Y, a model is fitted on the
development split without X and Y, with the negatives of one of three hash folds left out; its
thresholds come from those left-out development negatives, and its recall is taken on Y's
development rows. The candidate with the highest mean of that recall over the Ys (at 3 %, then
1 %) is the one used for X. A model without either X or Y is the same for (X, Y) and (Y, X),
so each pair is fitted once per candidate. ``ngram_scale`` 0 (the current detector) is a
candidate too.

Results go to ``benchmarks/results/injection_charngrams.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from guards import hash_fold, load_corpora, loco_negatives  # noqa: E402

# candidates: (name, ngram_range, n_features, ngram_scale)
SETTINGS = {
    "c35_16": ((3, 5), 2**16),
    "c25_18": ((2, 5), 2**18),
}
SCALES = (0.0, 2.0, 5.0, 10.0)
DEFAULT_SETTINGS = ("c35_16",)  # c25_18: 2.5x the bucket weights to ship, and twice the fit time


def ngram_block(train: Any, feats: Any, setting: str) -> Any:
    """Hashed character n-grams of every window, in the row order of ``feats.vectors``."""
    from keel.guardrails.injection import char_ngram_vectorizer, normalise

    ngram_range, n_features = SETTINGS[setting]
    vec = char_ngram_vectorizer(ngram_range, n_features)  # the detector's own
    flat = [normalise(w) for p in feats.pieces for w in p]
    return vec.transform(flat).tocsr()


class Model:
    def __init__(self, dense_w: np.ndarray, ng_w: np.ndarray | None, bias: float) -> None:
        self.dense_w, self.ng_w, self.bias = dense_w, ng_w, bias


def fit(
    train: Any,
    feats: Any,
    examples: list[Any],
    idx: list[int],
    c: float,
    scale: float,
    ng: Any,
    ng_scale: float,
    tol: float = 1e-8,
) -> Model:
    """``train.fit`` with the n-gram block (times ``ng_scale``) beside the standardised dense
    features; weights folded back to raw features."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from keel.guardrails import injection as det

    x, owner = train.window_matrix(feats, idx)
    y = np.asarray([examples[i].label for i in owner.tolist()])
    w = train.sample_weights(examples, owner, idx)
    mean = np.average(x, axis=0, weights=w)
    spread = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    spread[spread < 1e-8] = 1.0
    factor = np.ones(x.shape[1])
    factor[: x.shape[1] - len(det.HEURISTIC_NAMES) - 1] = scale
    s = factor / spread
    xs = (x - mean) * s
    if ng_scale > 0:
        rows = np.flatnonzero(np.isin(feats.owner, np.asarray(idx)))
        design = sp.hstack([sp.csr_matrix(xs), ng[rows] * ng_scale]).tocsr()
    else:
        design = xs
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=10_000, tol=tol, random_state=1729)
    model.fit(design, y, sample_weight=w)
    coef = model.coef_[0]
    dense = coef[: x.shape[1]] * s
    bias = float(model.intercept_[0] - np.sum(dense * mean))
    ng_w = coef[x.shape[1] :] * ng_scale if ng_scale > 0 else None
    return Model(dense, ng_w, bias)


def scores(train: Any, feats: Any, examples: list[Any], idx: list[int], m: Model, ng: Any):
    """Each text's score: its highest window probability (as the runtime scores)."""
    x, owner = train.window_matrix(feats, idx)
    z = x @ m.dense_w + m.bias
    if m.ng_w is not None:
        rows = np.flatnonzero(np.isin(feats.owner, np.asarray(idx)))
        z = z + ng[rows] @ m.ng_w
    p = 0.5 * (1.0 + np.tanh(0.5 * z))
    out = np.full(len(feats.pieces), -1.0)
    np.maximum.at(out, owner, p)
    return out[np.asarray(idx)]


def loco_fit(train, feats, examples, idx, c, scale, ng, ng_scale):
    """guards._loco_fit with the n-gram block: 3 hash folds for the thresholds, then all."""
    folds = [hash_fold(examples[i].text, 3) for i in idx]
    oof = np.zeros(len(idx))
    for k in range(3):
        fit_idx = [i for i, f in zip(idx, folds, strict=True) if f != k]
        held = [j for j, f in enumerate(folds) if f == k]
        m = fit(train, feats, examples, fit_idx, c, scale, ng, ng_scale)
        oof[held] = scores(train, feats, examples, [idx[j] for j in held], m, ng)
    thresholds = train.kind_thresholds(examples, idx, oof)
    return fit(train, feats, examples, idx, c, scale, ng, ng_scale), thresholds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS))
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    parser.add_argument(
        "--outer-all",
        action="store_true",
        help="measure the outer LOCO of every candidate (default: the nested choices and none)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from keel.guardrails.injection import load_weights
    from keel.rag.embeddings import Embedder
    from keel.settings import get_settings

    loaded = load_corpora(args.data.resolve(), args.wheels)
    train, examples = loaded.train, loaded.examples
    splits = loaded.splits
    embedder = Embedder(cache_dir=get_settings().cache_dir)
    feats = train.featurise(examples, embedder, REPO / "benchmarks" / "results" / "cache")
    shipped = load_weights()["model"]
    c, scale = float(shipped["C"]), float(shipped["embedding_scale"])
    corpora = [s for s in train.PUBLIC_ATTACK_CORPORA if any(e.source == s for e in examples)]
    negatives_test = loco_negatives(examples, splits)
    dev_ok = [i for i, e in enumerate(examples) if splits[i] == "dev" and not e.test_only]
    settings = args.settings.split(",")
    scales = [float(s) for s in args.scales.split(",")]
    candidates = [("none", 0.0)] if 0.0 in scales else []
    candidates += [(st, sc) for st in settings for sc in scales if sc > 0]
    blocks = {st: ngram_block(train, feats, st) for st in settings}
    blocks["none"] = None
    print(f"{len(examples)} texts, {len(feats.owner)} windows; candidates {candidates}", flush=True)
    result: dict[str, Any] = {"C": c, "embedding_scale": scale, "candidates": candidates}

    # inner: per pair {X, Y} of corpora and candidate, recall on Y's (and X's) dev rows
    inner: dict[str, dict[str, dict[str, float]]] = {}
    neg_fold = {i: hash_fold(examples[i].text, 3) for i in dev_ok if examples[i].label == 0}
    for cand in candidates:
        key = f"{cand[0]}@{cand[1]:g}"
        inner[key] = {}
        started = time.perf_counter()
        for x_c, y_c in itertools.combinations(corpora, 2):
            fit_idx = [
                i
                for i in dev_ok
                if examples[i].source not in (x_c, y_c) and neg_fold.get(i, 1) != 0
            ]
            val_neg = [i for i in dev_ok if neg_fold.get(i) == 0]
            m = fit(train, feats, examples, fit_idx, c, scale, blocks[cand[0]], cand[1])
            s_neg = scores(train, feats, examples, val_neg, m, blocks[cand[0]])
            th = train.kind_thresholds(examples, val_neg, s_neg)
            for held_c in (x_c, y_c):
                other = y_c if held_c == x_c else x_c
                rows = [i for i in dev_ok if examples[i].source == held_c]
                s = scores(train, feats, examples, rows, m, blocks[cand[0]])
                # keyed by (outer corpus = the other one, inner held = held_c)
                inner[key][f"{other}|{held_c}"] = {
                    k: round(float((s >= t).mean()), 4) for k, t in th.items()
                }
        print(f"  inner {key}: {time.perf_counter() - started:.0f}s", flush=True)
    result["inner"] = inner

    def choose_value(cand: tuple[str, float], outer: str) -> tuple[float, float, float]:
        """Mean inner recall (3 %, then 1 %) over the pairs without ``outer`` (every pair when
        it is ""), then the smaller scale."""
        key = f"{cand[0]}@{cand[1]:g}"
        rows = [v for k, v in inner[key].items() if k.startswith(f"{outer}|")]
        return (
            float(np.mean([r["0.03"] for r in rows])),
            float(np.mean([r["0.01"] for r in rows])),
            -cand[1],
        )

    def choose(outer: str) -> tuple[str, float]:
        return max(candidates, key=lambda cand: choose_value(cand, outer))

    chosen = {x: choose(x) for x in corpora}
    result["nested_choice"] = {x: f"{a}@{b:g}" for x, (a, b) in chosen.items()}
    print(f"nested choice: {result['nested_choice']}", flush=True)
    # for the shipped weights (no corpus held out): the same criterion over every pair
    overall = max(candidates, key=lambda cand: choose_value(cand, ""))
    result["overall_choice"] = f"{overall[0]}@{overall[1]:g}"
    print(f"overall choice (the training script's NGRAM_SCALE): {result['overall_choice']}")
    measured = candidates if args.outer_all else [("none", 0.0), *dict.fromkeys(chosen.values())]
    # outer LOCO of the measured candidates (the nested choice picks one per corpus)
    outer: dict[str, dict[str, Any]] = {}
    for cand in dict.fromkeys(measured):
        key = f"{cand[0]}@{cand[1]:g}"
        outer[key] = {}
        started = time.perf_counter()
        ng = blocks[cand[0]]
        m_all, t_all = loco_fit(train, feats, examples, dev_ok, c, scale, ng, cand[1])
        for corpus in corpora:
            fit_idx = [i for i in dev_ok if examples[i].source != corpus]
            m, th = loco_fit(train, feats, examples, fit_idx, c, scale, ng, cand[1])
            held = [i for i, e in enumerate(examples) if e.source == corpus]
            s_held = scores(train, feats, examples, held, m, ng)
            s_neg = scores(train, feats, examples, negatives_test, m, ng)
            row: dict[str, Any] = {"attacks": len(held)}
            for k in ("0.01", "0.03"):
                row[f"recall@{k}"] = round(float((s_held >= th[k]).mean()), 4)
                row[f"fpr@{k}"] = round(float((s_neg >= th[k]).mean()), 4)
            in_dist = [i for i in held if splits[i] == "test"]
            if in_dist:
                s_in = scores(train, feats, examples, in_dist, m_all, ng)
                row["in_distribution_recall@0.03"] = round(float((s_in >= t_all["0.03"]).mean()), 4)
            outer[key][corpus] = row
            print(f"  {key:<14} held out {corpus:<16} {row}", flush=True)
        s_neg = scores(train, feats, examples, negatives_test, m_all, ng)
        outer[key]["_in_distribution_fpr@0.03"] = round(float((s_neg >= t_all["0.03"]).mean()), 4)
        print(f"  {key}: {time.perf_counter() - started:.0f}s", flush=True)
    result["outer"] = outer
    if inner:
        result["nested"] = {x: outer[f"{a}@{b:g}"][x] for x, (a, b) in chosen.items()}
        print("\nnested choice per held-out corpus:")
        for x in corpora:
            print(f"  {x:<16} {result['nested_choice'][x]:<14} {result['nested'][x]}")
    out = REPO / "benchmarks" / "results" / "injection_charngrams.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
