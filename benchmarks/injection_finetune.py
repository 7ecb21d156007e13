"""Experiment: the injection detector on a fine-tuned encoder, leave-one-corpus-out.

    python benchmarks/injection_finetune.py --wheels DIR [--corpora vigia,hivetracered]

The shipped detector is a logistic model on frozen all-MiniLM-L6-v2 vectors (plus heuristic
indicators and the window length). Issue 17 asks whether fine-tuning a small encoder on the
CPU generalises better to attack corpora it never saw. This measures it with the protocol of
``benchmarks/guards.py``'s leave-one-corpus-out, for each held-out public attack corpus X:

* the fit set is the development split without X and without the negatives of one of three
  folds (those left-out development negatives give the per-kind thresholds for 1 % and 3 %, as
  ``kind_thresholds`` computes them; X and the test split are never looked at). The folds are
  dealt by near-duplicate group (``--validation group``, the default: the trainer's groups, so
  no near-copy of a training negative sets the threshold; a fine-tuned encoder remembers its
  training texts far better than a linear model does) or by each text's hash
  (``--validation text``, as ``benchmarks/guards.py`` deals the linear model's folds);
* **frozen**: the detector's logistic model (the shipped C and embedding scale) on the
  bundled MiniLM's vectors (in torch, truncated at ``--max-length`` tokens like the
  fine-tuned one), fitted on the fit set;
* **fine-tuned**: the same MiniLM with a logistic head on its mean-pooled, normalised
  sentence embedding, trained end to end on the fit set's windows (the trainer's sample
  weights: classes balanced, sources by the square root of their size), then the same
  logistic model fitted on the fine-tuned encoder's vectors of the same fit set: so the only
  difference between the two columns is the encoder;
* both are scored the runtime's way (each text's highest window probability; the heuristics
  included) on every row of X (recall) and on the test split's ordinary questions, hard
  negatives and sentences (FPR), and on the test split's document passages (the failure mode
  of the character n-grams: docs flagged at the request threshold).

Both columns come from one run, side by side. Results go to
``benchmarks/results/injection_finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from guards import hash_fold, load_corpora, loco_negatives, loco_training_rows  # noqa: E402

DEFAULT_CORPORA = ("vigia", "hivetracered", "multilingual")


def fine_tune(
    model_path: str,
    texts: list[str],
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    epochs: float,
    batch_size: int,
    lr: float,
    max_length: int,
    seed: int,
) -> Any:
    """MiniLM with a logistic head on its sentence embedding, trained end to end (AdamW,
    linear warm-up and decay, weighted binary cross-entropy); returns the encoder."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_length
    head = torch.nn.Linear(model.get_sentence_embedding_dimension() or 384, 1)
    params = [
        {"params": model.parameters(), "lr": lr},
        {"params": head.parameters(), "lr": lr * 30},
    ]
    optimiser = torch.optim.AdamW(params, weight_decay=0.01)
    # batches of similar length (less padding), in a shuffled order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    steps = max(1, math.ceil(len(batches) * epochs))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))),
    )
    y = torch.tensor(labels, dtype=torch.float32)
    w = torch.tensor(weights / weights.mean(), dtype=torch.float32)
    model.train()
    started, done, seen = time.perf_counter(), 0, 0.0
    while done < steps:
        rng.shuffle(batches)
        for batch in batches:
            if done >= steps:
                break
            features = model.preprocess([texts[i] for i in batch])
            out = model(features)["sentence_embedding"]
            logits = head(torch.nn.functional.normalize(out, dim=-1) * 10).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y[batch], weight=w[batch]
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            done += 1
            seen += loss.item()
            if done % 100 == 0:
                rate = done * batch_size / (time.perf_counter() - started)
                print(f"    step {done}/{steps} loss {seen / 100:.4f} ({rate:.0f} windows/s)")
                seen = 0.0
    model.eval()
    return model


