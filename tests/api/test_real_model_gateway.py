"""The gateway and the CLI with a real model behind them (llama.cpp's server with SmolLM2,
the `llm_server` fixture): a streamed SSE answer with citations, the OpenAI-compatible route
streamed through the `openai` package, and a tool call by the real model that waits for a
person's approval over HTTP, then over the CLI (`keel ask` / `keel resume`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from keel.app import App
from keel.cli import cli
from keel.config import load_config
from keel.settings import Settings, get_settings

pytestmark = pytest.mark.llm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_bot"


@pytest.fixture
def bot_dir(tmp_path: Path, llm_model: dict[str, Any], save_note_tool: str) -> Path:
    """The support bot on the real model, with one tool that needs approval."""
    root = tmp_path / "support_bot"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".keel", "__pycache__"))
    (root / "notes_tool.py").write_text(save_note_tool, encoding="utf-8")
    toml = (root / "keel.toml").read_text()
    model = "\n".join(f"{k} = {json.dumps(v)}" for k, v in llm_model.items())
    toml = toml.replace('id = "keel:extractive"', model).replace(
        'enabled = ["tools:plan_price", "tools:open_ticket", "keel:calculator"]',
        'enabled = ["notes_tool:save_note"]',
    )
    # no guard policy: these tests are about the model's mechanics over HTTP and the CLI, and
    # the default input guards flag some ordinary requests to save a note (issue 17 measures
    # the detector); the default policy meets the real model in tests/agents/test_real_model.py
    toml = toml[: toml.index("[guards]")] + toml[toml.index("[ui]") :]
    (root / "keel.toml").write_text(toml)
    return root


@contextmanager
def _serving(bot_dir: Path, settings: Settings, serve: Any, **changes: Any) -> Iterator[Any]:
    config = load_config(bot_dir / "keel.toml")
    app = App(config.model_copy(update=changes), settings=settings)
    app.ingest()
    try:
        with serve(app) as srv:
            key, _ = srv.api.state.gateway.keys.create("client", ["chat"])
            yield srv, key
    finally:
        app.close()


@pytest.fixture
def served(bot_dir: Path, llm_settings: Settings, serve: Any) -> Iterator[tuple[Any, str]]:
    """The bot with its note tool (this small model calls a tool for nearly every question
    under tool_choice "auto")."""
    with _serving(bot_dir, llm_settings, serve) as pair:
        yield pair


@pytest.fixture
def served_without_tools(
    bot_dir: Path, llm_settings: Settings, serve: Any
) -> Iterator[tuple[Any, str]]:
    config = load_config(bot_dir / "keel.toml")
    tools = config.tools.model_copy(update={"enabled": []})
    with _serving(bot_dir, llm_settings, serve, tools=tools) as pair:
        yield pair


def _sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each server-sent event."""
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def test_sse_and_openai_streams_carry_a_real_models_answer(
    served_without_tools: tuple[Any, str],
) -> None:
    srv, key = served_without_tools
    root = srv.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"message": "How do I export my notes?", "stream": True}
    with httpx.stream(
        "POST", f"{root}/v1/chat", json=body, headers=headers, timeout=300
    ) as response:
        assert response.status_code == 200
        events = _sse(response)
    tokens = "".join(data.get("text", "") for name, data in events if name == "token")
    done = next((data for name, data in events if name == "done"), None)
    assert done is not None, [(name, data) for name, data in events if name != "token"]
    assert tokens.strip() and done["model"] == "openai:smollm2"
    cited = [data for name, data in events if name == "citation"]
    assert [c["chunk_id"] for c in cited] == [c["chunk_id"] for c in done["citations"]]

    import openai

    client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model="support-bot",
        messages=[{"role": "user", "content": "How do I turn on two-factor authentication?"}],
        stream=True,
        max_tokens=40,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish and finish[-1] in ("stop", "length")
    assert len({c.id for c in chunks}) == 1


def test_a_real_models_tool_call_is_approved_over_http(
    served: tuple[Any, str], bot_dir: Path
) -> None:
    srv, key = served
    root = srv.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"message": "Please save a note: the customer wants a call back tomorrow."}
    first = httpx.post(f"{root}/v1/chat", json=body, headers=headers, timeout=300).json()
    if first["stop_reason"] != "approval_required":
        pytest.skip(f"the model answered without calling the tool: {first['text'][:80]!r}")
    (call,) = first["pending_approval"]
    assert call["name"] == "save_note" and not (bot_dir / "notes.txt").exists()
    decision = {"decision": {call["id"]: {"action": "approve", "args_hash": call["args_hash"]}}}
    after = httpx.post(
        f"{root}/v1/threads/{first['thread_id']}/approvals",
        json=decision,
        headers=headers,
        timeout=300,
    )
    assert after.status_code == 200, after.text
    ran = [t for t in after.json()["tool_calls"] if t["id"] == call["id"]]
    assert ran and ran[0]["status"] == "ok"
    assert (bot_dir / "notes.txt").read_text().strip()


def test_a_real_models_tool_call_is_approved_over_the_cli(
    bot_dir: Path, llm_env: dict[str, str], model_cache_dir: Path
) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    mp.setenv("KEEL_DATA_DIR", str(bot_dir / ".keel"))
    get_settings.cache_clear()
    try:
        config = ["--config", str(bot_dir / "keel.toml")]
        question = "Please save a note: the customer wants a call back tomorrow."
        asked = CliRunner().invoke(cli, [*config, "ask", question, "--json"])
        assert asked.exit_code == 0, asked.output
        answer = json.loads(asked.stdout)
        if answer["stop_reason"] != "approval_required":
            pytest.skip(f"the model answered without calling the tool: {answer['text'][:80]!r}")
        assert not (bot_dir / "notes.txt").exists()
        resumed = CliRunner().invoke(
            cli, [*config, "resume", answer["thread_id"], "--approve", "--json"]
        )
        assert resumed.exit_code == 0, resumed.output
        assert (bot_dir / "notes.txt").read_text().strip()
    finally:
        mp.undo()
        get_settings.cache_clear()
