"""``@tool`` and ``Toolset``: schemas from functions, definition errors, composition, loading."""

from __future__ import annotations

import asyncio
import enum
import inspect
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import pytest

from keel.errors import ConfigError, ToolDefinitionError, UsageError
from keel.tools import Tool, ToolArgumentError, Toolset, get_tool, tool
from keel.tools.registry import parse_docstring


class Priority(enum.Enum):
    low = "low"
    high = "high"


class Address(pydantic.BaseModel):
    street: str
    city: str


@tool
def create_ticket(
    subject: str,
    body: Annotated[str, pydantic.Field(description="What went wrong, in full.")],
    priority: Priority = Priority.low,
    tags: list[str] | None = None,
    due_in_days: Annotated[int, pydantic.Field(ge=1, le=90)] = 7,
    title: str = "",
) -> str:
    """Open a support ticket.

    The ticket goes to the support queue.

    Args:
        subject: One line saying what the ticket is about.
        body: Ignored: the Annotated description wins.
        priority (Priority): How urgent it is.
        tags: Labels for the ticket,
            used for routing.
        title: Shown above the subject.
    """
    return f"{subject}|{priority.value}|{due_in_days}"


@tool(
    scopes=["orders:write"],
    side_effects="write",
    requires_approval=True,
    timeout_s=5,
    max_calls_per_run=1,
    examples=["refund order A-1"],
)
async def refund(order_id: str, amount: float, ship_to: Address | None = None) -> dict[str, Any]:
    """Refund part or all of an order.

    :param order_id: The order to refund.
    :param float amount: How much to refund,
        in the order's currency.
    """
    return {"order_id": order_id, "amount": amount}


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


# --- schema --------------------------------------------------------------------------------------


def test_schema_comes_from_hints_defaults_and_docstring() -> None:
    t = get_tool(create_ticket)
    assert t.name == "create_ticket"
    assert t.description == "Open a support ticket."
    schema = t.parameters_schema()
    props = schema["properties"]
    assert list(props) == ["subject", "body", "priority", "tags", "due_in_days", "title"]
    assert schema["required"] == ["subject", "body"]
    assert schema["additionalProperties"] is False
    assert props["subject"] == {
        "type": "string",
        "description": "One line saying what the ticket is about.",
    }
    assert props["body"]["description"] == "What went wrong, in full."
    assert props["priority"]["description"] == "How urgent it is."
    assert props["priority"]["default"] == "low"
    assert schema["$defs"]["Priority"]["enum"] == ["low", "high"]
    assert props["tags"]["description"] == "Labels for the ticket, used for routing."
    assert props["tags"]["default"] is None
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert props["due_in_days"] == {"type": "integer", "minimum": 1, "maximum": 90, "default": 7}
    # no pydantic "title" keywords anywhere, but a property *named* title survives
    assert all(key != "title" for path, key, _ in _walk(schema) if path != "/properties")
    assert props["title"] == {
        "type": "string",
        "default": "",
        "description": "Shown above the subject.",
    }


def test_rest_docstring_options_and_async() -> None:
    t = get_tool(refund)
    assert t.is_async
    assert t.description == "Refund part or all of an order."
    props = t.parameters_schema()["properties"]
    assert props["order_id"]["description"] == "The order to refund."
    assert props["amount"]["description"] == "How much to refund, in the order's currency."
    assert t.scopes == frozenset({"orders:write"})
    assert (t.side_effects, t.requires_approval, t.timeout_s, t.max_calls_per_run) == (
        "write",
        True,
        5.0,
        1,
    )
    assert t.examples == ("refund order A-1",)
    # the nested model is described too
    assert "Address" in t.parameters_schema()["$defs"]


def test_to_openai_is_the_function_format() -> None:
    spec = get_tool(refund).to_openai()
    assert spec["type"] == "function"
    assert spec["function"]["name"] == "refund"
    assert spec["function"]["description"] == "Refund part or all of an order."
    assert spec["function"]["parameters"]["required"] == ["order_id", "amount"]


