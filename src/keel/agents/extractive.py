"""``keel:extractive``: the embedded offline model. An honest extractive responder, not an LLM.

It writes nothing of its own. For a question it either

* calls a bound tool, when the question matches the tool (embedding similarity between the
  question and the tool's name, description and ``x-keel-examples``, best score at least
  ``tool_threshold``) *and* every required argument can be read from the question by plain
  rules on the argument's JSON schema (:func:`extract_arguments`);
* states a tool's result, when the conversation ends with tool results;
* answers with the most relevant sentences of the retrieved passages (cosine similarity to the
  question at least ``relevance_threshold``, chosen by maximal marginal relevance), each cited
  as ``[n]``; or
* says exactly :data:`REFUSAL` when no passage answers the question.

Passages are read from the user turn with :func:`keel.agents.context.split_user_turn`, so this
model sees the same prompt as a real LLM would. Decisions are recorded in the message's
``response_metadata``: ``keel_citations`` (``[{"n", "score", "sentence"}]``), ``keel_refusal``
and, when tools are bound, ``keel_routing``. The same input always gives the same output
(tool call ids included: they are hashes of the conversation).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call as make_tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from keel.agents.context import Passage, split_user_turn
from keel.agents.streaming import stream_chunks
from keel.rag.sentences import split_sentences
from keel.tools.registry import EXAMPLES_KEY

if TYPE_CHECKING:
    import numpy as np

MODEL_ID = "keel:extractive"
REFUSAL = "I don't know: the documents I have do not answer this."

_DUPLICATE = 0.92  # sentences at least this similar to a chosen one are the same statement
_TOOL_RESULT_CHARS = 1000
_TOOL_ERROR_CHARS = 300

# -- sentences -------------------------------------------------------------------------------

_TERMINAL = re.compile(r"^(.*?)([.!?…]+[\"'”’)\]]*)$", re.S)


_NUMBER = re.compile(
    r"(?<![\w.,-])(?:-(?=\d))?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w-]|[.,]\d)"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|(?<!\w)'([^']+)'(?!\w)")
_IDENTIFIER = re.compile(r"(?<![\w@.-])[A-Za-z0-9][\w-]*[A-Za-z0-9](?![\w@-])")
_FUNCTIONS = "sqrt|abs|log|log10|log2|ln|exp|sin|cos|tan|round|floor|ceil|pow|min|max"
_EXPRESSION = re.compile(
    rf"(?:(?:{_FUNCTIONS})\s*\(|\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+|\*\*"
    r"|[-+*/%^×÷()]|[ \t])+",
    re.I,
)
_BINARY = re.compile(r"[\d)]\s*(?:\*\*|[-+*/%^×÷])\s*[-+]?[\d(.a-z]", re.I)
# words that read as arithmetic: (pattern, replacement template)
_WORD_OPERATORS = (
    (re.compile(r"(?<=[\d)])\s+(?:times|multiplied by)\s+(?=[\d(])", re.I), " * "),
    (re.compile(r"(?<=[\d)])\s+divided by\s+(?=[\d(])", re.I), " / "),
    (re.compile(r"(?<=[\d)])\s+plus\s+(?=[\d(])", re.I), " + "),
    (re.compile(r"(?<=[\d)])\s+minus\s+(?=[\d(])", re.I), " - "),
    (re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*%\s+of\s+(?=[\d(])", re.I), r"\1/100*"),
    (re.compile(r"\bsquare root of\s+(\d+(?:\.\d+)?)", re.I), r"sqrt(\1)"),
)
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}")
_QUESTION_ARGS = frozenset({"query", "question", "text"})
_Span = tuple[int, int]


def _resolve(schema: Mapping[str, Any]) -> dict[str, Any]:
    """One concrete schema: ``anyOf``/``oneOf``/``allOf`` reduced to the first non-null type."""
    out = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "allOf")}
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key) or []:
            if isinstance(option, Mapping) and option.get("type") != "null":
                resolved = _resolve(option)
                return {**resolved, **out}
    return out


def _kind(name: str, schema: Mapping[str, Any]) -> str:
    if "enum" in schema or "const" in schema:
        return "enum"
    type_ = schema.get("type")
    if type_ in ("integer", "number"):
        return "number"
    if type_ not in ("string", None):
        return "unreadable"  # booleans, arrays, objects: not read from free text
    if "pattern" in schema:
        return "pattern"
    if schema.get("format") == "email" or "email" in name.lower():
        return "email"
    if name.lower() == "expression":
        return "expression"
    if name.lower() in _QUESTION_ARGS:
        return "question"
    return "string"


# the order in which kinds pick their spans of the question: the most specific first
_ORDER = ("enum", "pattern", "email", "expression", "string", "number", "question")


def _free(span: _Span, used: list[_Span]) -> bool:
    return all(span[1] <= a or span[0] >= b for a, b in used)


def _read_enum(schema: Mapping[str, Any], question: str) -> tuple[Any, _Span | None] | None:
    values = [schema["const"]] if "const" in schema else list(schema.get("enum") or [])
    if len(values) == 1:
        return values[0], None
    found: list[tuple[int, int, Any]] = []
    for value in values:
        words = "[ _-]".join(re.escape(w) for w in re.split(r"[ _-]+", str(value)))
        for m in re.finditer(rf"(?<![\w-]){words}(?![\w-])", question, re.I):
            found.append((m.start(), m.end(), value))
    # a match inside a longer one ("pro" in "pro plus") does not count
    found = [f for f in found if not any(o != f and o[0] <= f[0] and f[1] <= o[1] for o in found)]
    distinct = {json.dumps(v, sort_keys=True) for _, _, v in found}
    if len(distinct) != 1:
        return None  # absent, or ambiguous
    start, end, value = found[0]
    return value, (start, end)


def _read_pattern(pattern: str, question: str, used: list[_Span]) -> tuple[str, _Span] | None:
    bare = re.sub(r"^(?:\^|\\A)", "", pattern)
    bare = re.sub(r"(?<!\\)(?:\$|\\Z|\\z)$", "", bare)
    try:
        full = re.compile(pattern)
        search = re.compile(rf"(?<!\w)(?:{bare})(?!\w)")
        loose = re.compile(rf"(?<!\w)(?:{bare})(?!\w)", re.I)
    except re.error:
        return None
    for regex in (search, loose):
        for m in regex.finditer(question):
            if not _free(m.span(), used):
                continue
            for value in (m.group(0), m.group(0).upper(), m.group(0).lower()):
                if full.search(value):
                    return value, m.span()
    return None


def _clean_expression(span: str) -> str:
    text = span
    keep = [True] * len(text)
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "(":
            stack.append(i)
        elif ch == ")":
            if stack:
                stack.pop()
            else:
                keep[i] = False
    for i in stack:
        keep[i] = False
    # an opening "(" belongs to a function name before it; drop the name with the parenthesis
    text = "".join(ch for ch, k in zip(text, keep, strict=True) if k)
    text = re.sub(rf"(?:{_FUNCTIONS})\s*$", "", text, flags=re.I)
    text = text.strip()
    text = re.sub(r"^[*/%^×÷+\s]+|[-+*/%^×÷\s]+$", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    return text.strip()


def _pad(template: str, match: re.Match[str]) -> str:
    """The rewritten words, padded to the length of the original so spans still fit."""
    original = match.group(0)
    replacement = match.expand(template)
    return replacement.ljust(len(original)) if len(replacement) <= len(original) else original


def _read_expression(question: str, used: list[_Span]) -> tuple[str, _Span] | None:
    text = question
    for regex, template in _WORD_OPERATORS:  # "12 times 7" reads as "12 * 7"
        text = regex.sub(partial(_pad, template), text)
    best: tuple[str, _Span] | None = None
    for m in _EXPRESSION.finditer(text):
        if not _free(m.span(), used):
            continue
        candidate = _clean_expression(m.group(0))
        has_call = re.search(rf"(?:{_FUNCTIONS})\s*\(\s*[\d.(]", candidate, re.I) is not None
        if not re.search(r"\d", candidate) or not (_BINARY.search(candidate) or has_call):
            continue
        if _DATE.fullmatch(candidate):
            continue  # 2024-05-01 is a date, not a subtraction
        candidate = re.sub(r"\s+", " ", candidate.replace("×", "*").replace("÷", "/"))
        if best is None or len(candidate) > len(best[0]):
            best = (candidate, m.span())
    return best


def _read_string(question: str, used: list[_Span]) -> tuple[str, _Span] | None:
    for m in _QUOTED.finditer(question):
        if _free(m.span(), used):
            value = next(g for g in m.groups() if g is not None).strip()
            if value:
                return value, m.span()
    for m in _IDENTIFIER.finditer(question):
        token = m.group(0)
        if not _free(m.span(), used) or not any(c.isdigit() for c in token):
            continue
        if any(c.isalpha() for c in token) or "-" in token:
            return token, m.span()
    return None


def _read_number(
    schema: Mapping[str, Any], question: str, used: list[_Span]
) -> tuple[int | float, _Span] | None:
    for m in _NUMBER.finditer(question):
        if not _free(m.span(), used):
            continue
        raw = m.group(0).replace(",", "")
        value: int | float = float(raw) if "." in raw else int(raw)
        if schema.get("type") == "integer" and isinstance(value, float):
            if not value.is_integer():
                return None  # the next number is not a whole number: do not guess
            value = int(value)
        return value, m.span()
    return None


def extract_arguments(
    parameters: Mapping[str, Any], question: str
) -> tuple[dict[str, Any], list[str]]:
    """``(args, missing)``: the arguments of a tool that can be read from ``question``.

    ``missing`` names the required arguments that could not be read; the tool may be called
    only when it is empty. Rules by schema: ``enum``/``const`` → the one value named in the
    question (word-bounded, any case); integer/number → the question's numbers in order
    ("1,000" and decimals too); ``pattern`` → the first match; an email address for
    ``format: email`` or a name containing "email"; ``expression`` → the longest arithmetic
    span; ``query``/``question``/``text`` → the question itself; other strings → a quoted
    span or a code-like token (``ORD-1234``, ``A12``). Anything else is not readable.
    """
    properties: Mapping[str, Any] = parameters.get("properties") or {}
    required = [n for n in parameters.get("required") or [] if n in properties]
    optional = [n for n in properties if n not in required]
    args: dict[str, Any] = {}
    missing: list[str] = []
    used: list[_Span] = []
    for names, must in ((required, True), (optional, False)):
        kinds = {n: _kind(n, _resolve(properties[n])) for n in names}
        for kind in (*_ORDER, "unreadable"):
            for name in (n for n in names if kinds[n] == kind):
                found = _read(kind, _resolve(properties[name]), question, used)
                if found is None:
                    if must:
                        missing.append(name)
                    continue
                value, span = found
                args[name] = value
                if span is not None:
                    used.append(span)
    ordered = {n: args[n] for n in properties if n in args}
    return ordered, [n for n in required if n in missing]


def _read(
    kind: str, schema: Mapping[str, Any], question: str, used: list[_Span]
) -> tuple[Any, _Span | None] | None:
    if kind == "enum":
        return _read_enum(schema, question)
    if kind == "number":
        return _read_number(schema, question, used)
    if kind == "pattern":
        return _read_pattern(str(schema["pattern"]), question, used)
    if kind == "email":
        for m in _EMAIL.finditer(question):
            if _free(m.span(), used):
                return m.group(0).rstrip("."), m.span()
        return None
    if kind == "expression":
        return _read_expression(question, used)
    if kind == "question":
        return (question.strip(), None) if question.strip() else None
    if kind == "string":
        return _read_string(question, used)
    return None


# -- the model -------------------------------------------------------------------------------


@dataclass
class _Reply:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    usage: UsageMetadata | None = None
    truncated: bool = False

    @property
    def finish_reason(self) -> str:
        if self.tool_calls:
            return "tool_calls"
        return "length" if self.truncated else "stop"


def _text(message: BaseMessage) -> str:
    return str(message.text)


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cite(sentence: str, numbers: Sequence[int] | None) -> str:
    """The sentence with ``[n]`` before its final punctuation (and with final punctuation)."""
    m = _TERMINAL.match(sentence)
    body, end = (m.group(1), m.group(2)) if m else (sentence.rstrip(":;, "), ".")
    if numbers is None:
        return f"{body}{end}"
    marks = "".join(f"[{n}]" for n in numbers)
    return f"{body} {marks}{end}"


class ExtractiveChatModel(BaseChatModel):
    """The offline ``keel:extractive`` model (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: Any
    """A :class:`keel.rag.embeddings.Embedder` (or anything with ``encode``/``embed_query``)."""
    relevance_threshold: float = 0.30
    """Cosine similarity to the question below which a sentence is not relevant."""
    max_sentences: int = 3
    mmr_lambda: float = 0.7
    """Maximal marginal relevance: 1.0 is relevance only, lower favours diverse sentences."""
    tool_threshold: float = 0.45
    """Cosine similarity between question and tool text below which no tool is considered."""
    tool_margin: float = 0.10
    """A tool that matches is still not called when a retrieved sentence matches the question
    by more than this much better than the tool does ("what does the pro plan cost?" is a
    question for the documents even though it names a plan a ``change_plan`` tool takes)."""
    bound_tools: list[dict[str, Any]] = Field(default_factory=list)
    """OpenAI-format tool definitions (set by :meth:`bind_tools`)."""
    tool_choice: str | None = None
    """As given to :meth:`bind_tools`: ``"none"`` disables tools, a tool name limits routing to
    that tool; anything else routes normally (a call is never forced: arguments must be read)."""

    _tool_vectors: dict[str, Any] = PrivateAttr(default_factory=dict)

    # -- LangChain plumbing ------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "keel-extractive"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": MODEL_ID,
            "embedding_model": getattr(self.embedder, "model_id", type(self.embedder).__name__),
            "relevance_threshold": self.relevance_threshold,
            "max_sentences": self.max_sentences,
            "mmr_lambda": self.mmr_lambda,
            "tool_threshold": self.tool_threshold,
            "tool_margin": self.tool_margin,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="keel", ls_model_name=MODEL_ID, ls_model_type="chat")
        if stop:
            params["ls_stop"] = stop
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """A copy of this model with ``tools`` (any form LangChain converts) bound."""
        converted = [convert_to_openai_tool(t) for t in tools]
        choice: Any = tool_choice
        if isinstance(choice, Mapping):  # {"type": "function", "function": {"name": ...}}
            choice = (choice.get("function") or {}).get("name") or choice.get("name")
        elif choice is True:
            choice = "any"
        return self.model_copy(
            update={"bound_tools": converted, "tool_choice": choice if choice else None}
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages, stop, kwargs.get("max_tokens"))
        message = AIMessage(
            content=reply.content,
            tool_calls=reply.tool_calls,
            usage_metadata=reply.usage,
            response_metadata=reply.metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._reply(messages, stop, kwargs.get("max_tokens"))):
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
        reply = await run_in_executor(None, self._reply, messages, stop, kwargs.get("max_tokens"))
        for chunk in self._chunks(reply):
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    @staticmethod
    def _chunks(reply: _Reply) -> Iterator[ChatGenerationChunk]:
        return stream_chunks(
            reply.content, reply.tool_calls, usage=reply.usage, metadata=reply.metadata
        )

    # -- deciding ----------------------------------------------------------------------------
    def _reply(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None = None,
        max_tokens: int | None = None,
    ) -> _Reply:
        """The reply; ``stop`` cuts it before the first stop sequence and ``max_tokens`` after
        that many tokens (``finish_reason`` "length"). It does not sample: temperature,
        top_p and seed change nothing."""
        reply = self._decide(messages)
        if stop and reply.content and not reply.tool_calls:
            cut = min((i for s in stop if s and (i := reply.content.find(s)) >= 0), default=-1)
            if cut >= 0:
                reply.content = reply.content[:cut]
        if max_tokens is not None and reply.content and not reply.tool_calls:
            reply.content, reply.truncated = self._truncate(reply.content, max_tokens)
        if reply.tool_calls:
            output = " ".join(f"{tc['name']} {json.dumps(tc['args'])}" for tc in reply.tool_calls)
        else:
            output = reply.content
        prompt = "\n".join(_text(m) for m in messages)
        input_tokens, output_tokens = self._count(prompt), self._count(output)
        reply.usage = UsageMetadata(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )
        reply.metadata = {
            "model_name": MODEL_ID,
            "finish_reason": reply.finish_reason,
            **reply.metadata,
        }
        return reply

    def _decide(self, messages: Sequence[BaseMessage]) -> _Reply:
        if messages and isinstance(messages[-1], ToolMessage):
            return self._from_tool_results(messages)
        human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        if human is None:
            return self._refusal({})
        question, passages = split_user_turn(_text(human))
        question = question.strip()
        routing: dict[str, Any] = {}
        if question and self.bound_tools and self.tool_choice != "none":
            call, routing = self._route(question, messages)
            if call is not None:
                answer = self._from_passages(question, passages, {})
                best = max((c["score"] for c in answer.metadata["keel_citations"]), default=None)
                if best is None or best <= routing["score"] + self.tool_margin:
                    return _Reply(
                        tool_calls=[call],
                        metadata={
                            "keel_routing": routing,
                            "keel_citations": [],
                            "keel_refusal": False,
                        },
                    )
                # the documents answer the question clearly better than the tool matches it
                routing.update(called=False, reason=f"a passage matches better ({best:.4f})")
                answer.metadata = {"keel_routing": routing, **answer.metadata}
                return answer
        extra = {"keel_routing": routing} if routing else {}
        return self._from_passages(question, passages, extra)

    def _refusal(self, extra: dict[str, Any]) -> _Reply:
        return _Reply(
            content=REFUSAL,
            metadata={**extra, "keel_citations": [], "keel_refusal": True},
        )

    def _from_tool_results(self, messages: Sequence[BaseMessage]) -> _Reply:
        results: list[ToolMessage] = []
        for message in reversed(messages):
            if not isinstance(message, ToolMessage):
                break
            results.append(message)
        results.reverse()
        names: dict[str, str] = {}
        for message in messages:
            if isinstance(message, AIMessage):
                for tc in message.tool_calls:
                    if tc.get("id"):
                        names[str(tc["id"])] = tc["name"]
        lines = []
        for result in results:
            name = result.name or names.get(result.tool_call_id) or "the tool"
            content = _text(result).strip()
            if result.status == "error":
                first = content.splitlines()[0] if content else "no details"
                lines.append(f"{name} failed: {_cut(first, _TOOL_ERROR_CHARS)}")
            else:
                lines.append(f"{name} returned: {_cut(content, _TOOL_RESULT_CHARS) or '(nothing)'}")
        return _Reply(
            content="\n".join(lines),
            metadata={"keel_citations": [], "keel_refusal": False},
        )

    # -- tools -------------------------------------------------------------------------------
    def _candidates(self) -> list[dict[str, Any]]:
        tools = [t for t in self.bound_tools if isinstance(t.get("function"), Mapping)]
        if self.tool_choice not in (None, "auto", "any", "required"):
            tools = [t for t in tools if t["function"].get("name") == self.tool_choice]
        return tools

    @staticmethod
    def _tool_texts(function: Mapping[str, Any]) -> list[str]:
        name = str(function.get("name", ""))
        texts = [re.sub(r"[_\s]+", " ", name).strip()]
        description = str(function.get("description") or "").strip()
        if description:
            texts.append(description)
            first = description.split("\n\n")[0].strip()
            if first != description:
                texts.append(first)
        examples = function.get(EXAMPLES_KEY) or []
        texts.extend(str(e).strip() for e in examples if str(e).strip())
        return [t for t in dict.fromkeys(texts) if t]

    def _text_vectors(self, texts: Sequence[str]) -> list[Any]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._tool_vectors]
        if todo:
            for text, vector in zip(todo, self.embedder.encode(todo), strict=True):
                self._tool_vectors[text] = vector
        return [self._tool_vectors[t] for t in texts]

    def _route(
        self, question: str, messages: Sequence[BaseMessage]
    ) -> tuple[ToolCall | None, dict[str, Any]]:
        tools = self._candidates()
        if not tools:
            return None, {}
        texts = [self._tool_texts(t["function"]) for t in tools]
        vectors = self._text_vectors([t for group in texts for t in group])
        query = self.embedder.embed_query(question)
        scores: list[float] = []
        position = 0
        for group in texts:
            sims = [float(vectors[position + i] @ query) for i in range(len(group))]
            position += len(group)
            scores.append(max(sims) if sims else -1.0)
        best = max(range(len(tools)), key=lambda i: (scores[i], -i))
        function = tools[best]["function"]
        name = str(function["name"])
        routing: dict[str, Any] = {
            "tool": name,
            "score": round(scores[best], 4),
            "threshold": self.tool_threshold,
            "args": {},
            "missing": [],
            "called": False,
        }
        if scores[best] < self.tool_threshold:
            routing["reason"] = "no tool matches the question"
            return None, routing
        args, missing = extract_arguments(function.get("parameters") or {}, question)
        routing.update(args=args, missing=missing)
        if missing:
            routing["reason"] = "required arguments cannot be read from the question"
            return None, routing
        routing.update(called=True, reason="tool matches and its arguments were read")
        return make_tool_call(name=name, args=args, id=self._call_id(messages, name, args)), routing

    @staticmethod
    def _call_id(messages: Sequence[BaseMessage], name: str, args: Mapping[str, Any]) -> str:
        digest = hashlib.sha256()
        for message in messages:
            digest.update(f"{message.type}\x1f{_text(message)}\x1e".encode())
        digest.update(f"{name}\x1f{json.dumps(args, sort_keys=True, default=str)}".encode())
        return f"call_{digest.hexdigest()[:16]}"

    # -- passages ----------------------------------------------------------------------------
    def _from_passages(
        self, question: str, passages: Sequence[Passage], extra: dict[str, Any]
    ) -> _Reply:
        import numpy as np

        found: dict[str, list[int]] = {}
        for passage in passages:
            for sentence in split_sentences(passage.text):
                numbers = found.setdefault(sentence, [])
                if passage.n not in numbers:
                    numbers.append(passage.n)
        if not question or not found:
            return self._refusal(extra)
        sentences = list(found)
        # the popular chunks' sentences come back turn after turn: their vectors are cached
        embed = getattr(self.embedder, "embed_sentences", None) or self.embedder.encode
        vectors = np.asarray(embed(sentences), dtype=np.float32)
        query = np.asarray(self.embedder.embed_query(question), dtype=np.float32)
        scores = vectors @ query
        chosen = self._mmr(vectors, scores)
        if not chosen:
            return self._refusal(extra)
        chosen.sort(key=lambda i: (-float(scores[i]), i))  # in the order of relevance
        citations = [
            {"n": n, "score": round(float(scores[i]), 4), "sentence": sentences[i]}
            for i in chosen
            for n in found[sentences[i]]
        ]
        parts = []
        for k, i in enumerate(chosen):
            numbers = found[sentences[i]]
            following = found[sentences[chosen[k + 1]]] if k + 1 < len(chosen) else None
            # a run of sentences from the same passage is cited once, after its last sentence
            parts.append(_cite(sentences[i], None if following == numbers else numbers))
        return _Reply(
            content=" ".join(parts),
            metadata={**extra, "keel_citations": citations, "keel_refusal": False},
        )

    def _mmr(self, vectors: np.ndarray, scores: np.ndarray) -> list[int]:
        candidates = [i for i in range(len(scores)) if float(scores[i]) >= self.relevance_threshold]
        candidates.sort(key=lambda i: (-float(scores[i]), i))
        chosen: list[int] = []
        while candidates and len(chosen) < self.max_sentences:
            best, best_value = -1, -math.inf
            keep = []
            for i in candidates:
                redundancy = max((float(vectors[i] @ vectors[j]) for j in chosen), default=0.0)
                if redundancy >= _DUPLICATE:
                    continue  # says what a chosen sentence says
                keep.append(i)
                value = self.mmr_lambda * float(scores[i]) - (1 - self.mmr_lambda) * redundancy
                if value > best_value:
                    best, best_value = i, value
            if best < 0:
                break
            chosen.append(best)
            candidates = [i for i in keep if i != best]
        return chosen

    # -- tokens ------------------------------------------------------------------------------
    def _truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """``text`` cut to at most ``max_tokens`` tokens (whole words), and whether it was."""
        if self._count(text) <= max_tokens:
            return text, False
        words = text.split(" ")
        lo, hi = 0, len(words)
        while lo < hi:  # the most words that fit
            mid = (lo + hi + 1) // 2
            if self._count(" ".join(words[:mid])) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return " ".join(words[:lo]), True

    def _count(self, text: str) -> int:
        if not text:
            return 0
        tokenizer = getattr(getattr(self.embedder, "model", None), "tokenizer", None)
        encode = getattr(tokenizer, "encode", None)
        if encode is None:
            return len(text.split())
        lock = getattr(self.embedder, "tokenizer_lock", None)
        if lock is None:
            return len(encode(text, add_special_tokens=False, verbose=False))
        with lock:  # the fast tokenizer is not safe to share between threads
            return len(encode(text, add_special_tokens=False, verbose=False))


__all__ = ["EXAMPLES_KEY", "MODEL_ID", "REFUSAL", "ExtractiveChatModel", "extract_arguments"]
