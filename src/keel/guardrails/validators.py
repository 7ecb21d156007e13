"""Keel's validators, as guardrails-ai custom validators (``@register_validator``).

Every validator is offline: nothing from the guardrails Hub (which needs the network). They
run inside guardrails-ai ``Guard`` objects (:mod:`keel.guardrails.runner`) with its on-fail
actions. Runtime services come through the ``metadata`` mapping that ``Guard.validate``
passes to every validator (guardrails-ai's own mechanism for per-call context):

``keel_embedder``     the app's :class:`~keel.rag.embeddings.Embedder`
``keel_support_embedder``  the encoder grounding scores support with
``keel_injection``    the :class:`~keel.guardrails.injection.InjectionDetector`
``keel_passages``     retrieved passage texts (grounding)
``keel_system_prompt`` / ``keel_canary``   the system prompt and its canary token (leakage)
``keel_memory``       per-conversation memory (PII placeholders stay consistent)
``keel_scope``        the app's :class:`~keel.guardrails.scope.AppScope` (off-topic check)
``keel_point``        the hook point the rule runs at
``keel_report``       a dict validators write their score and details into, for the record
``keel_trail``        a list each validator appends a :class:`Ran` to when it has run: one
                      Guard runs a point's validators in turn, and the trail says which ran,
                      what each said and how long it took

Each validator's options are a pydantic model (:data:`OPTIONS`): unknown options are a
configuration error, not silently ignored.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from keel.guardrails._offline import import_guardrails

import_guardrails()

from guardrails.validators import (  # noqa: E402
    ErrorSpan,
    FailResult,
    PassResult,
    Validator,
    register_validator,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator  # noqa: E402

from keel.guardrails.injection import flags_document  # noqa: E402
from keel.guardrails.spans import Span  # noqa: E402

# guardrails-ai ships no type information: its results are typed as Any here.
Result: TypeAlias = Any


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _report(metadata: Mapping[str, Any], name: str, **details: Any) -> None:
    report = metadata.get("keel_report")
    if isinstance(report, dict):
        report[name] = details


def _spans(spans: list[Span]) -> list[ErrorSpan]:
    return [ErrorSpan(start=s.start, end=s.end, reason=s.entity_type) for s in spans]


def _span_dicts(spans: list[Span]) -> list[dict[str, Any]]:
    return [
        {"type": s.entity_type, "start": s.start, "end": s.end, "score": round(s.score, 3)}
        for s in spans
    ]


@dataclass(frozen=True)
class Ran:
    """One validator's run inside a Guard: its name, its result (a guardrails-ai
    ``PassResult`` or ``FailResult``) and its own time."""

    validator: str
    result: Result
    latency_ms: float

    @property
    def passed(self) -> bool:
        return bool(self.result.outcome == "pass")


class _KeelValidator(Validator):
    """Stores its options (validated) and gives subclasses ``self.options``; subclasses
    implement :meth:`_check`, and every run is appended to the call's ``keel_trail``."""

    options_model: type[_Options] = _Options
    keel_name = ""

    def __init__(self, on_fail: Any = None, **options: Any) -> None:
        super().__init__(on_fail=on_fail, **options)
        self.options = self.options_model.model_validate(options)

    def _validate(self, value: Any, metadata: dict[str, Any]) -> Result:
        started = time.perf_counter()
        result = self._check(value, metadata)
        trail = metadata.get("keel_trail")
        if isinstance(trail, list):
            latency = (time.perf_counter() - started) * 1000
            trail.append(Ran(self.keel_name, result, latency))
        return result

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        raise NotImplementedError


# -- prompt injection ----------------------------------------------------------------------


DOCUMENT_POINTS = frozenset({"context", "tool_result"})  # texts that are data, not requests


