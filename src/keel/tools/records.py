"""What one tool call of a turn did, as the agent's state and the turn's answer record it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolCallRecord"]


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call of a turn and its outcome.

    ``id`` is the call's id as Keel made it unique within the turn; ``status`` is a
    :data:`keel.tools.policy.Status` (``ok``, ``rejected``, ``refused``, ``error``, ...);
    ``content`` is what the model was given back; ``error`` why it did not succeed."""

    id: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    status: str = "ok"
    content: str = ""
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The documented dict of :attr:`keel.agents.answer.Answer.tool_calls`."""
        return {
            "id": self.id,
            "name": self.name,
            "args": dict(self.args),
            "status": self.status,
            "content": self.content,
            "error": self.error,
            "seconds": self.seconds,
        }

    @classmethod
    def of(cls, value: ToolCallRecord | Mapping[str, Any]) -> ToolCallRecord:
        """A record from itself or from its dict (a checkpoint written by an older Keel)."""
        if isinstance(value, ToolCallRecord):
            return value
        return cls(
            id=str(value.get("id", "")),
            name=str(value.get("name", "")),
            args=dict(value.get("args") or {}),
            status=str(value.get("status", "ok")),
            content=str(value.get("content", "")),
            error=value.get("error"),
            seconds=float(value.get("seconds", 0.0)),
        )
