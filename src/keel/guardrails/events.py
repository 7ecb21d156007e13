"""What a guard (or any hook) decided at one point of a turn, as the turn records it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GuardEvent"]


@dataclass(frozen=True, slots=True)
class GuardEvent(Mapping[str, Any]):
    """One decision: the hook ``point`` (``input``, ``context``, ``tool_args``,
    ``tool_result``, ``output``), the validator or hook ``name``, its ``outcome`` (``pass``,
    ``fail``, ``tripped``, ``dropped``, ...) and whatever else it said in ``extra`` (for
    keel's guards: ``action``, ``latency_ms``, ``reason``, ``details``; ``chunk_id``,
    ``tool``, ``argument`` where they apply).

    It reads as the read-only mapping of its documented dict too (``event["name"]``,
    ``"latency_ms" in event``), as hooks read ``RunContext.events`` before it was typed."""

    point: str
    name: str
    outcome: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in ("point", "name", "outcome"):
            return getattr(self, key)
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from ("point", "name", "outcome")
        yield from (k for k in self.extra if k not in ("point", "name", "outcome"))

    def __len__(self) -> int:
        return 3 + sum(1 for k in self.extra if k not in ("point", "name", "outcome"))

    def to_dict(self) -> dict[str, Any]:
        """The documented dict of :attr:`keel.agents.answer.Answer.events`."""
        return {"point": self.point, "name": self.name, "outcome": self.outcome, **self.extra}

    @classmethod
    def of(cls, value: GuardEvent | Mapping[str, Any]) -> GuardEvent:
        """An event from itself or from its dict (a hook that appended one, an older
        checkpoint)."""
        if isinstance(value, GuardEvent):
            return value
        rest = {k: v for k, v in value.items() if k not in ("point", "name", "outcome")}
        return cls(
            str(value.get("point", "")),
            str(value.get("name", "")),
            str(value.get("outcome", "")),
            rest,
        )