class InjectionOptions(_Options):
    # Unset: requests (input, tool arguments) use the 3 % FPR threshold; documents (context,
    # tool results) the ``context`` threshold calibrated on ordinary documentation.
    threshold: float | None = Field(default=None, ge=0, le=1)
    fpr: float | None = Field(default=None, gt=0, lt=1)


@register_validator(name="keel/injection", data_type="string")
class InjectionValidator(_KeelValidator):
    """Prompt injection and jailbreak attempts (heuristics + a classifier on embeddings)."""

    options_model = InjectionOptions
    keel_name = "injection"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        detector = metadata["keel_injection"]
        opts: InjectionOptions = self.options  # type: ignore[assignment]
        result = detector.score(str(value))
        documents = metadata.get("keel_point") in DOCUMENT_POINTS
        threshold = (
            opts.threshold
            if opts.threshold is not None
            else detector.threshold_for(opts.fpr, documents=documents)
        )
        # In a document, an order addressed to the AI flags the text by itself.
        flagged = flags_document(result, threshold) if documents else result.score >= threshold
        _report(
            metadata,
            self.keel_name,
            score=round(result.score, 4),
            threshold=round(threshold, 4),
            reasons=list(result.reasons),
        )
        if not flagged:
            return PassResult()
        why = ", ".join(result.reasons) or "classifier"
        return FailResult(
            error_message=f"possible prompt injection (score {result.score:.2f}: {why})",
            fix_value="",
        )


# -- PII and secrets -------------------------------------------------------------------------


class PiiOptions(_Options):
    entities: list[str] | None = None
    min_score: float = Field(default=0.5, ge=0, le=1)


@register_validator(name="keel/pii", data_type="string")
class PiiValidator(_KeelValidator):
    """Personal data (emails, phones, cards, IBANs, SSNs, IPs, names, addresses); the fix
    replaces each value with a placeholder that stays the same within a conversation."""

    options_model = PiiOptions
    keel_name = "pii"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        from keel.guardrails.pii import Redactor, detect_pii

        opts: PiiOptions = self.options  # type: ignore[assignment]
        text = str(value)
        spans = detect_pii(text, opts.entities, min_score=opts.min_score)
        _report(metadata, self.keel_name, spans=_span_dicts(spans))
        if not spans:
            return PassResult()
        memory = metadata.get("keel_memory")
        mapping = memory.get("pii", {}) if isinstance(memory, dict) else {}
        redactor = Redactor(mapping)
        fixed = redactor.redact(text, spans)
        if isinstance(memory, dict):
            memory["pii"] = redactor.mapping
        kinds = sorted({s.entity_type for s in spans})
        return FailResult(
            error_message=f"personal data found: {', '.join(kinds)}",
            fix_value=fixed,
            error_spans=_spans(spans),
        )


class SecretsOptions(_Options):
    min_entropy: float = Field(default=3.5, ge=0)


@register_validator(name="keel/secrets", data_type="string")
class SecretsValidator(_KeelValidator):
    """API keys, tokens, private keys, passwords in URLs and high-entropy strings."""

    options_model = SecretsOptions
    keel_name = "secrets"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        from keel.guardrails.secrets import detect_secrets

        opts: SecretsOptions = self.options  # type: ignore[assignment]
        text = str(value)
        spans = detect_secrets(text, min_entropy=opts.min_entropy)
        _report(metadata, self.keel_name, spans=_span_dicts(spans))
        if not spans:
            return PassResult()
        fixed, counters = [], {}  # type: ignore[var-annotated]
        last = 0
        for s in spans:
            counters[s.entity_type] = counters.get(s.entity_type, 0) + 1
            fixed.append(text[last : s.start] + f"<{s.entity_type}_REDACTED>")
            last = s.end
        fixed.append(text[last:])
        kinds = sorted({s.entity_type for s in spans})
        return FailResult(
            error_message=f"secret found: {', '.join(kinds)}",
            fix_value="".join(fixed),
            error_spans=_spans(spans),
        )


# -- grounding -------------------------------------------------------------------------------


