"""Tools from plain functions: the ``@tool`` decorator, :class:`Tool` and :class:`Toolset`.

A tool's schema comes from the function itself: its signature, its type hints (``Annotated[...,
Field(...)]`` included) and its docstring (summary line plus a Google ``Args:`` section or reST
``:param x:`` fields). Every problem found in a definition is collected and raised together as
one :class:`~keel.errors.ToolDefinitionError`. The decorated function is returned unchanged; the
:class:`Tool` rides along as its ``__keel_tool__`` attribute.

There is no global registry: a :class:`Toolset` is an immutable value built from tools, and it
composes (``filtered``, ``only``, ``for_scopes``, ``prefixed``, ``approval_required``, ``+``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import functools
import importlib
import inspect
import re
import sys
import threading
import typing
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import pydantic
from pydantic.fields import FieldInfo

from keel.errors import ConfigError, KeelError, ToolDefinitionError, UsageError

F = TypeVar("F", bound=Callable[..., Any])
SideEffects = Literal["read", "write"]

TOOL_ATTR = "__keel_tool__"
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")


EXAMPLES_KEY = "x-keel-examples"


class ToolArgumentError(KeelError):
    """The arguments given to a tool do not match its schema; ``errors`` lists each field's
    problem as ``"field: message"``."""

    exit_code = 2

    def __init__(self, tool: str, errors: list[str]) -> None:
        self.tool = tool
        self.errors = list(errors)
        super().__init__(f"invalid arguments for tool {tool!r}: " + "; ".join(self.errors))


# --------------------------------------------------------------------------------------------
# The Tool value


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with its argument model and the rules it runs under.

    Build one with :func:`tool` (decorator) or :meth:`Tool.from_function`; change options with
    :meth:`with_options`. Construction checks the options and raises ``ToolDefinitionError``.
    """

    name: str
    description: str
    func: Callable[..., Any]
    args_model: type[pydantic.BaseModel]
    scopes: frozenset[str] = frozenset()
    side_effects: SideEffects = "read"
    requires_approval: bool = False
    timeout_s: float | None = 30.0
    max_calls_per_run: int | None = None
    examples: tuple[str, ...] = ()
    is_async: bool = False

    def __post_init__(self) -> None:
        problems = _option_problems(
            name=self.name,
            description=self.description,
            scopes=self.scopes,
            side_effects=self.side_effects,
            requires_approval=self.requires_approval,
            timeout_s=self.timeout_s,
            max_calls_per_run=self.max_calls_per_run,
            examples=self.examples,
        )
        if problems:
            raise ToolDefinitionError(str(self.name), problems)
        # Normalise collections given as lists (e.g. through with_options).
        object.__setattr__(self, "scopes", frozenset(self.scopes))
        object.__setattr__(self, "examples", tuple(self.examples))

    @classmethod
    def from_function(
        cls,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        scopes: Iterable[str] = (),
        side_effects: SideEffects = "read",
        requires_approval: bool = False,
        timeout_s: float | None = 30.0,
        max_calls_per_run: int | None = None,
        examples: Iterable[str] = (),
        localns: Mapping[str, Any] | None = None,
    ) -> Tool:
        """Make a tool from ``func`` without touching the function (see :func:`tool`)."""
        return _build_tool(
            func,
            name=name,
            description=description,
            scopes=scopes,
            side_effects=side_effects,
            requires_approval=requires_approval,
            timeout_s=timeout_s,
            max_calls_per_run=max_calls_per_run,
            examples=examples,
            localns=localns,
        )

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments, without pydantic's ``title`` noise."""
        return copy.deepcopy(_schema_for(self.args_model))

    def to_openai(self) -> dict[str, Any]:
        """The tool in the OpenAI function format (what ``ChatModel.bind_tools`` accepts).

        Example questions ride along as ``function["x-keel-examples"]`` for the embedded
        ``keel:extractive`` model's routing; :mod:`keel.agents.models` strips the key before
        tools reach any other provider.
        """
        function: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters_schema(),
        }
        if self.examples:
            function[EXAMPLES_KEY] = list(self.examples)
        return {"type": "function", "function": function}

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``args`` against the schema; return the keyword arguments for ``func``.

        Raises ``ToolArgumentError`` listing every field problem.
        """
        if not isinstance(args, Mapping):
            raise ToolArgumentError(
                self.name, [f"arguments must be a JSON object, got {type(args).__name__}"]
            )
        try:
            model = self.args_model.model_validate(dict(args))
        except pydantic.ValidationError as exc:
            raise ToolArgumentError(self.name, _format_errors(exc)) from exc
        return {
            (field.alias or attr): getattr(model, attr)
            for attr, field in type(model).model_fields.items()
        }

    async def arun(self, args: Mapping[str, Any]) -> Any:
        """Validate ``args`` and call the function (sync functions run in a worker thread).

        No timeout and no policy here: :class:`~keel.tools.policy.ToolPolicy` adds those.
        """
        kwargs = self.validate(args)
        return await call_function(self, kwargs)

    def with_options(self, **changes: Any) -> Tool:
        """A copy with some fields changed (``dataclasses.replace``); options are re-checked."""
        return dataclasses.replace(self, **changes)


async def call_function(tool: Tool, kwargs: dict[str, Any]) -> Any:
    """Call ``tool.func`` with already validated ``kwargs``.

    A sync function runs in its own daemon thread (not the loop's default executor), so a call
    that is abandoned after a timeout cannot hold up ``asyncio.run`` or interpreter exit.
    """
    if tool.is_async:
        return await tool.func(**kwargs)
    result = await _in_daemon_thread(tool.name, tool.func, kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _in_daemon_thread(
    name: str, func: Callable[..., Any], kwargs: dict[str, Any]
) -> Awaitable[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if future.done():  # the caller gave up (timeout, cancellation)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def worker() -> None:
        ok, value = True, None
        try:
            value = ctx.run(func, **kwargs)
        except Exception as exc:
            ok, value = False, exc
        except BaseException as exc:  # SystemExit & co. cannot go into a future
            ok, value = False, RuntimeError(f"{type(exc).__name__}: {exc}")
        # RuntimeError: the loop is closed, nobody waits for this result any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=worker, name=f"keel-tool-{name}", daemon=True).start()
    return future


def _format_errors(exc: pydantic.ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ""
        for part in err.get("loc", ()):
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") not in ("missing", "extra_forbidden") and "input" in err:
            shown = repr(err["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            msg += f" (got {shown})"
        out.append(f"{loc or 'arguments'}: {msg}")
    return out


@functools.lru_cache(maxsize=1024)
def _schema_for(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = _strip_titles(model.model_json_schema())
    return schema


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_DATA_KEYS = ("default", "examples", "enum", "const")


def _strip_titles(schema: Any) -> Any:
    """Remove ``title`` keywords; a property that is *named* title is kept."""
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _strip_titles(v) for k, v in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


# --------------------------------------------------------------------------------------------
# The decorator


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    scopes: Iterable[str] = (),
    side_effects: SideEffects = "read",
    requires_approval: bool = False,
    timeout_s: float | None = 30.0,
    max_calls_per_run: int | None = None,
    examples: Iterable[str] = (),
) -> Callable[[F], F]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    scopes: Iterable[str] = (),
    side_effects: SideEffects = "read",
    requires_approval: bool = False,
    timeout_s: float | None = 30.0,
    max_calls_per_run: int | None = None,
    examples: Iterable[str] = (),
) -> Any:
    """Mark a function as a tool; the function is returned unchanged.

    Usable bare (``@tool``) or with options::

        @tool(scopes=["orders:write"], side_effects="write", requires_approval=True)
        def refund(order_id: str, amount: float) -> str:
            \"\"\"Refund part or all of an order.

            Args:
                order_id: The order to refund, e.g. ``A-1042``.
                amount: The amount to refund, in the order's currency.
            \"\"\"

    The :class:`Tool` is attached as ``func.__keel_tool__`` (read it with :func:`get_tool`).
    Raises ``ToolDefinitionError`` listing every problem with the definition.
    """
    caller = sys._getframe(1)
    localns = dict(caller.f_locals) if caller.f_code.co_name != "<module>" else None

    def decorate(fn: F) -> F:
        made = _build_tool(
            fn,
            name=name,
            description=description,
            scopes=scopes,
            side_effects=side_effects,
            requires_approval=requires_approval,
            timeout_s=timeout_s,
            max_calls_per_run=max_calls_per_run,
            examples=examples,
            localns=localns,
        )
        try:
            setattr(fn, TOOL_ATTR, made)
        except (AttributeError, TypeError) as exc:
            raise UsageError(
                f"cannot mark {fn!r} as a tool ({exc}); use Tool.from_function() instead"
            ) from exc
        return fn

    if func is not None:
        return decorate(func)
    return decorate


def get_tool(obj: Any) -> Tool:
    """The :class:`Tool` of a decorated function (or the Tool itself)."""
    if isinstance(obj, Tool):
        return obj
    found = getattr(obj, TOOL_ATTR, None)
    if isinstance(found, Tool):
        return found
    raise UsageError(f"{obj!r} is not a tool: decorate it with @tool or pass a Tool")


def _as_tool(obj: Any) -> Tool:
    """A Tool, a decorated function, or a plain function (wrapped with the defaults)."""
    if isinstance(obj, Tool):
        return obj
    found = getattr(obj, TOOL_ATTR, None)
    if isinstance(found, Tool):
        return found
    if callable(obj):
        return _build_tool(obj)
    raise UsageError(f"{obj!r} is neither a tool nor a function")


def _option_problems(
    *,
    name: Any,
    description: Any,
    scopes: Any,
    side_effects: Any,
    requires_approval: Any,
    timeout_s: Any,
    max_calls_per_run: Any,
    examples: Any,
) -> list[str]:
    problems: list[str] = []
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(
            f"name {name!r} is not valid: use 1-64 letters, digits, '_' or '-', "
            "not starting with a digit or '-'"
        )
    if not isinstance(description, str) or not description.strip():
        problems.append("no description: write a docstring or pass description=")
    if isinstance(scopes, str):
        problems.append(f"scopes must be a list of strings, not the single string {scopes!r}")
    elif not isinstance(scopes, Iterable):
        problems.append(f"scopes must be a list of strings, got {type(scopes).__name__}")
    else:
        bad = [s for s in scopes if not isinstance(s, str) or not s]
        if bad:
            problems.append(f"scopes must be non-empty strings, got {bad!r}")
    if side_effects not in ("read", "write"):
        problems.append(f"side_effects must be 'read' or 'write', got {side_effects!r}")
    if not isinstance(requires_approval, bool):
        problems.append(f"requires_approval must be True or False, got {requires_approval!r}")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0
    ):
        problems.append(
            f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}"
        )
    if max_calls_per_run is not None and (
        isinstance(max_calls_per_run, bool)
        or not isinstance(max_calls_per_run, int)
        or max_calls_per_run < 1
    ):
        problems.append(f"max_calls_per_run must be at least 1 or None, got {max_calls_per_run!r}")
    if (
        isinstance(examples, str)
        or not isinstance(examples, Iterable)
        or any(not isinstance(e, str) for e in examples)
    ):
        problems.append("examples must be a list of strings")
    return problems


class _Hints:
    """Holds one annotation so ``typing.get_type_hints`` can resolve it on its own."""

    def __init__(self, name: str, annotation: Any) -> None:
        self.__annotations__ = {name: annotation}


def _build_tool(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    scopes: Iterable[str] = (),
    side_effects: SideEffects = "read",
    requires_approval: bool = False,
    timeout_s: float | None = 30.0,
    max_calls_per_run: int | None = None,
    examples: Iterable[str] = (),
    localns: Mapping[str, Any] | None = None,
) -> Tool:
    tool_name = name if name is not None else getattr(func, "__name__", None)
    shown_name = str(tool_name if tool_name is not None else repr(func))
    problems: list[str] = []
    if not callable(func):
        raise ToolDefinitionError(shown_name, [f"{func!r} is not callable"])

    raw_doc = getattr(func, "__doc__", None)
    doc = parse_docstring(raw_doc if isinstance(raw_doc, str) else "")
    tool_description = description if description is not None else doc.summary

    scopes_in: Any = _materialise(scopes)
    examples_in: Any = _materialise(examples)
    problems += _option_problems(
        name=tool_name,
        description=tool_description,
        scopes=scopes_in,
        side_effects=side_effects,
        requires_approval=requires_approval,
        timeout_s=timeout_s,
        max_calls_per_run=max_calls_per_run,
        examples=examples_in,
    )

    fields: dict[str, Any] = {}
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        problems.append(f"cannot read the function's signature: {exc}")
        signature = None

    globalns = getattr(inspect.unwrap(func), "__globals__", {})
    params = list(signature.parameters.values()) if signature else []
    for index, param in enumerate(params):
        where = f"parameter {param.name!r}"
        if param.kind is param.VAR_POSITIONAL:
            problems.append(f"*{param.name} is not supported: name every argument")
            continue
        if param.kind is param.VAR_KEYWORD:
            problems.append(f"**{param.name} is not supported: name every argument")
            continue
        if param.kind is param.POSITIONAL_ONLY:
            problems.append(f"{where} is positional-only: tools are called with keywords")
            continue
        if param.annotation is inspect.Parameter.empty:
            problems.append(f"{where} has no type hint")
            continue
        try:
            hint = typing.get_type_hints(
                _Hints(param.name, param.annotation),
                globalns=globalns,
                localns=dict(localns) if localns else None,
                include_extras=True,
            )[param.name]
        except Exception as exc:
            shown = (
                param.annotation if isinstance(param.annotation, str) else repr(param.annotation)
            )
            problems.append(f"{where}: type hint {shown!r} cannot be resolved ({exc})")
            continue
        field = _make_field(param, hint, doc.params.get(param.name))
        problem = _field_problem(param.name, hint, field)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        fields[_field_name(param.name, index)] = (hint, field)

    known = {p.name for p in params}
    for documented in doc.params:
        if documented not in known:
            problems.append(f"the docstring documents {documented!r}, which is not a parameter")

    if problems:
        raise ToolDefinitionError(shown_name, problems)

    assert isinstance(tool_name, str) and isinstance(tool_description, str)
    args_model = pydantic.create_model(
        f"{tool_name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid", protected_namespaces=()),
        __module__=getattr(func, "__module__", None) or __name__,
        **fields,
    )
    return Tool(
        name=tool_name,
        description=tool_description.strip(),
        func=func,
        args_model=args_model,
        scopes=frozenset(scopes_in),
        side_effects=side_effects,
        requires_approval=requires_approval,
        timeout_s=None if timeout_s is None else float(timeout_s),
        max_calls_per_run=max_calls_per_run,
        examples=tuple(examples_in),
        is_async=inspect.iscoroutinefunction(func),
    )


def _materialise(value: Any) -> Any:
    """A list of an iterable's items (so a generator can be checked and then used); strings
    and non-iterables are returned as they are, for the checks to report."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return value
    return list(value)


def _field_name(param: str, index: int) -> str:
    """The model's attribute for a parameter; the parameter's name stays the alias when it
    would clash with pydantic (``json``, ``copy``, leading underscore, ...)."""
    if param.startswith("_") or hasattr(pydantic.BaseModel, param):
        return f"arg{index}_"
    return param


def _make_field(param: inspect.Parameter, hint: Any, doc_description: str | None) -> FieldInfo:
    described = any(
        isinstance(meta, FieldInfo) and meta.description
        for meta in getattr(hint, "__metadata__", ())
    )
    kwargs: dict[str, Any] = {"alias": param.name}
    if doc_description and not described:
        kwargs["description"] = doc_description
    if param.default is not inspect.Parameter.empty:
        kwargs["default"] = param.default
    field: FieldInfo = pydantic.Field(**kwargs)
    return field


def _field_problem(name: str, hint: Any, field: FieldInfo) -> str | None:
    """Can pydantic validate this type and describe it in JSON schema?"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            probe = pydantic.create_model(
                "probe",
                __config__=pydantic.ConfigDict(protected_namespaces=()),
                value=(hint, field),
            )
            probe.model_json_schema()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"pydantic cannot build a schema for {_type_name(hint)}: {first}"
    # only pydantic's own warnings speak about the type: a ResourceWarning (a socket the
    # garbage collector happened to close meanwhile) or similar says nothing about it
    about_type = [w for w in caught if not issubclass(w.category, ResourceWarning)]
    if about_type:
        return str(about_type[0].message).splitlines()[0]
    return None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)


# --------------------------------------------------------------------------------------------
# Docstrings


@dataclass(frozen=True)
class Docstring:
    """What a tool takes from a docstring: the summary and each argument's description."""

    summary: str
    params: dict[str, str]


_SECTION_RE = re.compile(
    r"^(?P<name>args|arguments|parameters|params|keyword args|keyword arguments|kwargs|"
    r"other parameters|returns?|yields?|raises|examples?|notes?|warnings?|see also|"
    r"attributes|todo|references)\s*:\s*$",
    re.IGNORECASE,
)
_ARG_SECTIONS = {
    "args",
    "arguments",
    "parameters",
    "params",
    "keyword args",
    "keyword arguments",
    "kwargs",
    "other parameters",
}
_GOOGLE_ARG_RE = re.compile(r"^\*{0,2}(?P<name>\w+)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)$")
_REST_PARAM_RE = re.compile(
    r"^:(?:param|parameter|arg|argument)\s+(?:[^:]*\s)?\*{0,2}(?P<name>\w+)\s*:\s*(?P<text>.*)$"
)
_REST_FIELD_RE = re.compile(r"^:\w+[^:]*:")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_docstring(doc: str) -> Docstring:
    """Parse a summary (the first paragraph) and argument descriptions from a docstring.

    Google style (``Args:`` with ``name (type): text`` entries, continuation lines indented)
    and reST fields (``:param name: text``) are understood.
    """
    lines = inspect.cleandoc(doc).splitlines() if doc.strip() else []
    summary: list[str] = []
    for line in lines:
        text = line.strip()
        if not text:
            if summary:
                break
            continue
        if _SECTION_RE.match(text) or _REST_FIELD_RE.match(text):
            break
        summary.append(text)

    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        text = line.strip()
        header = _SECTION_RE.match(text)
        if header:
            base = _indent(line)
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                block.append(lines[i])
                i += 1
            if header.group("name").lower() in _ARG_SECTIONS:
                params.update(_google_args(block))
            continue
        rest = _REST_PARAM_RE.match(text)
        if rest:
            base = _indent(line)
            parts = [rest.group("text").strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > base:
                parts.append(lines[i].strip())
                i += 1
            params[rest.group("name")] = " ".join(p for p in parts if p)
            continue
        i += 1
    return Docstring(summary=" ".join(summary), params=params)


def _google_args(block: list[str]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    entry_indent = min((_indent(line) for line in block if line.strip()), default=0)
    current: list[str] | None = None
    for line in block:
        if not line.strip():
            continue
        match = _GOOGLE_ARG_RE.match(line.strip())
        if _indent(line) == entry_indent and match:
            current = found.setdefault(match.group("name"), [])
            current.append(match.group("text").strip())
        elif current is not None and _indent(line) > entry_indent:
            current.append(line.strip())
    return {name: " ".join(p for p in parts if p) for name, parts in found.items()}


# --------------------------------------------------------------------------------------------
# Toolset


class Toolset:
    """An immutable, ordered set of tools with unique names.

    Composition returns new toolsets; nothing is registered globally::

        tools = Toolset([search, refund]).for_scopes(["orders:read"]).prefixed("shop")
    """

    __slots__ = ("_tools",)
    _tools: dict[str, Tool]

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        by_name: dict[str, Tool] = {}
        for item in tools:
            made = _as_tool(item)
            if made.name in by_name:
                raise ToolDefinitionError(
                    made.name,
                    [
                        "two tools in the toolset have this name "
                        f"({_origin(by_name[made.name])} and {_origin(made)}); "
                        "rename one (name=...) or use prefixed()"
                    ],
                )
            by_name[made.name] = made
        object.__setattr__(self, "_tools", by_name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Toolset is immutable; use its methods to derive a new one")

    # container protocol
    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Toolset):
            return NotImplemented
        return list(self._tools.values()) == list(other._tools.values())

    def __hash__(self) -> int:
        return hash(tuple(self._tools.values()))

    def __repr__(self) -> str:
        return f"Toolset({self.names()!r})"

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    # composition
    def filtered(self, predicate: Callable[[Tool], bool]) -> Toolset:
        """The tools for which ``predicate(tool)`` is true."""
        return Toolset(t for t in self._tools.values() if predicate(t))

    def only(self, names: Iterable[str]) -> Toolset:
        """The named tools (in this toolset's order); an unknown name is a ``UsageError``."""
        wanted = _names_arg(names, "only")
        self._require_known(wanted)
        return Toolset(t for t in self._tools.values() if t.name in wanted)

    def for_scopes(self, held: Iterable[str]) -> Toolset:
        """The tools whose scopes are all in ``held``."""
        have = _names_arg(held, "for_scopes")
        return Toolset(t for t in self._tools.values() if t.scopes <= have)

    def prefixed(self, prefix: str) -> Toolset:
        """Every tool renamed ``{prefix}_{name}``."""
        return Toolset(t.with_options(name=f"{prefix}_{t.name}") for t in self._tools.values())

    def approval_required(
        self, which: Iterable[str] | Callable[[Tool], bool] | None = None
    ) -> Toolset:
        """Mark tools as needing human approval: the named ones, those matching a predicate,
        or all of them (``None``)."""
        if which is None:
            selected: Callable[[Tool], bool] = lambda t: True  # noqa: E731
        elif callable(which):
            selected = which
        else:
            names = _names_arg(which, "approval_required")
            self._require_known(names)
            selected = lambda t: t.name in names  # noqa: E731
        return Toolset(
            t.with_options(requires_approval=True) if selected(t) else t
            for t in self._tools.values()
        )

    def combine(self, *others: Toolset) -> Toolset:
        """This toolset followed by ``others``; a name clash is a ``ToolDefinitionError``."""
        merged: list[Tool] = list(self._tools.values())
        for other in others:
            if not isinstance(other, Toolset):
                raise UsageError(f"can only combine Toolsets, got {type(other).__name__}")
            merged.extend(other)
        return Toolset(merged)

    def __add__(self, other: object) -> Toolset:
        if not isinstance(other, Toolset):
            return NotImplemented
        return self.combine(other)

    def to_openai(self) -> list[dict[str, Any]]:
        return [t.to_openai() for t in self._tools.values()]

    def _require_known(self, names: Iterable[str]) -> None:
        unknown = sorted(set(names) - set(self._tools))
        if unknown:
            raise UsageError(
                f"unknown tool(s) {', '.join(unknown)}; the toolset has: "
                f"{', '.join(self._tools) or '(none)'}"
            )

    # loading
    @classmethod
    def from_imports(cls, refs: Sequence[str], base_dir: Path | str) -> Toolset:
        """Load tools from import references, as listed in keel.toml.

        ``"module:function"`` takes one function (a plain function is wrapped with the
        defaults of :func:`tool`); ``"module"`` takes every ``@tool`` function defined in that
        module plus every module-level :class:`Tool`, in definition order. ``base_dir`` is on
        ``sys.path`` during the imports only. Failures are ``ConfigError``.
        """
        if isinstance(refs, str):
            raise ConfigError("tool references must be a list of strings, not a single string")
        base = Path(base_dir).resolve()
        tools: list[Tool] = []
        for ref in refs:
            tools.extend(_load_ref(ref, base))
        return cls(tools)


def _origin(t: Tool) -> str:
    module = getattr(t.func, "__module__", None) or "?"
    qualname = getattr(t.func, "__qualname__", None) or repr(t.func)
    return f"{module}.{qualname}"


def _names_arg(names: Iterable[str], method: str) -> frozenset[str]:
    if isinstance(names, str):
        raise UsageError(f"{method}() takes a list of names, not the single string {names!r}")
    return frozenset(names)


_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _load_ref(ref: str, base: Path) -> list[Tool]:
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"tool reference {ref!r} is not valid: use 'module' or 'module:function'")
    module_name, _, attr_path = ref.strip().partition(":")
    if not _MODULE_RE.match(module_name) or (":" in ref and not _MODULE_RE.match(attr_path or "")):
        raise ConfigError(f"tool reference {ref!r} is not valid: use 'module' or 'module:function'")
    module = _import_module(module_name, base, ref)
    if not attr_path:
        found: list[Tool] = []
        for value in vars(module).values():
            if isinstance(value, Tool):
                found.append(value)
            elif (
                callable(value)
                and isinstance(getattr(value, TOOL_ATTR, None), Tool)
                and getattr(value, "__module__", None) == module.__name__
            ):
                found.append(get_tool(value))
        if not found:
            raise ConfigError(f"tool module {module_name!r} defines no @tool functions ({ref!r})")
        return found
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"tool reference {ref!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"tool reference {ref!r} is a {type(obj).__name__}, not a function")
    return [_as_tool(obj)]


_IMPORT_LOCK = threading.Lock()


def _import_module(module_name: str, base: Path, ref: str) -> Any:
    """Import ``module_name`` for an app whose folder is ``base``.

    A module file in the app's folder (``tools.py``, ``pkg/tools.py``) is loaded from that
    file under a private name unique to the folder, so two apps' ``tools.py`` never collide,
    and neither collides with an unrelated ``tools`` already in ``sys.modules``. Anything
    else (an installed package) is imported normally. ``base`` is on ``sys.path`` while the
    module runs, so it can import its neighbours.
    """
    entry = str(base)
    with _IMPORT_LOCK:
        sys.path.insert(0, entry)
        try:
            importlib.invalidate_caches()
            file = _module_file(module_name, base)
            if file is None:
                return importlib.import_module(module_name)
            return _load_file(module_name, file, base)
        except ConfigError:
            raise
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(
                f"cannot import tools from {ref!r}: {type(exc).__name__}"
                + (f": {reason}" if reason else "")
            ) from exc
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _module_file(module_name: str, base: Path) -> Path | None:
    parts = module_name.split(".")
    for candidate in (
        base.joinpath(*parts).with_suffix(".py"),
        base.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def _load_file(module_name: str, file: Path, base: Path) -> Any:
    import hashlib
    import importlib.util

    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    private = f"_keel_app_{digest}_{module_name.replace('.', '_')}"
    mtime = file.stat().st_mtime_ns
    cached = sys.modules.get(private)
    if cached is not None and getattr(cached, "__keel_mtime__", None) == mtime:
        return cached
    spec = importlib.util.spec_from_file_location(private, file)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ConfigError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    module.__keel_mtime__ = mtime  # type: ignore[attr-defined]
    sys.modules[private] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[private]
        raise
    return module


__all__ = [
    "Docstring",
    "Tool",
    "ToolArgumentError",
    "Toolset",
    "get_tool",
    "parse_docstring",
    "tool",
]
