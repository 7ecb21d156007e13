"""The rules every tool call passes before it runs, enforced in code, not in the prompt.

:class:`ToolPolicy` decides what the model is told about (:meth:`ToolPolicy.visible`) and what
may run (:meth:`ToolPolicy.check`): the tool must exist, be in the app's allowlist, need only
scopes the caller holds, be within its per-run call limit and the run's total limit, and get
valid arguments. :meth:`ToolPolicy.execute` then runs it with its timeout and turns whatever
happens into a :class:`ToolOutcome` whose ``content`` is what the model sees.

A refused, invalid or over-limit call never reaches the function. Invalid arguments do not use
up the budget, so the model can correct them and retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from keel.errors import UsageError
from keel.tools.registry import Tool, ToolArgumentError, Toolset, call_function

Status = Literal["ok", "refused", "invalid", "error", "timeout", "limit", "rejected"]

_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for."""

    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolOutcome:
    """What came of a call. ``content`` is what the model sees: the result as text, or for
    anything else a short, safe message saying what went wrong. ``error`` is the same reason
    for logs and traces (``None`` when the call succeeded)."""

    call: ToolCall
    status: Status
    content: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def rejected(cls, call: ToolCall, reason: str = "") -> ToolOutcome:
        """The outcome of a call a human declined to approve."""
        why = f": {reason}" if reason else ""
        text = f"The call to tool {call.name!r} was rejected by a reviewer{why}. It did not run."
        return cls(call=call, status="rejected", content=text, error=f"rejected{why}")


class RunBudget:
    """Tool calls made in one agent run: counts per tool name and in total.

    ``max_tool_calls`` caps the run's total (``None``: no cap). A call is counted when it is
    about to run; refused and invalid calls are not counted.
    """

    def __init__(self, max_tool_calls: int | None = None) -> None:
        if max_tool_calls is not None and (
            isinstance(max_tool_calls, bool) or not isinstance(max_tool_calls, int)
        ):
            raise UsageError(f"max_tool_calls must be an integer or None, got {max_tool_calls!r}")
        if max_tool_calls is not None and max_tool_calls < 0:
            raise UsageError(f"max_tool_calls must be 0 or more, got {max_tool_calls}")
        self.max_tool_calls = max_tool_calls
        self.counts: dict[str, int] = {}
        self.total = 0

    def count(self, name: str) -> int:
        """How many calls of tool ``name`` have run in this run."""
        return self.counts.get(name, 0)

    @property
    def remaining(self) -> int | None:
        """Calls left in this run (``None``: no cap)."""
        if self.max_tool_calls is None:
            return None
        return max(0, self.max_tool_calls - self.total)

    def consume(self, name: str) -> None:
        """Count one call of tool ``name``."""
        self.counts[name] = self.counts.get(name, 0) + 1
        self.total += 1

    def __repr__(self) -> str:
        return f"RunBudget(max_tool_calls={self.max_tool_calls}, total={self.total})"


