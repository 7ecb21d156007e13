"""Span names and attribute keys Keel writes, in one place (dashboards, the trace store,
the CLI and the console read them by these names: they are a contract)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "GUARD_ACTION",
    "GUARD_OUTCOME",
    "GUARD_POINT",
    "GUARD_REASON",
    "GUARD_SPAN_PREFIX",
    "GUARD_VALIDATOR",
    "RETRIEVE_QUERY",
    "RETRIEVE_SPAN",
    "TURN_SPAN",
    "find_span",
    "walk_spans",
]

TURN_SPAN = "keel.turn"
"""One turn: a question in, an answer (or a stop) out."""
RETRIEVE_SPAN = "keel.retrieve"
RETRIEVE_QUERY = "keel.retrieve.query"
GUARD_SPAN_PREFIX = "keel.guard"
"""A guard decision's span is ``"keel.guard <validator>"``."""
GUARD_VALIDATOR = "keel.guard.validator"
GUARD_POINT = "keel.guard.point"
GUARD_OUTCOME = "keel.guard.outcome"
GUARD_ACTION = "keel.guard.action"
GUARD_REASON = "keel.guard.reason"


def walk_spans(spans: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every span of a stored trace tree (``{"name", "attributes", "children"}``), breadth
    first."""
    queue = list(spans)
    while queue:
        span = queue.pop(0)
        yield span
        queue.extend(span.get("children", []))


def find_span(spans: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The first span called ``name`` at any depth of a stored trace tree (breadth first: the
    turn of a gateway request is the request span's child)."""
    return next((s for s in walk_spans(spans) if s.get("name") == name), None)
