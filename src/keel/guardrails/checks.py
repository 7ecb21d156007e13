"""Trying one validator on texts, outside any app: what ``keel guard check`` runs.

:func:`check` builds the validator as an input guard that records and changes nothing
(``on_fail = "noop"`` unless the options say otherwise) and runs it on each text, giving one
verdict per non-blank text: outcome, reason, latency, and what the validator found (a score,
the spans it flagged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keel.config import GuardsSection
from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.rag.embeddings import Embedder


@dataclass(frozen=True)
class GuardVerdict:
    """One text's verdict."""

    line: int
    """The text's number, from 1 (blank texts are counted, not checked)."""
    text: str
    outcome: str
    """``"pass"`` or ``"fail"``."""
    reason: str
    latency_ms: float
    details: dict[str, Any] = field(default_factory=dict)
    """What the validator reports: e.g. ``score``, ``spans`` (``type``, ``start``, ``end``)."""

    @property
    def flagged(self) -> bool:
        return self.outcome == "fail"

    def to_dict(self) -> dict[str, Any]:
        """One line of ``keel guard check --json`` (the text itself is left out)."""
        return {
            "line": self.line,
            "outcome": self.outcome,
            "reason": self.reason,
            "latency_ms": round(self.latency_ms, 3),
            **self.details,
        }


@dataclass(frozen=True)
class GuardCheck:
    """Every verdict of one validator on the texts."""

    validator: str
    options: dict[str, Any]
    verdicts: list[GuardVerdict]

    @property
    def checked(self) -> int:
        return len(self.verdicts)

    @property
    def flagged(self) -> int:
        return sum(1 for v in self.verdicts if v.flagged)


def _default_embedder(*, support: bool = False) -> Callable[[], Embedder]:
    """The bundled model from the settings; ``support``: as an app's default support encoder
    (``rag.embeddings.support = "auto"``: its int8 copy when ONNX is installed)."""
    built: list[Embedder] = []

    def embedder() -> Embedder:
        if not built:
            from keel.rag.embeddings import Embedder, onnx_available
            from keel.settings import get_settings

            quantized = support and onnx_available()
            built.append(Embedder(cache_dir=get_settings().cache_dir, quantized=quantized))
        return built[0]

    return embedder


def check(
    validator: str,
    texts: str | Sequence[str],
    *,
    options: Mapping[str, Any] | None = None,
    passages: Sequence[str] = (),
    embedder: Callable[[], Embedder] | None = None,
    on_verdict: Callable[[GuardVerdict], None] | None = None,
) -> GuardCheck:
    """Run the validator ``validator`` (a name in ``VALIDATORS``) with ``options`` on each of
    ``texts`` (a string is split into lines); blank texts are skipped. ``passages`` are the
    grounding context (the ``grounding`` validator). ``embedder`` gives the embedding model
    the validators that need one use (default: built on first use, from the settings, and
    for grounding the int8 support encoder a new app scores with).
    ``on_verdict`` is called with each verdict as soon as it is known."""
    from keel.guardrails.runner import GuardRunner, Services
    from keel.guardrails.validators import VALIDATORS

    if validator not in VALIDATORS:
        raise UsageError(f"unknown validator {validator!r} (known: {', '.join(VALIDATORS)})")
    if validator == "grounding" and (options or {}).get("prefetch"):
        raise UsageError(
            "grounding's prefetch watches a model writing its answer; a check of given texts "
            "has none to watch"
        )
    merged: dict[str, Any] = {"on_fail": "noop", **(options or {})}
    lines = texts.splitlines() if isinstance(texts, str) else list(texts)
    runner = GuardRunner(
        GuardsSection(input={validator: merged}),
        Services(embedder, support=embedder)
        if embedder is not None
        else Services(_default_embedder(), support=_default_embedder(support=True)),
    )
    (rule,) = runner.rules["input"]
    context = list(passages)
    verdicts: list[GuardVerdict] = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        _, decision = runner.run(rule, text, passages=context)
        verdict = GuardVerdict(
            line=n,
            text=text,
            outcome=decision.outcome,
            reason=decision.reason,
            latency_ms=decision.latency_ms,
            details=dict(decision.details),
        )
        verdicts.append(verdict)
        if on_verdict is not None:
            on_verdict(verdict)
    return GuardCheck(validator, merged, verdicts)


__all__ = ["GuardCheck", "GuardVerdict", "check"]