class GroundingOptions(_Options):
    threshold: float = Field(default=0.55, ge=-1, le=1)
    min_words: int = Field(default=4, ge=1)
    refusal: str = "I don't know: the documents I have do not answer this."
    # embed the answer's sentences while a generative model is still writing them
    # (keel.rag.support.SupportPrefetch; a turn asked whole then streams its model call, and a
    # streamed turn's checks find each sentence embedded as soon as it ended); the
    # decisions are the same either way. Off by default: on llama-cpp-python's server a
    # streamed reply took 1.06-1.15x as long as the same reply asked whole, more than it saves
    prefetch: bool = False


_REFUSAL = re.compile(r"\b(i don't know|i do not know|i couldn't find|i could not find)\b", re.I)


@register_validator(name="keel/grounding", data_type="string")
class GroundingValidator(_KeelValidator):
    """Every answer sentence must be supported by the retrieved context: quoted from it, or
    with an embedding close enough to one of its sentences (:mod:`keel.rag.support`). A
    sentence that only restates the question is no answer, however close it is to the
    passages the question retrieved, and counts as unsupported. The fix drops unsupported
    sentences; when none is left, the answer becomes the refusal."""

    options_model = GroundingOptions
    keel_name = "grounding"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        from keel.rag.sentences import split_sentences
        from keel.rag.support import restates, support_scores

        opts: GroundingOptions = self.options  # type: ignore[assignment]
        text = str(value)
        question = str(metadata.get("keel_question", ""))
        claims = [
            s
            for s in split_sentences(text)
            if (len(s.split()) >= opts.min_words or restates(s, question))
            and not _REFUSAL.search(s)
        ]
        if not claims:
            _report(metadata, self.keel_name, supported=[], unsupported=[])
            return PassResult()
        passages = [p for p in metadata.get("keel_passages", []) if p.strip()]
        echoes = [restates(c, question) for c in claims]
        others = [c for c, echo in zip(claims, echoes, strict=True) if not echo]
        encoder = metadata["keel_support_embedder"]
        scored = iter(
            support_scores(others, passages, encoder).max(axis=1, initial=0.0)
            if passages
            else [0.0] * len(others)
        )
        scores = [0.0 if echo else float(next(scored)) for echo in echoes]
        unsupported = [c for c, sc in zip(claims, scores, strict=True) if sc < opts.threshold]
        _report(
            metadata,
            self.keel_name,
            scores=[round(x, 3) for x in scores],
            unsupported=unsupported,
            restated=[c for c, echo in zip(claims, echoes, strict=True) if echo],
        )
        if not unsupported:
            return PassResult()
        kept = text
        for sentence in unsupported:
            kept = kept.replace(sentence, "")
        kept = re.sub(r"[ \t]{2,}", " ", kept).strip()
        if not kept or not [
            s
            for s in split_sentences(kept)
            if len(s.split()) >= opts.min_words and not restates(s, question)
        ]:
            kept = opts.refusal
        return FailResult(
            error_message=f"{len(unsupported)} of {len(claims)} sentences are not supported "
            "by the retrieved context",
            fix_value=kept,
        )


# -- system prompt leakage -------------------------------------------------------------------


class PromptLeakOptions(_Options):
    ngram: int = Field(default=8, ge=3, le=50)
    max_overlap: float = Field(default=0.10, ge=0, le=1)


_WORD = re.compile(r"\w+")


