"""The turn span: what a turn's trace says about the app that answered and how it went.

:class:`keel.agents.turn.TurnRunner` opens one span per turn (:data:`~keel.ops.semconv.TURN_SPAN`)
through a :class:`TurnTracer`, and closes it with the turn's summary (what ``keel traces list``
shows). What of a text goes on a span follows ``[tracing] capture``: nothing, the text with
PII and secrets redacted, or the text itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from keel.ops.semconv import GUARD_OUTCOME, TURN_SPAN

__all__ = ["AppIdentity", "TurnTracer", "trace_id_of"]


@dataclass(frozen=True)
class AppIdentity:
    """Who answers a turn: the labels every turn span carries. The versions are read when a
    turn starts (a re-ingest changes the index version, and with it the app version)."""

    name: str
    model_id: Callable[[], str]
    index_version: Callable[[], str]
    version_for: Callable[[str], str]
    prompt_versions: Callable[[], Mapping[str, str | None]]
    release_id: str | None = None
    git_commit: Callable[[], str | None] = lambda: None


_REDACTED_CACHE_CHARS = 4096


class TurnTracer:
    """Opens and closes turn spans for one app."""

    def __init__(
        self,
        tracer: Any,
        identity: AppIdentity,
        capture: str,
        redact: Callable[[str], str],
    ) -> None:
        self.tracer = tracer
        self.identity = identity
        self.capture_mode = capture
        self._redact = redact
        # A turn captures its answer twice (the model span and the turn), and an app answers
        # the same words often (refusals, canned replies): short texts are redacted once.
        self._redact_short = lru_cache(maxsize=1024)(redact)

    def capture(self, text: str) -> str | None:
        """What of ``text`` goes on a span: nothing (``capture = "off"``), the text itself
        (``"full"``) or the text with PII and secrets redacted (``"redacted"``)."""
        mode = self.capture_mode
        if mode == "off" or not text:
            return None
        if mode == "full":
            return text
        if len(text) <= _REDACTED_CACHE_CHARS:
            return self._redact_short(text)
        return self._redact(text)

    def attributes(
        self, thread_id: str, owner: str | None, end_user: str | None = None
    ) -> dict[str, Any]:
        who = self.identity
        index_version = who.index_version()
        attrs: dict[str, Any] = {
            "keel.app.name": who.name,
            "keel.app.version": who.version_for(index_version),
            "keel.index.version": index_version,
            "keel.thread.id": thread_id,
            "gen_ai.request.model": who.model_id(),
            # summarized even when the turn fails (its status is then "error")
            "keel.summary": True,
        }
        for key, value in who.prompt_versions().items():
            if value:
                attrs[f"keel.prompt.{key}"] = value
        if who.release_id:
            attrs["keel.release.id"] = who.release_id
        if owner:
            attrs["keel.key.id"] = owner
        if end_user:
            attrs["enduser.id"] = end_user
        commit = who.git_commit()
        if commit:
            attrs["keel.git.commit"] = commit
        return attrs

    @contextmanager
    def span(
        self,
        thread_id: str,
        owner: str | None,
        question: str | None,
        end_user: str | None = None,
    ) -> Iterator[tuple[Any, str]]:
        """The turn's span as the current span (a turn run in one call)."""
        with self.tracer.start_as_current_span(
            TURN_SPAN, attributes=self.attributes(thread_id, owner, end_user)
        ) as span:
            if question is not None:
                span.set_attribute("keel.input", self.capture(question) or "")
            yield span, trace_id_of(span)

    def start(
        self, thread_id: str, owner: str | None, question: str, end_user: str | None = None
    ) -> Any:
        """The turn's span, not made current (a stream attaches it around each step)."""
        span = self.tracer.start_span(
            TURN_SPAN, attributes=self.attributes(thread_id, owner, end_user)
        )
        span.set_attribute("keel.input", self.capture(question) or "")
        return span

    def finish(self, span: Any, summary: Mapping[str, Any]) -> None:
        """Summary attributes of a turn (``usage``, ``events``, ``stop_reason``, ``text``,
        ``model``, ``cost_usd``, ``citations``, ``cache`` of its answer)."""
        usage = summary.get("usage") or {}
        events = summary.get("events") or []
        outcomes = {e.get("outcome") for e in events if "point" in e}
        guard = (
            "tripped"
            if summary.get("stop_reason") == "guardrail"
            else ("flagged" if "fail" in outcomes else "pass" if outcomes else "none")
        )
        for key, value in {
            "keel.summary": True,
            "keel.stop_reason": summary.get("stop_reason"),
            "keel.output": self.capture(summary.get("text", "")) or "",
            "gen_ai.response.model": summary.get("model") or None,
            "gen_ai.usage.input_tokens": int(usage.get("input_tokens", 0)),
            "gen_ai.usage.output_tokens": int(usage.get("output_tokens", 0)),
            "keel.cost.usd": summary.get("cost_usd"),
            GUARD_OUTCOME: guard,
            "keel.citations": [
                f"{c['doc_id']}#{c['chunk_id']}" for c in summary.get("citations") or []
            ],
        }.items():
            if value is not None:
                span.set_attribute(key, value)
        cache = summary.get("cache")
        if cache:  # the semantic cache was consulted
            span.set_attribute("keel.cache.hit", bool(cache.get("hit")))
            for key in ("similarity", "entry_id"):
                if cache.get(key) is not None:
                    span.set_attribute(f"keel.cache.{key}", cache[key])
        if summary.get("stop_reason") == "error":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))


def trace_id_of(span: Any) -> str:
    return format(span.get_span_context().trace_id, "032x")
