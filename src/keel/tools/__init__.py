"""Tools the model may call: plain typed functions, the rules they run under, built-ins.

``@tool`` turns a function into a :class:`Tool` (schema from its signature, type hints and
docstring) and returns the function unchanged. A :class:`Toolset` is an immutable value that
composes; :class:`ToolPolicy` enforces allowlists, scopes, limits and timeouts before any tool
runs. ``httpx`` (used by ``http_get``) is imported only when a request is made.
"""

from __future__ import annotations

from keel.tools.builtin import calculator, make_http_get, make_search_knowledge
from keel.tools.policy import RunBudget, Status, ToolCall, ToolOutcome, ToolPolicy
from keel.tools.records import ToolCallRecord
from keel.tools.registry import Tool, ToolArgumentError, Toolset, get_tool, tool

__all__ = [
    "RunBudget",
    "Status",
    "Tool",
    "ToolArgumentError",
    "ToolCall",
    "ToolCallRecord",
    "ToolOutcome",
    "ToolPolicy",
    "Toolset",
    "calculator",
    "get_tool",
    "make_http_get",
    "make_search_knowledge",
    "tool",
]