@register_validator(name="keel/prompt_leak", data_type="string")
class PromptLeakValidator(_KeelValidator):
    """The output must not reveal the system prompt: its canary token, or too many of its
    word n-grams verbatim."""

    options_model = PromptLeakOptions
    keel_name = "prompt_leak"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        opts: PromptLeakOptions = self.options  # type: ignore[assignment]
        text = str(value)
        canary = metadata.get("keel_canary")
        if canary and canary in text:
            _report(metadata, self.keel_name, canary=True, overlap=1.0)
            return FailResult(error_message="the output contains the system prompt's canary")
        system = str(metadata.get("keel_system_prompt", ""))
        grams = _ngrams(system, opts.ngram)
        overlap = len(grams & _ngrams(text, opts.ngram)) / len(grams) if grams else 0.0
        _report(metadata, self.keel_name, canary=False, overlap=round(overlap, 3))
        if overlap > opts.max_overlap:
            return FailResult(
                error_message=f"the output repeats {overlap:.0%} of the system prompt"
            )
        return PassResult()


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


# -- topics, length, JSON ----------------------------------------------------------------


class TopicOptions(_Options):
    topics: list[str] = Field(min_length=1)
    threshold: float = Field(default=0.5, ge=-1, le=1)


@register_validator(name="keel/topic_denylist", data_type="string")
class TopicDenylistValidator(_KeelValidator):
    """Text about a denied topic: a topic named verbatim, or a text embedding close to the
    topic's (each topic is a short description such as "medical diagnosis")."""

    options_model = TopicOptions
    keel_name = "topic_denylist"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        opts: TopicOptions = self.options  # type: ignore[assignment]
        text = str(value)
        lowered = text.lower()
        for topic in opts.topics:
            if re.search(rf"\b{re.escape(topic.lower())}\b", lowered):
                _report(metadata, self.keel_name, topic=topic, score=1.0)
                return FailResult(error_message=f"denied topic: {topic}")
        embedder = metadata["keel_embedder"]
        query = embedder.embed_query(text)
        topics = embedder.encode(opts.topics)
        scores = topics @ query
        best = int(scores.argmax())
        _report(metadata, self.keel_name, topic=opts.topics[best], score=float(scores[best]))
        if float(scores[best]) >= opts.threshold:
            return FailResult(error_message=f"denied topic: {opts.topics[best]}")
        return PassResult()


class OffTopicOptions(_Options):
    # Cosine similarity to the closest of the app's description, system prompt paragraphs and
    # knowledge chunks under which a request is off topic (benchmarks/guards.py measures it).
    threshold: float = Field(default=0.25, ge=-1, le=1)
    # Shorter messages ("thanks", "hi there") are never flagged: too short to tell.
    min_words: int = Field(default=3, ge=1)


@register_validator(name="keel/off_topic", data_type="string")
class OffTopicValidator(_KeelValidator):
    """Task drift: a request far from what the app is for (its description, system prompt and
    knowledge; :mod:`keel.guardrails.scope`). Flagged apart from injection, so a policy can
    refuse drift, only record it, or let it through."""

    options_model = OffTopicOptions
    keel_name = "off_topic"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        opts: OffTopicOptions = self.options  # type: ignore[assignment]
        text = str(value)
        if len(text.split()) < opts.min_words:
            _report(metadata, self.keel_name, skipped="too short")
            return PassResult()
        match = metadata["keel_scope"].match(text, metadata["keel_embedder"])
        _report(
            metadata,
            self.keel_name,
            score=round(match.score, 4),
            threshold=opts.threshold,
            closest=match.source,
        )
        if match.score >= opts.threshold:
            return PassResult()
        return FailResult(
            error_message=f"off topic for this app (similarity {match.score:.2f} to the "
            f"closest {match.source}, under {opts.threshold:.2f})"
        )


class LanguageOptions(_Options):
    # ISO 639 codes of the languages the app takes requests in (keel.guardrails.language)
    allowed: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    # probability of the most likely language above which a piece counts as written in it
    min_confidence: float = Field(default=0.5, gt=0, le=1)
    # sentences shorter than this many letters are judged only as part of the whole text
    min_letters: int = Field(default=40, ge=1)

    @field_validator("allowed")
    @classmethod
    def _known(cls, codes: list[str]) -> list[str]:
        from keel.guardrails.language import known_languages

        known = known_languages()
        unknown = [c for c in codes if c not in known]
        if unknown:
            raise ValueError(
                f"unknown language code {', '.join(map(repr, unknown))} (ISO 639 codes the "
                f"identifier knows: {', '.join(sorted(known))})"
            )
        return codes


