"""Client-executed tools: tools a caller of the OpenAI-compatible routes declares in its
request. The model sees them beside the app's own tools; a call to one is never run on the
server: it ends the turn and is handed to the client, whose next request carries the results
(as ``tool`` messages) and continues the turn.

The app's own tools keep their policy (allowlist, scopes, approvals, limits); a client tool
is only ever offered to the model and handed back. This module holds the typed request
(:class:`ClientTools`) and the graph input that continues a turn with a client's results.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONFIG_KEY = "keel_client_tools"


@dataclass(frozen=True)
class ClientResult:
    """What the client's own run of a call returned."""

    call_id: str
    content: str


@dataclass(frozen=True)
class ClientTools:
    """A request's client tools (OpenAI function format) and, when it continues a turn, the
    results of the calls that turn handed to the client."""

    tools: tuple[dict[str, Any], ...] = ()
    results: tuple[ClientResult, ...] = field(default=())

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for tool in self.tools:
            name = str((tool.get("function") or {}).get("name", ""))
            if not _NAME.match(name):
                raise UsageError(f"a client tool name must match {_NAME.pattern}, not {name!r}")
            if name in seen:
                raise UsageError(f"client tool {name!r} is declared twice")
            seen.add(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(str(t["function"]["name"]) for t in self.tools)


def from_config(config: Mapping[str, Any]) -> ClientTools | None:
    """The client tools of a run (its config's ``keel_client_tools``), if any."""
    found = config.get("configurable", {}).get(CONFIG_KEY)
    return found if isinstance(found, ClientTools) else None


def continuation(
    stored: Sequence[Any], history: Sequence[Any] | None, results: Sequence[ClientResult]
) -> dict[str, Any]:
    """The graph input that continues a turn with a client's tool results.

    ``stored``: the thread's messages (empty for a new thread, which ``history`` then seeds:
    a stateless client resending its conversation). The results must answer exactly the
    calls the turn handed over and left unanswered; :class:`UsageError` otherwise.
    """
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from keel.agents.graph import turn_reset  # graph imports this module

    messages = list(stored) or list(history or [])
    last_ai = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    if last_ai is None or not last_ai.tool_calls:
        raise UsageError("tool results were sent, but no tool call is waiting for them")
    answered = {
        m.tool_call_id
        for m in messages[messages.index(last_ai) + 1 :]
        if isinstance(m, ToolMessage)
    }
    waiting = {str(tc["id"]): tc["name"] for tc in last_ai.tool_calls if tc["id"] not in answered}
    given = [r.call_id for r in results]
    unknown = sorted(set(given) - set(waiting))
    if unknown:
        raise UsageError(f"tool results for calls that are not waiting: {', '.join(unknown)}")
    if len(set(given)) != len(given):
        raise UsageError("a tool call was answered twice")
    missing = sorted(set(waiting) - set(given))
    if missing:
        raise UsageError(f"tool calls without a result: {', '.join(missing)}")
    replies = [
        ToolMessage(r.content, tool_call_id=r.call_id, name=waiting[r.call_id]) for r in results
    ]
    question = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
    if question is None:
        raise UsageError("tool results were sent without the user message that led to them")
    update: dict[str, Any] = {
        "messages": replies if stored else [*messages, *replies],
        **turn_reset(),
    }
    if not stored:  # a new thread: the question is the resent conversation's last
        update["question"] = str(question.text)
        update["hits"] = []
    return update
