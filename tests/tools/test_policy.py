"""``ToolPolicy``: refusals, limits, validation, timeouts and errors, enforced before running."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest

from keel.errors import UsageError
from keel.tools import RunBudget, ToolCall, ToolOutcome, ToolPolicy, Toolset, tool

CALLS: list[tuple[str, dict[str, Any]]] = []
RELEASE = threading.Event()


class Order(pydantic.BaseModel):
    id: str
    total: float


@tool(scopes=["orders:read"])
def lookup(order_id: str) -> Order:
    """Look an order up."""
    CALLS.append(("lookup", {"order_id": order_id}))
    return Order(id=order_id, total=12.5)


@tool(scopes=["orders:read", "orders:write"], side_effects="write", max_calls_per_run=1)
def refund(order_id: str, amount: float) -> dict[str, Any]:
    """Refund an order."""
    CALLS.append(("refund", {"order_id": order_id, "amount": amount}))
    return {"refunded": amount, "order": order_id}


@tool
def echo(text: str) -> str:
    """Repeat the text."""
    CALLS.append(("echo", {"text": text}))
    return text


@tool(timeout_s=0.2)
def slow_sync(seconds: float) -> str:
    """Sleep in a thread."""
    CALLS.append(("slow_sync", {"seconds": seconds}))
    RELEASE.wait(seconds)
    return "done"


@tool(timeout_s=0.2)
async def slow_async(seconds: float) -> str:
    """Sleep in the loop."""
    CALLS.append(("slow_async", {"seconds": seconds}))
    await asyncio.sleep(seconds)
    return "done"


@tool
def boom(order_id: str) -> str:
    """Always fails."""
    CALLS.append(("boom", {"order_id": order_id}))
    raise ValueError(f"order {order_id} is locked")


@tool(timeout_s=None)
async def numbers(n: int) -> list[int]:
    """A list of numbers."""
    CALLS.append(("numbers", {"n": n}))
    return list(range(n))


TOOLS = Toolset([lookup, refund, echo, slow_sync, slow_async, boom, numbers])


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    RELEASE.clear()
    yield
    RELEASE.set()  # let an abandoned worker thread finish


def run(policy: ToolPolicy, name: str, args: dict[str, Any], budget: RunBudget) -> ToolOutcome:
    return policy.execute_sync(ToolCall(id=f"call-{name}", name=name, args=args), budget)


def test_ok_results_are_rendered_as_text() -> None:
    policy = ToolPolicy(TOOLS)
    budget = RunBudget()
    out = run(policy, "lookup", {"order_id": "A-1"}, budget)
    assert out.ok and out.status == "ok"
    assert out.content == '{"id":"A-1","total":12.5}'
    assert out.result == Order(id="A-1", total=12.5)
    assert out.error is None and out.seconds >= 0
    assert run(policy, "refund", {"order_id": "A-1", "amount": "5"}, budget).content == (
        '{"refunded": 5.0, "order": "A-1"}'
    )
    assert run(policy, "numbers", {"n": 3}, budget).content == "[0, 1, 2]"
    assert run(policy, "echo", {"text": "hi"}, budget).content == "hi"
    assert budget.total == 4 and budget.count("lookup") == 1


def test_visible_is_allowed_and_scope_permitted() -> None:
    assert ToolPolicy(TOOLS).visible().names() == TOOLS.names()
    policy = ToolPolicy(TOOLS, allow=["lookup", "refund", "echo"], scopes=["orders:read"])
    assert policy.visible().names() == ["lookup", "echo"]
    with pytest.raises(UsageError, match="not in the toolset: nope"):
        ToolPolicy(TOOLS, allow=["echo", "nope"])
    with pytest.raises(UsageError):
        ToolPolicy(TOOLS, scopes="orders:read")


def test_unknown_tool_is_refused_naming_only_visible_tools() -> None:
    policy = ToolPolicy(TOOLS, allow=["echo", "lookup"], scopes=[])
    out = run(policy, "delete_everything", {}, RunBudget())
    assert out.status == "refused"
    assert "Unknown tool 'delete_everything'" in out.content
    assert "echo" in out.content and "lookup" not in out.content  # lookup needs a scope


def test_tool_outside_the_allowlist_is_refused_and_never_runs() -> None:
    policy = ToolPolicy(TOOLS, allow=["lookup"])
    budget = RunBudget()
    out = run(policy, "echo", {"text": "x"}, budget)
    assert out.status == "refused"
    assert "not in this app's allowlist" in out.content
    assert out.error == "tool 'echo' is not in this app's allowlist"
    assert CALLS == [] and budget.total == 0


def test_missing_scope_is_refused_and_never_runs() -> None:
    policy = ToolPolicy(TOOLS, scopes=["orders:read"])
    out = run(policy, "refund", {"order_id": "A", "amount": 1}, RunBudget())
    assert out.status == "refused"
    assert "lacks scope(s) orders:write" in out.content
    assert "orders:read," not in out.content  # only the missing scope is named
    assert CALLS == []
    # scopes=None: trusted local use, every scope held
    assert run(ToolPolicy(TOOLS), "refund", {"order_id": "A", "amount": 1}, RunBudget()).ok


def test_invalid_arguments_list_fields_and_use_no_budget() -> None:
    policy = ToolPolicy(TOOLS)
    budget = RunBudget(max_tool_calls=1)
    out = run(policy, "refund", {"amount": "lots", "reason": "x"}, budget)
    assert out.status == "invalid"
    assert "- order_id: Field required" in out.content
    assert "- amount: Input should be a valid number" in out.content
    assert "- reason: Extra inputs are not permitted" in out.content
    assert "call the tool again" in out.content
    assert CALLS == [] and budget.total == 0
    assert run(policy, "refund", {"order_id": "A", "amount": 2}, budget).ok


def test_per_tool_limit_per_run() -> None:
    policy = ToolPolicy(TOOLS)
    budget = RunBudget()
    assert run(policy, "refund", {"order_id": "A", "amount": 1}, budget).ok
    out = run(policy, "refund", {"order_id": "B", "amount": 1}, budget)
    assert out.status == "limit"
    assert "limit of 1 call(s) per run" in out.content
    assert [name for name, _ in CALLS] == ["refund"]
    # a new run has a fresh budget
    assert run(policy, "refund", {"order_id": "B", "amount": 1}, RunBudget()).ok


def test_total_limit_per_run() -> None:
    policy = ToolPolicy(TOOLS)
    budget = RunBudget(max_tool_calls=2)
    assert run(policy, "echo", {"text": "1"}, budget).ok
    assert run(policy, "echo", {"text": "2"}, budget).ok
    assert budget.remaining == 0
    out = run(policy, "echo", {"text": "3"}, budget)
    assert out.status == "limit"
    assert "limit of 2 tool call(s) in total" in out.content
    assert len(CALLS) == 2
    with pytest.raises(UsageError):
        RunBudget(max_tool_calls=-1)


def test_check_reports_without_using_budget() -> None:
    policy = ToolPolicy(TOOLS, allow=["echo", "refund"])
    budget = RunBudget(max_tool_calls=1)
    assert policy.check(ToolCall("1", "echo", {"text": "x"}), budget) is None
    assert policy.check(ToolCall("1", "echo", {"text": "x"}), budget) is None
    refused = policy.check(ToolCall("2", "lookup", {"order_id": "x"}), budget)
    assert refused is not None and refused.status == "refused"
    invalid = policy.check(ToolCall("3", "echo", {}), budget)
    assert invalid is not None and invalid.status == "invalid"
    assert budget.total == 0 and CALLS == []


def test_concurrent_calls_cannot_overrun_a_limit() -> None:
    policy = ToolPolicy(TOOLS)
    budget = RunBudget()

    async def many() -> list[ToolOutcome]:
        calls = [ToolCall(str(i), "refund", {"order_id": str(i), "amount": 1}) for i in range(4)]
        return list(await asyncio.gather(*(policy.execute(c, budget) for c in calls)))

    outcomes = asyncio.run(many())
    assert sorted(o.status for o in outcomes) == ["limit", "limit", "limit", "ok"]
    assert len(CALLS) == 1


@pytest.mark.parametrize("name", ["slow_sync", "slow_async"])
def test_timeouts(name: str) -> None:
    started = time.perf_counter()
    out = run(ToolPolicy(TOOLS), name, {"seconds": 5}, RunBudget())
    elapsed = time.perf_counter() - started
    assert out.status == "timeout"
    assert out.content == f"Tool {name!r} timed out after 0.2 s."
    assert 0.15 < elapsed < 1.5
    assert 0.15 < out.seconds < 1.5


def test_exceptions_become_error_outcomes_without_traceback() -> None:
    out = run(ToolPolicy(TOOLS), "boom", {"order_id": "A-7"}, RunBudget())
    assert out.status == "error" and not out.ok
    assert out.content == "Tool 'boom' failed: ValueError: order A-7 is locked"
    assert out.error == "ValueError: order A-7 is locked"
    assert "Traceback" not in out.content


def test_results_are_truncated_to_max_result_chars() -> None:
    policy = ToolPolicy(TOOLS, max_result_chars=100)
    out = run(policy, "echo", {"text": "x" * 1000}, RunBudget())
    assert out.ok
    assert len(out.content) <= 100
    assert out.content.startswith("xxxx")
    assert "[truncated: the result has 1000 characters" in out.content
    assert out.result == "x" * 1000
    tiny = ToolPolicy(TOOLS, max_result_chars=5)
    assert run(tiny, "echo", {"text": "abcdefgh"}, RunBudget()).content == "abcde"
    assert run(policy, "echo", {"text": "y" * 100}, RunBudget()).content == "y" * 100


def test_execute_sync_inside_a_running_loop_runs_the_call_on_a_loop_of_its_own() -> None:
    policy = ToolPolicy(TOOLS)

    async def inside() -> ToolOutcome:
        return policy.execute_sync(ToolCall("1", "echo", {"text": "x"}), RunBudget())

    out = asyncio.run(inside())
    assert out.ok and out.content == "x"
    assert ("echo", {"text": "x"}) in CALLS


def test_execute_sync_on_a_loop_of_its_own_keeps_what_the_turn_may_read() -> None:
    from keel.rag.access import current_readable, reading_as

    @tool
    def labels() -> str:
        """The labels this call may read."""
        return ",".join(sorted(current_readable() or ["everything"]))

    policy = ToolPolicy(Toolset([labels]))

    async def inside() -> ToolOutcome:
        with reading_as(frozenset({"billing"})):
            return policy.execute_sync(ToolCall("1", "labels", {}), RunBudget())

    assert asyncio.run(inside()).content == "billing"  # not "everything"


def test_requires_approval_and_rejected_outcome() -> None:
    policy = ToolPolicy(TOOLS.approval_required(["refund"]))
    call = ToolCall("9", "refund", {"order_id": "A", "amount": 1})
    assert policy.requires_approval(call)
    assert not policy.requires_approval(ToolCall("9", "echo", {"text": "x"}))
    out = ToolOutcome.rejected(call, "amount too high")
    assert out.status == "rejected" and not out.ok
    assert "rejected by a reviewer: amount too high" in out.content
    assert "did not run" in out.content
