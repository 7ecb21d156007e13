"""LLM as judge: rubric scoring, pairwise side-by-side, win rates and agreement with humans.

Every judge call is cached in the keel database (table ``keel_judge_cache``) under the
sha256 of the judge model id, the prompt and the inputs, so rerunning an evaluation replays the
judge's answers at no cost. The prompts are plain module-level strings: what the judge is asked
is what you read here.

:func:`ragas_llm` makes a judge model (a model id such as a suite's ``judge:``, or a LangChain
chat model) into what RAGAS's judge metrics call, with the same cache: RAGAS's own prompts,
each sent as it is, each reply read as JSON into the structure RAGAS asked for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ValidationError
from sqlalchemy import Column, DateTime, Engine, String, Table, Text, select
from sqlalchemy.exc import IntegrityError

from keel.db import create_tables, metadata
from keel.errors import KeelError, ModelError, UsageError

if TYPE_CHECKING:
    from keel.settings import Settings

T = TypeVar("T")
JUDGE_MAX_TOKENS = 512  # a verdict is short; a bound keeps a runaway reply from holding a server

judge_cache = Table(
    "keel_judge_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("model_id", String(512), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class JudgeCache:
    """Judge responses by key (see :func:`cache_key`) in the keel database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata, [judge_cache])

    def get(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(judge_cache.c.response).where(judge_cache.c.key == key)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def put(self, key: str, value: str, *, model_id: str = "") -> None:
        row = {"response": value, "model_id": model_id, "created_at": datetime.now(UTC)}
        try:
            with self.engine.begin() as conn:
                conn.execute(judge_cache.insert().values(key=key, **row))
        except IntegrityError:
            with self.engine.begin() as conn:
                conn.execute(judge_cache.update().where(judge_cache.c.key == key).values(**row))


def cache_key(model_id: str, prompt: str, inputs: dict[str, Any]) -> str:
    """sha256 of the judge model id, the prompt template and the inputs."""
    payload = json.dumps([model_id, prompt, inputs], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


RUBRIC_SYSTEM = """You are a strict evaluator. Score the answer to the question on this rubric:

{rubric}

Use an integer score from {low} (worst) to {high} (best).
Reply with only a JSON object, no other text: {{"score": <integer>, "reason": "<one sentence>"}}"""

PAIRWISE_SYSTEM = """You compare two answers, A and B, to the same question on these criteria:

{criteria}

The order in which the answers are shown says nothing about their quality.
Reply with only a JSON object, no other text:
{{"winner": "A" | "B" | "tie", "reason": "<one sentence>"}}"""

CORRECTIVE = (
    "Your reply could not be read: {error}. Reply again with only the JSON object described "
    "above, no code fences and no other text."
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (code fences and surrounding prose tolerated)."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for match in re.finditer(r"\{", candidate):
            try:
                value, _ = decoder.raw_decode(candidate[match.start() :])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object found")


def _text(message: BaseMessage) -> str:
    return str(message.text)


def _format_inputs(inputs: dict[str, Any]) -> str:
    parts: list[str] = []
    for name, value in inputs.items():
        if value is None:
            continue
        if isinstance(value, list):
            body = "\n".join(f"[{i + 1}] {v}" for i, v in enumerate(value)) or "(none)"
        else:
            body = str(value)
        parts.append(f"## {name.replace('_', ' ').capitalize()}\n{body}")
    return "\n\n".join(parts)


class _Judge:
    """Shared plumbing: cached, parse-retried calls to a judge model."""

    def __init__(
        self,
        model: BaseChatModel,
        *,
        model_id: str,
        cache: JudgeCache | None,
        max_parse_retries: int,
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.cache = cache
        self.max_parse_retries = max_parse_retries

    def _lookup(self, key: str, parse: Callable[[str], T]) -> tuple[T, bool] | None:
        if self.cache is None:
            return None
        hit = self.cache.get(key)
        if hit is None:
            return None
        try:
            return parse(hit), True
        except ValueError:
            return None  # a cached reply the current parser rejects: ask again

    def _failed(self, exc: Exception) -> ModelError:
        return ModelError(f"judge {self.model_id} failed: {exc}", [(self.model_id, repr(exc))])

    def _accept(
        self,
        key: str,
        text: str,
        parse: Callable[[str], T],
        messages: list[BaseMessage],
        errors: list[str],
    ) -> tuple[T, bool] | list[BaseMessage]:
        """The parsed reply (cached), or the conversation with a corrective turn added."""
        try:
            parsed = parse(text)
        except ValueError as exc:
            errors.append(str(exc))
            return [
                *messages,
                AIMessage(content=text),
                HumanMessage(content=CORRECTIVE.format(error=exc)),
            ]
        if self.cache is not None:
            self.cache.put(key, text, model_id=self.model_id)
        return parsed, False

    def _exhausted(self, errors: list[str]) -> ModelError:
        return ModelError(
            f"judge {self.model_id} gave no readable verdict after "
            f"{self.max_parse_retries + 1} attempts: {'; '.join(errors)}",
            [(self.model_id, e) for e in errors],
        )

    def _start(self, system: str, inputs: dict[str, Any]) -> tuple[str, list[BaseMessage]]:
        messages: list[BaseMessage] = [
            SystemMessage(content=system),
            HumanMessage(content=_format_inputs(inputs)),
        ]
        return cache_key(self.model_id, system, inputs), messages

    def _call_kwargs(self, schema: dict[str, Any] | None) -> dict[str, Any]:
        """Per-call arguments: the reply's JSON schema as the server's structured output
        (llama.cpp enforces it with a grammar, so a weak model's verdict still parses),
        temperature 0 and a bounded length, for models that take them (openai:*)."""
        structured = getattr(self.model, "structured_kwargs", None)
        if structured is None or schema is None:
            return {}
        return {**structured(schema, "verdict"), "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}

    def _ask(
        self,
        system: str,
        inputs: dict[str, Any],
        parse: Callable[[str], T],
        schema: dict[str, Any] | None = None,
    ) -> tuple[T, bool]:
        """(parsed reply, whether it came from the cache)."""
        key, messages = self._start(system, inputs)
        return self._ask_messages(key, messages, parse, schema)

    def _ask_messages(
        self,
        key: str,
        messages: list[BaseMessage],
        parse: Callable[[str], T],
        schema: dict[str, Any] | None = None,
    ) -> tuple[T, bool]:
        hit = self._lookup(key, parse)
        if hit is not None:
            return hit
        errors: list[str] = []
        kwargs = self._call_kwargs(schema)
        for _attempt in range(self.max_parse_retries + 1):
            try:
                reply = self.model.invoke(messages, **kwargs)
            except KeelError:
                raise
            except Exception as exc:
                raise self._failed(exc) from exc
            outcome = self._accept(key, _text(reply), parse, messages, errors)
            if isinstance(outcome, tuple):
                return outcome
            messages = outcome
        raise self._exhausted(errors)

    async def _aask(
        self,
        system: str,
        inputs: dict[str, Any],
        parse: Callable[[str], T],
        schema: dict[str, Any] | None = None,
    ) -> tuple[T, bool]:
        """:meth:`_ask` with ``ainvoke``."""
        key, messages = self._start(system, inputs)
        return await self._aask_messages(key, messages, parse, schema)

    async def _aask_messages(
        self,
        key: str,
        messages: list[BaseMessage],
        parse: Callable[[str], T],
        schema: dict[str, Any] | None = None,
    ) -> tuple[T, bool]:
        hit = self._lookup(key, parse)
        if hit is not None:
            return hit
        errors: list[str] = []
        kwargs = self._call_kwargs(schema)
        for _attempt in range(self.max_parse_retries + 1):
            try:
                reply = await self.model.ainvoke(messages, **kwargs)
            except KeelError:
                raise
            except Exception as exc:
                raise self._failed(exc) from exc
            outcome = self._accept(key, _text(reply), parse, messages, errors)
            if isinstance(outcome, tuple):
                return outcome
            messages = outcome
        raise self._exhausted(errors)


@dataclass(frozen=True)
class JudgeScore:
    score: float
    """Normalised to 0..1 over the scale."""
    raw: int
    reason: str
    cached: bool


class RubricJudge(_Judge):
    """Scores an answer on a rubric, on an integer scale, with a reason."""

    def __init__(
        self,
        model: BaseChatModel,
        *,
        model_id: str,
        rubric: str,
        scale: tuple[int, int] = (1, 5),
        cache: JudgeCache | None = None,
        max_parse_retries: int = 2,
    ) -> None:
        if scale[1] <= scale[0]:
            raise UsageError(f"judge scale {scale} must go from low to high")
        super().__init__(model, model_id=model_id, cache=cache, max_parse_retries=max_parse_retries)
        self.rubric = rubric
        self.scale = scale
        self.prompt = RUBRIC_SYSTEM.format(rubric=rubric, low=scale[0], high=scale[1])
        self.schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": scale[0], "maximum": scale[1]},
                "reason": {"type": "string", "maxLength": 400},
            },
            "required": ["score", "reason"],
        }

    def _parse(self, text: str) -> tuple[int, str]:
        data = parse_json_object(text)
        raw = data.get("score")
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            raw = int(raw.strip())
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError(f'"score" must be an integer, got {raw!r}')
        low, high = self.scale
        if not low <= raw <= high:
            raise ValueError(f'"score" {raw} is outside {low}..{high}')
        return raw, str(data.get("reason", ""))

    def score(
        self,
        *,
        question: str,
        answer: str,
        reference: str | None = None,
        contexts: list[str] | None = None,
    ) -> JudgeScore:
        inputs = self._inputs(question, answer, reference, contexts)
        return self._result(*self._ask(self.prompt, inputs, self._parse, self.schema))

    async def ascore(
        self,
        *,
        question: str,
        answer: str,
        reference: str | None = None,
        contexts: list[str] | None = None,
    ) -> JudgeScore:
        """:meth:`score` on the model's async path."""
        inputs = self._inputs(question, answer, reference, contexts)
        return self._result(*await self._aask(self.prompt, inputs, self._parse, self.schema))

    @staticmethod
    def _inputs(
        question: str, answer: str, reference: str | None, contexts: list[str] | None
    ) -> dict[str, Any]:
        return {
            "question": question,
            "contexts": list(contexts) if contexts is not None else None,
            "reference_answer": reference,
            "answer": answer,
        }

    def _result(self, parsed: tuple[int, str], cached: bool) -> JudgeScore:
        raw, reason = parsed
        low, high = self.scale
        return JudgeScore(score=(raw - low) / (high - low), raw=raw, reason=reason, cached=cached)


Winner = Literal["a", "b", "tie"]


@dataclass(frozen=True)
class PairwiseVerdict:
    winner: Winner
    """After both orders: the consistent winner, else ``"tie"``."""
    first_order: Winner
    """The winner (in terms of a / b) with a shown first."""
    swapped_order: Winner
    """The winner (in terms of a / b) with b shown first."""
    consistent: bool
    reasons: tuple[str, str] = ("", "")
    cached: bool = False


_AS_SHOWN: dict[str, Winner] = {"first": "a", "second": "b"}
_SWAPPED: dict[str, Winner] = {"first": "b", "second": "a"}


PAIRWISE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "winner": {"type": "string", "enum": ["A", "B", "tie"]},
        "reason": {"type": "string", "maxLength": 400},
    },
    "required": ["winner", "reason"],
}


def _parse_pairwise(text: str) -> tuple[str, str]:
    data = parse_json_object(text)
    winner = str(data.get("winner", "")).strip().lower()
    if winner in ("a", "answer a"):
        return "first", str(data.get("reason", ""))
    if winner in ("b", "answer b"):
        return "second", str(data.get("reason", ""))
    if winner in ("tie", "draw", "equal", "none"):
        return "tie", str(data.get("reason", ""))
    raise ValueError(f'"winner" must be "A", "B" or "tie", got {data.get("winner")!r}')


class PairwiseJudge(_Judge):
    """Side by side (AutoSxS-style): asks twice with the answers swapped to cancel order bias."""

    def __init__(
        self,
        model: BaseChatModel,
        *,
        model_id: str,
        criteria: str,
        cache: JudgeCache | None = None,
        max_parse_retries: int = 2,
    ) -> None:
        super().__init__(model, model_id=model_id, cache=cache, max_parse_retries=max_parse_retries)
        self.criteria = criteria
        self.prompt = PAIRWISE_SYSTEM.format(criteria=criteria)

    @staticmethod
    def _inputs(question: str, first: str, second: str, reference: str | None) -> dict[str, Any]:
        return {
            "question": question,
            "reference_answer": reference,
            "answer_a": first,
            "answer_b": second,
        }

    def compare(
        self,
        *,
        question: str,
        answer_a: str,
        answer_b: str,
        reference: str | None = None,
    ) -> PairwiseVerdict:
        """Judge a against b, once in each order; an order-dependent verdict is a tie."""
        one = self._ask(
            self.prompt,
            self._inputs(question, answer_a, answer_b, reference),
            _parse_pairwise,
            PAIRWISE_SCHEMA,
        )
        two = self._ask(
            self.prompt,
            self._inputs(question, answer_b, answer_a, reference),
            _parse_pairwise,
            PAIRWISE_SCHEMA,
        )
        return _verdict(one, two)

    async def acompare(
        self,
        *,
        question: str,
        answer_a: str,
        answer_b: str,
        reference: str | None = None,
    ) -> PairwiseVerdict:
        """:meth:`compare` on the model's async path."""
        one = await self._aask(
            self.prompt,
            self._inputs(question, answer_a, answer_b, reference),
            _parse_pairwise,
            PAIRWISE_SCHEMA,
        )
        two = await self._aask(
            self.prompt,
            self._inputs(question, answer_b, answer_a, reference),
            _parse_pairwise,
            PAIRWISE_SCHEMA,
        )
        return _verdict(one, two)


def _verdict(
    one: tuple[tuple[str, str], bool], two: tuple[tuple[str, str], bool]
) -> PairwiseVerdict:
    (pos1, reason1), cached1 = one
    (pos2, reason2), cached2 = two
    first = _AS_SHOWN.get(pos1, "tie")
    swapped = _SWAPPED.get(pos2, "tie")
    consistent = first == swapped
    return PairwiseVerdict(
        winner=first if consistent else "tie",
        first_order=first,
        swapped_order=swapped,
        consistent=consistent,
        reasons=(reason1, reason2),
        cached=cached1 and cached2,
    )


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(verdicts: Sequence[PairwiseVerdict | str]) -> dict[str, float]:
    """Wins, ties and losses of a over b; the win rate counts ties as half a win.

    ``ci_low``/``ci_high`` are the Wilson 95% interval of the win rate. With no verdicts the
    win rate is NaN and the interval is [0, 1].
    """
    outcomes = [v.winner if isinstance(v, PairwiseVerdict) else v for v in verdicts]
    bad = [o for o in outcomes if o not in ("a", "b", "tie")]
    if bad:
        raise UsageError(f'verdicts must be "a", "b" or "tie", got {bad[0]!r}')
    counts = Counter(outcomes)
    n = len(outcomes)
    score = counts["a"] + 0.5 * counts["tie"]
    low, high = wilson_interval(score, n)
    return {
        "wins": counts["a"],
        "ties": counts["tie"],
        "losses": counts["b"],
        "n": n,
        "win_rate": score / n if n else math.nan,
        "ci_low": low,
        "ci_high": high,
    }


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa between two raters' labels (e.g. a judge and human labels)."""
    if len(a) != len(b):
        raise UsageError(f"cohen_kappa needs labels of equal length, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise UsageError("cohen_kappa needs at least one pair of labels")
    observed = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[label] * cb.get(label, 0) for label in ca) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


# -- RAGAS -----------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


class RagasJudge(_Judge):
    """A keel judge in the shape RAGAS's judge metrics call: ``generate(prompt,
    response_model)`` / ``agenerate``. RAGAS's prompt (its instruction, the JSON schema of the
    reply, examples and the input) goes to the model as one user message, unchanged; the reply
    is read as JSON into ``response_model`` (a reply that does not fit is answered with a
    corrective turn, as for keel's own judges) and cached under the judge model id and the
    prompt. Made by :func:`ragas_llm`, which also makes it a RAGAS ``InstructorBaseRagasLLM``.
    """

    def _key_and_messages(
        self, prompt: str, response_model: type[BaseModel]
    ) -> tuple[str, list[BaseMessage]]:
        reply = response_model.__name__
        key = cache_key(self.model_id, "ragas", {"prompt": prompt, "reply": reply})
        return key, [HumanMessage(content=prompt)]

    @staticmethod
    def _reader(response_model: type[M]) -> Callable[[str], M]:
        def read(text: str) -> M:
            try:
                return response_model.model_validate(parse_json_object(text))
            except ValidationError as exc:
                errors = exc.errors()
                if not errors:
                    raise ValueError("the reply does not fit the structure asked for") from None
                where = ".".join(str(x) for x in errors[0]["loc"]) or "reply"
                raise ValueError(f"{where}: {errors[0]['msg']}") from None

        return read

    def generate(self, prompt: str, response_model: type[M]) -> M:
        key, messages = self._key_and_messages(prompt, response_model)
        schema = response_model.model_json_schema()
        return self._ask_messages(key, messages, self._reader(response_model), schema)[0]

    async def agenerate(self, prompt: str, response_model: type[M]) -> M:
        key, messages = self._key_and_messages(prompt, response_model)
        schema = response_model.model_json_schema()
        reader = self._reader(response_model)
        return (await self._aask_messages(key, messages, reader, schema))[0]


@functools.cache
def _ragas_judge_class() -> type[RagasJudge]:
    from keel.evals.metrics import _quiet

    with _quiet():
        from ragas.llms.base import InstructorBaseRagasLLM

    class KeelRagasLLM(RagasJudge, InstructorBaseRagasLLM):
        """:class:`RagasJudge` registered as RAGAS's LLM base class."""

        is_async = True  # RAGAS's prompts then call agenerate

    return KeelRagasLLM


def judge_model(model: str | BaseChatModel, settings: Settings | None = None) -> BaseChatModel:
    """The chat model for a judge: a model id (``openai:gpt-4o-mini``, anything
    :func:`keel.agents.models.build_model` resolves) or a LangChain chat model, as is."""
    if isinstance(model, BaseChatModel):
        return model
    if not isinstance(model, str) or not model.strip():
        raise UsageError(f"a judge is a model id or a chat model, not {model!r}")
    from keel.agents.models import EXTRACTIVE, build_model

    if model == EXTRACTIVE:
        raise UsageError(
            f"{EXTRACTIVE} cannot judge: it answers with sentences of the context, it does "
            "not follow instructions (use a language model, e.g. openai:gpt-4o-mini)"
        )

    def no_embedder() -> Any:  # only the embedded model needs one
        raise UsageError(f"judge {model!r} needs no embedding model")

    from keel.settings import get_settings

    return build_model(model, embedder=no_embedder, settings=settings or get_settings())


def ragas_llm(
    model: str | BaseChatModel,
    *,
    cache: JudgeCache | None = None,
    model_id: str | None = None,
    settings: Settings | None = None,
    max_parse_retries: int = 2,
) -> Any:
    """A judge model as RAGAS 0.4's judge metrics need it (``Faithfulness``,
    ``AnswerRelevancy``, ``ContextPrecision``, ``FactualCorrectness`` ... take ``llm=``).

    ``model``: a model id (a suite's ``judge:``) or a LangChain chat model (in tests a
    :class:`~keel.testing.ScriptedChatModel`). ``cache``: a :class:`JudgeCache`; every call is
    then cached under the judge model id and RAGAS's prompt, so a rerun replays at no cost.
    ``model_id`` names the judge in the cache key (default: the id given, or the model's name).
    Returns a :class:`RagasJudge` that is also a ``ragas.llms.base.InstructorBaseRagasLLM``.
    """
    from keel.agents.models import model_name

    chat = judge_model(model, settings)
    name = model_id or (model if isinstance(model, str) else model_name(chat))
    cls = _ragas_judge_class()
    return cls(chat, model_id=name, cache=cache, max_parse_retries=max_parse_retries)


__all__ = [
    "JudgeCache",
    "JudgeScore",
    "PairwiseJudge",
    "PairwiseVerdict",
    "RagasJudge",
    "RubricJudge",
    "cache_key",
    "cohen_kappa",
    "judge_model",
    "parse_json_object",
    "ragas_llm",
    "wilson_interval",
    "win_rate",
]
