"""The OpenAI Responses API (``POST /v1/responses``): input text, messages and function
call items, ``instructions``, function tools (client-executed, as on chat completions),
``text.format`` json_object / json_schema, ``previous_response_id`` continuing a keel
thread, streaming events, usage.

A response id is ``resp_<thread id><trace id>`` (the thread is the gateway's own 32 hex
digits), so ``previous_response_id`` names its thread without any state beside the thread
itself: any gateway process continues it, and a thread of another key is a 404. Continuing
from an older response of a thread continues the thread as it is now (no branching).
A call to a function tool ends the response with ``function_call`` output items; the next
request's ``function_call_output`` items continue the turn (after ``previous_response_id``,
or statelessly from the resent items). Reasoning and ``include`` are refused with 400.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from keel.agents.events import Done, Token
from keel.api.openai_errors import documented
from keel.api.openai_turn import (
    ChatTurn,
    answers_a_call,
    assemble,
    call_of,
    choice_of,
    function_tools,
    refuse,
    response_format_of,
)
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
    invalid_output,
    prepare,
)
from keel.api.schemas import (
    ResponseFunctionCall,
    ResponseFunctionOutput,
    ResponsesRequest,
)

router = APIRouter(tags=["openai"], responses=documented(*COMMON))
_PREVIOUS = re.compile(r"^resp_([0-9a-f]{32})[0-9a-f]{32}$")


def _refusals(body: ResponsesRequest) -> None:
    if set(body.text or {}) - {"format"}:
        raise refuse("text", "only text.format is supported (no verbosity)")
    if body.parallel_tool_calls is False:
        raise refuse(
            "parallel_tool_calls",
            "parallel_tool_calls false is not supported: the model may call several tools "
            "in one reply",
        )
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


def _output_text(i: int, output: str | list[dict[str, Any]]) -> str:
    if isinstance(output, str):
        return output
    parts = []
    for j, part in enumerate(output):
        if part.get("type") not in ("input_text", "output_text"):
            raise refuse(f"input[{i}].output[{j}]", "a function call's output is text only")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _turn(body: ResponsesRequest, client_instructions: bool, client_tools: bool) -> ChatTurn:
    """The turn a request asks for: a question, or function call outputs continuing one."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from keel.agents.params import ModelParams

    items = [] if isinstance(body.input, str) else body.input
    uses_tools = bool(body.tools) or any(
        isinstance(m, ResponseFunctionCall | ResponseFunctionOutput) for m in items
    )
    if uses_tools and not client_tools:
        raise refuse(
            "tools" if body.tools else "input",
            "function tools are refused by this app ([gateway] client_tools = false)",
        )
    instructions = [body.instructions] if body.instructions else []
    if instructions and not client_instructions:
        raise refuse(
            "instructions",
            "instructions are refused by this app ([gateway] client_instructions = false)",
        )
    turns: list[Any] = [HumanMessage(body.input)] if isinstance(body.input, str) else []
    for i, item in enumerate(items):
        if isinstance(item, ResponseFunctionCall):
            call = call_of(f"input[{i}].arguments", item.call_id, item.name, item.arguments)
            last = turns[-1] if turns else None
            if isinstance(last, AIMessage):  # one model reply: its text and its calls
                turns[-1] = AIMessage(last.content, tool_calls=[*last.tool_calls, call])
            else:
                turns.append(AIMessage("", tool_calls=[call]))
        elif isinstance(item, ResponseFunctionOutput):
            if not answers_a_call(turns, item.call_id):
                raise refuse(
                    f"input[{i}]",
                    "a function_call_output must answer a function_call before it",
                    "invalid_value",
                )
            turns.append(ToolMessage(_output_text(i, item.output), tool_call_id=item.call_id))
        elif item.role in ("system", "developer"):
            if not client_instructions:
                raise refuse(
                    f"input[{i}].role",
                    f"{item.role} messages are refused by this app "
                    "([gateway] client_instructions = false)",
                )
            instructions.append(_text(i, item.content))
        elif item.role == "user":
            turns.append(HumanMessage(_text(i, item.content)))
        else:
            turns.append(AIMessage(_text(i, item.content)))
    params = ModelParams(
        temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_output_tokens
    )
    return assemble(
        turns,
        "input",
        instructions="\n\n".join(i for i in instructions if i.strip()) or None,
        params=params or None,
        tool_choice=choice_of(body.tool_choice, flat=True),
        client=function_tools(body.tools, flat=True) if body.tools else None,
        response_format=response_format_of((body.text or {}).get("format"), "text.format"),
    )


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
    gw = gateway(request)
    key = gw.authenticate(request, "chat")
    if body.model not in _models(request):
        raise _not_served(body.model, request)
    _refusals(body)
    gwc = gw.app.config.gateway
    chat = _turn(body, gwc.client_instructions, gwc.client_tools)
    prepare(gw, chat, key, format_param="text.format")
    limit = gw.app.config.limits.max_message_chars
    sizes = (
        [len(chat.question), *(len(r.content) for r in chat.client.results)]
        if chat.client
        else [len(chat.question)]
    )
    if max(sizes) > limit:
        raise Problem(413, f"an input has {max(sizes)} characters (limit {limit})", param="input")
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
    end_user = body.safety_identifier or body.user
    _record_end_user(end_user)
    rid = "resp_" + client_tid + _completion_id().removeprefix("chatcmpl-")[-32:].rjust(32, "0")
    created = int(time.time())
    started = time.perf_counter()
    scopes = gw.tool_scopes(key)
    app = gw.app_for(thread_id, key.id)

    def response(answer: dict[str, Any] | None) -> dict[str, Any]:
        done = answer is not None
        cut = answer is not None and answer.get("finish_reason") == "length"
        output = _output(rid, answer) if answer is not None else []
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
            "tools": body.tools or [],
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
            "usage": _usage(answer) if answer is not None else None,
            **({"keel": _keel_extra(answer)} if answer is not None else {}),
        }

    def turn(method: Callable[..., Any]) -> Any:
        return method(
            chat.question,
            thread_id,
            scopes,
            owner=key.id,
            history=chat.history,
            params=chat.params,
            tool_choice=chat.tool_choice,
            instructions=chat.instructions,
            client=chat.client,
            response_format=chat.response_format,
            end_user=end_user,
            readable=key.readable,
        )

    if not body.stream:
        with gw.thread_lock(thread_id), gw.serving(app):
            answer = turn(app.ask).to_dict()
        answer["thread_id"] = client_tid
        gw.account(key, answer, time.perf_counter() - started, end_user=end_user)
        failed = invalid_output(answer, "text.format")
        if failed is not None:
            return JSONResponse(failed, status_code=422)
        return response(answer)

    lock = gw.thread_lock(thread_id)
    lock.__enter__()
    seq = iter(range(1_000_000))

    def event(kind: str, **data: Any) -> str:
        payload = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"

    def events() -> Iterator[str]:
        stream = turn(app.events)
        mid = "msg_" + rid[-32:]
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        shown = ""
        opened = False  # the message item is added with its first text
        buffered = chat.response_format is not None  # JSON is sent whole, once checked

        def open_message() -> Iterator[str]:
            nonlocal opened
            if not opened:
                opened = True
                yield event(
                    "response.output_item.added",
                    output_index=0,
                    item=_message(rid, "", "in_progress"),
                )
                yield event("response.content_part.added", **where, part=_part(""))

        try:
            yield event("response.created", response=response(None))
            yield event("response.in_progress", response=response(None))
            for ev in stream:
                if isinstance(ev, Token) and not buffered:
                    yield from open_message()
                    shown += ev.text
                    yield event("response.output_text.delta", **where, delta=ev.text, logprobs=[])
                elif isinstance(ev, Done):
                    answer = ev.answer.to_dict()
                    answer["thread_id"] = client_tid
                    gw.account(key, answer, time.perf_counter() - started, end_user=end_user)
                    failed = invalid_output(answer, "text.format")
                    if failed is not None:
                        err = failed["error"]
                        yield event(
                            "error", code=err["code"], message=err["message"], param=err["param"]
                        )
                        return
                    calls = answer.get("client_tool_calls") or []
                    content = answer["text"] if calls else _content(answer)
                    if content != shown:  # a refusal, a guard's message, an approval notice
                        rest = (
                            content[len(shown) :] if content.startswith(shown) else "\n\n" + content
                        )
                        yield from open_message()
                        shown += rest
                        yield event("response.output_text.delta", **where, delta=rest, logprobs=[])
                    final = response(answer)
                    final["output"] = []
                    if opened:
                        yield event("response.output_text.done", **where, text=shown, logprobs=[])
                        yield event("response.content_part.done", **where, part=_part(shown))
                        item = _message(rid, shown, "completed")
                        final["output"].append(item)
                        yield event("response.output_item.done", output_index=0, item=item)
                    for call in calls:
                        n = len(final["output"])
                        item = _function_call(call)
                        yield event(
                            "response.output_item.added",
                            output_index=n,
                            item={**item, "arguments": "", "status": "in_progress"},
                        )
                        yield event(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=n,
                            delta=item["arguments"],
                        )
                        yield event(
                            "response.function_call_arguments.done",
                            item_id=item["id"],
                            output_index=n,
                            arguments=item["arguments"],
                        )
                        final["output"].append(item)
                        yield event("response.output_item.done", output_index=n, item=item)
                    kind = (
                        "response.incomplete"
                        if final["status"] == "incomplete"
                        else "response.completed"
                    )
                    yield event(kind, response=final)
        except Exception as exc:  # the stream has begun: its last event says why
            gw.failed(app, exc)
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


def _function_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_" + call["id"],
        "call_id": call["id"],
        "name": call["name"],
        "arguments": json.dumps(call["args"]),
        "status": "completed",
    }


def _output(rid: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished response's output items: the message (when there is text) and the
    function calls handed to the client."""
    calls = answer.get("client_tool_calls") or []
    text = answer["text"] if calls else _content(answer)
    message = [_message(rid, text, "completed")] if text or not calls else []
    return [*message, *(_function_call(c) for c in calls)]
