"""A chat-completions request made into one keel turn, or refused with a 400 naming the field.

Every field of :class:`~keel.api.schemas.ChatCompletionRequest` is honoured here or refused;
the README's gateway section lists them. The route (``keel.api.routes.openai_compat``) only
runs the turn and shapes the reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keel.api.problems import Problem
from keel.api.schemas import ChatCompletionRequest
from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.agents.client_tools import ClientTools
    from keel.agents.models import ModelChain, ToolChoice
    from keel.agents.params import ModelParams
    from keel.agents.structured import ResponseFormat


@dataclass(frozen=True)
class ChatTurn:
    """What one request asks of the app."""

    question: str  # "" when the request continues a turn with tool results
    history: list[Any]  # earlier messages (langchain-core), seeding a new thread
    instructions: str | None  # the client's system/developer messages, delimited in the prompt
    params: ModelParams | None
    tool_choice: ToolChoice | None  # "auto" | "none" | "required" | {"type": "function", ...}
    client: ClientTools | None = None  # the request's tools, and tool results it carries
    response_format: ResponseFormat | None = None


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
    if body.parallel_tool_calls is False:
        raise refuse(
            "parallel_tool_calls",
            "parallel_tool_calls false is not supported: the model may call several tools "
            "in one reply",
        )
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


def function_tools(raw: list[dict[str, Any]], *, flat: bool = False) -> ClientTools:
    """A request's ``tools`` as client tools; 400 naming ``tools[i]`` for anything else.
    ``flat``: the Responses API's form (``{"type": "function", "name": ...}``)."""
    from keel.agents.client_tools import ClientTools

    tools: list[dict[str, Any]] = []
    known = {"name", "description", "parameters", "strict"}
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise refuse(f"tools[{i}].type", f"only function tools are supported, not {kind!r}")
        function = {k: v for k, v in tool.items() if k != "type"} if flat else tool.get("function")
        extra = set(tool) - {"type", "function"} if not flat else set()
        if not isinstance(function, dict) or extra:
            raise refuse(f"tools[{i}]", 'a tool is {"type": "function", "function": {...}}')
        unknown = sorted(set(function) - known)
        if unknown:
            raise refuse(f"tools[{i}].{unknown[0]}", f"unknown tool field {unknown[0]!r}")
        params = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise refuse(f"tools[{i}].parameters", "parameters must be a JSON Schema object")
        if "description" in function and not isinstance(function["description"], str):
            raise refuse(f"tools[{i}].description", "description must be a string")
        entry: dict[str, Any] = {"name": function.get("name"), "parameters": params}
        if function.get("description"):
            entry["description"] = function["description"]
        tools.append({"type": "function", "function": entry})
    try:
        return ClientTools(tuple(tools))
    except UsageError as exc:
        raise refuse("tools", str(exc), "invalid_value") from None


def choice_of(raw: str | dict[str, Any] | None, *, flat: bool = False) -> ToolChoice | None:
    """``tool_choice`` as the agent takes it: "auto", "none", "required" or a named function
    (``{"type": "function", "function": {"name": ...}}``; flat in the Responses API)."""
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name") if flat else (raw.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"type": "function", "function": {"name": name}}
    raise refuse(
        "tool_choice",
        'tool_choice is "auto", "none", "required" or a named function',
        "invalid_value",
    )


def response_format_of(raw: dict[str, Any] | None, param: str) -> ResponseFormat | None:
    """``response_format`` (or the Responses API's ``text.format``, flat); 400 naming it."""
    from keel.agents.structured import ResponseFormat

    kind = (raw or {}).get("type", "text")
    if kind == "text":
        return None
    try:
        if kind == "json_object":
            return ResponseFormat("json_object")
        if kind == "json_schema":
            spec = raw.get("json_schema") if raw and "json_schema" in raw else raw
            if not isinstance(spec, dict):
                raise UsageError("json_schema needs {name, schema}")
            return ResponseFormat(
                "json_schema",
                schema=spec.get("schema"),
                name=str(spec.get("name") or "response"),
                strict=bool(spec.get("strict")),
            )
    except UsageError as exc:
        raise refuse(param, str(exc), "invalid_value") from None
    raise refuse(param, f"response format type {kind!r} is not supported", "invalid_value")


def check_for_app(
    turn: ChatTurn,
    chain: ModelChain,
    server_tools: set[str],
    app_tools: set[str],
    *,
    param: str = "tool_choice",
    format_param: str = "response_format",
) -> None:
    """What the request asks of the app's model and tools, checked before the turn runs:
    400 when the model cannot honour it (``keel:extractive`` cannot be forced to call a
    tool nor write JSON), a client tool shadows one of the app's, or a named tool is not
    offered. ``server_tools``: the app's tools this caller's model sees; ``app_tools``: all."""
    client = turn.client.names if turn.client else frozenset()
    clash = sorted(client & app_tools)  # any of the app's, seen by this caller or not
    if clash:
        raise refuse("tools", f"client tool {clash[0]!r} has the name of one of the app's tools")
    choice = turn.tool_choice
    forced = choice == "required" or isinstance(choice, dict)
    if forced and not chain.can_force_tools:
        raise refuse(
            param,
            "this app's model (keel:extractive) cannot be made to call a tool: "
            'use "auto" or "none"',
        )
    if choice == "required" and not (client or server_tools):
        raise refuse(param, 'tool_choice "required" needs tools to call', "invalid_value")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in client | server_tools:
            raise refuse(param, f"tool_choice names {name!r}, not an offered tool", "invalid_value")
    if turn.response_format is not None and not chain.can_write_json:
        raise refuse(
            format_param,
            "this app's model (keel:extractive) quotes its documents and cannot write JSON: "
            "structured output is not available",
        )


