"""Ingestion throughput: keel end to end against a bare ``SentenceTransformer.encode``.

    python benchmarks/ingest.py ../shared/data/scifact [--limit N]

In one run, on the same chunks, alternating: the bare model encodes the chunk texts (the
floor: what embedding alone costs), then ``keel ingest`` does everything (load, chunk, embed,
Chroma, manifest, BM25) into a fresh app; ``--rounds`` times, with one more bare encode at the
end, and the medians are compared, to even out a noisy machine. Finally ``keel ingest`` runs
again on the unchanged corpus.
Prints keel's throughput as a ratio of the bare encoder's (target >= 0.85) and how much
faster the unchanged re-ingest is than the first one (target >= 20x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import temp_app

from keel.rag.chunking import Chunker
from keel.rag.loaders import iter_documents
from keel.rag.types import Document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder with corpus.jsonl (BEIR format)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N documents")
    parser.add_argument("--rounds", type=int, default=2, help="bare/keel pairs to alternate")
    parser.add_argument(
        "--skip-backends", action="store_true", help="do not time the torch backend as well"
    )
    args = parser.parse_args()
    folder = args.folder.resolve()
    corpus = folder / "corpus.jsonl"
    if not corpus.is_file():
        print(f"error: {folder} has no corpus.jsonl", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="keel-bench-ingest-"))
    source = corpus
    if args.limit:
        source = work / "corpus.jsonl"
        with corpus.open() as src, source.open("w") as dst:
            for i, line in enumerate(src):
                if i >= args.limit:
                    break
                dst.write(line)
    root = source.parent

    app = temp_app(root, {"paths": [source.name]}, workdir=work / "app")
    rag = app.config.rag
    chunker = Chunker(rag.chunk_size, rag.chunk_overlap)
    docs = [d for d in iter_documents([source], root=root) if isinstance(d, Document)]
    texts = [c.embedding_text() for d in docs for c in chunker.split(d)]
    model = app.embedder.model  # load once; keel and the bare encoder share these weights
    batch = rag.embeddings.batch_size
    print(
        f"{len(docs)} documents, {len(texts)} chunks, backend {app.embedder.backend}, batch {batch}"
    )

    def bare() -> float:
        t0 = time.perf_counter()
        model.encode(texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
        return time.perf_counter() - t0

    bare_runs: list[float] = []
    keel_runs: list[float] = []
    for round_no in range(args.rounds):
        bare_runs.append(bare())
        app = temp_app(root, {"paths": [source.name]}, workdir=work / f"app-{round_no}")
        t0 = time.perf_counter()
        first = app.ingest()
        keel_runs.append(time.perf_counter() - t0)
    bare_runs.append(bare())
    t0 = time.perf_counter()
    again = app.ingest()
    re_s = time.perf_counter() - t0
    assert again.summary()["unchanged"] == len(docs) and again.embedded == 0

    bare_s = statistics.median(bare_runs)
    keel_s = statistics.median(keel_runs)
    ratio = bare_s / keel_s
    speedup = keel_s / re_s
    result = {
        "documents": len(docs),
        "chunks": first.chunks_written,
        "bare_encode_s": [round(t, 2) for t in bare_runs],
        "keel_ingest_s": [round(t, 2) for t in keel_runs],
        "keel_reingest_s": round(re_s, 3),
        "throughput_ratio": round(ratio, 3),
        "reingest_speedup": round(speedup, 1),
    }
    if not args.skip_backends:
        # The embedding backend keel picks ("auto"): ONNX when installed. Is it faster here?
        from keel.rag.embeddings import Embedder

        torch_model = Embedder(backend="torch").model
        t0 = time.perf_counter()
        torch_model.encode(
            texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
        )
        torch_s = time.perf_counter() - t0
        result["torch_encode_s"] = round(torch_s, 2)
        result["onnx_over_torch_speedup"] = round(torch_s / bare_runs[-1], 2)
    print(json.dumps(result, indent=2))
    print(
        f"keel throughput / bare encode: {ratio:.3f} (target >= 0.85); "
        f"unchanged re-ingest {speedup:.1f}x faster than the first (target >= 20)"
    )
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
