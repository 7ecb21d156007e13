"""The values that flow through the knowledge pipeline: Document → Chunk → Hit."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Metadata = dict[str, str | int | float | bool]


def content_hash(text: str) -> str:
    """The sha256 of a text, hex: identity of content everywhere in Keel."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Document:
    """One loaded document.

    ``id`` is stable across runs: the path relative to the ingest root for files, the ``_id`` /
    ``id`` field for JSONL records. ``pages`` holds the character offset where each page starts
    (PDF only), so a chunk can cite its page.
    """

    id: str
    text: str
    source: str
    title: str = ""
    format: str = "text"
    metadata: Metadata = field(default_factory=dict)
    pages: tuple[int, ...] = ()

    @property
    def hash(self) -> str:
        """Content hash over everything that shapes the chunks (text, title, metadata)."""
        meta = "\x1f".join(f"{k}={self.metadata[k]!r}" for k in sorted(self.metadata))
        return content_hash(f"{self.title}\x1e{self.format}\x1e{meta}\x1e{self.text}")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, with what a citation needs.

    ``start``/``end`` are character offsets into ``Document.text``; ``headings`` is the markdown
    heading path above the chunk; ``page`` is 1-based for PDFs, 0 otherwise.
    """

    id: str
    doc_id: str
    text: str
    source: str
    title: str = ""
    headings: tuple[str, ...] = ()
    start: int = 0
    end: int = 0
    page: int = 0
    metadata: Metadata = field(default_factory=dict)

    def embedding_text(self) -> str:
        """The text that is embedded and indexed: title and headings give the chunk context."""
        head = [h for h in (self.title, *self.headings) if h]
        # Avoid repeating a heading that is also the title (common for markdown pages).
        seen: list[str] = []
        for h in head:
            if h not in seen:
                seen.append(h)
        return "\n".join([*seen, self.text]) if seen else self.text

    def store_metadata(self) -> Metadata:
        """Flat metadata as the vector store keeps it (Chroma takes scalars only)."""
        meta: Metadata = dict(self.metadata)
        meta.update(
            doc_id=self.doc_id,
            source=self.source,
            title=self.title,
            headings=" > ".join(self.headings),
            start=self.start,
            end=self.end,
            page=self.page,
        )
        return meta

    @classmethod
    def from_store(cls, chunk_id: str, text: str, meta: dict[str, Any]) -> Chunk:
        known = {"doc_id", "source", "title", "headings", "start", "end", "page"}
        headings = str(meta.get("headings") or "")
        return cls(
            id=chunk_id,
            doc_id=str(meta.get("doc_id", "")),
            text=text,
            source=str(meta.get("source", "")),
            title=str(meta.get("title", "")),
            headings=tuple(headings.split(" > ")) if headings else (),
            start=int(meta.get("start", 0)),
            end=int(meta.get("end", 0)),
            page=int(meta.get("page", 0)),
            metadata={k: v for k, v in meta.items() if k not in known},
        )


@dataclass(frozen=True)
class Hit:
    """A search result: a chunk, its fused score, and how each retriever ranked it."""

    doc_id: str
    chunk_id: str
    text: str
    score: float
    source: str
    title: str = ""
    headings: tuple[str, ...] = ()
    start: int = 0
    end: int = 0
    page: int = 0
    metadata: Metadata = field(default_factory=dict)
    dense_rank: int | None = None
    bm25_rank: int | None = None
    dense_score: float | None = None
    bm25_score: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.headings, tuple):  # a list, from JSON or a checkpoint
            object.__setattr__(self, "headings", tuple(self.headings))

    @classmethod
    def of(cls, value: Hit | Mapping[str, Any]) -> Hit:
        """A hit from itself or from its :meth:`to_dict` (a cache entry, an old checkpoint)."""
        if isinstance(value, Hit):
            return value
        return cls(
            doc_id=value["doc_id"],
            chunk_id=value["chunk_id"],
            text=value["text"],
            score=value["score"],
            source=value["source"],
            title=value.get("title", ""),
            headings=tuple(value.get("headings", ())),
            start=value.get("start", 0),
            end=value.get("end", 0),
            page=value.get("page", 0),
            metadata=value.get("metadata", {}),
            dense_rank=value.get("dense_rank"),
            bm25_rank=value.get("bm25_rank"),
            dense_score=value.get("dense_score"),
            bm25_score=value.get("bm25_score"),
        )

    @property
    def citation(self) -> dict[str, Any]:
        """What a citation shows: where the text comes from, down to the characters."""
        cite: dict[str, Any] = {
            "doc_id": self.doc_id,
            "chunk_id": self.chunk_id,
            "source": self.source,
            "title": self.title,
            "headings": list(self.headings),
            "start": self.start,
            "end": self.end,
        }
        if self.page:
            cite["page"] = self.page
        return cite

    def to_dict(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "chunk_id": self.chunk_id,
            "score": self.score,
            "source": self.source,
            "text": self.text,
            "title": self.title,
            "headings": list(self.headings),
            "start": self.start,
            "end": self.end,
            "page": self.page,
            "metadata": dict(self.metadata),
            "dense_rank": self.dense_rank,
            "bm25_rank": self.bm25_rank,
            "dense_score": self.dense_score,
            "bm25_score": self.bm25_score,
        }


@dataclass
class Skipped:
    """A file or record that was not loaded, and why."""

    source: str
    reason: str


@dataclass
class IngestReport:
    """What an ingestion did. Lists hold document ids."""

    collection: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    chunks_written: int = 0
    chunks_deleted: int = 0
    embedded: int = 0
    index_version: str = ""
    seconds: float = 0.0

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "deleted": len(self.deleted),
            "skipped": len(self.skipped),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            **self.summary(),
            "chunks_written": self.chunks_written,
            "chunks_deleted": self.chunks_deleted,
            "embedded": self.embedded,
            "index_version": self.index_version,
            "seconds": round(self.seconds, 3),
            "documents": {
                "added": self.added,
                "updated": self.updated,
                "deleted": self.deleted,
            },
            "skipped_files": [{"source": s.source, "reason": s.reason} for s in self.skipped],
        }
