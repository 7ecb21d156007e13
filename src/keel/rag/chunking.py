"""Splitting documents into chunks that carry what a citation needs.

Splitting is langchain-text-splitters' ``RecursiveCharacterTextSplitter``. Markdown (and HTML,
which the loader turns into markdown headings) is first cut at its headings, so a chunk never
straddles two sections and knows the heading path above it; offsets always point into the
original ``Document.text``.

Chunk ids are stable: a hash of the document id, the chunk's indexed text (title, headings and
text) and, for repeated identical passages, their occurrence number. Unchanged content keeps
its id across runs, which is what makes ingestion idempotent.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from keel.errors import ConfigError
from keel.rag.types import Chunk, Document

if TYPE_CHECKING:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
_MARKDOWN_FORMATS = frozenset({"markdown", "html"})


@dataclass(frozen=True)
class _Section:
    start: int  # first character after the heading line (the heading lives in ``headings``)
    end: int
    headings: tuple[str, ...]


def markdown_sections(text: str) -> list[_Section]:
    """Cut markdown at ATX headings (not inside fenced code) into sections under a heading path."""
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    fence: str | None = None
    start = 0
    current: tuple[str, ...] = ()
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        fence_match = _FENCE.match(stripped)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
        elif fence is None:
            heading = _HEADING.match(stripped)
            if heading:
                if offset > start:
                    sections.append(_Section(start, offset, current))
                level = len(heading.group(1))
                path = [(lvl, name) for lvl, name in path if lvl < level]
                path.append((level, heading.group(2).strip()))
                current = tuple(name for _, name in path)
                start = offset + len(line)
                offset = start
                continue
        offset += len(line)
    if offset > start:
        sections.append(_Section(start, offset, current))
    return sections


class Chunker:
    """Turns a :class:`Document` into :class:`Chunk` values (sizes in characters)."""

    def __init__(self, chunk_size: int = 1000, chunk_overlap: int = 150) -> None:
        if chunk_overlap >= chunk_size:
            raise ConfigError(
                f"rag.chunk_overlap ({chunk_overlap}) must be smaller than "
                f"rag.chunk_size ({chunk_size})"
            )
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    @cached_property
    def _splitter(self) -> RecursiveCharacterTextSplitter:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        return RecursiveCharacterTextSplitter(
            chunk_size=self.chunk_size,
            chunk_overlap=self.chunk_overlap,
            separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""],
            keep_separator="end",
            add_start_index=True,
            strip_whitespace=True,
        )

    def split(self, doc: Document) -> list[Chunk]:
        if doc.format in _MARKDOWN_FORMATS:
            sections = markdown_sections(doc.text)
        else:
            sections = [_Section(0, len(doc.text), ())]
        chunks: list[Chunk] = []
        seen: dict[str, int] = {}
        for section in sections:
            body = doc.text[section.start : section.end]
            if not body.strip():
                continue
            for piece in self._splitter.create_documents([body]):
                text = piece.page_content
                if not text.strip():
                    continue
                start = section.start + int(piece.metadata["start_index"])
                chunk = Chunk(
                    id="",
                    doc_id=doc.id,
                    text=text,
                    source=doc.source,
                    title=doc.title,
                    headings=section.headings,
                    start=start,
                    end=start + len(text),
                    page=bisect.bisect_right(doc.pages, start) if doc.pages else 0,
                    metadata=dict(doc.metadata),
                )
                indexed = chunk.embedding_text()
                occurrence = seen.get(indexed, 0)
                seen[indexed] = occurrence + 1
                chunks.append(_with_id(chunk, _chunk_id(doc.id, indexed, occurrence)))
        return chunks


def _chunk_id(doc_id: str, indexed_text: str, occurrence: int) -> str:
    digest = hashlib.sha256(f"{doc_id}\x00{occurrence}\x00{indexed_text}".encode()).hexdigest()
    return digest[:32]


def _with_id(chunk: Chunk, chunk_id: str) -> Chunk:
    from dataclasses import replace

    return replace(chunk, id=chunk_id)
