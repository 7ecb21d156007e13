from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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
