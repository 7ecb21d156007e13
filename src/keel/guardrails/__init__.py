"""Guards at every boundary: keel's guardrails-ai validators, the runner that applies a
policy, ``structured_guard`` for typed model output, and ``check`` to try one validator on
texts.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.guardrails.checks import GuardCheck, check
    from keel.guardrails.events import GuardEvent
    from keel.guardrails.redaction import redact_text
    from keel.guardrails.runner import GuardRunner, structured_guard
    from keel.guardrails.validators import (
        VALIDATORS,
        GroundingValidator,
        InjectionValidator,
        JsonSchemaValidator,
        LengthValidator,
        OffTopicValidator,
        PiiValidator,
        PromptLeakValidator,
        SecretsValidator,
        TopicDenylistValidator,
    )

_EXPORTS = {
    "InjectionValidator": "keel.guardrails.validators",
    "PiiValidator": "keel.guardrails.validators",
    "SecretsValidator": "keel.guardrails.validators",
    "GroundingValidator": "keel.guardrails.validators",
    "PromptLeakValidator": "keel.guardrails.validators",
    "TopicDenylistValidator": "keel.guardrails.validators",
    "OffTopicValidator": "keel.guardrails.validators",
    "LengthValidator": "keel.guardrails.validators",
    "JsonSchemaValidator": "keel.guardrails.validators",
    "VALIDATORS": "keel.guardrails.validators",
    "GuardRunner": "keel.guardrails.runner",
    "structured_guard": "keel.guardrails.runner",
    "redact_text": "keel.guardrails.redaction",
    "check": "keel.guardrails.checks",
    "GuardCheck": "keel.guardrails.checks",
    "GuardEvent": "keel.guardrails.events",
}
__all__ = [
    "VALIDATORS",
    "GroundingValidator",
    "GuardCheck",
    "GuardEvent",
    "GuardRunner",
    "InjectionValidator",
    "JsonSchemaValidator",
    "LengthValidator",
    "OffTopicValidator",
    "PiiValidator",
    "PromptLeakValidator",
    "SecretsValidator",
    "TopicDenylistValidator",
    "check",
    "redact_text",
    "structured_guard",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
