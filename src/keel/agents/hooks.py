"""Hook points of the agent graph, where guardrails (and anything else) plug in.

Five points, in the order a turn meets them: ``input`` (the user's message), ``context``
(retrieved hits, before they reach the prompt), ``tool_args`` (a tool call, before policy
and execution), ``tool_result`` (a tool's outcome, before the model sees it) and ``output``
(the final answer). Each point holds a list of callables run in order; each receives the
value and the :class:`RunContext` and returns the (possibly changed) value. A hook that
must stop the run raises :class:`keel.errors.GuardTripped`; a ``tool_args`` hook may also
return a :class:`~keel.tools.policy.ToolOutcome` to block just that call. Hooks record what
they decided with :meth:`RunContext.record`, which ends up in the turn's events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.guardrails.events import GuardEvent
from keel.rag.types import Hit
from keel.tools.policy import ToolCall, ToolOutcome

POINTS = ("input", "context", "tool_args", "tool_result", "output")


@dataclass
class RunContext:
    """What a hook may know about the run it is in."""

    app: str
    thread_id: str
    scopes: frozenset[str] | None
    question: str = ""
    hits: list[Hit] = field(default_factory=list)
    events: list[GuardEvent] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)  # kept across the thread's turns

    def record(self, point: str, name: str, outcome: str, **details: Any) -> None:
        self.events.append(GuardEvent(point, name, outcome, details))


InputHook = Callable[[str, RunContext], str]
ContextHook = Callable[[list[Hit], RunContext], list[Hit]]
ToolArgsHook = Callable[[ToolCall, RunContext], "ToolCall | ToolOutcome"]
ToolResultHook = Callable[[ToolOutcome, RunContext], ToolOutcome]
OutputHook = Callable[[str, RunContext], str]


class AnswerWatcher(Protocol):
    """Sees a model's answer as it is written (see the module's docstring)."""

    def restart(self) -> None:
        """The reply begins again (a retry, or a fallback model)."""

    def feed(self, text: str) -> None:
        """The next piece of the answer."""

    def finish(self) -> None:
        """The answer is complete (or the call failed)."""


AnswerHook = Callable[[RunContext], "AnswerWatcher | None"]


@dataclass
class Hooks:
    input: list[InputHook] = field(default_factory=list)
    context: list[ContextHook] = field(default_factory=list)
    tool_args: list[ToolArgsHook] = field(default_factory=list)
    tool_result: list[ToolResultHook] = field(default_factory=list)
    output: list[OutputHook] = field(default_factory=list)
    answer: list[AnswerHook] = field(default_factory=list)

    def watchers(self, ctx: RunContext) -> list[AnswerWatcher]:
        """The ``answer`` hooks' watchers for one model call."""
        return [w for hook in self.answer if (w := hook(ctx)) is not None]

    def run_input(self, text: str, ctx: RunContext) -> str:
        for hook in self.input:
            text = hook(text, ctx)
        return text

    def run_context(self, hits: list[Hit], ctx: RunContext) -> list[Hit]:
        for hook in self.context:
            hits = hook(hits, ctx)
        return hits

    def run_tool_args(self, call: ToolCall, ctx: RunContext) -> ToolCall | ToolOutcome:
        for hook in self.tool_args:
            result = hook(call, ctx)
            if isinstance(result, ToolOutcome):
                return result
            call = result
        return call

    def run_tool_result(self, outcome: ToolOutcome, ctx: RunContext) -> ToolOutcome:
        for hook in self.tool_result:
            outcome = hook(outcome, ctx)
        return outcome

    def run_output(self, text: str, ctx: RunContext) -> str:
        for hook in self.output:
            text = hook(text, ctx)
        return text