def test_parameters_schema_is_a_copy() -> None:
    t = get_tool(create_ticket)
    t.parameters_schema()["properties"].clear()
    assert "subject" in t.parameters_schema()["properties"]


def test_no_parameters_gives_an_empty_object_schema() -> None:
    @tool
    def now() -> str:
        """The current time."""
        return "12:00"

    assert get_tool(now).parameters_schema() == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


def test_local_types_under_postponed_annotations_resolve() -> None:
    class Unit(enum.Enum):
        cm = "cm"
        inch = "in"

    @tool
    def convert(value: float, unit: Unit) -> str:
        """Convert a length."""
        return f"{value}{unit.value}"

    assert get_tool(convert).validate({"value": "2", "unit": "in"}) == {
        "value": 2.0,
        "unit": Unit.inch,
    }


def test_parameter_names_that_clash_with_pydantic_still_work() -> None:
    @tool
    def export(json: bool, copy: int = 1, model_config: str = "x") -> str:
        """Export the report."""
        return f"{json}-{copy}-{model_config}"

    t = get_tool(export)
    assert list(t.parameters_schema()["properties"]) == ["json", "copy", "model_config"]
    kwargs = t.validate({"json": True, "copy": 3})
    assert kwargs == {"json": True, "copy": 3, "model_config": "x"}
    assert asyncio.run(t.arun({"json": False})) == "False-1-x"


# --- the function stays the function -------------------------------------------------------------


def test_decorated_functions_are_unchanged_and_callable() -> None:
    def plain(x: int) -> int:
        """Double x."""
        return x * 2

    signature = inspect.signature(plain)
    assert tool(plain) is plain
    assert plain(4) == 8
    assert inspect.signature(plain) == signature
    assert plain.__doc__ == "Double x."
    assert not hasattr(plain, "__wrapped__")
    assert get_tool(plain).func is plain

    assert create_ticket("printer", "jammed") == "printer|low|7"
    assert inspect.iscoroutinefunction(refund)
    assert asyncio.run(refund("A-1", 3.5)) == {"order_id": "A-1", "amount": 3.5}


def test_get_tool_accepts_tools_and_decorated_functions_only() -> None:
    t = get_tool(create_ticket)
    assert get_tool(t) is t
    with pytest.raises(UsageError, match="not a tool"):
        get_tool(print)
    with pytest.raises(UsageError):
        get_tool("create_ticket")


def test_description_option_and_first_paragraph_summary() -> None:
    @tool(description="Look an order up by id.")
    def lookup(order_id: str) -> str:
        return order_id

    @tool(name="lookup-v2")
    def lookup2(order_id: str) -> str:
        """Look an order up
        by its id.

        Only orders of the last year.

        Args:
            order_id: The id.
        """
        return order_id

    assert get_tool(lookup).description == "Look an order up by id."
    assert get_tool(lookup2).description == "Look an order up by its id."
    assert get_tool(lookup2).name == "lookup-v2"


# --- definition errors ---------------------------------------------------------------------------


