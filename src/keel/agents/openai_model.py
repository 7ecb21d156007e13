"""``openai:*`` models: langchain-openai's ``ChatOpenAI`` made to work with the
OpenAI-compatible servers people run locally (llama.cpp, vLLM, Ollama, LM Studio) as well as
with OpenAI.

What it changes, and why (each was seen against a real server):

* An assistant message that carries ``tool_calls`` is sent with ``content: ""``, not ``null``:
  the OpenAI API allows ``null``, llama.cpp's server rejects it (500, a validation error on the
  message's role), and clients commonly send ``""``.
* ``max_tokens`` is sent as ``max_tokens`` to compatible servers; langchain-openai renames it to
  ``max_completion_tokens``, which llama.cpp ignores (one runaway answer then holds a
  single-threaded server).
* Timeouts for slow local models: ``connect_timeout_s`` to reach the server,
  ``first_token_timeout_s`` for the first streamed token (and any gap between two), and
  ``timeout_s`` for the whole reply (a streamed reply is stopped between tokens when it runs
  over; a whole reply must arrive within it).
* A stream that yields nothing (llama-cpp-python cannot stream a request with tools and
  ``tool_choice: "auto"`` and fails inside the stream) is asked again whole, and the reply is
  handed on as chunks: the turn still answers, and still streams.
* Structured output in the dialect the server speaks (:meth:`structured_kwargs`):
  ``json_schema`` (OpenAI, vLLM, Ollama, llama.cpp's ``llama-server``),
  ``json_object_schema`` (``llama-cpp-python``'s server: ``{"type": "json_object", "schema":
  ...}``, enforced by a grammar) or ``none``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI

from keel.agents.streaming import stream_chunks

StructuredDialect = Literal["json_schema", "json_object_schema", "none"]


class ModelTimeout(TimeoutError):
    """A reply that did not finish within the model's ``timeout_s``."""


class KeelChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` with the fixes above. ``compatible``: the server is not OpenAI's own."""

    compatible: bool = False
    structured_output: StructuredDialect = "json_schema"
    connect_timeout_s: float = 10.0
    first_token_timeout_s: float = 120.0
    total_timeout_s: float = 600.0

    @property
    def _llm_type(self) -> str:
        return "keel-openai"

    def _get_request_payload(
        self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        for message in payload.get("messages", ()):
            if message.get("role") == "assistant" and message.get("content") is None:
                message["content"] = ""
        if self.compatible and "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload

    def _stream_timeout(self) -> Any:
        import httpx

        return httpx.Timeout(
            self.first_token_timeout_s,
            connect=self.connect_timeout_s,
            pool=self.connect_timeout_s,
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        kwargs.pop("stream", None)  # a call's stream=True brought it here; _whole asks whole
        timeout = kwargs.pop("timeout", None) or self._stream_timeout()
        deadline = time.monotonic() + self.total_timeout_s
        import httpx
        import openai

        produced = False
        try:
            for chunk in super()._stream(messages, stop, run_manager, timeout=timeout, **kwargs):
                produced = True
                yield chunk
                if time.monotonic() > deadline:
                    raise ModelTimeout(
                        f"the reply took longer than {self.total_timeout_s:g} s (timeout_s)"
                    )
        except (openai.APIConnectionError, httpx.RemoteProtocolError) as exc:
            # cut off part-way, or a timeout: not something to paper over
            if produced or isinstance(exc, openai.APITimeoutError):
                raise
        if not produced:
            # An empty stream, or one the server broke off before its first chunk: some
            # servers cannot stream some requests (llama-cpp-python fails a streamed
            # tool_choice "auto" inside the stream). Ask for the reply whole and hand it on
            # as chunks, so the turn still streams its answer. A server that is down fails
            # this call too, with its own error.
            whole = self._whole(messages, stop, **kwargs)
            for chunk in stream_chunks(
                whole.content if isinstance(whole.content, str) else whole.text,
                getattr(whole, "tool_calls", ()),
                usage=getattr(whole, "usage_metadata", None),
                metadata=whole.response_metadata,
                message_id=whole.id,
            ):
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _whole(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> Any:
        """The reply asked for whole, after a stream that broke off before its first chunk.
        The server may still be failing that stream when the request arrives (llama-cpp-python
        then drops the connection): a connection error is tried again, twice, after a pause."""
        import openai

        for attempt in range(3):
            try:
                return self._generate(messages, stop, None, **kwargs).generations[0].message
            except openai.APIConnectionError as exc:
                if attempt == 2 or isinstance(exc, openai.APITimeoutError):
                    raise
                time.sleep(0.25 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        kwargs.pop("stream", None)
        kwargs.setdefault("timeout", self._stream_timeout())
        deadline = time.monotonic() + self.total_timeout_s
        async for chunk in super()._astream(*args, **kwargs):
            yield chunk
            if time.monotonic() > deadline:
                raise ModelTimeout(
                    f"the reply took longer than {self.total_timeout_s:g} s (timeout_s)"
                )

    def structured_kwargs(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        """Per-call keyword arguments that make the server answer with JSON that fits
        ``schema`` (empty when the server has no structured output)."""
        if self.structured_output == "json_schema":
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema},
                }
            }
        if self.structured_output == "json_object_schema":
            return {"response_format": {"type": "json_object", "schema": schema}}
        return {}


def http_timeout(connect_s: float, total_s: float) -> Any:
    """The client's timeout for whole (not streamed) replies."""
    import httpx

    return httpx.Timeout(total_s, connect=connect_s, pool=connect_s)


def _inject_trace_context(request: Any) -> None:
    """An httpx request hook: the current trace context goes out as ``traceparent`` (and
    ``tracestate``), OpenTelemetry's propagator writing the headers."""
    from opentelemetry.propagate import inject

    inject(request.headers)


async def _ainject_trace_context(request: Any) -> None:
    _inject_trace_context(request)


def traced_http_clients() -> dict[str, Any]:
    """``http_client`` / ``http_async_client`` for ``ChatOpenAI`` whose requests carry the
    model call's trace context to an OpenAI-compatible server (vLLM, llama.cpp, Ollama can
    continue the trace). Not used for OpenAI's own API: a trace id is not sent to a third
    party unasked."""
    import httpx

    return {
        "http_client": httpx.Client(event_hooks={"request": [_inject_trace_context]}),
        "http_async_client": httpx.AsyncClient(event_hooks={"request": [_ainject_trace_context]}),
    }
