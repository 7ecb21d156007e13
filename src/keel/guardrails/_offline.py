"""Import guardrails-ai without it reaching the network.

``import guardrails`` checks for NLTK's punkt tokenizer when NLTK is installed (it is, through
the evaluation dependencies) and downloads it when missing. Keel never uses guardrails-ai's
NLTK sentence splitting, so during that import NLTK's downloader is replaced by one that
refuses; everything else about NLTK is left alone.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from keel.settings import offline_defaults


def _refuse(*args: Any, **kwargs: Any) -> bool:
    return False


def import_guardrails() -> None:
    """Import ``guardrails`` once, offline; a no-op when it is already imported."""
    offline_defaults()
    if "guardrails" in sys.modules:
        return
    if importlib.util.find_spec("nltk") is None:
        import guardrails

        return
    import nltk

    real = nltk.download
    nltk.download = _refuse
    try:
        import guardrails  # noqa: F401
    finally:
        nltk.download = real
