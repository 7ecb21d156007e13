"""Chat models from id strings, with retries, backoff and fallbacks.

Ids (README, "Using a real model"): ``keel:extractive`` (embedded, offline, the default),
``openai:<model>`` (langchain-openai; also any OpenAI-compatible server through
``KEEL_OPENAI_BASE_URL``: vLLM, Ollama, llama.cpp server, LM Studio), and whatever
``langchain.chat_models.init_chat_model`` resolves when its provider package is installed
(``anthropic:claude-...``, ``ollama:llama3``...). Building a model never touches the network.

:class:`ModelChain` calls the primary model and, when a call keeps failing, the fallbacks in
order. A failure is retried with exponential backoff only when it is worth retrying: a
timeout, a connection error, HTTP 429 or 5xx. Anything else (a 400, a bad key) goes to the
next model at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from keel.agents.params import ModelParams
from keel.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage

    from keel.agents.structured import ResponseFormat
    from keel.rag.embeddings import Embedder
    from keel.settings import Settings

EXTRACTIVE = "keel:extractive"


def build_model(
    model_id: str,
    *,
    embedder: Callable[[], Embedder],
    settings: Settings,
    timeout_s: float = 600.0,
    temperature: float | None = None,
    connect_timeout_s: float = 10.0,
    first_token_timeout_s: float = 120.0,
) -> BaseChatModel:
    """The chat model for an id string; :class:`ConfigError` when it cannot be built.

    ``timeout_s`` bounds a whole reply, ``connect_timeout_s`` reaching the server and
    ``first_token_timeout_s`` the wait for a streamed reply's first token (openai:* models;
    other providers get ``timeout_s``)."""
    if model_id == EXTRACTIVE:
        from keel.agents.extractive import ExtractiveChatModel

        return ExtractiveChatModel(embedder=embedder())
    if model_id.startswith("keel:"):
        raise ConfigError(f"unknown embedded model {model_id!r} (known: {EXTRACTIVE})")
    kwargs: dict[str, Any] = {"timeout": timeout_s, "max_retries": 0}
    if temperature is not None:
        kwargs["temperature"] = temperature
    if model_id.startswith("openai:"):
        try:
            from keel.agents.openai_model import (
                KeelChatOpenAI,
                http_timeout,
                traced_http_clients,
            )
        except ImportError as exc:
            raise ConfigError("openai:* models need the langchain-openai package") from exc
        name = model_id.split(":", 1)[1]
        if not name:
            raise ConfigError("openai: needs a model name, e.g. openai:gpt-4o-mini")
        base_url = settings.openai_base_url
        if base_url:
            kwargs["base_url"] = base_url
        if settings.openai_api_key:
            kwargs["api_key"] = settings.openai_api_key
        elif base_url:
            kwargs["api_key"] = "not-needed"  # local OpenAI-compatible servers ignore it
        compatible = bool(base_url) and "api.openai.com" not in str(base_url)
        kwargs["timeout"] = http_timeout(connect_timeout_s, timeout_s)
        if compatible:  # your own server: it continues the turn's trace (W3C traceparent)
            kwargs.update(traced_http_clients())
        try:
            return KeelChatOpenAI(
                model=name,
                compatible=compatible,
                # usage on streamed replies where the server sends it (else it is unknown)
                stream_usage=True,
                structured_output=settings.openai_structured_output,
                connect_timeout_s=connect_timeout_s,
                first_token_timeout_s=first_token_timeout_s,
                total_timeout_s=timeout_s,
                **kwargs,
            )
        except Exception as exc:  # pydantic validation, missing key
            raise ConfigError(f"cannot configure {model_id}: {exc}".splitlines()[0]) from exc
    try:
        from langchain.chat_models import init_chat_model

        model: BaseChatModel = init_chat_model(model_id, **kwargs)
        return model
    except ImportError as exc:
        raise ConfigError(f"model {model_id!r} needs a provider package: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"unknown model id {model_id!r}: {exc}".splitlines()[0]) from exc


def model_name(model: Any) -> str:
    """A readable id for a model object (for traces and errors)."""
    if getattr(model, "_llm_type", None) == "keel-extractive":
        return EXTRACTIVE
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors, 429 and 5xx are worth another try."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    name = type(exc).__name__
    if name in {"APITimeoutError", "APIConnectionError", "ReadTimeout", "ConnectTimeout"}:
        return True
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and (status == 429 or 500 <= status < 600)


ToolChoice = str | dict[str, Any]


@dataclass(frozen=True)
class ModelAttempt:
    """One call to one model of a chain: which model, how long it took, and why it failed
    (``error`` is empty when it answered). Metrics record each (``keel_model_latency_seconds``
    is one call's latency; ``keel_model_errors_total`` counts failed calls, retries and
    fallbacks included)."""

    model: str
    seconds: float
    error: str = ""


@dataclass
class ModelChain:
    """A primary model and its fallbacks, each bound to the same tools.

    Tools are bound through the provider's native tool calling with ``tool_choice`` sent
    explicitly ("auto" unless a caller asks for another): llama.cpp's server reads a missing
    ``tool_choice`` as "none". ``params`` are the per-call generation parameters."""

    models: Sequence[tuple[str, Any]]  # (id, chat model), primary first
    max_retries: int = 2
    backoff_s: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    tools: list[dict[str, Any]] = field(default_factory=list)
    params: ModelParams | None = None
    tool_choice: ToolChoice = "auto"
    response_format: ResponseFormat | None = None

    def bind(
        self,
        tools: list[dict[str, Any]],
        params: ModelParams | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelChain:
        return replace(
            self,
            tools=list(tools),
            params=params if params is not None else self.params,
            tool_choice=tool_choice or self.tool_choice,
            response_format=response_format or self.response_format,
        )

    @property
    def can_force_tools(self) -> bool:
        """Whether every model of the chain can be made to call a tool ("required" or a
        named one): the embedded ``keel:extractive`` cannot (it calls one only when the
        question matches it)."""
        return all(mid != EXTRACTIVE for mid, _ in self.models)

    @property
    def streams_on_request(self) -> bool:
        """Whether every model of the chain is an ``openai:*`` one, which streams its reply
        when a call asks (``stream=True``) and hands back the same message."""
        return bool(self.models) and all(
            getattr(m, "_llm_type", None) == "keel-openai" for _, m in self.models
        )

    @property
    def can_write_json(self) -> bool:
        """Whether the chain's models can answer in JSON (``keel:extractive`` quotes)."""
        return all(mid != EXTRACTIVE for mid, _ in self.models)

    def _bound(self, model: Any) -> Any:
        if not self.tools:
            return model
        if getattr(model, "_llm_type", None) == "keel-extractive":
            return model.bind_tools(self.tools, tool_choice=self.tool_choice)
        compatible = bool(getattr(model, "compatible", False))
        tools = [_for_provider(t, compatible) for t in self.tools]
        return model.bind_tools(tools, tool_choice=_choice_for(self.tool_choice, tools, compatible))

    def _backoff(self, attempt: int) -> float:
        return float(self.backoff_s * 2**attempt * (0.5 + random.random() / 2))

    def invoke(
        self,
        messages: list[BaseMessage],
        config: Any = None,
        attempts: list[ModelAttempt] | None = None,
        stream: bool = False,
    ) -> tuple[str, BaseMessage]:
        """``(model id that answered, its message)``; :class:`ModelError` when all failed.
        Each call made (retries and fallbacks included) is appended to ``attempts``.

        Under LangGraph's ``stream_mode="messages"``, or with ``stream`` (for models that
        :attr:`streams_on_request`), the tokens of this call stream out through the
        callbacks in ``config``.
        """
        run = _ChainRun(self, attempts)
        extra = {"stream": True} if stream else {}
        for t in run.tries():
            try:
                message = t.bound.invoke(messages, config=config, **t.kwargs, **extra)
            except Exception as exc:
                wait = run.failed(t, exc)
                if wait is not None:
                    self.sleep(wait)
                continue
            run.succeeded(t)
            return t.model_id, message
        raise run.error()

    async def ainvoke(
        self,
        messages: list[BaseMessage],
        config: Any = None,
        attempts: list[ModelAttempt] | None = None,
        stream: bool = False,
    ) -> tuple[str, BaseMessage]:
        """:meth:`invoke` on the running event loop (the model's ``ainvoke``; backoff with
        ``asyncio.sleep``, unless a ``sleep`` of one's own was set)."""
        run = _ChainRun(self, attempts)
        extra = {"stream": True} if stream else {}
        for t in run.tries():
            try:
                message = await t.bound.ainvoke(messages, config=config, **t.kwargs, **extra)
            except Exception as exc:
                wait = run.failed(t, exc)
                if wait is not None:
                    if self.sleep is time.sleep:
                        await asyncio.sleep(wait)
                    else:
                        self.sleep(wait)
                continue
            run.succeeded(t)
            return t.model_id, message
        raise run.error()


