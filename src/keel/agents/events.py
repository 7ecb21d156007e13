"""Typed events of one turn, as :class:`keel.agents.turn.TurnRunner` produces them.

Every surface is derived from this one stream: :meth:`keel.App.ask` keeps the last event's
answer, :meth:`keel.App.stream` yields each event as the documented dict (:func:`to_dict`),
the native SSE route, the OpenAI-compatible routes and the console encode them.

The events, in the order a turn produces them:

- :class:`Token`: a piece of the answer the user may see (after the output guards' window);
- :class:`ToolCallDelta`: a tool call as the model streams it (``index``; ``id`` and ``name``
  on its first delta; ``args`` a piece of its JSON arguments; the ids are the model's own);
- :class:`ToolCallDone`: a tool call's :class:`~keel.tools.records.ToolCallRecord`, once
  run (ids made unique by Keel);
- :class:`Guardrail`: a guard that failed (its result: ``point``, ``validator``, ...);
- :class:`ApprovalRequired`: calls waiting for a person (resume the thread);
- :class:`CitationFound`: one citation of the final answer;
- :class:`Done`: the whole :class:`~keel.agents.answer.Answer`, always last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from keel.agents.answer import Answer
    from keel.tools.records import ToolCallRecord

__all__ = [
    "ApprovalRequired",
    "CitationFound",
    "Done",
    "Guardrail",
    "StreamEvent",
    "Token",
    "ToolCallDelta",
    "ToolCallDone",
    "to_dict",
]


@dataclass(frozen=True, slots=True)
class Token:
    type: ClassVar[str] = "token"
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    type: ClassVar[str] = "tool_call_delta"
    index: int | None
    id: str | None
    name: str | None
    args: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallDone:
    """A tool call, run: its :class:`~keel.tools.records.ToolCallRecord` (``id``, ``name``,
    ``args``, ``status``, ``content``, ``error``, ``seconds``)."""

    type: ClassVar[str] = "tool_call"
    record: ToolCallRecord

    @property
    def outcome(self) -> dict[str, Any]:
        """The record as the documented dict (what :func:`to_dict` sends)."""
        return self.record.to_dict()


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A guard that failed: ``point``, ``validator``, ``outcome``, ``on_fail``, ..."""

    type: ClassVar[str] = "guardrail"
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApprovalRequired:
    type: ClassVar[str] = "approval_required"
    thread_id: str
    calls: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class CitationFound:
    """One citation: ``doc_id``, ``chunk_id``, ``source``, ``quote``, ``doc_hash``, ..."""

    type: ClassVar[str] = "citation"
    citation: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Done:
    type: ClassVar[str] = "done"
    answer: Answer


StreamEvent = (
    Token | ToolCallDelta | ToolCallDone | Guardrail | ApprovalRequired | CitationFound | Done
)


def to_dict(event: StreamEvent) -> dict[str, Any]:
    """The event as :meth:`keel.App.stream` documents it (``{"type": ..., ...}``)."""
    match event:
        case Token(text=text):
            return {"type": "token", "text": text}
        case ToolCallDelta():
            return {
                "type": "tool_call_delta",
                "index": event.index,
                "id": event.id,
                "name": event.name,
                "args": event.args,
            }
        case ToolCallDone(record=record):
            return {"type": "tool_call", **record.to_dict()}
        case Guardrail(result=result):
            return {"type": "guardrail", **result}
        case ApprovalRequired(thread_id=tid, calls=calls):
            return {"type": "approval_required", "thread_id": tid, "calls": calls}
        case CitationFound(citation=citation):
            return {"type": "citation", **citation}
        case Done(answer=answer):
            return {"type": "done", "answer": answer.to_dict()}
    raise TypeError(f"not a stream event: {event!r}")
