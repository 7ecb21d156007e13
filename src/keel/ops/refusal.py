"""Refusals: an answer that says it does not know (how keel's extractive model refuses).

Shared by evaluation (the refusal rate metric) and monitoring (the refusal rate drift).
"""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"^\W*(i\s+(don'?t|do\s+not)\s+know|i'?m\s+not\s+sure|i\s+am\s+not\s+sure|"
    r"i\s+(can'?t|cannot|could\s+not|couldn'?t)\s+(answer|find|help)|"
    r"i\s+(have|had)\s+no\s+information|sorry,\s+i\s+(don'?t|do\s+not)\s+know)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """An "I don't know" answer (keel's extractive model refuses this way)."""
    return bool(_REFUSAL.match(text.replace("\u2019", "'")))
