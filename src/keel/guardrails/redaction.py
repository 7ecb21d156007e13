"""One redaction of PII and secrets in a text, for what Keel keeps (spans, exports).

The same detectors and the same overlap rule (:func:`keel.guardrails.spans.resolve_overlaps`:
higher score, then the longer span) as the ``pii`` guard's fix, so a trace never shows a text
redacted differently from the answer the guard produced.
"""

from __future__ import annotations

__all__ = ["redact_text"]


def redact_text(text: str) -> str:
    """``text`` with its PII and secrets replaced by placeholders (``<EMAIL_ADDRESS_1>``)."""
    from keel.guardrails.pii import Redactor, detect_pii
    from keel.guardrails.secrets import detect_secrets

    spans = detect_pii(text) + detect_secrets(text)
    return Redactor().redact(text, spans) if spans else text
