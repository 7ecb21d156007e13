"""`keel ask`, `keel chat`, `keel resume` and `keel tools list` on the support bot example."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import cli
from keel.settings import get_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support_bot"


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[str]:
    """A copy of the example (its tools write tickets beside keel.toml), ingested once."""
    root = tmp_path_factory.mktemp("bot") / "support_bot"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".keel", "__pycache__"))
    mp = pytest.MonkeyPatch()
    mp.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    mp.delenv("KEEL_DATA_DIR", raising=False)
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["--config", str(root / "keel.toml"), "ingest"])
    assert result.exit_code == 0, result.output
    yield str(root / "keel.toml")
    mp.undo()
    get_settings.cache_clear()


def test_ask_answers_with_citations_offline(bot: str) -> None:
    result = CliRunner().invoke(
        cli, ["--config", bot, "ask", "How do I turn on two-factor authentication?", "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert "Two-factor authentication" in answer["text"] and "[1]" in answer["text"]
    assert answer["citations"][0]["doc_id"] == "docs/account-security.md"
    assert answer["model"] == "keel:extractive" and answer["usage"]["total_tokens"] > 0

    result = CliRunner().invoke(cli, ["--config", bot, "ask", "Who won the 1998 world cup?"])
    assert result.exit_code == 0 and "I don't know" in result.stdout


def test_ask_continues_a_thread_and_uses_a_read_only_tool(bot: str) -> None:
    runner = CliRunner()
    first = runner.invoke(
        cli,
        ["--config", bot, "ask", "how much does the business plan cost for 12 seats?", "--json"],
    )
    answer = json.loads(first.stdout)
    assert answer["tool_calls"][0]["name"] == "plan_price"
    assert answer["tool_calls"][0]["content"] == "180.0"  # 12 seats x $15 (docs/pricing.md)
    again = runner.invoke(
        cli,
        [
            "--config",
            bot,
            "ask",
            "and what is 180 * 12?",
            "--thread",
            answer["thread_id"],
            "--json",
        ],
    )
    assert json.loads(again.stdout)["thread_id"] == answer["thread_id"]


def test_write_tool_waits_for_approval_then_resume(bot: str) -> None:
    runner = CliRunner()
    question = 'open a support ticket for ada@example.com: "sync is broken on my laptop"'
    paused = json.loads(runner.invoke(cli, ["--config", bot, "ask", question, "--json"]).stdout)
    assert paused["stop_reason"] == "approval_required"
    (call,) = paused["pending_approval"]
    assert call["name"] == "open_ticket"
    assert call["args"] == {"email": "ada@example.com", "summary": "sync is broken on my laptop"}
    tickets = Path(bot).parent / ".keel" / "tickets.jsonl"
    assert not tickets.exists()

    refused = runner.invoke(cli, ["--config", bot, "ask", question, "--scopes", "chat", "--json"])
    assert json.loads(refused.stdout)["pending_approval"] is None  # no tickets:write scope

    done = runner.invoke(cli, ["--config", bot, "resume", paused["thread_id"], "--approve"])
    assert done.exit_code == 0, done.output
    assert "Ticket T-" in done.stdout
    assert json.loads(tickets.read_text())["email"] == "ada@example.com"
    again = runner.invoke(cli, ["--config", bot, "resume", paused["thread_id"], "--approve"])
    assert again.exit_code == 2 and "no call waiting" in again.stderr


def test_chat_streams_and_asks_for_approval(bot: str) -> None:
    lines = [
        "What is the Business plan's uptime SLA?",
        'open a support ticket for bob@example.com: "sync is broken on my phone"',
        "n",  # reject
        "",
    ]
    result = CliRunner().invoke(cli, ["--config", bot, "chat"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert "99.9%" in result.stdout
    assert "approve open_ticket(" in result.stdout
    assert "rejected" in result.stdout.lower() or "did not run" in result.stdout.lower()


def test_tools_list(bot: str) -> None:
    result = CliRunner().invoke(cli, ["--config", bot, "tools", "list", "--json"])
    tools = {t["name"]: t for t in json.loads(result.stdout)}
    assert set(tools) == {"plan_price", "open_ticket", "calculator"}
    assert (
        tools["open_ticket"]["requires_approval"]
        and tools["open_ticket"]["side_effects"] == "write"
    )
    assert tools["plan_price"]["parameters"]["properties"]["plan"]["enum"] == [
        "free",
        "plus",
        "business",
    ]
