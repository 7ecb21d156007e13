"""Property-based tests of the gateway from its own OpenAPI schema (schemathesis, in
process, with a test key): no server error, and every response matches the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from keel.api import create_app
from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings
from keel.testing import ScriptedChatModel

_ROOT = Path(__file__).parent
_state: dict[str, Any] = {}


def _api() -> Any:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="keel-schemathesis-"))
    app = App(
        config_from_dict(
            {"agent": {"retrieve": False}, "limits": {"requests_per_minute": 100_000}},
            base_dir=base,
        ),
        settings=Settings(data_dir=base / ".keel"),
        model=ScriptedChatModel(script=[lambda messages: "ok"] * 100_000),
    )
    api = create_app(app)
    key, _ = api.state.gateway.keys.create("schemathesis", ["admin"])
    _state["key"] = key
    return api


schema = schemathesis.openapi.from_asgi("/openapi.json", _api())


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: Any) -> None:
    # Every check but "schema-valid data must be accepted": some rules are semantic, not in
    # the schema (a search filter's grammar, a thread that must exist), and answer 4xx.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {_state['key']}"},
        excluded_checks=[positive_data_acceptance],
    )


def test_the_schema_documents_bearer_auth() -> None:
    raw = schema.raw_schema
    assert raw["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert raw["paths"]["/v1/chat"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in raw["paths"]["/healthz"]["get"]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
