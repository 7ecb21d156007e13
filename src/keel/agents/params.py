"""Per-call generation parameters: what ``[model]`` sets for every call and a request may
override for one turn (temperature, top_p, max_tokens, stop, seed).

They reach the model as LangChain per-call keyword arguments, so a provider sends them in its
own form (:class:`keel.agents.openai_compat.KeelChatOpenAI` sends ``max_tokens`` to
OpenAI-compatible servers, which ignore ``max_completion_tokens``). The embedded
``keel:extractive`` model honours ``max_tokens`` and ``stop`` and ignores the sampling ones
(it does not sample).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from keel.errors import UsageError


@dataclass(frozen=True)
class ModelParams:
    """Generation parameters; ``None`` leaves a parameter to the model's own default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise UsageError(f"temperature must be between 0 and 2, not {self.temperature}")
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise UsageError(f"top_p must be between 0 and 1, not {self.top_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if self.stop is not None:
            if len(self.stop) > 4:
                raise UsageError("stop takes at most 4 sequences")
            if any(not isinstance(s, str) or not s for s in self.stop):
                raise UsageError("stop sequences must be non-empty strings")

    def over(self, base: ModelParams | None) -> ModelParams:
        """These parameters, with ``base`` filling in what these leave unset."""
        if base is None:
            return self
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in given.items() if v is not None})

    def kwargs(self) -> dict[str, Any]:
        """The per-call keyword arguments (only what is set)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if f.name == "stop" else value
        return out

    def __bool__(self) -> bool:
        return bool(self.kwargs())