@dataclass
class _Try:
    model_id: str
    bound: Any
    kwargs: dict[str, Any]
    attempt: int
    started: float


class _ChainRun:
    """One call of a chain, for :meth:`ModelChain.invoke` and :meth:`ModelChain.ainvoke`:
    which model to try next, what failed, and how long to wait before a retry."""

    def __init__(self, chain: ModelChain, attempts: list[ModelAttempt] | None) -> None:
        self.chain = chain
        self.attempts = attempts
        self.failures: list[tuple[str, str]] = []
        self._retry = False

    def tries(self) -> Iterator[_Try]:
        chain = self.chain
        kwargs = chain.params.kwargs() if chain.params else {}
        for model_id, model in chain.models:
            bound = chain._bound(model)
            extra = chain.response_format.provider_kwargs(model) if chain.response_format else {}
            for attempt in range(chain.max_retries + 1):
                self._retry = False
                yield _Try(model_id, bound, {**kwargs, **extra}, attempt, time.perf_counter())
                if not self._retry:  # answered (the caller returned) or not worth a retry
                    break

    def failed(self, t: _Try, exc: Exception) -> float | None:
        """Record a failed call; the seconds to wait before retrying the same model, or
        None to go on to the next one."""
        error = f"{type(exc).__name__}: {exc}"[:300]
        self.failures.append((t.model_id, error))
        if self.attempts is not None:
            self.attempts.append(ModelAttempt(t.model_id, time.perf_counter() - t.started, error))
        if t.attempt < self.chain.max_retries and is_retryable(exc):
            self._retry = True
            return self.chain._backoff(t.attempt)
        return None

    def succeeded(self, t: _Try) -> None:
        if self.attempts is not None:
            self.attempts.append(ModelAttempt(t.model_id, time.perf_counter() - t.started))

    def error(self) -> ModelError:
        return ModelError(_summary(self.failures), self.failures)