def test_every_definition_problem_is_reported_at_once() -> None:
    def broken(a, b: int, /, *args: int, c: type = int, d: Undefined = 1, **kw: int):  # type: ignore[no-untyped-def]  # noqa: F821
        return None

    with pytest.raises(ToolDefinitionError) as info:
        tool(
            name="9 lives",
            scopes=["ok", 3],  # type: ignore[list-item]
            side_effects="delete",  # type: ignore[arg-type]
            timeout_s=0,
            max_calls_per_run=0,
        )(broken)
    problems = info.value.problems
    text = "\n".join(problems)
    expected = [
        "name '9 lives' is not valid",
        "no description",
        "scopes must be non-empty strings",
        "side_effects must be 'read' or 'write'",
        "timeout_s must be a positive number",
        "max_calls_per_run must be at least 1",
        "parameter 'a' is positional-only",
        "parameter 'b' is positional-only",
        "*args is not supported",
        "parameter 'c': pydantic cannot build a schema",
        "parameter 'd': type hint 'Undefined' cannot be resolved",
        "**kw is not supported",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert len(problems) == len(expected)
    assert info.value.name == "9 lives"
    assert info.value.exit_code == 2


def test_missing_hints_and_undocumented_arguments() -> None:
    def f(a, b: int = 2) -> int:  # type: ignore[no-untyped-def]
        """Add.

        Args:
            a: First.
            c: There is no c.
        """
        return 0

    with pytest.raises(ToolDefinitionError) as info:
        tool(f)
    assert info.value.problems == [
        "parameter 'a' has no type hint",
        "the docstring documents 'c', which is not a parameter",
    ]
    assert not hasattr(f, "__keel_tool__")


def test_a_single_string_for_scopes_is_a_mistake() -> None:
    def f(x: int) -> int:
        """X."""
        return x

    with pytest.raises(ToolDefinitionError, match="not the single string 'orders:read'"):
        tool(scopes="orders:read")(f)


def test_a_write_tool_needs_no_approval_and_options_are_checked_again() -> None:
    @tool(side_effects="write")
    def delete_draft(draft_id: str) -> str:
        """Delete a draft."""
        return draft_id

    t = get_tool(delete_draft)
    assert not t.requires_approval
    changed = t.with_options(requires_approval=True, scopes=["drafts:write"])
    assert changed.requires_approval and changed.scopes == frozenset({"drafts:write"})
    assert t.requires_approval is False  # the original is untouched
    with pytest.raises(ToolDefinitionError, match="name 'bad name' is not valid"):
        t.with_options(name="bad name")
    with pytest.raises(ToolDefinitionError, match="timeout_s"):
        t.with_options(timeout_s=-1)


# --- validation and running ----------------------------------------------------------------------


def test_validate_coerces_and_fills_defaults() -> None:
    t = get_tool(create_ticket)
    kwargs = t.validate({"subject": "s", "body": "b", "priority": "high", "due_in_days": "3"})
    assert kwargs == {
        "subject": "s",
        "body": "b",
        "priority": Priority.high,
        "tags": None,
        "due_in_days": 3,
        "title": "",
    }
    nested = get_tool(refund).validate(
        {"order_id": "A", "amount": 1, "ship_to": {"street": "Main 1", "city": "Oslo"}}
    )
    assert nested["ship_to"] == Address(street="Main 1", city="Oslo")


def test_validate_lists_every_field_error() -> None:
    t = get_tool(create_ticket)
    with pytest.raises(ToolArgumentError) as info:
        t.validate({"body": 5, "due_in_days": 500, "tags": ["a", 2], "colour": "red"})
    errors = info.value.errors
    assert errors[0] == "subject: Field required"
    assert any(e.startswith("body: Input should be a valid string") for e in errors)
    assert any(
        e.startswith("due_in_days: Input should be less than or equal to 90") for e in errors
    )
    assert any(e.startswith("tags.list[str][1]") or e.startswith("tags[1]") for e in errors)
    assert "colour: Extra inputs are not permitted" in errors
    assert info.value.exit_code == 2
    with pytest.raises(ToolArgumentError, match="must be a JSON object"):
        t.validate(["subject"])  # type: ignore[arg-type]


def test_arun_runs_sync_and_async_functions() -> None:
    assert asyncio.run(get_tool(create_ticket).arun({"subject": "s", "body": "b"})) == "s|low|7"
    assert asyncio.run(get_tool(refund).arun({"order_id": "A", "amount": "2"})) == {
        "order_id": "A",
        "amount": 2.0,
    }
    with pytest.raises(ToolArgumentError):
        asyncio.run(get_tool(refund).arun({"order_id": "A"}))


# --- docstrings ----------------------------------------------------------------------------------


def test_parse_docstring_google_and_rest() -> None:
    doc = parse_docstring(
        """Summary line
        continues.

        Args:
            x (int): The x.
            y: The y,
                on two lines.
            *rest: Others.

        Returns:
            z: not an argument.
        """
    )
    assert doc.summary == "Summary line continues."
    assert doc.params == {"x": "The x.", "y": "The y, on two lines.", "rest": "Others."}
    rest = parse_docstring(":param a: A.\n:type a: int\n:param str b: B\n    more.\n:returns: c")
    assert rest.summary == ""
    assert rest.params == {"a": "A.", "b": "B more."}


# --- Toolset -------------------------------------------------------------------------------------


def _tools() -> Toolset:
    @tool(scopes=["orders:read"])
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return order_id

    @tool(scopes=["orders:read", "orders:write"], side_effects="write")
    def cancel(order_id: str) -> str:
        """Cancel an order."""
        return order_id

    def echo(text: str) -> str:
        """Repeat the text."""
        return text

    return Toolset([lookup, cancel, echo, get_tool(create_ticket)])


def test_toolset_is_an_immutable_container() -> None:
    ts = _tools()
    assert ts.names() == ["lookup", "cancel", "echo", "create_ticket"]
    assert len(ts) == 4
    assert "echo" in ts and "missing" not in ts
    assert [t.name for t in ts] == ts.names()
    echo = ts.get("echo")
    assert isinstance(echo, Tool) and echo.description == "Repeat the text."
    assert ts.get("missing") is None
    assert [spec["function"]["name"] for spec in ts.to_openai()] == ts.names()
    with pytest.raises(AttributeError):
        ts.extra = 1  # type: ignore[attr-defined]
    assert Toolset(list(ts)) == ts


def test_duplicate_names_are_a_definition_error() -> None:
    ts = _tools()
    with pytest.raises(ToolDefinitionError, match="two tools in the toolset have this name"):
        Toolset([*ts, get_tool(create_ticket)])


def test_composition_returns_new_toolsets() -> None:
    ts = _tools()
    assert ts.filtered(lambda t: t.side_effects == "read").names() == [
        "lookup",
        "echo",
        "create_ticket",
    ]
    assert ts.only(["echo", "lookup"]).names() == ["lookup", "echo"]
    with pytest.raises(UsageError, match="unknown tool"):
        ts.only(["echo", "nope"])
    assert ts.for_scopes(["orders:read"]).names() == ["lookup", "echo", "create_ticket"]
    assert ts.for_scopes(["orders:read", "orders:write"]).names() == ts.names()
    assert ts.for_scopes([]).names() == ["echo", "create_ticket"]
    with pytest.raises(UsageError):
        ts.for_scopes("orders:read")

    prefixed = ts.prefixed("shop")
    assert prefixed.names() == ["shop_lookup", "shop_cancel", "shop_echo", "shop_create_ticket"]
    prefixed_lookup = prefixed.get("shop_lookup")
    assert prefixed_lookup is not None and prefixed_lookup.func is ts.get("lookup").func  # type: ignore[union-attr]
    assert ts.names()[0] == "lookup"  # the original is unchanged


def test_approval_required_by_name_predicate_or_all() -> None:
    ts = _tools()

    def flagged(s: Toolset) -> list[str]:
        return [t.name for t in s if t.requires_approval]

    assert flagged(ts) == []
    assert flagged(ts.approval_required(["echo"])) == ["echo"]
    assert flagged(ts.approval_required(lambda t: t.side_effects == "write")) == ["cancel"]
    assert flagged(ts.approval_required()) == ts.names()
    with pytest.raises(UsageError):
        ts.approval_required(["nope"])


def test_adding_toolsets_and_name_clashes() -> None:
    ts = _tools()
    extra = Toolset([get_tool(refund)])
    both = ts + extra
    assert both.names() == [*ts.names(), "refund"]
    assert ts.combine(extra, Toolset()).names() == both.names()
    with pytest.raises(ToolDefinitionError, match="'refund'"):
        both + extra
    assert (ts + ts.prefixed("x")).names()[-1] == "x_create_ticket"


# --- from_imports --------------------------------------------------------------------------------


@pytest.fixture
def module_name() -> Iterator[str]:
    name = f"keel_test_tools_{uuid.uuid4().hex[:8]}"
    yield name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


TOOLS_MODULE = '''
from keel.tools import tool, calculator, Tool

@tool
def second(x: int) -> int:
    """Second tool."""
    return x

def helper(y: str) -> str:
    """Not decorated."""
    return y

@tool(name="first")
def first_one(z: str) -> str:
    """First tool."""
    return z

imported = calculator  # decorated elsewhere: not collected by "module"
'''


def test_from_imports_loads_modules_and_functions(tmp_path: Path, module_name: str) -> None:
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(TOOLS_MODULE))
    path_before = list(sys.path)
    ts = Toolset.from_imports([module_name, f"{module_name}:helper"], base_dir=tmp_path)
    assert ts.names() == ["second", "first", "helper"]
    assert sys.path == path_before
    helper = ts.get("helper")
    assert helper is not None and helper.description == "Not decorated."
    assert not hasattr(sys.modules[helper.func.__module__].helper, "__keel_tool__")
    one = Toolset.from_imports([f"{module_name}:first_one"], base_dir=tmp_path)
    assert one.names() == ["first"]


