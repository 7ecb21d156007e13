"""Request and response bodies of the gateway (pydantic): what the OpenAPI schema shows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: str = Field(min_length=1, description="The user's message.")
    thread_id: str | None = Field(
        default=None, min_length=1, max_length=200, description="Continue this thread."
    )
    stream: bool = Field(default=False, description="Answer as server-sent events.")


class Citation(BaseModel):
    """A passage the answer rests on: where it comes from, down to the characters."""

    n: int
    doc_id: str
    chunk_id: str
    source: str
    title: str = ""
    headings: list[str] = []
    start: int = 0
    end: int = 0
    page: int | None = None
    attributed: bool = Field(
        default=False,
        description="True when Keel attributed the passage to the answer (the model cited none "
        "it was given); False when the model cited it as [n].",
    )
    doc_hash: str | None = Field(
        default=None, description="The content hash of the cited document (lineage)."
    )


class ToolCallOut(BaseModel):
    """One tool call of the turn and its outcome (a ``keel.tools.ToolCallRecord``)."""

    id: str
    name: str
    args: dict[str, Any]
    status: str = Field(description="ok, rejected, refused, error, timeout, ...")
    content: str = Field(description="What the model was given back.")
    error: str | None = None
    seconds: float = 0.0


class GuardEventOut(BaseModel):
    """What a guard or hook decided (a ``keel.guardrails.GuardEvent``); Keel's guards add
    ``action``, ``latency_ms``, ``reason`` and, where they apply, ``details``, ``chunk_id``,
    ``tool``, ``argument``."""

    model_config = ConfigDict(extra="allow")

    point: str = Field(description="input, context, tool_args, tool_result or output")
    name: str = Field(description="The validator or hook.")
    outcome: str = Field(description="pass, fail, fixed, tripped, dropped, ...")


class ChatResponse(BaseModel):
    text: str
    thread_id: str
    trace_id: str
    stop_reason: str
    citations: list[Citation]
    tool_calls: list[ToolCallOut]
    pending_approval: list[dict[str, Any]] | None
    usage: dict[str, int]
    model: str
    model_seconds: float = 0.0
    model_calls: list[dict[str, Any]] = Field(
        default_factory=list,
        description="One per model call of the turn, retries and fallbacks included: model, "
        "seconds, input_tokens, output_tokens, error (empty when it answered).",
    )
    cost_usd: float | None = None
    events: list[GuardEventOut]
    release_id: str | None = None
    cache_hit: bool = Field(default=False, description="The semantic cache answered.")
    cache: dict[str, Any] | None = Field(
        default=None,
        description="The semantic cache's lookup (hit, similarity, entry_id); null when the "
        "cache was not consulted.",
    )


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    decision: (
        Literal["approve", "reject"] | dict[str, dict[str, Any] | Literal["approve", "reject"]]
    ) = Field(
        description='"approve" or "reject" for every pending call, or per call id: "approve", '
        '"reject" or {"action": "approve"|"reject"|"edit", "args": {...}, "args_hash": "..."}.'
    )


class ThreadView(BaseModel):
    thread_id: str
    messages: list[dict[str, Any]]
    pending_approval: list[dict[str, Any]] | None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=100)
    where: dict[str, Any] | None = None
    mode: Literal["hybrid", "dense", "bm25"] | None = None


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1, max_length=1024)
    text: str = Field(min_length=1)
    title: str = ""
    metadata: dict[str, str | int | float | bool] = {}
    format: Literal["text", "markdown"] = "text"
    labels: list[str] = Field(
        default=[],
        max_length=64,
        description="Access labels of this document (a key assigns only labels it holds).",
    )


class IngestJson(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    documents: list[DocumentIn] = Field(min_length=1, max_length=10_000)
    labels: list[str] = Field(
        default=[], max_length=64, description="Access labels of every document of the request."
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    score: float = Field(ge=0, le=1, description="0 (bad) to 1 (good); thumbs up = 1.")
    comment: str | None = Field(default=None, max_length=10_000)
    correction: str | None = Field(default=None, max_length=50_000)
    thread_id: str | None = Field(default=None, max_length=200)


# -- OpenAI-compatible --------------------------------------------------------------------


class OpenAIMessage(BaseModel):
    """A chat message. ``name`` is tolerated (not used); anything else unknown is refused."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """What ``POST /v1/chat/completions`` takes: every field is honoured, refused with 400
    naming it, or tolerated as listed in the README (an unknown field is a 400)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # the end user (recorded on the trace; it does not select a thread)
    user: str | None = Field(default=None, max_length=256)
    # generation parameters for this call (keel.agents.params.ModelParams)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    # metadata.thread_id continues a thread; other keys are tolerated
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    # checked by the route: refused unless they ask for what keel does anyway
    n: int | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    store: StrictBool | None = None


class ResponseInputMessage(BaseModel):
    """An input item of the Responses API: a message (text parts only)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


class ResponseFunctionCall(BaseModel):
    """An input item of the Responses API: a function call the model made earlier."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class ResponseFunctionOutput(BaseModel):
    """An input item of the Responses API: what the client's run of a function call gave."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


ResponseInputItem = ResponseInputMessage | ResponseFunctionCall | ResponseFunctionOutput


class ResponsesRequest(BaseModel):
    """What ``POST /v1/responses`` takes (text in, text or function calls out); the README
    lists each field."""

    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[ResponseInputItem] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: StrictBool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    store: StrictBool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["disabled"] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
