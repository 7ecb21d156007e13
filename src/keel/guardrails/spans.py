"""The span type shared by keel's detectors (PII, secrets) and the guards built on them."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Span", "resolve_overlaps"]


@dataclass(frozen=True)
class Span:
    """A typed stretch of text found by a detector.

    ``start``/``end`` are character offsets into the scanned text (``text[start:end] ==
    span.text``); ``score`` is the detector's confidence from 0 to 1.
    """

    entity_type: str
    start: int
    end: int
    text: str
    score: float = 1.0

    def __len__(self) -> int:
        return self.end - self.start

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Keep a non-overlapping subset: higher score first, then the longer span, then the
    earlier one. The result is sorted by ``start``."""
    ranked = sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start))
    starts: list[int] = []  # kept spans, sorted by start (they do not overlap,
    kept: list[Span] = []  # so they are sorted by end too)
    for span in ranked:
        if span.end <= span.start:
            continue
        i = bisect_right(starts, span.start)
        if i > 0 and kept[i - 1].end > span.start:
            continue
        if i < len(kept) and kept[i].start < span.end:
            continue
        starts.insert(i, span.start)
        kept.insert(i, span)
    return kept
