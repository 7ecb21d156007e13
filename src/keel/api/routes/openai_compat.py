"""OpenAI-compatible chat completions and models, so existing clients work unchanged.

``model`` is the app's name (or its version id). Every request field is honoured or refused
with a 400 naming it (:mod:`keel.api.openai_turn`); errors are OpenAI-shaped
(:mod:`keel.api.openai_errors`). A conversation continues through the ``X-Keel-Thread``
header or ``metadata.thread_id``; without either, each request is a new thread seeded with
the earlier messages it carries. ``user`` is the end user, recorded on the trace. Client
system/developer messages follow the app's system prompt as delimited client instructions.
Keel's extras (thread, citations, trace id, pending approvals) ride along in a ``keel`` field.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from keel.agents.client_tools import ClientTools
from keel.agents.events import Done, Token
from keel.api.openai_errors import documented, error_body
from keel.api.openai_turn import ChatTurn, chat_turn, check_for_app, thread_of
from keel.api.problems import COMMON, Problem, store_failure
from keel.api.routes._common import close_quietly, closing_stream, gateway
from keel.api.schemas import ChatCompletionRequest
from keel.errors import GuardTripped, ModelError, UsageError

_NONE = ClientTools()
router = APIRouter(tags=["openai"], responses=documented(*COMMON))
_log = logging.getLogger("keel.api")


def _models(request: Request) -> list[str]:
    app = gateway(request).app
    return [app.name, app.version]


def _model(mid: str, created: int) -> dict[str, Any]:
    return {"id": mid, "object": "model", "created": created, "owned_by": "keel"}


@router.get("/v1/models", summary="Models (OpenAI-compatible)")
def models(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    gw.authenticate(request, "chat")
    now = int(time.time())
    return {"object": "list", "data": [_model(m, now) for m in _models(request)]}


@router.get("/v1/models/{model_id}", summary="One model (OpenAI-compatible)")
def model(model_id: str, request: Request) -> dict[str, Any]:
    gateway(request).authenticate(request, "chat")
    if model_id not in _models(request):
        raise _not_served(model_id, request)
    return _model(model_id, int(time.time()))


def _not_served(mid: str, request: Request) -> Problem:
    return Problem(
        404,
        f"model {mid!r} is not served here (models: {', '.join(_models(request))})",
        type="model-not-found",
        param="model",
    )


def _keel_extra(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "thread_id": answer["thread_id"],
        "trace_id": answer["trace_id"],
        "citations": answer["citations"],
        "tool_calls": answer["tool_calls"],
        "pending_approval": answer["pending_approval"],
        "stop_reason": answer["stop_reason"],
        "cache_hit": bool(answer.get("cache_hit")),
    }


def _content(answer: dict[str, Any]) -> str:
    if answer["pending_approval"]:
        names = ", ".join(c["name"] for c in answer["pending_approval"])
        return f"Waiting for approval of: {names}. Approve or reject it, then ask again."
    return str(answer["text"])


def _finish(answer: dict[str, Any]) -> str:
    """OpenAI's finish_reason: client tools to run, a guard stopped it, the length limit
    cut it, or it ended."""
    if answer.get("client_tool_calls"):
        return "tool_calls"
    if answer["stop_reason"] == "guardrail":
        return "content_filter"
    if answer.get("finish_reason") == "length" and not answer["pending_approval"]:
        return "length"
    return "stop"


def _usage(answer: dict[str, Any]) -> dict[str, int] | None:
    """Token counts; None when the model server reported none (unknown, never zeros)."""
    u = answer.get("usage") or {}
    if not u:
        return None
    return {
        "prompt_tokens": int(u.get("input_tokens", 0)),
        "completion_tokens": int(u.get("output_tokens", 0)),
        "total_tokens": int(u.get("total_tokens", 0)),
    }


def _tool_calls(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The client tool calls of an answer, as OpenAI's ``message.tool_calls``."""
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
        }
        for c in answer.get("client_tool_calls") or []
    ]


def _message(answer: dict[str, Any]) -> dict[str, Any]:
    calls = _tool_calls(answer)
    if not calls:
        return {"role": "assistant", "content": _content(answer)}
    return {"role": "assistant", "content": answer["text"] or None, "tool_calls": calls}


def invalid_output(answer: dict[str, Any], param: str) -> dict[str, Any] | None:
    """The error (status 422) when the reply did not fit the requested response format
    after one corrective retry: the validation error, never text that does not parse."""
    if answer["stop_reason"] != "invalid_output":
        return None
    return error_body(422, str(answer["text"]), param=param, code="invalid_model_output")


def prepare(gw: Any, turn: ChatTurn, key: Any, *, format_param: str = "response_format") -> None:
    """Refuse (400) what this app's model and tools cannot honour, before the turn runs."""
    from keel.tools.policy import ToolPolicy

    scopes = gw.tool_scopes(key)
    server = set(ToolPolicy(gw.app.toolset, scopes=scopes).visible().names())
    every = set(gw.app.toolset.names())
    check_for_app(turn, gw.app.agent.chain, server, every, format_param=format_param)


