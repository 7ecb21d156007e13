"""The agent: models (the embedded one and real providers), prompts, the graph, answers.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.agents.answer import Answer
    from keel.agents.events import (
        ApprovalRequired,
        CitationFound,
        Done,
        Guardrail,
        StreamEvent,
        Token,
        ToolCallDelta,
        ToolCallDone,
    )
    from keel.agents.graph import REFUSAL_TEXT
    from keel.agents.models import ModelAttempt, ModelChain
    from keel.agents.params import ModelParams
    from keel.agents.turn import TurnRequest, TurnRunner

_EXPORTS = {
    "Answer": "keel.agents.answer",
    "ModelParams": "keel.agents.params",
    "ModelAttempt": "keel.agents.models",
    "ModelChain": "keel.agents.models",
    "REFUSAL_TEXT": "keel.agents.graph",
    "ApprovalRequired": "keel.agents.events",
    "CitationFound": "keel.agents.events",
    "Done": "keel.agents.events",
    "Guardrail": "keel.agents.events",
    "StreamEvent": "keel.agents.events",
    "Token": "keel.agents.events",
    "ToolCallDelta": "keel.agents.events",
    "ToolCallDone": "keel.agents.events",
    "TurnRequest": "keel.agents.turn",
    "TurnRunner": "keel.agents.turn",
}
__all__ = [
    "REFUSAL_TEXT",
    "Answer",
    "ApprovalRequired",
    "CitationFound",
    "Done",
    "Guardrail",
    "ModelAttempt",
    "ModelChain",
    "ModelParams",
    "StreamEvent",
    "Token",
    "ToolCallDelta",
    "ToolCallDone",
    "TurnRequest",
    "TurnRunner",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
