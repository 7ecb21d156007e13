"""How Keel's own chat models (the extractive model, the scripted test model) stream."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

_PIECE = re.compile(r"\s*\S+\s*")


def stream_chunks(
    content: str | list[Any],
    tool_calls: Sequence[Mapping[str, Any]] = (),
    *,
    usage: Any = None,
    metadata: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    additional_kwargs: Mapping[str, Any] | None = None,
) -> Iterator[ChatGenerationChunk]:
    """A reply as chunks: word by word (each with its surrounding whitespace, so the chunks
    join to exactly ``content``), then one last chunk with the tool calls, usage and response
    metadata. Content blocks (a list) are not split."""
    common: dict[str, Any] = {"id": message_id} if message_id else {}
    pieces: list[Any] = [content] if content else []
    if isinstance(content, str):
        pieces = _PIECE.findall(content) or ([content] if content else [])
    for piece in pieces:
        yield ChatGenerationChunk(message=AIMessageChunk(content=piece, **common))
    calls = [
        tool_call_chunk(name=tc["name"], args=json.dumps(tc["args"]), id=tc["id"], index=i)
        for i, tc in enumerate(tool_calls)
    ]
    yield ChatGenerationChunk(
        message=AIMessageChunk(
            content="" if isinstance(content, str) else [],
            tool_call_chunks=calls,
            usage_metadata=usage,
            response_metadata=dict(metadata or {}),
            additional_kwargs=dict(additional_kwargs or {}),
            chunk_position="last",
            **common,
        )
    )
