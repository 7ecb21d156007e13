"""Guards at the agent's hook points, run through guardrails-ai ``Guard`` objects.

The ``[guards]`` section of keel.toml says which validators run at which point and what
happens when one fails (guardrails-ai's on-fail actions):

``exception``  the turn stops; the user gets the guard message (``guards.message``)
``fix``        the validator's fix is used (PII and secrets redacted, unsupported sentences
               dropped, an over-long text cut)
``filter``     the value is dropped: a retrieved chunk is quarantined, a tool result is
               withheld; at input or output the turn stops as with ``exception``
``refrain``    the same as filter, with the refusal as the answer at the output point
``noop``       nothing changes; the failure is recorded

A point's rules run in order in one Guard (guardrails-ai hands a fixed text to the next
validator and stops at the first that drops it); each validator notes its own result and time
in the call's metadata (``keel_trail``), so every rule that ran gets its decision (validator,
point, outcome, action, latency, score) in the turn's events, for traces. Hub telemetry is off
before any guard runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from keel.config import GuardsSection
from keel.errors import ConfigError, GuardTripped

if TYPE_CHECKING:
    from guardrails import Guard

    from keel.guardrails.scope import AppScope
    from keel.guardrails.validators import Ran
    from keel.rag.embeddings import Embedder
    from keel.rag.support import SupportPrefetch
    from keel.rag.types import Hit
    from keel.tools.policy import ToolCall, ToolOutcome

POINTS = ("input", "context", "tool_args", "tool_result", "output")


class RunContext(Protocol):
    """What the guards read of the agent's run context (keel.agents.hooks.RunContext)."""

    question: str
    hits: list[Hit]
    memory: dict[str, Any]

    def record(self, point: str, name: str, outcome: str, **details: Any) -> None: ...


ACTIONS = ("exception", "fix", "filter", "refrain", "noop", "reask")
REFUSAL = "I don't know: the documents I have do not answer this."
# Options that belong to the rule, not to the validator.
_RULE_KEYS = {"on_fail", "tools"}


def quiet_guardrails() -> None:
    """guardrails-ai: imported offline, hub telemetry off, validation in the calling thread."""
    from keel.guardrails._offline import import_guardrails

    import_guardrails()
    from guardrails.settings import settings

    settings.rc.enable_metrics = False
    # Keel traces guard decisions itself (keel.guard spans); guardrails-ai's own span
    # attributes only cost time (serialising every value on every validation).
    settings.disable_tracing = True


def new_guard() -> Guard:
    """A ``Guard`` with hub metrics off (``Guard()`` re-reads ~/.guardrailsrc and would turn
    them back on, so the setting is applied after it)."""
    quiet_guardrails()
    from guardrails import Guard

    guard = Guard()
    guard.configure(allow_metrics_collection=False)
    quiet_guardrails()
    return guard


@dataclass(frozen=True)
class Decision:
    validator: str
    point: str
    outcome: str  # "pass" or "fail"
    action: str
    latency_ms: float
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def event(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "name": self.validator,
            "outcome": self.outcome,
            "action": self.action,
            "latency_ms": round(self.latency_ms, 3),
            "reason": self.reason,
            **({"details": self.details} if self.details else {}),
        }


@dataclass(eq=False)  # a rule is itself (hashed by identity: the key of its Guard)
class Rule:
    point: str
    validator: str
    action: str
    instance: Any  # the guardrails-ai validator (keel.guardrails.validators)
    tools: str | list[str] = "all"
    options: Any = None  # the validator's options (its ``options_model``)

    def applies_to(self, call: ToolCall, external: Callable[[str], bool]) -> bool:
        if isinstance(self.tools, list):
            return call.name in self.tools
        return self.tools == "all" or (self.tools == "external" and external(call.name))


@dataclass
class Services:
    """What validators may need at run time, built on first use."""

    embedder: Callable[[], Embedder]
    system_prompt: Callable[[], str] = lambda: ""
    canary: str = ""
    # What the app is for (off-topic check): description, system prompt, knowledge lookup.
    scope: Callable[[], AppScope] | None = None
    # The encoder grounding scores support with (default: ``embedder``), see
    # :attr:`keel.resources.Resources.support_embedder`.
    support: Callable[[], Embedder] | None = None
    _injection: Any = None

    def support_embedder(self) -> Embedder:
        return (self.support or self.embedder)()

    def injection(self) -> Any:
        if self._injection is None:
            from keel.guardrails.injection import InjectionDetector

            self._injection = InjectionDetector(self.embedder())
        return self._injection


