from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# (thread name, texts) of each call of an app's support encoder on short texts
EncoderCalls = list[tuple[str, list[str]]]

TOOLS = '''
import time

from keel.tools import tool

CALLS = []


@tool(examples=("look up order ORD-1",))
def lookup_order(order_id: str) -> str:
    """Look up an order's status.

    Args:
        order_id: The order id, like ORD-1.
    """
    CALLS.append(("lookup_order", order_id))
    return f"{order_id}: shipped"


@tool(side_effects="write", requires_approval=True, scopes=["orders:write"])
def refund_order(order_id: str, amount: float) -> str:
    """Refund an order.

    Args:
        order_id: The order id.
        amount: Amount in dollars.
    """
    CALLS.append(("refund_order", order_id, amount))
    return f"refunded {amount} on {order_id}"


@tool(timeout_s=0.2)
def slow_tool(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "woke up"


@tool
def broken_tool(x: int) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError("the backend is on fire")
'''


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    # a unique module name per test, so each test sees its own CALLS list
    name = f"agent_tools_{int(time.time() * 1e6)}"
    (tmp_path / f"{name}.py").write_text(TOOLS)
    return tmp_path / name


@pytest.fixture
def ready_and_spied() -> Callable[[Any], EncoderCalls]:
    """``ready_and_spied(app)``: ingests and warms ``app`` (the support encoder loaded before
    the first turn, as `keel serve` does) and returns the (thread name, texts) of every call
    that runs its support encoder on short texts from then on."""

    def ready(app: Any) -> EncoderCalls:
        app.ingest()
        app.warm()
        support = app.resources.support_embedder
        calls: EncoderCalls = []
        real = support.encode_short

        def spy(texts: Any) -> Any:
            calls.append((threading.current_thread().name, list(texts)))
            return real(texts)

        support.encode_short = spy
        return calls

    return ready