def _completion_id() -> str:
    """``chatcmpl-<trace id>``: the request's trace, which the turn's span joins (a random
    id when tracing records nothing)."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return f"chatcmpl-{format(ctx.trace_id, '032x') if ctx.is_valid else uuid.uuid4().hex}"


def _record_end_user(user: str | None) -> None:
    """OpenAI's ``user`` (an end-user id) on the request's span: ``enduser.id``."""
    if user:
        from opentelemetry import trace

        trace.get_current_span().set_attribute("enduser.id", user)


def _stream_error(exc: Exception) -> dict[str, Any]:
    """A failure inside a stream, as its final ``data: {"error": ...}`` chunk."""
    if isinstance(exc, UsageError):
        status = 404 if str(exc).startswith("no thread") else 400
        return error_body(status, str(exc), code="not_found" if status == 404 else "bad_request")
    if isinstance(exc, GuardTripped):
        return error_body(400, exc.message, code="guardrail")
    if isinstance(exc, ModelError):
        return error_body(502, str(exc), code="model_provider_failed")
    failed = store_failure(exc)
    if failed is not None:
        return error_body(503, str(failed), code="store_unavailable")
    _log.error("a chat completion stream failed", exc_info=exc)
    return error_body(500, "the server failed to handle this request", code="internal")


@router.post(
    "/v1/chat/completions",
    summary="Chat completions (OpenAI-compatible)",
    responses={
        200: {
            "description": "A chat.completion (JSON), or chat.completion.chunk events",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {}},
            },
        }
    },
)
def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    gw = gateway(request)
    key = gw.authenticate(request, "chat")
    if body.model not in _models(request):
        raise _not_served(body.model, request)
    turn = chat_turn(
        body,
        client_instructions=gw.app.config.gateway.client_instructions,
        client_tools=gw.app.config.gateway.client_tools,
    )
    prepare(gw, turn, key)
    limit = gw.app.config.limits.max_message_chars
    sizes = [len(turn.question), *(len(r.content) for r in (turn.client or _NONE).results)]
    if max(sizes) > limit:
        raise Problem(
            413,
            f"a message has {max(sizes)} characters (limit {limit})",
            param="messages",
        )
    client_tid = thread_of(request.headers.get("x-keel-thread"), body) or uuid.uuid4().hex
    thread_id = gw.stored_thread(key, client_tid)  # scoped to the key
    _record_end_user(body.user)
    scopes = gw.tool_scopes(key)
    created = int(time.time())
    started = time.perf_counter()
    model = body.model
    cid = _completion_id()

    app = gw.app_for(thread_id, key.id)
    if not body.stream:
        with gw.thread_lock(thread_id), gw.serving(app):
            answer = app.ask(
                turn.question,
                thread_id,
                scopes,
                owner=key.id,
                history=turn.history,
                params=turn.params,
                tool_choice=turn.tool_choice,
                instructions=turn.instructions,
                client=turn.client,
                response_format=turn.response_format,
                end_user=body.user,
                readable=key.readable,
            )
        data = answer.to_dict()
        data["thread_id"] = client_tid
        gw.account(key, data, time.perf_counter() - started, end_user=body.user)
        failed = invalid_output(data, "response_format")
        if failed is not None:
            return JSONResponse(failed, status_code=422)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": _message(data),
                    "finish_reason": _finish(data),
                }
            ],
            "usage": _usage(data),
            "keel": _keel_extra(data),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    lock = gw.thread_lock(thread_id)
    lock.__enter__()

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"

    def usage_chunk(answer: dict[str, Any]) -> str:
        usage = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(answer),
        }
        return f"data: {json.dumps(usage)}\n\n"

    def events() -> Iterator[str]:
        stream = app.events(
            turn.question,
            thread_id,
            scopes,
            owner=key.id,
            history=turn.history,
            params=turn.params,
            tool_choice=turn.tool_choice,
            instructions=turn.instructions,
            client=turn.client,
            response_format=turn.response_format,
            end_user=body.user,
            readable=key.readable,
        )
        # JSON is sent whole once checked (a reply sent back for a corrective retry is
        # never shown)
        buffered = turn.response_format is not None
        first = True
        shown = ""  # the content sent so far
        try:
            for event in stream:
                if first:
                    first = False
                    yield chunk({"role": "assistant", "content": ""}, None)
                if isinstance(event, Token) and not buffered:
                    shown += event.text
                    yield chunk({"content": event.text}, None)
                elif isinstance(event, Done):
                    answer = event.answer.to_dict()
                    answer["thread_id"] = client_tid
                    gw.account(key, answer, time.perf_counter() - started, end_user=body.user)
                    failed = invalid_output(answer, "response_format")
                    if failed is not None:
                        yield f"data: {json.dumps(failed)}\n\n"
                        return
                    calls = _tool_calls(answer)
                    if calls:
                        if answer["text"] and answer["text"] != shown:
                            yield chunk({"content": answer["text"][len(shown) :]}, None)
                        delta = [{"index": n, **c} for n, c in enumerate(calls)]
                        yield chunk({"tool_calls": delta}, None)
                        yield chunk({}, "tool_calls", keel=_keel_extra(answer))
                        if include_usage:
                            yield usage_chunk(answer)
                        continue
                    # what the non-streamed answer says and was not streamed: a refusal, a
                    # guard's or the step limit's message, an approval notice
                    content = _content(answer)
                    if content != shown:
                        rest = content[len(shown) :] if content.startswith(shown) else content
                        if shown and not content.startswith(shown):
                            rest = "\n\n" + rest
                        yield chunk({"content": rest}, None)
                    yield chunk({}, _finish(answer), keel=_keel_extra(answer))
                    if include_usage:
                        yield usage_chunk(answer)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the stream has begun: its last chunk says why
            gw.failed(app, exc)
            yield f"data: {json.dumps(_stream_error(exc))}\n\n"
        finally:
            close_quietly(stream)
            lock.__exit__(None, None, None)

    return StreamingResponse(
        closing_stream(events()),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )
