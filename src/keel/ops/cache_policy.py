"""When a turn reads and fills the semantic cache (:mod:`keel.ops.cache` stores the entries).

A turn whose reply is shaped by the request's own parameters is nobody else's answer: it
neither reads nor fills the cache. A turn reads its partition (app, release, index version,
key, scopes) through the graph's ``cache`` step; its answer is kept only when it may be reused:
the first turn of a thread, answered by the model without tools, approvals or any guard
failing or changing anything, and not a refusal ("I don't know" for one question says little
about a look-alike).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from keel.ops.refusal import is_refusal

__all__ = ["CacheLookup", "CachePartition", "TurnCache"]

_log = logging.getLogger("keel.cache")


@dataclass(frozen=True)
class CachePartition:
    """Where a turn's answer may be found and kept."""

    key: str
    release: str
    index_version: str
    key_id: str | None


@dataclass(frozen=True)
class CacheLookup:
    """The graph's cache step's result: ``hit``, the nearest entry's similarity and id, and
    the cached payload (``text``, ``hits``, ``model``) on a hit."""

    hit: bool
    similarity: float | None = None
    entry_id: str | None = None
    payload: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hit": self.hit,
            "similarity": self.similarity,
            "entry_id": self.entry_id,
        }
        if self.payload is not None:
            out["payload"] = dict(self.payload)
        return out


class _Answered(Protocol):
    """What the policy reads of a turn's answer (:class:`keel.agents.answer.Answer`)."""

    text: str
    stop_reason: str
    cache_hit: bool
    tool_calls: list[dict[str, Any]]
    pending_approval: list[dict[str, Any]] | None
    events: list[dict[str, Any]]
    hits: list[dict[str, Any]]
    model: str


class _Embedder(Protocol):
    def embed_query(self, text: str) -> Any: ...


class TurnCache:
    """The semantic cache as the turn pipeline uses it."""

    def __init__(
        self,
        cache: Callable[[], Any],
        embedder: Callable[[], _Embedder],
        partition_of: Callable[
            [str | None, Sequence[str] | None, frozenset[str] | None], CachePartition
        ],
    ) -> None:
        self._cache = cache
        self._embedder = embedder
        self.partition = partition_of

    def lookup(self, question: str, part: CachePartition) -> CacheLookup:
        """The nearest entry of the partition; a broken cache is a miss (it is an
        optimisation, never a reason to fail a turn)."""
        cache = self._cache()
        try:
            found = cache.nearest(part.key, self._embedder().embed_query(question))
            entry_id, similarity = found if found is not None else (None, None)
            entry = (
                cache.entry(entry_id)
                if entry_id is not None and similarity is not None and similarity >= cache.threshold
                else None
            )
        except Exception:
            _log.warning("semantic cache lookup failed", exc_info=True)
            return CacheLookup(hit=False)
        if similarity is None:
            return CacheLookup(hit=False)
        if entry is None:
            return CacheLookup(hit=False, similarity=round(similarity, 6))
        return CacheLookup(
            hit=True, similarity=round(similarity, 6), entry_id=entry_id, payload=entry[1]
        )

    @staticmethod
    def reusable(answer: _Answered) -> bool:
        """An answer others may be given: see the module's docstring."""
        return not (
            answer.cache_hit
            or answer.stop_reason != "done"
            or answer.tool_calls
            or answer.pending_approval
            or not answer.text.strip()
            or is_refusal(answer.text.strip())
            or any(e.get("outcome") != "pass" for e in answer.events)
        )

    def store(
        self,
        part: CachePartition,
        question: str,
        messages: Sequence[Any],
        answer: _Answered,
        *,
        end_user: str | None = None,
    ) -> None:
        """Keep the answer when :meth:`reusable` and the thread holds just this question and
        the model's reply (no history before it, no tool calls, not changed on the way)."""
        from langchain_core.messages import AIMessage, HumanMessage

        if not self.reusable(answer):
            return
        if not (
            len(messages) == 2
            and isinstance(messages[0], HumanMessage)
            and isinstance(messages[1], AIMessage)
            and not messages[1].tool_calls
            and messages[1].text == answer.text
        ):
            return
        from keel.ops.cache import Partition

        payload = {"text": answer.text, "hits": answer.hits, "model": answer.model}
        try:
            self._cache().store(
                Partition(part.key, part.release, part.index_version, part.key_id),
                question,
                self._embedder().embed_query(question),
                payload,
                end_user=end_user,
            )
        except Exception:  # never fail a turn that was answered
            _log.warning("semantic cache store failed", exc_info=True)