@register_validator(name="keel/language", data_type="string")
class LanguageValidator(_KeelValidator):
    """The request is written in one of the app's languages (``allowed``): the injection
    detector reads English, so an app that serves English refuses requests in other
    languages rather than let attacks it cannot read through. Short texts ("thanks") are
    never flagged: too short to tell."""

    options_model = LanguageOptions
    keel_name = "language"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        from keel.guardrails.language import foreign_piece

        opts: LanguageOptions = self.options  # type: ignore[assignment]
        found = foreign_piece(
            str(value), frozenset(opts.allowed), opts.min_confidence, opts.min_letters
        )
        if found is None:
            _report(metadata, self.keel_name, foreign=None, allowed=opts.allowed)
            return PassResult()
        _report(
            metadata,
            self.keel_name,
            foreign=found.language,
            confidence=round(found.confidence, 3),
            allowed=opts.allowed,
        )
        return FailResult(
            error_message=f"written in {found.language!r} (probability "
            f"{found.confidence:.2f}); this app takes {', '.join(opts.allowed)}"
        )


class LengthOptions(_Options):
    min_chars: int = Field(default=0, ge=0)
    max_chars: int = Field(default=8000, ge=1)


@register_validator(name="keel/length", data_type="string")
class LengthValidator(_KeelValidator):
    """Text length within bounds; the fix cuts an over-long text at the limit."""

    options_model = LengthOptions
    keel_name = "length"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        opts: LengthOptions = self.options  # type: ignore[assignment]
        text = str(value)
        _report(metadata, self.keel_name, chars=len(text))
        if len(text) > opts.max_chars:
            return FailResult(
                error_message=f"text is {len(text)} characters (limit {opts.max_chars})",
                fix_value=text[: opts.max_chars],
            )
        if len(text) < opts.min_chars:
            return FailResult(
                error_message=f"text is {len(text)} characters (at least {opts.min_chars})"
            )
        return PassResult()


class JsonSchemaOptions(_Options):
    json_schema: dict[str, Any] = Field(alias="schema")


@register_validator(name="keel/json_schema", data_type="string")
class JsonSchemaValidator(_KeelValidator):
    """The text must be JSON matching a JSON schema (for structured outputs; for a pydantic
    model use :func:`keel.guardrails.runner.structured_guard`, on ``Guard.for_pydantic``)."""

    options_model = JsonSchemaOptions
    keel_name = "json_schema"

    def _check(self, value: Any, metadata: dict[str, Any]) -> Result:
        import jsonschema

        opts: JsonSchemaOptions = self.options  # type: ignore[assignment]
        try:
            data = json.loads(str(value))
        except json.JSONDecodeError as exc:
            return FailResult(error_message=f"not JSON: {exc.msg} at position {exc.pos}")
        errors = sorted(
            jsonschema.Draft202012Validator(opts.json_schema).iter_errors(data), key=str
        )
        _report(metadata, self.keel_name, errors=[e.message for e in errors[:10]])
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
            return FailResult(error_message=f"{where}: {errors[0].message}")
        return PassResult()


#: name → (validator class, what it needs at run time)
VALIDATORS: dict[str, type[_KeelValidator]] = {
    cls.keel_name: cls
    for cls in (
        InjectionValidator,
        PiiValidator,
        SecretsValidator,
        GroundingValidator,
        PromptLeakValidator,
        TopicDenylistValidator,
        OffTopicValidator,
        LanguageValidator,
        LengthValidator,
        JsonSchemaValidator,
    )
}
NEEDS_EMBEDDER = frozenset({"injection", "grounding", "topic_denylist", "off_topic"})