def build_rules(section: GuardsSection) -> dict[str, list[Rule]]:
    """Validate the ``[guards]`` section and build each rule's validator."""
    rules: dict[str, list[Rule]] = {p: [] for p in POINTS}
    if not any(getattr(section, p) for p in POINTS):
        return rules  # no guards: guardrails-ai is not even imported
    quiet_guardrails()
    from guardrails import OnFailAction
    from pydantic import ValidationError

    from keel.guardrails.validators import VALIDATORS

    for point in POINTS:
        for name, raw in getattr(section, point).items():
            where = f"guards.{point}.{name}"
            if name not in VALIDATORS:
                raise ConfigError(f"{where}: unknown validator (known: {', '.join(VALIDATORS)})")
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: expected a table of options")
            action = str(raw.get("on_fail", "exception"))
            if action not in ACTIONS:
                raise ConfigError(f"{where}.on_fail: one of {', '.join(ACTIONS)}")
            tools = raw.get("tools", "all")
            if action == "reask" and point != "output":
                raise ConfigError(f"{where}.on_fail: reask needs a model, so only at output")
            if point != "tool_args" and "tools" in raw:
                raise ConfigError(f"{where}.tools: only tool_args rules take 'tools'")
            if not (tools in ("all", "external") or isinstance(tools, list)):
                raise ConfigError(f"{where}.tools: 'all', 'external' or a list of tool names")
            options = {k: v for k, v in raw.items() if k not in _RULE_KEYS}
            try:
                # reask: keel asks the model again itself (the graph goes back to the model)
                on_fail = OnFailAction.EXCEPTION if action == "reask" else OnFailAction(action)
                validator = VALIDATORS[name](on_fail=on_fail, **options)
            except ValidationError as exc:  # unknown or bad options
                error = exc.errors()[0]
                field = ".".join(str(part) for part in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                raise ConfigError(
                    f"{where}.{field}: {message}" if field else f"{where}: {message}"
                ) from exc
            except Exception as exc:
                first = str(exc).splitlines()
                raise ConfigError(f"{where}: {first[1] if len(first) > 1 else exc}") from exc
            rules[point].append(Rule(point, name, action, validator, tools, validator.options))
    return rules


# Validators whose verdict on a text depends on nothing else (not on the turn's memory of
# placeholders, the question or the passages): a retrieved chunk's verdict can be kept.
PURE_VALIDATORS = frozenset({"injection", "language", "length", "topic_denylist"})
VERDICTS_KEPT = 4096  # chunks whose context verdict a runner keeps (least recently used go)


class GuardRunner:
    """Runs the configured guards; :meth:`hooks` plugs them into the agent graph."""

    def __init__(
        self,
        section: GuardsSection,
        services: Services,
        external: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.section = section
        self.services = services
        self.external = external
        self.rules = build_rules(section)
        self._context_is_pure = all(r.validator in PURE_VALIDATORS for r in self.rules["context"])
        self._verdicts: OrderedDict[str, tuple[str | None, tuple[Decision, ...]]] = OrderedDict()
        self._verdicts_lock = threading.Lock()
        self._guards: dict[tuple[Rule, ...], Guard] = {}
        self._guards_lock = threading.Lock()

    def __bool__(self) -> bool:
        return any(self.rules.values())

    def warm(self) -> None:
        """Load what the configured validators need (the embedding model, the injection
        detector) now, so a server's first guarded request does not wait for it (it took
        16.7 s inside a request)."""
        from keel.guardrails.validators import NEEDS_EMBEDDER

        names = {rule.validator for rules in self.rules.values() for rule in rules}
        if names & (NEEDS_EMBEDDER - {"grounding"}):
            self.services.embedder()
        if "grounding" in names:
            getattr(self.services.support_embedder(), "model", None)  # loads (exports) it
        if "injection" in names:
            self.services.injection()
        if "language" in names:
            from keel.guardrails.language import known_languages

            known_languages()  # loads the identifier's model

    # -- validation ------------------------------------------------------------------------------
    def guard(self, rules: tuple[Rule, ...]) -> Guard:
        """The guardrails-ai Guard that runs ``rules``' validators in turn (built once per
        set of rules: a point's, or a tool's subset of the tool_args rules). One Guard per
        point rather than per rule: each ``Guard.validate`` costs about 0.4 ms of its own."""
        found = self._guards.get(rules)
        if found is None:
            with self._guards_lock:
                found = self._guards.get(rules)
                if found is None:
                    found = new_guard()
                    found.use(*(rule.instance for rule in rules))
                    self._guards[rules] = found
        return found

    def _metadata(
        self,
        point: str,
        rules: tuple[Rule, ...],
        memory: dict[str, Any],
        passages: list[str],
        question: str = "",
    ) -> dict[str, Any]:
        from keel.guardrails.validators import NEEDS_EMBEDDER

        meta: dict[str, Any] = {
            "keel_report": {},
            "keel_trail": [],
            "keel_memory": memory,
            "keel_point": point,
        }
        names = {rule.validator for rule in rules}
        if names & (NEEDS_EMBEDDER - {"grounding"}):
            meta["keel_embedder"] = self.services.embedder()
        if "grounding" in names:
            meta["keel_support_embedder"] = self.services.support_embedder()
            meta["keel_passages"] = passages
            meta["keel_question"] = question
        if "injection" in names:
            meta["keel_injection"] = self.services.injection()
        if "off_topic" in names:
            scope = self.services.scope() if self.services.scope is not None else None
            if not scope:
                raise ConfigError(
                    f"guards.{point}.off_topic: the app has no description, system prompt "
                    "or knowledge to tell what is on topic"
                )
            meta["keel_scope"] = scope
        if "prompt_leak" in names:
            meta["keel_system_prompt"] = self.services.system_prompt()
            meta["keel_canary"] = self.services.canary
        return meta

    def run(
        self,
        rule: Rule,
        text: str,
        *,
        memory: dict[str, Any] | None = None,
        passages: list[str] | None = None,
        question: str = "",
    ) -> tuple[str | None, Decision]:
        """One rule on ``text``: ``(text to go on with or None when dropped/stopped,
        decision)``."""
        result, (decision,) = self.check(
            rule.point, text, memory=memory, passages=passages, rules=[rule], question=question
        )
        return result, decision

    def check(
        self,
        point: str,
        text: str,
        *,
        memory: dict[str, Any] | None = None,
        passages: list[str] | None = None,
        rules: Iterable[Rule] | None = None,
        question: str = "",
    ) -> tuple[str | None, list[Decision]]:
        """Run every rule of ``point`` (or ``rules``) on ``text`` in order, in one Guard: a
        fix hands the fixed text to the next rule, and the first rule that drops the text
        (exception, filter, refrain, reask) ends the run. ``(text to go on with or None,
        one decision per rule that ran)``."""
        from guardrails.errors import ValidationError

        chosen = tuple(rules if rules is not None else self.rules[point])
        if not chosen:
            return text, []
        meta = self._metadata(
            point, chosen, memory if memory is not None else {}, passages or [], question
        )
        stopped: ValidationError | None = None
        guard = self.guard(chosen)
        try:
            guard.validate(text, metadata=meta)
        except ValidationError as exc:
            stopped = exc  # by the trail's last rule
        finally:
            # guardrails-ai keeps each call (its text and metadata: a conversation's PII
            # placeholders and their values) in the Guard's history, ten deep, for as long as
            # the process lives; keel reads none of it (the trail is in ``meta``), so none is kept
            guard.history.clear()
        by_name = {rule.validator: rule for rule in chosen}
        decisions: list[Decision] = []
        current: str | None = text
        for ran in meta["keel_trail"]:
            rule = by_name[ran.validator]
            reason = "" if ran.passed else str(ran.result.error_message or "")
            decisions.append(
                Decision(
                    rule.validator,
                    point,
                    "pass" if ran.passed else "fail",
                    "none" if ran.passed else rule.action,
                    ran.latency_ms,
                    reason,
                    meta["keel_report"].get(rule.validator, {}),
                )
            )
            current = _after(rule.action, ran, current)
            if current is None:
                break
        if stopped is not None and current is not None:
            raise stopped  # not raised by a rule's on-fail action: guardrails-ai's own error
        return current, decisions

    # -- hook points ---------------------------------------------------------------------------
    def _trip(self, point: str, decision: Decision, message: str | None = None) -> GuardTripped:
        return GuardTripped(message or self.section.message, point=point, result=decision.event())

    def _stop_or_text(
        self, point: str, text: str, ctx: RunContext, passages: list[str] | None = None
    ) -> str:
        result, decisions = self.check(
            point, text, memory=ctx.memory, passages=passages, question=ctx.question
        )
        for d in decisions:
            ctx.record(**d.event())
        if result is None:
            failed = decisions[-1]
            if failed.action == "reask":
                raise GuardTripped(
                    failed.reason or "the answer failed a check",
                    point=point,
                    result=failed.event(),
                    reask=True,
                )
            message = REFUSAL if (failed.action == "refrain" and point == "output") else None
            raise self._trip(point, failed, message)
        return result

    def on_input(self, text: str, ctx: RunContext) -> str:
        return self._stop_or_text("input", text, ctx)

    def _context_check(self, text: str, ctx: RunContext) -> tuple[str | None, list[Decision]]:
        """The context rules on one retrieved chunk. When every rule is a pure function of the
        text (:data:`PURE_VALIDATORS`), the verdict on a chunk is kept (bounded, per process)
        and a chunk retrieved again costs no validation: its decisions come back with
        ``details.cached`` and the lookup's latency."""
        if not self._context_is_pure:
            return self.check("context", text, memory=ctx.memory)
        started = time.perf_counter()
        hit = text in self._verdicts
        result, decisions = self._verdict(text)
        if not hit:
            return result, list(decisions)
        latency = (time.perf_counter() - started) * 1000
        return result, [
            replace(d, latency_ms=latency, details={**d.details, "cached": True}) for d in decisions
        ]

    def _verdict(self, text: str) -> tuple[str | None, tuple[Decision, ...]]:
        with self._verdicts_lock:
            found = self._verdicts.get(text)
            if found is not None:
                self._verdicts.move_to_end(text)
                return found
        result, decisions = self.check("context", text, memory={})
        verdict = (result, tuple(decisions))
        with self._verdicts_lock:
            self._verdicts[text] = verdict
            while len(self._verdicts) > VERDICTS_KEPT:
                self._verdicts.popitem(last=False)
        return verdict

    def clear_verdicts(self) -> None:
        """Forget the kept context verdicts (the next sight of each chunk validates it)."""
        with self._verdicts_lock:
            self._verdicts.clear()

    def on_context(self, hits: list[Hit], ctx: RunContext) -> list[Hit]:
        kept: list[Hit] = []
        for hit in hits:
            result, decisions = self._context_check(hit.text, ctx)
            for d in decisions:
                ctx.record(**d.event(), chunk_id=hit.chunk_id)
            if result is None:
                ctx.record("context", "quarantine", "dropped", chunk_id=hit.chunk_id)
                continue
            kept.append(hit if result == hit.text else replace(hit, text=result))
        return kept

    def on_tool_args(self, call: ToolCall, ctx: RunContext) -> ToolCall | ToolOutcome:
        from keel.tools.policy import ToolCall, ToolOutcome

        rules = [r for r in self.rules["tool_args"] if r.applies_to(call, self.external)]
        if not rules:
            return call
        args = dict(call.args)
        for key, value in call.args.items():
            if not isinstance(value, str):
                continue
            result, decisions = self.check("tool_args", value, memory=ctx.memory, rules=rules)
            for d in decisions:
                ctx.record(**d.event(), tool=call.name, argument=key)
            if result is None:
                reason = decisions[-1].reason
                return ToolOutcome(
                    call=call,
                    status="refused",
                    content=f"The call to {call.name!r} was blocked by a guard: {reason}. "
                    "It did not run.",
                    error=f"guard {decisions[-1].validator}: {reason}",
                )
            args[key] = result
        return call if args == call.args else ToolCall(call.id, call.name, args)

    def on_tool_result(self, outcome: ToolOutcome, ctx: RunContext) -> ToolOutcome:
        if not self.rules["tool_result"] or not outcome.ok:
            return outcome
        result, decisions = self.check("tool_result", outcome.content, memory=ctx.memory)
        for d in decisions:
            ctx.record(**d.event(), tool=outcome.call.name)
        if result is None:
            return replace(
                outcome,
                content=f"[the result of {outcome.call.name!r} was withheld by a guard: "
                f"{decisions[-1].reason}]",
            )
        return outcome if result == outcome.content else replace(outcome, content=result)

    def on_output(self, text: str, ctx: RunContext) -> str:
        return self._stop_or_text("output", text, ctx, passages=[h.text for h in ctx.hits])

    def watch_answer(self, ctx: RunContext) -> SupportPrefetch | None:
        """What watches a generative model's answer as it is written, for the output
        grounding rule (unless its ``prefetch`` is off): a
        :class:`~keel.rag.support.SupportPrefetch` over the turn's passages. None when there
        is no such rule, or no passage."""
        from keel.rag.support import SupportPrefetch

        rule = next((r for r in self.rules["output"] if r.validator == "grounding"), None)
        if rule is None or not getattr(rule.options, "prefetch", False) or not ctx.hits:
            return None
        embedder = self.services.support_embedder()
        return SupportPrefetch(embedder, [h.text for h in ctx.hits], rule.options.min_words)

    def stream_guard(self, ctx: RunContext) -> StreamGuard:
        return StreamGuard(self, ctx)


class StreamGuard:
    """Validates a streamed answer incrementally, in sentence windows.

    :meth:`feed` takes each token and returns the text that may be shown now: complete
    sentences, released only after the output guards passed on the whole text so far. A
    violation stops the stream before the violating sentence is shown (:meth:`feed` raises
    :class:`GuardTripped` once, then returns nothing). A fix (a redaction) cannot be applied
    to text already shown, so at the output point a fix also stops the stream; the final
    answer carries the fixed text.
    """

    def __init__(self, runner: GuardRunner, ctx: RunContext) -> None:
        self.runner = runner
        self.ctx = ctx
        self.buffer = ""
        self.shown = 0
        self.tripped: GuardTripped | None = None

    def _release(self, end: int) -> str:
        if self.tripped is not None or end <= self.shown:
            return ""
        text = self.buffer[:end]
        passages = [h.text for h in self.ctx.hits]
        result, decisions = self.runner.check(
            "output",
            text,
            memory=dict(self.ctx.memory),
            passages=passages,
            question=self.ctx.question,
        )
        if result != text:
            failed = next(d for d in decisions if d.outcome == "fail")
            self.tripped = self.runner._trip("output", failed)
            raise self.tripped
        released, self.shown = self.buffer[self.shown : end], end
        return released

    def feed(self, token: str) -> str:
        if not self.runner.rules["output"]:
            return token
        self.buffer += token
        return self._release(_complete_prefix(self.buffer, self.shown))

    def flush(self) -> str:
        if not self.runner.rules["output"]:
            return ""
        return self._release(len(self.buffer))


def _after(action: str, ran: Ran, current: str | None) -> str | None:
    """The text after one rule ran (its :class:`~keel.guardrails.validators.Ran`): what the
    Guard handed on, which keel reads off the trail because guardrails-ai's outcome has no
    value when a ``noop`` failure sits beside a fix."""
    if ran.passed or action == "noop":
        return current
    if action == "fix":
        fixed = ran.result.fix_value
        return fixed if isinstance(fixed, str) else None
    return None  # exception, reask, filter, refrain: the text is dropped


def _complete_prefix(buffer: str, shown: int) -> int:
    """The end of the last complete sentence in ``buffer`` (after ``shown``)."""
    import re

    end = shown
    for match in re.finditer(r"[.!?…](?:\[\d{1,3}\])*[\"'”’)\]]*(?:\s+|$)", buffer[shown:]):
        if match.end() + shown < len(buffer):  # followed by more text: the sentence is over
            end = shown + match.end()
    return end


def structured_guard(model: type[Any]) -> Guard:
    """A guardrails-ai Guard that validates a model's JSON output against a pydantic model
    (``Guard.for_pydantic``): ``structured_guard(Ticket).parse(text)``."""
    quiet_guardrails()
    from guardrails import Guard

    guard = Guard.for_pydantic(model)
    guard.configure(allow_metrics_collection=False)
    quiet_guardrails()
    return guard
