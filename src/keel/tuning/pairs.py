"""Training pairs for the retriever, built from the app's own data and never from test data.

* ``corpus``: a synthetic query per chunk, offline. The first chunk of a document with a
  title of three words or more is asked for by its title; any other chunk by one of its own
  sentences (picked with the seed), which is taken out of the passage (the inverse cloze
  task), so the pair is not a string match.
* ``evals``: the app's eval cases that name reference documents, question -> the best chunk
  of those documents. Only the cases :func:`split_cases` puts on the training side: the
  other side is what the gate measures on.
* ``feedback``: questions of well-rated turns -> the first passage the turn retrieved.

Every pair gets a hard negative: the best-ranked chunk of another document that the app's
current retriever (BM25 and dense, fused) returns for the query.

Documents are split before anything is built (by a hash of the document id, not by row):
about one in ten is held out, and its chunks make the gate's synthetic queries when the app
has no eval suite.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from keel.rag.sentences import split_sentences
from keel.rag.types import Chunk, Hit

__all__ = [
    "SOURCES",
    "PairSet",
    "Query",
    "TrainingPair",
    "build_pairs",
    "held_out",
    "split_cases",
]

Source = Literal["corpus", "evals", "feedback"]
SOURCES: tuple[Source, ...] = ("corpus", "evals", "feedback")
HOLD_OUT_ONE_IN = 10


@dataclass(frozen=True)
class TrainingPair:
    query: str
    positive: str
    negative: str
    source: Source


@dataclass(frozen=True)
class Query:
    """A query and the documents that answer it (for the gate)."""

    text: str
    relevant: frozenset[str]


@dataclass
class PairSet:
    pairs: list[TrainingPair] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.pairs:
            out[p.source] = out.get(p.source, 0) + 1
        return out

    @property
    def data_hash(self) -> str:
        digest = hashlib.sha256()
        for p in self.pairs:
            for part in (p.source, p.query, p.positive, p.negative):
                digest.update(part.encode())
                digest.update(b"\x00")
        return digest.hexdigest()[:16]


def _bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % HOLD_OUT_ONE_IN


def held_out(doc_id: str) -> bool:
    """Whether a document is on the held-out side (never trained on)."""
    return _bucket(f"doc\x00{doc_id}") == 0


def split_cases(case_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """``(train, gate)`` halves of eval case ids, by a hash of the id."""
    train: set[str] = set()
    gate: set[str] = set()
    for cid in case_ids:
        (gate if _bucket(f"case\x00{cid}") % 2 == 0 else train).add(cid)
    return train, gate


def _synthetic(chunk: Chunk, first: bool, rng: random.Random) -> tuple[str, str] | None:
    """``(query, passage)`` for a chunk, or None when it has nothing to ask with."""
    if first and len(chunk.title.split()) >= 3 and chunk.title.strip() not in chunk.text[:200]:
        return chunk.title.strip(), chunk.text
    sentences = [s for s in split_sentences(chunk.text) if len(s.split()) >= 5]
    if len(sentences) < 2:
        return None
    pick = sentences[rng.randrange(len(sentences))]
    rest = chunk.text.replace(pick, " ", 1).strip()
    return pick, rest


def synthetic_queries(chunks: Sequence[Chunk], seed: int) -> list[tuple[Chunk, str, str]]:
    """``(chunk, query, passage)`` for every chunk that has a query, in chunk order."""
    rng = random.Random(seed)
    out = []
    seen_docs: set[str] = set()
    for chunk in sorted(chunks, key=lambda c: (c.doc_id, c.start, c.id)):
        first = chunk.doc_id not in seen_docs
        seen_docs.add(chunk.doc_id)
        made = _synthetic(chunk, first, rng)
        if made is not None:
            out.append((chunk, *made))
    return out


def build_pairs(
    chunks: Sequence[Chunk],
    search: Callable[[str], list[Hit]],
    *,
    sources: Sequence[Source],
    seed: int,
    eval_cases: Sequence[tuple[str, Sequence[str]]] = (),
    rated_questions: Sequence[tuple[str, str]] = (),
    max_pairs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PairSet:
    """Training pairs from ``sources`` (see the module docstring).

    ``search`` is the app's current retriever; ``eval_cases`` are ``(question, reference doc
    ids)`` already restricted to the training half; ``rated_questions`` are ``(question,
    passage)`` of well-rated turns. ``max_pairs`` caps the corpus pairs (a seeded sample)."""
    by_id = {c.id: c for c in chunks}
    found: dict[str, list[Hit]] = {}

    def searched(query: str) -> list[Hit]:
        # an eval case's question is searched for its positive and again for its negative
        if query not in found:
            found[query] = search(query)
        return found[query]

    wanted: list[tuple[str, str, str | None, Source]] = []  # query, positive, doc id, source
    if "corpus" in sources:
        made = [
            (q, passage, c.doc_id, "corpus")
            for c, q, passage in synthetic_queries(chunks, seed)
            if not held_out(c.doc_id)
        ]
        if max_pairs is not None and len(made) > max_pairs:
            made = random.Random(seed).sample(made, max_pairs)
        wanted += made  # type: ignore[arg-type]
    if "evals" in sources:
        for question, refs in eval_cases:
            hits = [h for h in searched(question) if h.doc_id in set(refs)]
            first = (
                hits[0].chunk_id
                if hits
                else next((c.id for c in chunks if c.doc_id in set(refs)), None)
            )
            if first is not None:
                wanted.append((question, by_id[first].text, by_id[first].doc_id, "evals"))
    if "feedback" in sources:
        wanted += [(q, passage, None, "feedback") for q, passage in rated_questions]
    out = PairSet()
    for n, (query, positive, doc_id, source) in enumerate(wanted, start=1):
        negative = next(
            (h.text for h in searched(query) if h.doc_id != doc_id and h.text != positive),
            None,
        )
        if negative is not None:
            out.pairs.append(TrainingPair(query, positive, negative, source))
        if progress is not None:
            progress(n, len(wanted))
    return out


def held_out_queries(chunks: Sequence[Chunk], seed: int) -> list[Query]:
    """Synthetic queries of the held-out documents, each answered by its own document."""
    return [
        Query(q, frozenset({c.doc_id}))
        for c, q, _ in synthetic_queries(chunks, seed)
        if held_out(c.doc_id)
    ]
