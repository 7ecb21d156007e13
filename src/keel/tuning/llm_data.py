"""Feedback as training data for tuning the language model elsewhere (SFT and DPO).

Keel does not fine-tune the language model itself; it hands the loop's data to whoever does.
Each rated turn is rebuilt as the conversation the model saw: the app's system prompt, then
the user turn with its retrieved passages rendered exactly as at answer time
(:func:`keel.agents.context.render_user_turn`), then an assistant reply.

* :func:`sft_examples`: one supervised example per rated turn that has a good reply: the
  rater's correction when there is one, else the model's own answer when it was rated well
  (score at or above :data:`~keel.ops.canary.NEGATIVE_BELOW`). Written in the chat format
  that OpenAI's fine-tuning and TRL's ``SFTTrainer`` read: ``{"messages": [...]}``.
* :func:`preference_pairs`: a chosen and a rejected reply to the same prompt: a correction
  against the answer it corrects, and a well-rated answer against a poorly rated one when two
  turns saw the same prompt (same question, same passages). Written in TRL's conversational
  preference format: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``.

Every record carries ``provenance`` (feedback ids, trace ids, app version, model, prompt
versions): where the example came from, for whoever audits the tuned model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine

from keel.ops.canary import NEGATIVE_BELOW
from keel.ops.feedback_export import TurnLookup, export_feedback

__all__ = [
    "ChatMessage",
    "PreferencePair",
    "SftExample",
    "preference_pairs",
    "rated_turns",
    "sft_examples",
]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class RatedTurn:
    """One feedback row joined to the turn it rates, with the prompt the model saw."""

    prompt: tuple[ChatMessage, ...]
    answer: str | None
    correction: str | None
    score: float
    provenance: Mapping[str, Any]


@dataclass(frozen=True)
class SftExample:
    messages: tuple[ChatMessage, ...]
    provenance: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages], "provenance": self.provenance}


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[ChatMessage, ...]
    chosen: str
    rejected: str
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": [m.to_dict() for m in self.prompt],
            "chosen": [ChatMessage("assistant", self.chosen).to_dict()],
            "rejected": [ChatMessage("assistant", self.rejected).to_dict()],
            "provenance": self.provenance,
        }


def _passages(turn: Mapping[str, Any] | None) -> list[Any]:
    from keel.rag.types import Hit

    hits = []
    for h in (turn or {}).get("hits") or []:
        hits.append(
            Hit(
                doc_id=str(h.get("doc_id") or ""),
                chunk_id=str(h.get("chunk_id") or ""),
                text=str(h.get("text") or ""),
                score=0.0,
                source=str(h.get("source") or h.get("doc_id") or ""),
                title=str(h.get("title") or ""),
                headings=tuple(h.get("headings") or ()),
            )
        )
    return hits


def rated_turns(engine: Engine, turns: TurnLookup, *, system: str | None) -> list[RatedTurn]:
    """Every feedback row whose turn is still known, oldest first, as the model saw it.

    Rows whose trace is gone (retention, erasure) have no question to train on and are left
    out; ``system`` is the app's system prompt (``None``: no system message)."""
    from keel.agents.context import render_user_turn

    seen: dict[str, Mapping[str, Any] | None] = {}

    def lookup(trace_id: str) -> Mapping[str, Any] | None:
        seen[trace_id] = turns(trace_id)
        return seen[trace_id]

    out = []
    for case in export_feedback(engine, turns=lookup):
        question = case.get("input")
        if not question:
            continue
        user = render_user_turn(str(question), _passages(seen.get(str(case["trace_id"]))))
        prompt = (ChatMessage("system", system),) if system else ()
        provenance = dict(case["provenance"])
        if case.get("thread_id"):
            provenance["thread_id"] = case["thread_id"]
        out.append(
            RatedTurn(
                prompt=(*prompt, ChatMessage("user", user)),
                answer=case.get("answer") or None,
                correction=case.get("correction") or None,
                score=float(case["score"]),
                provenance=provenance,
            )
        )
    return out


def sft_examples(turns: Iterable[RatedTurn]) -> list[SftExample]:
    """One example per turn with a good reply: its correction, else a well-rated answer."""
    out = []
    for t in turns:
        reply = t.correction or (t.answer if t.score >= NEGATIVE_BELOW else None)
        if reply:
            target = "correction" if t.correction else "rated_answer"
            out.append(
                SftExample(
                    (*t.prompt, ChatMessage("assistant", reply)),
                    {**t.provenance, "target": target},
                )
            )
    return out


def preference_pairs(turns: Sequence[RatedTurn]) -> list[PreferencePair]:
    """Corrections against the answers they correct, then well-rated against poorly rated
    answers to the same prompt; each distinct (prompt, chosen, rejected) once."""
    pairs: dict[tuple[Any, ...], PreferencePair] = {}

    def add(prompt: tuple[ChatMessage, ...], chosen: RatedTurn, rejected: RatedTurn) -> None:
        good = chosen.correction or chosen.answer
        bad = rejected.answer
        if not good or not bad or good.strip() == bad.strip():
            return
        key = (prompt, good, bad)
        if key not in pairs:
            provenance = {
                "chosen": {**chosen.provenance, "score": chosen.score},
                "rejected": {**rejected.provenance, "score": rejected.score},
                "kind": "correction" if chosen is rejected else "rating",
            }
            pairs[key] = PreferencePair(prompt, good, bad, provenance)

    for t in turns:
        if t.correction:
            add(t.prompt, t, t)
    by_prompt: dict[tuple[ChatMessage, ...], list[RatedTurn]] = {}
    for t in turns:
        by_prompt.setdefault(t.prompt, []).append(t)
    for prompt, group in by_prompt.items():
        good = [t for t in group if t.score >= NEGATIVE_BELOW and t.answer]
        bad = [t for t in group if t.score < NEGATIVE_BELOW and t.answer]
        for chosen in good:
            for rejected in bad:
                add(prompt, chosen, rejected)
    return list(pairs.values())