def _for_provider(tool: dict[str, Any], compatible: bool) -> dict[str, Any]:
    """A tool as a provider is sent it. Providers reject unknown keys, so Keel's routing
    examples stay with the embedded model. For OpenAI-compatible servers, regex ``pattern``s
    are left out of the schema: llama.cpp compiles the schema into a grammar and its compiler
    crashes on some (``\\w``); the tool policy still validates the arguments against the full
    schema before any call runs."""
    from keel.tools.registry import EXAMPLES_KEY

    function = {k: v for k, v in tool.get("function", {}).items() if k != EXAMPLES_KEY}
    if compatible and "parameters" in function:
        function["parameters"] = _without_patterns(function["parameters"])
    return {**tool, "function": function}


def _choice_for(choice: ToolChoice, tools: list[dict[str, Any]], compatible: bool) -> ToolChoice:
    """``tool_choice`` as a server is sent it. With one tool bound, ``"required"`` means
    "call that tool", and compatible servers are sent it by name: llama-cpp-python's server
    takes "auto", "none" or a named function, and fails with a 500 on "required" (pydantic-ai
    sends it for its output tool)."""
    if compatible and choice == "required" and len(tools) == 1:
        name = tools[0].get("function", {}).get("name")
        if isinstance(name, str):
            return {"type": "function", "function": {"name": name}}
    return choice


def _without_patterns(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: _without_patterns(v)
            for k, v in schema.items()
            if not (k == "pattern" and isinstance(v, str))
        }
    if isinstance(schema, list):
        return [_without_patterns(v) for v in schema]
    return schema


def _summary(failures: list[tuple[str, str]]) -> str:
    if not failures:
        return "no model configured"
    last_id, last_error = failures[-1]
    tried = sorted({m for m, _ in failures})
    return f"every model failed ({', '.join(tried)}); last: {last_id}: {last_error}"
