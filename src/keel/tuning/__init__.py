"""Tuning: the loop's data turned into training material, and tuned artefacts.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.tuning.llm_data import (
        PreferencePair,
        SftExample,
        preference_pairs,
        rated_turns,
        sft_examples,
    )

_EXPORTS = {
    "PreferencePair": "keel.tuning.llm_data",
    "SftExample": "keel.tuning.llm_data",
    "preference_pairs": "keel.tuning.llm_data",
    "rated_turns": "keel.tuning.llm_data",
    "sft_examples": "keel.tuning.llm_data",
}
__all__ = [
    "PreferencePair",
    "SftExample",
    "preference_pairs",
    "rated_turns",
    "sft_examples",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
