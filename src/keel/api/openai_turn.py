"""A chat-completions request made into one keel turn, or refused with a 400 naming the field.

Every field of :class:`~keel.api.schemas.ChatCompletionRequest` is honoured here or refused;
the README's gateway section lists them. The route (``keel.api.routes.openai_compat``) only
runs the turn and shapes the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keel.api.problems import Problem
from keel.api.schemas import ChatCompletionRequest
from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.agents.params import ModelParams


@dataclass(frozen=True)
class ChatTurn:
    """What one request asks of the app."""

    question: str
    history: list[Any]  # earlier user/assistant messages (langchain-core), seeding a new thread
    instructions: str | None  # the client's system/developer messages, delimited in the prompt
    params: ModelParams | None
    tool_choice: str | None  # "auto" | "none" (for the app's own tools) or None


def refuse(param: str, message: str, code: str = "unsupported_parameter") -> Problem:
    return Problem(400, message, type=code, param=param)


def _params(body: ChatCompletionRequest) -> ModelParams | None:
    from keel.agents.params import ModelParams

    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise refuse(
            "max_completion_tokens",
            "max_tokens and max_completion_tokens disagree: send one of them",
            "invalid_value",
        )
    stop = body.stop
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if stop is not None else None
    try:
        params = ModelParams(
            temperature=body.temperature,
            top_p=body.top_p,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            stop=stops,
            seed=body.seed,
        )
    except UsageError as exc:
        raise refuse("stop", str(exc), "invalid_value") from None
    return params or None


def _refusals(body: ChatCompletionRequest) -> None:
    """Fields keel cannot honour: refused unless they ask for what keel does anyway."""
    if body.n is not None and body.n > 1:
        raise refuse("n", "n > 1 is not supported: one answer per request (send n requests)")
    if body.logprobs:
        raise refuse("logprobs", "logprobs are not supported by this gateway")
    if body.top_logprobs is not None:
        raise refuse("top_logprobs", "logprobs are not supported by this gateway")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise refuse(name, f"{name} is not supported by this gateway (only 0)")
    if body.tools:
        raise refuse("tools", "client tools are not supported by this gateway")
    if body.tool_choice is not None and body.tool_choice not in ("auto", "none"):
        raise refuse(
            "tool_choice",
            'tool_choice: only "auto" and "none" (for the app\'s own tools); forcing a call '
            "is not supported",
        )
    fmt = (body.response_format or {}).get("type", "text") if body.response_format else "text"
    if fmt != "text":
        raise refuse("response_format", f"response_format {fmt!r} is not supported by this gateway")
    if body.store:
        raise refuse("store", "stored completions are not offered (keel keeps threads)")


def _text(i: int, message: Any) -> str:
    if isinstance(message.content, list):
        for j, part in enumerate(message.content):
            kind = part.get("type")
            if kind in ("image_url", "input_image"):
                raise refuse(
                    f"messages[{i}].content[{j}]",
                    "images are not supported by this app's model",
                    "unsupported_content",
                )
            if kind != "text":
                raise refuse(
                    f"messages[{i}].content[{j}]",
                    f"content parts of type {kind!r} are not supported (only text)",
                    "unsupported_content",
                )
    return str(message.text())


def chat_turn(body: ChatCompletionRequest, *, client_instructions: bool) -> ChatTurn:
    """The turn a request asks for; :class:`Problem` 400 naming the first field refused."""
    from langchain_core.messages import AIMessage, HumanMessage

    _refusals(body)
    params = _params(body)
    instructions: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(body.messages):
        if m.role == "tool" or m.tool_calls or m.tool_call_id:
            raise refuse(
                f"messages[{i}]",
                "tool messages and tool calls are not supported (client tools are not)",
            )
        text = _text(i, m)
        if m.role in ("system", "developer"):
            if not client_instructions:
                raise refuse(
                    f"messages[{i}].role",
                    f"{m.role} messages are refused by this app ([gateway] "
                    "client_instructions = false): its own system prompt applies",
                )
            if text.strip():
                instructions.append(text.strip())
            continue
        turns.append((m.role, text))
    if not turns or turns[-1][0] != "user":
        raise refuse("messages", "the last message must come from the user", "invalid_value")
    question = turns[-1][1]
    if not question.strip():
        raise refuse("messages", "the last user message is empty", "invalid_value")
    history = [HumanMessage(t) if r == "user" else AIMessage(t) for r, t in turns[:-1]]
    return ChatTurn(
        question=question,
        history=history,
        instructions="\n\n".join(instructions) or None,
        params=params,
        tool_choice=body.tool_choice if isinstance(body.tool_choice, str) else None,
    )


# -- threads (kept apart: which thread a request continues) -----------------------------------


def thread_of(header: str | None, body: ChatCompletionRequest) -> str | None:
    """The thread a request continues: the ``X-Keel-Thread`` header or
    ``metadata.thread_id``; None: a stateless request (a new thread, seeded with the
    messages it carries). ``user`` names the end user, never a thread."""
    meta = (body.metadata or {}).get("thread_id")
    if header and meta and header != meta:
        raise refuse(
            "metadata.thread_id",
            "the X-Keel-Thread header and metadata.thread_id name different threads",
            "invalid_value",
        )
    tid = header or meta
    if tid is not None and not 1 <= len(tid) <= 200:
        raise refuse("metadata.thread_id", "a thread id has 1-200 characters", "invalid_value")
    return tid