class ToolPolicy:
    """Which tools the model may see and call, for one app and one caller.

    ``allow=None`` allows every tool of the toolset; otherwise only the named ones.
    ``scopes=None`` means the caller holds every scope (trusted local use); with a list, a tool
    needing a scope outside it is hidden from the model and refused if called anyway.
    Results longer than ``max_result_chars`` are cut, with a note saying so.
    """

    def __init__(
        self,
        toolset: Toolset,
        *,
        allow: Iterable[str] | None = None,
        scopes: Iterable[str] | None = None,
        max_result_chars: int = 20_000,
    ) -> None:
        if not isinstance(toolset, Toolset):
            raise UsageError(f"ToolPolicy needs a Toolset, got {type(toolset).__name__}")
        for label, value in (("allow", allow), ("scopes", scopes)):
            if isinstance(value, str):
                raise UsageError(f"{label} must be a list of strings, not the string {value!r}")
        self.toolset = toolset
        self.allow = None if allow is None else frozenset(allow)
        self.scopes = None if scopes is None else frozenset(scopes)
        if self.allow is not None:
            unknown = sorted(self.allow - set(toolset.names()))
            if unknown:
                raise UsageError(
                    f"allow names tools that are not in the toolset: {', '.join(unknown)}"
                )
        if isinstance(max_result_chars, bool) or not isinstance(max_result_chars, int):
            raise UsageError(f"max_result_chars must be an integer, got {max_result_chars!r}")
        if max_result_chars < 1:
            raise UsageError(f"max_result_chars must be at least 1, got {max_result_chars}")
        self.max_result_chars = max_result_chars

    def _allowed(self, tool: Tool) -> bool:
        return self.allow is None or tool.name in self.allow

    def _missing_scopes(self, tool: Tool) -> frozenset[str]:
        if self.scopes is None:
            return frozenset()
        return tool.scopes - self.scopes

    def visible(self) -> Toolset:
        """The tools the model is told about: allowed and within the caller's scopes."""
        return self.toolset.filtered(lambda t: self._allowed(t) and not self._missing_scopes(t))

    def requires_approval(self, call: ToolCall) -> bool:
        """Whether a human has to approve this call before it runs."""
        found = self.toolset.get(call.name)
        return bool(found and found.requires_approval)

    def check(self, call: ToolCall, budget: RunBudget) -> ToolOutcome | None:
        """The refusal, ``invalid`` or ``limit`` outcome for ``call``, or ``None`` when it may
        run. Does not use up any budget."""
        outcome, _tool, _kwargs = self._prepare(call, budget)
        return outcome

    def _prepare(
        self, call: ToolCall, budget: RunBudget
    ) -> tuple[ToolOutcome | None, Tool | None, dict[str, Any]]:
        tool = self.toolset.get(call.name)
        if tool is None:
            names = ", ".join(self.visible().names()) or "(none)"
            return (
                _refusal(call, "refused", f"unknown tool {call.name!r}; available: {names}"),
                None,
                {},
            )
        if not self._allowed(tool):
            return (
                _refusal(call, "refused", f"tool {call.name!r} is not in this app's allowlist"),
                None,
                {},
            )
        missing = self._missing_scopes(tool)
        if missing:
            reason = (
                f"the caller lacks scope(s) {', '.join(sorted(missing))} for tool {call.name!r}"
            )
            return _refusal(call, "refused", reason), None, {}
        limit = tool.max_calls_per_run
        if limit is not None and budget.count(tool.name) >= limit:
            reason = f"tool {call.name!r} reached its limit of {limit} call(s) per run"
            return _refusal(call, "limit", reason), None, {}
        if budget.max_tool_calls is not None and budget.total >= budget.max_tool_calls:
            reason = f"this run reached its limit of {budget.max_tool_calls} tool call(s) in total"
            return _refusal(call, "limit", reason), None, {}
        try:
            kwargs = tool.validate(call.args)
        except ToolArgumentError as exc:
            listed = "\n".join(f"- {e}" for e in exc.errors)
            content = (
                f"invalid arguments for tool {call.name!r}:\n{listed}\n"
                "Fix the arguments and call the tool again."
            )
            error = "invalid arguments: " + "; ".join(exc.errors)
            return ToolOutcome(call=call, status="invalid", content=content, error=error), None, {}
        return None, tool, kwargs

    async def execute(self, call: ToolCall, budget: RunBudget) -> ToolOutcome:
        """Check the call, count it, run it with its timeout, and report what happened.

        Exceptions from the tool become ``status="error"`` with the exception's type and
        message (never a traceback). A sync tool runs in a worker thread; after a timeout that
        thread is abandoned (Python cannot stop it), so tools should bound their own work too.
        """
        started = time.perf_counter()
        refusal, tool, kwargs = self._prepare(call, budget)
        if refusal is not None:
            return refusal
        assert tool is not None
        budget.consume(tool.name)  # no await between the check and this: safe under gather()
        try:
            if tool.timeout_s is None:
                result = await call_function(tool, kwargs)
            else:
                result = await asyncio.wait_for(call_function(tool, kwargs), tool.timeout_s)
        except TimeoutError:
            reason = f"tool {call.name!r} timed out after {tool.timeout_s:g} s"
            return _refusal(call, "timeout", reason, seconds=time.perf_counter() - started)
        except Exception as exc:
            message = _one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return ToolOutcome(
                call=call,
                status="error",
                content=f"Tool {call.name!r} failed: {message}",
                error=message,
                seconds=time.perf_counter() - started,
            )
        try:
            content = self._render(result)
        except Exception as exc:
            message = _one_line(f"result could not be turned into text: {type(exc).__name__}")
            return ToolOutcome(
                call=call,
                status="error",
                content=f"Tool {call.name!r} failed: {message}",
                result=result,
                error=message,
                seconds=time.perf_counter() - started,
            )
        return ToolOutcome(
            call=call,
            status="ok",
            content=content,
            result=result,
            seconds=time.perf_counter() - started,
        )

    def execute_sync(self, call: ToolCall, budget: RunBudget) -> ToolOutcome:
        """:meth:`execute` from sync code, on a fresh event loop. Called from a thread whose
        loop is running (a sync ``App.ask`` in a notebook or an async app), the call gets a
        loop of its own on a worker thread and this thread waits for it; an async host
        should rather ``await`` :meth:`execute` (``App.aask``), which does not block its
        loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.execute(call, budget))
        context = contextvars.copy_context()  # what the turn may read goes with the call
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(context.run, asyncio.run, self.execute(call, budget)).result()

    def _render(self, result: Any) -> str:
        text = render_result(result)
        limit = self.max_result_chars
        if len(text) <= limit:
            return text
        note = f"\n[truncated: the result has {len(text)} characters; showing the first {{}}]"
        keep = limit - len(note.format(limit))
        if keep <= 0:
            return text[:limit]
        return text[:keep] + note.format(keep)


def render_result(result: Any) -> str:
    """A tool result as the text the model reads: JSON for dicts, lists, pydantic models and
    dataclasses; ``str()`` for anything else."""
    if isinstance(result, str):
        return result
    if isinstance(result, pydantic.BaseModel):
        return result.model_dump_json()
    if isinstance(result, (dict, list, tuple)) or (
        dataclasses.is_dataclass(result) and not isinstance(result, type)
    ):
        return json.dumps(_jsonable(result), ensure_ascii=False, default=str)
    return str(result)


def _jsonable(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return value


def _refusal(call: ToolCall, status: Status, reason: str, *, seconds: float = 0.0) -> ToolOutcome:
    return ToolOutcome(
        call=call,
        status=status,
        content=reason[0].upper() + reason[1:] + ".",
        error=reason,
        seconds=seconds,
    )


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > _MAX_ERROR_CHARS:
        flat = flat[: _MAX_ERROR_CHARS - 3] + "..."
    return flat


__all__ = ["RunBudget", "Status", "ToolCall", "ToolOutcome", "ToolPolicy", "render_result"]
