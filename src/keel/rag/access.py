"""Document access labels: who may read which chunks.

A document carries access labels (``metadata.labels`` in JSONL records, ``[rag.labels]``
folder rules in keel.toml, the ``labels`` of an ingest request). They are stored on every
chunk as one boolean metadata key per label (``keel_label:<label>``), and a document without
labels gets the public marker ``keel_label:*`` (or ``[rag] default_labels``), so "who may read
this" is a plain metadata filter that Chroma (embedded or server) and the BM25 side evaluate
alike.

A reader is the set of labels it may read (:class:`Readable`); ``None`` reads everything (an
admin key, the local CLI). Keel adds the reader's filter to every retrieval itself
(:func:`restrict`), after the request's own ``where``, which may not name label keys.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from keel.errors import UsageError
from keel.rag.types import Document

__all__ = [
    "LABEL_PREFIX",
    "PUBLIC",
    "LabelPolicy",
    "Readable",
    "current_readable",
    "label_metadata",
    "labels_of",
    "parse_labels",
    "reading_as",
    "restrict",
]

LABEL_PREFIX = "keel_label:"
PUBLIC = "*"  # the marker of a document without labels: every reader may read it
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Readable = frozenset[str] | None  # None: every document


def parse_labels(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """Labels from a comma-separated string or a list, checked and sorted."""
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    labels: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise UsageError("labels must be strings")
        label = item.strip()
        if not label:
            continue
        if not _LABEL.match(label):
            raise UsageError(
                f"invalid label {label!r}: 1-64 characters of letters, digits, '.', '_' or '-'"
            )
        labels.add(label)
    return tuple(sorted(labels))


def label_metadata(labels: Iterable[str]) -> dict[str, bool]:
    """The chunk metadata that records ``labels`` (the public marker when there are none)."""
    keys = [LABEL_PREFIX + label for label in labels] or [LABEL_PREFIX + PUBLIC]
    return dict.fromkeys(sorted(keys), True)


def labels_of(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The labels recorded in chunk or document metadata (without the public marker)."""
    return tuple(
        sorted(
            k[len(LABEL_PREFIX) :]
            for k, v in metadata.items()
            if k.startswith(LABEL_PREFIX) and v is True and k != LABEL_PREFIX + PUBLIC
        )
    )


def without_labels(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` without label keys: only Keel writes them."""
    return {k: v for k, v in metadata.items() if not k.startswith(LABEL_PREFIX)}


@dataclass(frozen=True)
class LabelPolicy:
    """How a document gets its labels at ingest: its own (``metadata.labels``), plus the
    ``[rag.labels]`` rules its id matches, plus the request's; ``default`` when that is none."""

    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, rules: Mapping[str, Sequence[str]], default: Sequence[str]) -> LabelPolicy:
        return cls(
            tuple((glob, parse_labels(labels)) for glob, labels in rules.items()),
            parse_labels(default),
        )

    def labels_for(self, doc: Document, extra: Sequence[str] = ()) -> tuple[str, ...]:
        found = set(labels_of(doc.metadata)) | set(extra)
        for glob, labels in self.rules:
            if fnmatch.fnmatchcase(doc.id, glob) or fnmatch.fnmatchcase(doc.source, glob):
                found |= set(labels)
        return tuple(sorted(found)) or self.default

    def apply(self, doc: Document, extra: Sequence[str] = ()) -> Document:
        """``doc`` with its label keys set (they are part of its hash, so a change of labels
        re-indexes it)."""
        meta = {**without_labels(doc.metadata), **label_metadata(self.labels_for(doc, extra))}
        return replace(doc, metadata=meta)


def restrict(where: Mapping[str, Any] | None, readable: Readable) -> dict[str, Any] | None:
    """``where`` and the reader's filter; a ``where`` may not name label keys."""
    if where and _names_labels(where):
        raise UsageError(f"a filter may not use the '{LABEL_PREFIX}...' keys: Keel sets them")
    if readable is None:
        return dict(where) if where else None
    allowed = [{LABEL_PREFIX + label: True} for label in sorted({PUBLIC, *readable})]
    reader: dict[str, Any] = allowed[0] if len(allowed) == 1 else {"$or": allowed}
    return {"$and": [dict(where), reader]} if where else reader


def _names_labels(where: Mapping[str, Any]) -> bool:
    for key, cond in where.items():
        if key in ("$and", "$or") and isinstance(cond, list):
            if any(isinstance(sub, Mapping) and _names_labels(sub) for sub in cond):
                return True
        elif key.startswith(LABEL_PREFIX):
            return True
    return False


_READABLE: ContextVar[Readable] = ContextVar("keel_readable", default=None)


def current_readable() -> Readable:
    """The labels the running turn may read (None: everything)."""
    return _READABLE.get()


@contextlib.contextmanager
def reading_as(readable: Readable) -> Iterator[None]:
    """Run a block (a turn's steps, a tool call) as a reader of ``readable``."""
    token = _READABLE.set(readable)
    try:
        yield
    finally:
        _READABLE.reset(token)
