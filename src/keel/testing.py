"""Deterministic fakes shipped with Keel, for your tests and ours.

:class:`ScriptedChatModel` is a LangChain chat model that replies from a script, one entry per
call, so an agent graph can be tested without a real model::

    model = ScriptedChatModel(script=[
        ScriptedChatModel.tool_call("lookup_order", {"order_id": "ORD-1"}),
        "Your order ORD-1 has shipped.",
    ])

Script entries: a ``str`` (the reply's text), an ``AIMessage`` (returned as it is, e.g. with
tool calls), an exception instance or class (raised, to simulate a provider error such as a
429 or a timeout) or a callable that receives the call's messages and returns one of the
first two. Every call (invoke, stream, batch, sync or async) takes the next entry; a call past
the end fails with an ``AssertionError`` that says so. ``calls`` holds the messages of every
call. ``bind_tools`` returns a copy that shares the script position and the call log with the
original, as an agent graph binds tools to the model it is given.

:func:`unused_port` is a loopback TCP port nothing listens on, for a test that starts a
server (``keel serve --port``) or needs a port that refuses connections.

:func:`send_chat_completion` answers a request to a fake OpenAI-compatible server (an
``http.server`` handler) with a whole chat completion, built with the ``openai`` package's own
types so the fake stays in step with the real wire format.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, SkipValidation

from keel.agents.streaming import stream_chunks

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

ScriptEntry: TypeAlias = (
    AIMessage
    | str
    | BaseException
    | type[BaseException]
    | Callable[[list[BaseMessage]], AIMessage | str]
)

_Responder: TypeAlias = Callable[[list[BaseMessage]], AIMessage | str]
SCRIPTED_MODEL_NAME = "scripted"


class _ScriptState:
    """The script position and call log, shared by a model and its ``bind_tools`` copies."""

    def __init__(self, script: list[ScriptEntry]) -> None:
        self.script = script
        self.position = 0
        self.calls: list[list[BaseMessage]] = []
        self.started = 0  # calls that have begun, counted before any delay
        self.lock = threading.Lock()

    def next(self, messages: Sequence[BaseMessage]) -> ScriptEntry:
        with self.lock:
            self.calls.append(list(messages))
            if self.position >= len(self.script):
                raise AssertionError(
                    f"ScriptedChatModel: script exhausted after {self.position} calls "
                    f"(call {len(self.calls)} has no scripted reply)"
                )
            entry = self.script[self.position]
            self.position += 1
            return entry


def _words(text: str) -> int:
    return len(text.split())


def _text(message: BaseMessage) -> str:
    return str(message.text)


class ScriptedChatModel(BaseChatModel):
    """A chat model that replies from ``script``, one entry per call (see the module doc)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: SkipValidation[list[ScriptEntry]] = Field(default_factory=list, repr=False)
    delay_s: float = 0.0
    """Seconds each call waits before replying (``asyncio.sleep`` on the async paths)."""
    bound_tools: list[dict[str, Any]] = Field(default_factory=list)
    """The tools of the last :meth:`bind_tools`, as OpenAI-format dicts."""
    tool_choice: Any = None

    _state: _ScriptState = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if not isinstance(self.script, list):
            self.script = list(self.script)
        for n, entry in enumerate(self.script):
            valid = isinstance(entry, (AIMessage, str, BaseException)) or (
                callable(entry)
                and (not isinstance(entry, type) or issubclass(entry, BaseException))
            )
            if not valid:
                raise TypeError(
                    f"ScriptedChatModel: script entry {n} is a {type(entry).__name__}; expected "
                    "AIMessage, str, an exception or a callable(messages) -> AIMessage | str"
                )
        self._state = _ScriptState(self.script)

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def tool_call(name: str, args: dict[str, Any], id: str | None = None) -> AIMessage:
        """An ``AIMessage`` that calls one tool (``id`` defaults to a fresh ``call_…``)."""
        call_id = id if id is not None else f"call_{uuid.uuid4().hex[:12]}"
        return AIMessage(content="", tool_calls=[tool_call(name=name, args=args, id=call_id)])

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """The messages of every call so far, in order (shared with bound copies)."""
        return self._state.calls

    @property
    def started(self) -> int:
        """Calls that have begun, counted before ``delay_s`` (a test can wait for one)."""
        return self._state.started

    @property
    def remaining(self) -> int:
        """Script entries not used yet."""
        return len(self._state.script) - self._state.position

    # -- LangChain plumbing ------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "keel-scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": SCRIPTED_MODEL_NAME}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(
            ls_provider="keel", ls_model_name=SCRIPTED_MODEL_NAME, ls_model_type="chat"
        )

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """A copy with ``tools`` recorded; it shares the script and the call log."""
        converted = [convert_to_openai_tool(t) for t in tools]
        return self.model_copy(update={"bound_tools": converted, "tool_choice": tool_choice})

    # -- replies -----------------------------------------------------------------------------
    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        entry = self._state.next(messages)
        if isinstance(entry, BaseException):
            raise entry
        if isinstance(entry, type) and issubclass(entry, BaseException):
            raise entry()
        if isinstance(entry, (AIMessage, str)):
            result: AIMessage | str = entry
        else:
            result = cast("_Responder", entry)(list(messages))
        message = AIMessage(content=result) if isinstance(result, str) else result
        if not isinstance(message, AIMessage):
            raise TypeError(
                f"ScriptedChatModel: a script callable returned {type(message).__name__}, "
                "expected AIMessage or str"
            )
        input_tokens = sum(_words(_text(m)) for m in messages)
        output_tokens = _words(_text(message)) + sum(
            _words(f"{tc['name']} {json.dumps(tc['args'])}") for tc in message.tool_calls
        )
        usage = message.usage_metadata or UsageMetadata(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )
        finish = "tool_calls" if message.tool_calls else "stop"
        metadata = {
            "model_name": SCRIPTED_MODEL_NAME,
            "finish_reason": finish,
            **message.response_metadata,
        }
        # a copy: the script's own message is never changed
        return message.model_copy(update={"usage_metadata": usage, "response_metadata": metadata})

    @staticmethod
    def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
        return stream_chunks(
            message.content,
            message.tool_calls,
            usage=message.usage_metadata,
            metadata=message.response_metadata,
            message_id=message.id,
            additional_kwargs=message.additional_kwargs,
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._state.started += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._state.started += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self._state.started += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        for chunk in self._chunks(self._reply(messages)):
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self._state.started += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for chunk in self._chunks(self._reply(messages)):
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now: the system picks it and the socket
    is closed before returning, so a server started next can bind it and, until one does,
    connecting to it is refused. (Another process may take it in between; a test that starts
    several servers at once should retry one that fails to bind.)"""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def send_chat_completion(
    handler: BaseHTTPRequestHandler,
    content: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    model: str = "m",
) -> None:
    """Answer ``handler``'s request (a ``POST /v1/chat/completions`` to a fake
    OpenAI-compatible server on ``http.server``) with a whole, not streamed, chat completion:
    one assistant message of ``content``, finished with ``stop``, and the usage given. The
    reply is an ``openai.types.chat.ChatCompletion`` serialised to JSON, sent as
    ``200 application/json`` with its length. (Imports ``openai``, installed with
    langchain-openai, when called.)"""
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    reply = ChatCompletion(
        id="chatcmpl-keel-testing",
        object="chat.completion",
        created=0,
        model=model,
        choices=[
            Choice(
                index=0,
                message=ChatCompletionMessage(role="assistant", content=content),
                finish_reason="stop",
            )
        ],
        usage=CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )
    data = reply.model_dump_json().encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


__all__ = ["ScriptEntry", "ScriptedChatModel", "send_chat_completion", "unused_port"]
