"""Operations: releases and canary, drift, the semantic cache, metrics, tracing, cost.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.ops.cache import SemanticCache
    from keel.ops.drift import DriftReport, detect_drift
    from keel.ops.metrics import Metrics
    from keel.ops.refusal import is_refusal
    from keel.ops.releases import (
        CreatedRelease,
        Release,
        ReleaseStore,
        create_release,
        diff_content,
    )

_EXPORTS = {
    "Release": "keel.ops.releases",
    "ReleaseStore": "keel.ops.releases",
    "diff_content": "keel.ops.releases",
    "create_release": "keel.ops.releases",
    "CreatedRelease": "keel.ops.releases",
    "DriftReport": "keel.ops.drift",
    "detect_drift": "keel.ops.drift",
    "SemanticCache": "keel.ops.cache",
    "Metrics": "keel.ops.metrics",
    "is_refusal": "keel.ops.refusal",
}
__all__ = [
    "CreatedRelease",
    "DriftReport",
    "Metrics",
    "Release",
    "ReleaseStore",
    "SemanticCache",
    "create_release",
    "detect_drift",
    "diff_content",
    "is_refusal",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
