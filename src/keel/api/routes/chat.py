"""Native chat, threads and approvals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from keel.agents.events import ApprovalRequired, Done, to_dict
from keel.api.keys import ApiKey
from keel.api.problems import COMMON, Problem, documented, stream_error
from keel.api.routes._common import close_quietly, closing_stream, gateway, sse
from keel.api.schemas import ApprovalRequest, ChatRequest, ChatResponse, ThreadView

router = APIRouter(tags=["chat"], responses=documented(*COMMON))


def _check_length(request: Request, text: str) -> None:
    limit = gateway(request).app.config.limits.max_message_chars
    if len(text) > limit:
        raise Problem(413, f"the message has {len(text)} characters (limit {limit})")


_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer (JSON), or server-sent events when stream is true",
        "content": {"text/event-stream": {"schema": {}}},
    }
}


@router.post(
    "/v1/chat",
    response_model=ChatResponse,
    responses=_SSE,
    summary="Ask the app (JSON or SSE)",
)
def chat(body: ChatRequest, request: Request) -> Any:
    """One turn in a thread. With ``stream: true`` the answer comes as server-sent events:
    ``token``, ``citation``, ``tool_call``, ``approval_required``, ``guardrail`` and ``done``
    (the whole answer, with usage and trace id)."""
    key = gateway(request).authenticate(request, "chat")
    end_user = end_user_of(request.headers.get("x-keel-user"))
    return chat_turn(
        request, key, body.message, body.thread_id, stream=body.stream, end_user=end_user
    )


def end_user_of(raw: str | None) -> str | None:
    """The ``X-Keel-User`` header: the person a turn is for (1-256 printable characters)."""
    if raw is None:
        return None
    if not 0 < len(raw) <= 256 or not raw.isprintable():
        raise Problem(400, "X-Keel-User must be 1-256 printable characters")
    return raw


def chat_turn(
    request: Request,
    key: ApiKey,
    message: str,
    thread_id: str | None,
    *,
    stream: bool,
    end_user: str | None = None,
) -> Any:
    """One turn for an authenticated key: the answer as a dict, or a streaming response of
    server-sent events (``/v1/chat`` and the web console's playground). ``end_user``: the
    person the turn is for (recorded on the thread, trace, usage and cache entries)."""
    gw = gateway(request)
    _check_length(request, message)
    client_tid = thread_id or _new_thread_id()
    tid = gw.stored_thread(key, client_tid)
    app = gw.app_for(tid, key.id)
    scopes = gw.tool_scopes(key)
    if not stream:
        started = time.perf_counter()
        with gw.thread_lock(tid), gw.serving(app):
            answer = app.ask(
                message, tid, scopes, owner=key.id, end_user=end_user, readable=key.readable
            )
        data = answer.to_dict()
        data["thread_id"] = client_tid
        gw.account(key, data, time.perf_counter() - started, end_user=end_user)
        return data

    lock = gw.thread_lock(tid)
    lock.__enter__()  # held for the stream's whole life; released when it ends or is cut

    started = time.perf_counter()

    def events() -> Iterator[str]:
        events_in = app.events(
            message, tid, scopes, owner=key.id, end_user=end_user, readable=key.readable
        )
        try:
            for event in events_in:
                if isinstance(event, Done):
                    answer = event.answer.to_dict()
                    answer["thread_id"] = client_tid
                    gw.account(key, answer, time.perf_counter() - started, end_user=end_user)
                    yield sse("done", answer)
                    continue
                data = to_dict(event)
                kind = data.pop("type")
                if isinstance(event, ApprovalRequired):
                    data["thread_id"] = client_tid
                yield sse(kind, data)
        except Exception as exc:  # the stream has begun: its last event says why
            gw.failed(app, exc)
            yield sse("error", stream_error(exc))
        finally:
            close_quietly(events_in)  # a client that went away cancels the run here
            lock.__exit__(None, None, None)

    return StreamingResponse(
        closing_stream(events()), media_type="text/event-stream", headers=_NO_BUFFER
    )


_NO_BUFFER = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _new_thread_id() -> str:
    import uuid

    return uuid.uuid4().hex


@router.get("/v1/threads/{thread_id}", response_model=ThreadView, summary="A thread's messages")
def get_thread(thread_id: str, request: Request) -> Any:
    gw = gateway(request)
    key = gw.authenticate(request, "chat")
    tid = _existing_thread(gw, key, thread_id)
    app = gw.app_for(tid, key.id)
    messages = app.history(tid, owner=key.id)
    return {
        "thread_id": thread_id,
        "messages": [_message(m) for m in messages],
        "pending_approval": app.pending_approval(tid, owner=key.id),
    }


def _existing_thread(gw: Any, key: ApiKey, thread_id: str) -> str:
    """The stored id of a thread of this key; 404 when the key has none by that id (another
    key's thread by the same id is a different thread: it is never found, nor revealed)."""
    tid: str = gw.stored_thread(key, thread_id)
    exists, owner = gw.app.threads.owner_of(tid)
    if not exists or owner != key.id:
        raise Problem(404, f"no thread {thread_id!r}")
    return tid


def _message(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.type, "content": m.text}
    if getattr(m, "tool_calls", None):
        out["tool_calls"] = [
            {"id": tc["id"], "name": tc["name"], "args": tc["args"]} for tc in m.tool_calls
        ]
    if m.type == "tool":
        out["tool_call_id"] = m.tool_call_id
        out["status"] = getattr(m, "status", "success")
    return out


@router.delete("/v1/threads/{thread_id}", status_code=204, summary="Delete a thread")
def delete_thread(thread_id: str, request: Request) -> None:
    gw = gateway(request)
    key = gw.authenticate(request, "chat")
    tid = _existing_thread(gw, key, thread_id)
    with gw.thread_lock(tid):
        gw.app.delete_thread(tid, owner=key.id)


@router.post(
    "/v1/threads/{thread_id}/approvals",
    response_model=ChatResponse,
    summary="Approve, reject or edit the calls a thread waits on",
)
def approve(thread_id: str, body: ApprovalRequest, request: Request) -> Any:
    key = gateway(request).authenticate(request, "chat")
    return resume_turn(request, key, thread_id, body.decision)


def resume_turn(request: Request, key: ApiKey, thread_id: str, decision: Any) -> dict[str, Any]:
    """Approve, reject or edit the calls a thread waits on, for an authenticated key."""
    gw = gateway(request)
    tid = _existing_thread(gw, key, thread_id)
    started = time.perf_counter()
    app = gw.app_for(tid, key.id)
    with gw.thread_lock(tid), gw.serving(app):
        answer = app.resume(
            tid,
            decision,
            gw.tool_scopes(key),
            owner=key.id,
            readable=key.readable,
        )
    data = answer.to_dict()
    data["thread_id"] = thread_id
    gw.account(key, data, time.perf_counter() - started)
    return data
