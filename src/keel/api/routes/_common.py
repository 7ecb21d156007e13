from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from fastapi import Request

from keel.api.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def close_quietly(events: Iterator[Any]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


_END = object()


async def closing_stream(events: Iterator[str]) -> AsyncIterator[str]:
    """A streaming response body over a sync generator of events, closed as soon as the
    response ends, also when the client goes away: in a worker thread, after any step still
    running there. (Starlette leaves a sync iterator to the garbage collector, which would run
    its cleanup, cancelling the turn and releasing the thread, at an arbitrary time in an
    arbitrary thread, possibly one that holds a lock the cleanup needs.)"""
    guard = threading.Lock()

    def step() -> Any:
        with guard:
            return next(events, _END)

    def close() -> None:
        with guard:
            close_quietly(events)

    try:
        while True:
            item = await anyio.to_thread.run_sync(step)
            if item is _END:
                return
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)
