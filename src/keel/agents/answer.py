"""What a turn returns: :class:`Answer`, and what streaming yields: event dicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Answer:
    """The outcome of one turn.

    ``stop_reason``: ``done``; ``approval_required`` (``pending_approval`` lists the calls
    waiting for a person: resume with :meth:`keel.App.resume`); ``step_limit`` /
    ``tool_errors`` (a limit ended the turn, ``text`` says so); ``guardrail`` (a guard ended
    it, ``text`` is its message); ``client_tool_calls`` (the model called tools the client
    declared: ``client_tool_calls`` lists them for the client to run); ``invalid_output``
    (the reply did not fit the requested response format after one corrective retry:
    ``text`` says why).

    ``usage``: tokens the model server reported; empty when it reported none (unknown,
    never zeros), and ``cost_usd`` is then None. ``finish_reason``: why the last model call
    stopped, ``length`` when ``max_tokens`` cut the reply.

    ``model_calls``: one entry per model call the turn made, retries and fallbacks included
    (``model``, ``seconds``, ``input_tokens``, ``output_tokens``, ``error``: empty when it
    answered); ``model_seconds`` is the turn's total time in model calls.

    ``cache_hit``: the semantic cache answered (no model call: usage and cost are zero);
    ``cache``: its lookup (``hit``, ``similarity`` of the nearest entry, ``entry_id``), None
    when the cache was not consulted (off, a follow-up turn, a guard that did not pass).
    """

    text: str
    thread_id: str
    stop_reason: str = "done"
    trace_id: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    pending_approval: list[dict[str, Any]] | None = None
    usage: dict[str, int] = field(default_factory=dict)  # {}: the server did not report it
    finish_reason: str | None = None  # the last model call's: stop, length, tool_calls, ...
    model: str = ""
    model_seconds: float = 0.0
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    cost_usd: float | None = None  # None when the model's price is unknown (never guessed)
    events: list[dict[str, Any]] = field(default_factory=list)
    hits: list[dict[str, Any]] = field(default_factory=list)
    release_id: str | None = None  # the release that served it (None: the app on disk)
    cache_hit: bool = False
    cache: dict[str, Any] | None = None
    # calls of client tools the turn handed to the client (stop_reason "client_tool_calls"):
    # {"id", "name", "args"}; the client's next request carries their results
    client_tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
