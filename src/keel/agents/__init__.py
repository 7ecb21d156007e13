"""The agent: models (the embedded one and real providers), prompts, the graph, answers.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.agents.answer import Answer
    from keel.agents.graph import REFUSAL_TEXT
    from keel.agents.models import ModelAttempt, ModelChain
    from keel.agents.params import ModelParams

_EXPORTS = {
    "Answer": "keel.agents.answer",
    "ModelParams": "keel.agents.params",
    "ModelAttempt": "keel.agents.models",
    "ModelChain": "keel.agents.models",
    "REFUSAL_TEXT": "keel.agents.graph",
}
__all__ = [
    "REFUSAL_TEXT",
    "Answer",
    "ModelAttempt",
    "ModelChain",
    "ModelParams",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
