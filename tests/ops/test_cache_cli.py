"""`keel cache stats` and `keel cache clear`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.app import App
from keel.cli import cli
from keel.settings import get_settings
from keel.testing import ScriptedChatModel


@pytest.fixture
def app_dir(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    (tmp_path / "keel.toml").write_text(
        '[app]\nname = "cli-cache"\n[cache]\nenabled = true\n', encoding="utf-8"
    )
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_stats_and_clear(app_dir: Path) -> None:
    app = App.from_config(app_dir, model=ScriptedChatModel(script=["a", "b"]))
    app.ask("How do I reset my password?", owner="key-1")
    app.ask("How do I export my notes?")
    app.close()

    runner = CliRunner()
    cfg = ["--config", str(app_dir / "keel.toml")]
    stats = runner.invoke(cli, [*cfg, "cache", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    data = json.loads(stats.stdout)
    assert data["enabled"] is True and data["entries"] == 2
    assert {p["key_id"] for p in data["partitions"]} == {"key-1", None}
    human = runner.invoke(cli, [*cfg, "cache", "stats"])
    assert "cache on: 2 entries" in human.stdout

    assert runner.invoke(cli, [*cfg, "cache", "clear", "--expired"]).exit_code == 0
    assert runner.invoke(cli, [*cfg, "cache", "clear", "--key", "key-1"]).exit_code == 0
    data = json.loads(runner.invoke(cli, [*cfg, "cache", "stats", "--json"]).stdout)
    assert data["entries"] == 1
    assert runner.invoke(cli, [*cfg, "cache", "clear"]).exit_code == 0
    data = json.loads(runner.invoke(cli, [*cfg, "cache", "stats", "--json"]).stdout)
    assert data["entries"] == 0

    both = runner.invoke(cli, [*cfg, "cache", "clear", "--expired", "--key", "k"])
    assert both.exit_code == 2
