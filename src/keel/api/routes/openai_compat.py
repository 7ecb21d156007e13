"""OpenAI-compatible chat completions and models, so existing clients work unchanged.

``model`` is the app's name (or its version id). A conversation continues through the
``X-Keel-Thread`` header or the ``user`` field; without either, each request is a new thread
seeded with the earlier messages it carries. The app's own system prompt applies: system
messages sent by the client are not used. Keel's extras (thread, citations, trace id,
pending approvals) ride along in a ``keel`` field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from keel.api.problems import COMMON, Problem, documented
from keel.api.routes._common import close_quietly, closing_stream, gateway
from keel.api.schemas import ChatCompletionRequest
from keel.errors import KeelError

router = APIRouter(tags=["openai"], responses=documented(*COMMON))


def _models(request: Request) -> list[str]:
    app = gateway(request).app
    return [app.name, app.version]


@router.get("/v1/models", summary="Models (OpenAI-compatible)")
def models(request: Request) -> dict[str, Any]:
    gw = gateway(request)
    gw.authenticate(request, "chat")
    now = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": now, "owned_by": "keel"}
            for m in _models(request)
        ],
    }


def _history(body: ChatCompletionRequest) -> tuple[str, list[Any]]:
    from langchain_core.messages import AIMessage, HumanMessage

    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise Problem(422, "the last message must come from the user")
    history = [
        HumanMessage(m.text()) if m.role == "user" else AIMessage(m.text()) for m in turns[:-1]
    ]
    question = turns[-1].text()
    if not question.strip():
        raise Problem(422, "the last user message is empty")
    return question, history


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


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    u = answer.get("usage", {})
    return {
        "prompt_tokens": int(u.get("input_tokens", 0)),
        "completion_tokens": int(u.get("output_tokens", 0)),
        "total_tokens": int(u.get("total_tokens", 0)),
    }


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
        raise Problem(
            404,
            f"model {body.model!r} is not served here (models: {', '.join(_models(request))})",
            type="model-not-found",
        )
    question, history = _history(body)
    limit = gw.app.config.limits.max_message_chars
    if len(question) > limit:
        raise Problem(413, f"the message has {len(question)} characters (limit {limit})")
    thread_id = request.headers.get("x-keel-thread") or body.user
    import uuid

    thread_id = thread_id or uuid.uuid4().hex
    if len(thread_id) > 200:
        raise Problem(422, "a thread id has at most 200 characters")
    scopes = gw.tool_scopes(key)
    created = int(time.time())
    started = time.perf_counter()
    model = body.model

    app = gw.app_for(thread_id, key.id)
    if not body.stream:
        with gw.thread_lock(thread_id), gw.serving(app):
            answer = app.ask(question, thread_id, scopes, owner=key.id, history=history)
        data = answer.to_dict()
        gw.account(key, data, time.perf_counter() - started)
        return {
            "id": f"chatcmpl-{answer.trace_id}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _content(data)},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(data),
            "keel": _keel_extra(data),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    lock = gw.thread_lock(thread_id)
    lock.__enter__()

    def chunk(cid: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        import json

        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"

    def events() -> Iterator[str]:
        import json

        stream = app.stream(question, thread_id, scopes, owner=key.id, history=history)
        cid = "chatcmpl-pending"
        first = True
        try:
            for event in stream:
                if first:
                    first = False
                    yield chunk(cid, {"role": "assistant", "content": ""}, None)
                if event["type"] == "token":
                    yield chunk(cid, {"content": event["text"]}, None)
                elif event["type"] == "done":
                    answer = event["answer"]
                    gw.account(key, answer, time.perf_counter() - started)
                    if answer["pending_approval"]:
                        yield chunk(cid, {"content": _content(answer)}, None)
                    yield chunk(cid, {}, "stop", keel=_keel_extra(answer))
                    if include_usage:
                        usage = {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(answer),
                        }
                        yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        except KeelError as exc:
            gw.metrics.release_request(app.release_id, "error")
            err = {"error": {"message": str(exc), "type": type(exc).__name__}}
            yield f"data: {json.dumps(err)}\n\n"
        finally:
            close_quietly(stream)
            lock.__exit__(None, None, None)

    return StreamingResponse(
        closing_stream(events()),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )
