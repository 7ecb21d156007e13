"""The OpenAI Responses API (``POST /v1/responses``) for text: input text or messages,
``instructions``, ``previous_response_id`` continuing a keel thread, streaming events, usage.

A response id is ``resp_<thread id><trace id>`` (the thread is the gateway's own 32 hex
digits), so ``previous_response_id`` names its thread without any state beside the thread
itself: any gateway process continues it, and a thread of another key is a 404. Continuing
from an older response of a thread continues the thread as it is now (no branching).
Function tools, structured ``text.format``, reasoning and ``include`` are refused with 400.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from keel.api.openai_errors import documented
from keel.api.openai_turn import refuse
from keel.api.problems import COMMON, Problem
from keel.api.routes._common import close_quietly, closing_stream, gateway
from keel.api.routes.openai_compat import (
    _completion_id,
    _content,
    _keel_extra,
    _models,
    _not_served,
    _record_end_user,
    _stream_error,
)
from keel.api.schemas import ResponsesRequest

router = APIRouter(tags=["openai"], responses=documented(*COMMON))
_PREVIOUS = re.compile(r"^resp_([0-9a-f]{32})[0-9a-f]{32}$")


def _refusals(body: ResponsesRequest) -> None:
    if body.tools:
        raise refuse("tools", "function tools are not supported by this gateway")
    if body.tool_choice is not None and body.tool_choice not in ("auto", "none"):
        raise refuse("tool_choice", 'tool_choice: only "auto" and "none"')
    fmt = ((body.text or {}).get("format") or {}).get("type", "text")
    if fmt != "text" or set(body.text or {}) - {"format"}:
        raise refuse("text", "only plain text output (text.format type 'text') is supported")
    if body.reasoning:
        raise refuse("reasoning", "reasoning options are not supported by this gateway")
    if body.include:
        raise refuse("include", "include is not supported by this gateway")
    if body.top_logprobs is not None:
        raise refuse("top_logprobs", "logprobs are not supported by this gateway")
    if body.store is False:
        raise refuse("store", "responses are kept as keel threads: store cannot be false")


def _text(i: int, content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    out = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            out.append(str(part.get("text", "")))
        elif kind == "input_image":
            raise refuse(f"input[{i}].content[{j}]", "images are not supported by this app's model")
        else:
            raise refuse(
                f"input[{i}].content[{j}]", f"content parts of type {kind!r} are not supported"
            )
    return "".join(out)


def _turn(body: ResponsesRequest, client_instructions: bool) -> tuple[str, list[Any], str | None]:
    """The question, earlier messages and client instructions of a request."""
    from langchain_core.messages import AIMessage, HumanMessage

    items = (
        [{"role": "user", "text": body.input}]
        if isinstance(body.input, str)
        else [{"role": m.role, "text": _text(i, m.content)} for i, m in enumerate(body.input)]
    )
    instructions = [body.instructions] if body.instructions else []
    if instructions and not client_instructions:
        raise refuse(
            "instructions",
            "instructions are refused by this app ([gateway] client_instructions = false)",
        )
    turns = []
    for i, item in enumerate(items):
        if item["role"] in ("system", "developer"):
            if not client_instructions:
                raise refuse(
                    f"input[{i}].role",
                    f"{item['role']} messages are refused by this app "
                    "([gateway] client_instructions = false)",
                )
            instructions.append(item["text"])
        else:
            turns.append((item["role"], item["text"]))
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise refuse(
            "input", "the last input message must be a non-empty user message", "invalid_value"
        )
    history = [HumanMessage(t) if r == "user" else AIMessage(t) for r, t in turns[:-1]]
    return turns[-1][1], history, "\n\n".join(i for i in instructions if i.strip()) or None


def _usage(answer: dict[str, Any]) -> dict[str, Any] | None:
    u = answer.get("usage") or {}
    if not u:
        return None
    return {
        "input_tokens": int(u.get("input_tokens", 0)),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": int(u.get("output_tokens", 0)),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(u.get("total_tokens", 0)),
    }


@router.post(
    "/v1/responses",
    summary="Responses (OpenAI-compatible, text)",
    responses={
        200: {
            "description": "A response (JSON), or Responses streaming events",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {}},
            },
        }
    },
)
def create_response(body: ResponsesRequest, request: Request) -> Any:
    from keel.agents.params import ModelParams

    gw = gateway(request)
    key = gw.authenticate(request, "chat")
    if body.model not in _models(request):
        raise _not_served(body.model, request)
    _refusals(body)
    question, history, instructions = _turn(body, gw.app.config.gateway.client_instructions)
    limit = gw.app.config.limits.max_message_chars
    if len(question) > limit:
        raise Problem(
            413, f"the message has {len(question)} characters (limit {limit})", param="input"
        )
    if body.previous_response_id is not None:
        found = _PREVIOUS.match(body.previous_response_id)
        if found is None:
            raise refuse(
                "previous_response_id", "not a response id of this gateway", "invalid_value"
            )
        client_tid = found.group(1)
        thread_id = gw.stored_thread(key, client_tid)  # scoped to the key
        exists, owner = gw.app.threads.owner_of(thread_id)
        if not exists or owner != key.id:  # gone, or never this key's
            raise Problem(404, f"no response {body.previous_response_id!r}")
    else:
        client_tid = uuid.uuid4().hex
        thread_id = gw.stored_thread(key, client_tid)
    _record_end_user(body.safety_identifier or body.user)
    params = ModelParams(
        temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_output_tokens
    )
    rid = "resp_" + client_tid + _completion_id().removeprefix("chatcmpl-")[-32:].rjust(32, "0")
    created = int(time.time())
    started = time.perf_counter()
    scopes = gw.tool_scopes(key)
    app = gw.app_for(thread_id, key.id)

    def response(answer: dict[str, Any] | None) -> dict[str, Any]:
        done = answer is not None
        cut = answer is not None and answer.get("finish_reason") == "length"
        output = [_message(rid, _content(answer), "completed")] if answer is not None else []
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": ("incomplete" if cut else "completed") if done else "in_progress",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "error": None,
            "model": body.model,
            "instructions": body.instructions,
            "previous_response_id": body.previous_response_id,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": body.tool_choice or "auto",
            "tools": [],
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "text": {"format": {"type": "text"}},
            "usage": _usage(answer) if answer is not None else None,
            **({"keel": _keel_extra(answer)} if answer is not None else {}),
        }

    def turn(method: Callable[..., Any]) -> Any:
        return method(
            question,
            thread_id,
            scopes,
            owner=key.id,
            history=history,
            params=params or None,
            tool_choice=body.tool_choice if isinstance(body.tool_choice, str) else None,
            instructions=instructions,
        )

    if not body.stream:
        with gw.thread_lock(thread_id), gw.serving(app):
            answer = turn(app.ask).to_dict()
        answer["thread_id"] = client_tid
        gw.account(key, answer, time.perf_counter() - started)
        return response(answer)

    lock = gw.thread_lock(thread_id)
    lock.__enter__()
    seq = iter(range(1_000_000))

    def event(kind: str, **data: Any) -> str:
        payload = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"

    def events() -> Iterator[str]:
        stream = turn(app.stream)
        mid = "msg_" + rid[-32:]
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        shown = ""
        try:
            yield event("response.created", response=response(None))
            yield event("response.in_progress", response=response(None))
            yield event(
                "response.output_item.added", output_index=0, item=_message(rid, "", "in_progress")
            )
            yield event("response.content_part.added", **where, part=_part(""))
            for ev in stream:
                if ev["type"] == "token":
                    shown += ev["text"]
                    yield event(
                        "response.output_text.delta", **where, delta=ev["text"], logprobs=[]
                    )
                elif ev["type"] == "done":
                    answer = ev["answer"]
                    answer["thread_id"] = client_tid
                    gw.account(key, answer, time.perf_counter() - started)
                    content = _content(answer)
                    if content != shown:  # a refusal, a guard's message, an approval notice
                        rest = (
                            content[len(shown) :] if content.startswith(shown) else "\n\n" + content
                        )
                        shown += rest
                        yield event("response.output_text.delta", **where, delta=rest, logprobs=[])
                    yield event("response.output_text.done", **where, text=shown, logprobs=[])
                    yield event("response.content_part.done", **where, part=_part(shown))
                    final = response(answer)
                    final["output"] = [_message(rid, shown, "completed")]
                    yield event(
                        "response.output_item.done", output_index=0, item=final["output"][0]
                    )
                    kind = (
                        "response.incomplete"
                        if final["status"] == "incomplete"
                        else "response.completed"
                    )
                    yield event(kind, response=final)
        except Exception as exc:  # the stream has begun: its last event says why
            gw.metrics.release_request(app.release_id, "error")
            err = _stream_error(exc)["error"]
            yield event("error", code=err["code"], message=err["message"], param=None)
        finally:
            close_quietly(stream)
            lock.__exit__(None, None, None)

    return StreamingResponse(
        closing_stream(events()),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(rid: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_" + rid[-32:],
        "status": status,
        "role": "assistant",
        "content": [_part(text)] if status == "completed" else [],
    }