def test_from_imports_failures_are_config_errors(tmp_path: Path, module_name: str) -> None:
    (tmp_path / f"{module_name}.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"cannot import tools from .*SyntaxError") as info:
        Toolset.from_imports([module_name], base_dir=tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="ModuleNotFoundError"):
        Toolset.from_imports(["keel_no_such_module_here"], base_dir=tmp_path)
    with pytest.raises(ConfigError, match="is not valid"):
        Toolset.from_imports(["bad ref:x"], base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not a single string"):
        Toolset.from_imports("keel.tools", base_dir=tmp_path)  # type: ignore[arg-type]


def test_from_imports_missing_attribute_and_empty_module(tmp_path: Path, module_name: str) -> None:
    (tmp_path / f"{module_name}.py").write_text("VALUE = 3\n")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        Toolset.from_imports([f"{module_name}:nope"], base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not a function"):
        Toolset.from_imports([f"{module_name}:VALUE"], base_dir=tmp_path)
    with pytest.raises(ConfigError, match="defines no @tool functions"):
        Toolset.from_imports([module_name], base_dir=tmp_path)


def test_two_apps_with_same_module_name_get_their_own(tmp_path: Path, module_name: str) -> None:
    for app, tool_name in (("a", "alpha"), ("b", "beta")):
        (tmp_path / app).mkdir()
        (tmp_path / app / f"{module_name}.py").write_text(
            f'from keel.tools import tool\n\n@tool\ndef {tool_name}(x: int) -> int:\n    """T."""\n'
            "    return x\n"
        )
    assert Toolset.from_imports([module_name], tmp_path / "a").names() == ["alpha"]
    assert Toolset.from_imports([module_name], tmp_path / "b").names() == ["beta"]
    assert Toolset.from_imports([module_name], tmp_path / "b").names() == ["beta"]


def test_literal_types_are_enumerated() -> None:
    @tool
    def sort(order: Literal["asc", "desc"] = "asc") -> str:
        """Sort results."""
        return order

    assert get_tool(sort).parameters_schema()["properties"]["order"] == {
        "enum": ["asc", "desc"],
        "type": "string",
        "default": "asc",
    }
    with pytest.raises(ToolArgumentError, match="order"):
        get_tool(sort).validate({"order": "up"})


def test_from_imports_never_replaces_standard_modules_or_other_packages(tmp_path: Path) -> None:
    import json

    (tmp_path / "json.py").write_text(
        'from keel.tools import tool\n\n@tool\ndef shadow(x: int) -> int:\n    """T."""\n'
        "    return x\n"
    )
    # the app's own json.py is loaded from its file, under a private module name
    assert Toolset.from_imports(["json"], tmp_path).names() == ["shadow"]
    assert sys.modules["json"] is json
