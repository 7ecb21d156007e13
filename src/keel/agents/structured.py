"""Structured output for one turn: a reply that must be a JSON object, or JSON that fits a
JSON Schema (the OpenAI-compatible routes' ``response_format`` / ``text.format``).

Where the model has structured output (``openai:*`` models, in the server's dialect:
:meth:`keel.agents.openai_model.KeelChatOpenAI.structured_kwargs`) the request asks for it;
every reply is also checked here, and one that does not fit is sent back once with the
reason (the graph's corrective retry). A reply that still does not fit ends the turn with
``stop_reason = "invalid_output"`` and the validation error, never as text that does not
parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from keel.errors import UsageError

CONFIG_KEY = "keel_response_format"


@dataclass(frozen=True)
class ResponseFormat:
    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = field(default=None, hash=False)
    name: str = "response"
    strict: bool = False

    def __post_init__(self) -> None:
        if self.kind == "json_schema":
            if not isinstance(self.schema, dict):
                raise UsageError("a json_schema response format needs a schema (an object)")
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(self.schema)
            except SchemaError as exc:
                raise UsageError(f"the schema is not a valid JSON Schema: {exc.message}") from None

    def instruction(self) -> str:
        """What the model is told (models without native structured output need it)."""
        if self.kind == "json_object":
            return "Reply with one JSON object only: no prose, no code fences."
        schema = json.dumps(self.schema, ensure_ascii=False, sort_keys=True)
        return (
            "Reply with one JSON value only (no prose, no code fences) that is valid against "
            f"this JSON Schema:\n{schema}"
        )

    def check(self, text: str) -> tuple[str, str | None]:
        """``(the reply as JSON text, None)`` when it fits, else ``(text, the reason)``.
        A reply wrapped in a Markdown code fence is unwrapped."""
        raw = _unfenced(text)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            return text, f"the reply is not JSON ({exc.msg} at line {exc.lineno})"
        if self.kind == "json_object":
            if not isinstance(value, dict):
                return text, "the reply is JSON but not an object"
            return raw, None
        from jsonschema import Draft202012Validator

        errors = sorted(
            Draft202012Validator(self.schema or {}).iter_errors(value), key=lambda e: e.path
        )
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(root)"
            return text, f"the reply does not fit the schema at {where}: {first.message}"[:500]
        return raw, None

    def provider_kwargs(self, model: Any) -> dict[str, Any]:
        """Per-call keyword arguments asking ``model`` for structured output (empty when it
        has none: the reply is still checked)."""
        dialect = getattr(model, "structured_output", "none")
        if self.kind == "json_schema":
            make = getattr(model, "structured_kwargs", None)
            return dict(make(self.schema, self.name)) if callable(make) else {}
        if dialect in ("json_schema", "json_object_schema"):
            return {"response_format": {"type": "json_object"}}
        return {}


def from_config(config: Any) -> ResponseFormat | None:
    found = config.get("configurable", {}).get(CONFIG_KEY)
    return found if isinstance(found, ResponseFormat) else None


def _unfenced(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and "\n" in stripped:
        return stripped[stripped.index("\n") + 1 : -3].strip()
    return stripped