def _call_of(i: int, j: int, raw: Any) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}]"
    fn = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(fn, dict) or not raw.get("id") or not fn.get("name"):
        raise refuse(where, "a tool call is {id, type: function, function: {name, arguments}}")
    return call_of(where, str(raw["id"]), str(fn["name"]), fn.get("arguments"))


def call_of(where: str, call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """A tool call a client resends (langchain-core's form); 400 naming ``where``."""
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        raise refuse(where, "the call's arguments are not JSON", "invalid_value") from None
    if not isinstance(args, dict):
        raise refuse(where, "the call's arguments must be a JSON object", "invalid_value")
    return {"id": call_id, "name": name, "args": args}


def chat_turn(
    body: ChatCompletionRequest, *, client_instructions: bool, client_tools: bool = True
) -> ChatTurn:
    """The turn a request asks for; :class:`Problem` 400 naming the first field refused.

    Tool messages at the end of ``messages`` (after an assistant message with
    ``tool_calls``) continue that turn with the client's results; ``question`` is then ""."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    _refusals(body)
    params = _params(body)
    uses_tools = bool(body.tools) or any(m.role == "tool" or m.tool_calls for m in body.messages)
    if uses_tools and not client_tools:
        raise refuse(
            "tools" if body.tools else "messages",
            "client tools are refused by this app ([gateway] client_tools = false)",
        )
    client = function_tools(body.tools) if body.tools else None
    instructions: list[str] = []
    turns: list[Any] = []
    for i, m in enumerate(body.messages):
        if m.role == "tool":
            if not m.tool_call_id:
                raise refuse(f"messages[{i}].tool_call_id", "a tool message needs tool_call_id")
            if not answers_a_call(turns, m.tool_call_id):
                raise refuse(
                    f"messages[{i}]",
                    "a tool message must answer a tool call of the assistant message before it",
                    "invalid_value",
                )
            turns.append(ToolMessage(_text(i, m), tool_call_id=m.tool_call_id))
            continue
        if m.tool_call_id:
            raise refuse(f"messages[{i}].tool_call_id", "only tool messages carry tool_call_id")
        if m.tool_calls and m.role != "assistant":
            raise refuse(f"messages[{i}].tool_calls", "only assistant messages carry tool_calls")
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
        if m.role == "assistant":
            calls = [_call_of(i, j, c) for j, c in enumerate(m.tool_calls or [])]
            turns.append(AIMessage(text, tool_calls=calls))
        else:
            turns.append(HumanMessage(text))
    return assemble(
        turns,
        "messages",
        instructions="\n\n".join(instructions) or None,
        params=params,
        tool_choice=choice_of(body.tool_choice),
        client=client,
        response_format=response_format_of(body.response_format, "response_format"),
    )


def answers_a_call(turns: list[Any], call_id: str) -> bool:
    """Whether a tool result for ``call_id`` may come next: it answers a call of the
    assistant message before it, or opens the request (answering a call the thread it
    continues is waiting on: the app checks that)."""
    from langchain_core.messages import AIMessage, ToolMessage

    asked = next((t for t in reversed(turns) if not isinstance(t, ToolMessage)), None)
    if asked is None:
        return True
    return isinstance(asked, AIMessage) and call_id in {c["id"] for c in asked.tool_calls}


def assemble(
    turns: list[Any],
    param: str,
    *,
    instructions: str | None,
    params: ModelParams | None,
    tool_choice: ToolChoice | None,
    client: ClientTools | None,
    response_format: ResponseFormat | None,
) -> ChatTurn:
    """A turn from a request's messages: a new question (the last, a user's), or a turn
    continued with the tool results that end the messages (``question`` is then "")."""
    from langchain_core.messages import HumanMessage, ToolMessage

    from keel.agents.client_tools import ClientResult, ClientTools

    results: list[ClientResult] = []
    while turns and isinstance(turns[-1], ToolMessage):
        last = turns.pop()
        results.insert(0, ClientResult(last.tool_call_id, str(last.text)))
    if results:
        question = ""
        history = turns
        client = ClientTools(client.tools if client else (), tuple(results))
    else:
        if not turns or not isinstance(turns[-1], HumanMessage):
            raise refuse(param, "the last message must come from the user", "invalid_value")
        question = str(turns[-1].text)
        if not question.strip():
            raise refuse(param, "the last user message is empty", "invalid_value")
        history = turns[:-1]
    return ChatTurn(
        question=question,
        history=history,
        instructions=instructions,
        params=params,
        tool_choice=tool_choice,
        client=client,
        response_format=response_format,
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
