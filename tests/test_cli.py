"""The `keel` command line, run as a user runs it (typer's CliRunner, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import cli
from keel.settings import get_settings


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path) -> CliRunner:
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.delenv("KEEL_DATA_DIR", raising=False)
    monkeypatch.delenv("KEEL_CONFIG", raising=False)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_init_ingest_search_version(runner: CliRunner, tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    result = runner.invoke(cli, ["init", str(demo)])
    assert result.exit_code == 0, result.output
    config = str(demo / "keel.toml")

    result = runner.invoke(cli, ["--config", config, "ingest", str(demo / "docs"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] >= 4 and report["skipped"] == 0 and report["index_version"]

    result = runner.invoke(cli, ["--config", config, "ingest", "--json"])
    assert json.loads(result.stdout)["unchanged"] == report["added"]

    # CLI paths are relative to the current directory, as in any command line tool
    result = runner.invoke(cli, ["--config", config, "ingest", str(demo / "docs"), "--json"])
    assert json.loads(result.stdout)["unchanged"] == report["added"]

    result = runner.invoke(
        cli, ["--config", config, "search", "which file formats can I add?", "--k", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    assert {"doc_id", "chunk_id", "score", "source", "text"} <= set(hits[0])
    assert hits[0]["doc_id"] == "docs/adding-documents.md"

    result = runner.invoke(cli, ["--config", config, "search", "which file formats?"])
    assert result.exit_code == 0 and "docs/adding-documents.md" in result.stdout

    result = runner.invoke(cli, ["--config", config, "version", "--json"])
    info = json.loads(result.stdout)
    assert info["index_version"] == report["index_version"] and len(info["app_version"]) == 16


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "{missing}", "search", "x"],
        ["--config", "{config}", "ingest", "/etc"],
        ["--config", "{config}", "search", "x", "--k", "0"],
        ["--config", "{config}", "search", "x", "--mode", "fuzzy"],
        ["--config", "{config}", "search", "x", "--where", "{not json"],
        ["--config", "{config}", "search", "x", "--collection", "a"],
        ["--config", "{config}", "search", "   "],
        ["init", "{existing}"],
        ["no-such-command"],
    ],
)
def test_bad_input_exits_2_with_one_line(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    existing = tmp_path / "app"
    runner.invoke(cli, ["init", str(existing)])
    values = {
        "missing": str(tmp_path / "nope.toml"),
        "config": str(existing / "keel.toml"),
        "existing": str(existing),
    }
    for key, value in values.items():
        args = [a.replace("{" + key + "}", value) for a in args]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_keel_error_message_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["--config", str(tmp_path / "nope.toml"), "search", "x"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")


def test_keys_create_with_labels_and_bad_labels(runner: CliRunner, tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert runner.invoke(cli, ["init", str(demo)]).exit_code == 0
    config = str(demo / "keel.toml")
    made = runner.invoke(
        cli,
        ["--config", config, "keys", "create", "--name", "acme", "--labels", "tenant-acme,staff"],
    )
    assert made.exit_code == 0, made.output
    listed = runner.invoke(cli, ["--config", config, "keys", "list", "--json"])
    (key,) = json.loads(listed.stdout)
    assert key["labels"] == ["staff", "tenant-acme"] and key["revoked_at"] is None
    plain = runner.invoke(cli, ["--config", config, "keys", "list"])
    assert "labels=staff,tenant-acme" in plain.stdout
    bad = runner.invoke(
        cli,
        ["--config", config, "keys", "create", "--name", "acme", "--replace", "--labels", "a b"],
    )
    assert bad.exit_code == 2 and "invalid label 'a b'" in bad.output
    assert "Traceback" not in bad.output
    (still,) = json.loads(runner.invoke(cli, ["--config", config, "keys", "list", "--json"]).stdout)
    assert still["revoked_at"] is None  # refused before the old key was revoked