def base_encoder(model_path: str, max_length: int) -> Any:
    """The bundled MiniLM in torch, truncating where the fine-tuned one does (the control)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_length
    return model.eval()


def encode_all(model: Any, flat: list[str]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        vectors = model.encode(flat, batch_size=64, normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


def measure(
    train: Any,
    feats: Any,
    examples: list[Any],
    fit_idx: list[int],
    val_neg: list[int],
    held: list[int],
    negatives: list[int],
    passages: list[int],
    c: float,
    scale: float,
) -> dict[str, Any]:
    """Fit the detector's logistic model on ``fit_idx``; thresholds from ``val_neg``."""
    model = train.fit_on(feats, examples, fit_idx, c, scale, 0.0)
    th = train.kind_thresholds(examples, val_neg, train.scores_for(feats, examples, val_neg, model))
    s_held = train.scores_for(feats, examples, held, model)
    s_neg = train.scores_for(feats, examples, negatives, model)
    s_pass = train.scores_for(feats, examples, passages, model)
    row: dict[str, Any] = {}
    for k in ("0.01", "0.03"):
        row[f"recall@{k}"] = round(float((s_held >= th[k]).mean()), 4)
        row[f"fpr@{k}"] = round(float((s_neg >= th[k]).mean()), 4)
        row[f"passages@{k}"] = round(float((s_pass >= th[k]).mean()), 4)
    # diagnosis only (never used to choose anything): how well each encoder ranks the held-out
    # attacks above the test negatives, whatever the threshold
    labels = np.r_[np.ones(len(s_held)), np.zeros(len(s_neg))]
    both = np.r_[s_held, s_neg]
    row["auc"] = train.auc(both, labels)
    row["oracle_recall@0.03"] = train.oracle_recall(both, labels, 0.03)
    # which test negatives the 3 % threshold flags, by source
    flagged = Counter(
        examples[i].source for i, s in zip(negatives, s_neg, strict=True) if s >= th["0.03"]
    )
    total = Counter(examples[i].source for i in negatives)
    row["flagged_by_source@0.03"] = {k: f"{v}/{total[k]}" for k, v in flagged.most_common(6)}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--corpora", default=",".join(DEFAULT_CORPORA), help="or 'all'")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1729)
    parser.add_argument("--validation", choices=("group", "text"), default="group")
    args = parser.parse_args()
    if args.epochs <= 0 or args.batch_size < 1 or args.lr <= 0 or args.max_length < 8:
        parser.error("--epochs and --lr must be > 0, --batch-size >= 1, --max-length >= 8")
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from keel.guardrails.injection import load_weights
    from keel.rag.embeddings import Embedder, resolve_model
    from keel.settings import get_settings

    torch.set_num_threads(2)
    loaded = load_corpora(args.data.resolve(), args.wheels)
    train, examples = loaded.train, loaded.examples
    clusters, splits = loaded.clusters, loaded.splits

    def fold_of(i: int) -> int:
        key = str(clusters[i]) if args.validation == "group" else examples[i].text
        return hash_fold(key, 3)

    cache = REPO / "benchmarks" / "results" / "cache"
    frozen = train.featurise(examples, Embedder(cache_dir=get_settings().cache_dir), cache)
    shipped = load_weights()["model"]
    c, scale = float(shipped["C"]), float(shipped["embedding_scale"])
    present = [s for s in train.PUBLIC_ATTACK_CORPORA if any(e.source == s for e in examples)]
    corpora = present if args.corpora == "all" else args.corpora.split(",")
    unknown = sorted(set(corpora) - set(present))
    if unknown:
        parser.error(f"unknown corpora {unknown} (present: {present})")  # exit 2
    negatives = loco_negatives(examples, splits)
    passages = [
        i
        for i, e in enumerate(examples)
        if e.label == 0 and splits[i] == "test" and e.kind == "passage"
    ]
    flat = [w for p in frozen.pieces for w in p]
    _, model_path = resolve_model("all-MiniLM-L6-v2")
    print(
        f"{len(examples)} texts, {len(flat)} windows; {len(negatives)} test negatives, "
        f"{len(passages)} test passages",
        flush=True,
    )
    # the control: the same torch encoder and truncation, not trained
    saved = cache / f"finetune-base-L{args.max_length}-{len(flat)}.npy"
    if not saved.exists():
        np.save(saved, encode_all(base_encoder(model_path, args.max_length), flat))
    base = train.Featurised(
        frozen.pieces, frozen.reasons, np.load(saved), frozen.owner, frozen.lengths
    )
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "folds": {}}
    for corpus in corpora:
        rows = loco_training_rows(examples, splits, corpus)
        val_neg = [i for i in rows if examples[i].label == 0 and fold_of(i) == 0]
        held_out = set(val_neg)
        fit_idx = [i for i in rows if i not in held_out]
        held = [i for i, e in enumerate(examples) if e.source == corpus]
        fold: dict[str, Any] = {"attacks": len(held), "fit_texts": len(fit_idx)}
        fold["frozen"] = measure(
            train, base, examples, fit_idx, val_neg, held, negatives, passages, c, scale
        )
        print(f"  {corpus:<18} frozen     {fold['frozen']}", flush=True)
        chosen = np.isin(frozen.owner, np.asarray(fit_idx))
        owner = frozen.owner[chosen]
        texts = [w for w, keep in zip(flat, chosen.tolist(), strict=True) if keep]
        labels = np.asarray([examples[i].label for i in owner.tolist()], dtype=np.float32)
        weights = train.sample_weights(examples, owner, fit_idx)
        # the fine-tuned vectors are kept (a development aid: the figures can be read again
        # without training again); the name holds every setting that changes them
        name = f"finetune-{corpus}-e{args.epochs:g}-lr{args.lr:g}-b{args.batch_size}"
        saved = cache / f"{name}-L{args.max_length}-s{args.seed}-{args.validation}-{len(flat)}.npy"
        if saved.exists():
            vectors = np.load(saved)
        else:
            started = time.perf_counter()
            encoder = fine_tune(
                model_path,
                texts,
                labels,
                weights,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                max_length=args.max_length,
                seed=args.seed,
            )
            fold["train_seconds"] = round(time.perf_counter() - started)
            vectors = encode_all(encoder, flat)
            np.save(saved, vectors)
        tuned = train.Featurised(
            frozen.pieces, frozen.reasons, vectors, frozen.owner, frozen.lengths
        )
        fold["fine_tuned"] = measure(
            train, tuned, examples, fit_idx, val_neg, held, negatives, passages, c, scale
        )
        print(
            f"  {corpus:<18} fine-tuned {fold['fine_tuned']} ({fold.get('train_seconds')}s)",
            flush=True,
        )
        result["folds"][corpus] = fold
        out = REPO / "benchmarks" / "results" / "injection_finetune.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print("\nheld-out recall at the 3 % threshold, frozen -> fine-tuned (FPR, passages):")
    for corpus, fold in result["folds"].items():
        a, b = fold["frozen"], fold["fine_tuned"]
        print(
            f"  {corpus:<18} {a['recall@0.03']:.3f} -> {b['recall@0.03']:.3f}"
            f"  (FPR {a['fpr@0.03']:.3f} -> {b['fpr@0.03']:.3f},"
            f" passages {a['passages@0.03']:.3f} -> {b['passages@0.03']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
