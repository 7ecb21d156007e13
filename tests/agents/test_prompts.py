from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.agents.prompts import load_prompts
from keel.errors import ConfigError


def test_prompts_render_with_versions_and_keep_braces(tmp_path: Path) -> None:
    system = tmp_path / "system.md"
    system.write_text('You help with {{app_name}}. Reply as JSON like {"answer": "..."}.')
    examples = tmp_path / "examples.yaml"
    examples.write_text("- question: Hi?\n  answer: Hello [1].\n")
    p = load_prompts(system, examples, {"app_name": "Nimbus"})
    assert p.system == 'You help with Nimbus. Reply as JSON like {"answer": "..."}.'
    assert [m.type for m in p.messages()] == ["system", "human", "ai"]
    v1 = p.versions
    system.write_text("You help with {{app_name}}, briefly.")
    assert load_prompts(system, examples, {"app_name": "Nimbus"}).versions["system"] != v1["system"]
    assert (
        load_prompts(system, examples, {"app_name": "Nimbus"}).versions["examples"]
        == v1["examples"]
    )


@pytest.mark.parametrize(
    ("system_text", "examples_text", "message"),
    [
        ("Hello {{nope}}", None, "unknown placeholder"),
        ("ok", "- question: only a question\n", "entry 1"),
        ("ok", "not: [a, list", "not valid YAML"),
    ],
)
def test_bad_prompt_files_are_config_errors(
    tmp_path: Path, system_text: str, examples_text: str | None, message: str
) -> None:
    system = tmp_path / "s.md"
    system.write_text(system_text)
    examples = None
    if examples_text is not None:
        examples = tmp_path / "e.yaml"
        examples.write_text(examples_text)
    with pytest.raises(ConfigError, match=message):
        load_prompts(system, examples, {"app_name": "x"})


def test_keel_threads_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path
) -> None:
    from keel.app import App
    from keel.cli import cli
    from keel.settings import Settings, get_settings
    from keel.testing import ScriptedChatModel

    (tmp_path / "keel.toml").write_text("[agent]\nretrieve = false\n")
    settings = Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir)
    app = App.from_config(
        tmp_path / "keel.toml", settings=settings, model=ScriptedChatModel(script=["hi"])
    )
    app.ask("hello", thread_id="kept")
    app.close()
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        listed = runner.invoke(cli, ["--config", str(tmp_path / "keel.toml"), "threads", "list"])
        assert "kept" in listed.stdout
        none = runner.invoke(cli, ["--config", str(tmp_path / "keel.toml"), "threads", "prune"])
        assert none.exit_code == 2  # no retention period configured
        pruned = runner.invoke(
            cli,
            [
                "--config",
                str(tmp_path / "keel.toml"),
                "threads",
                "prune",
                "--older-than-days",
                "0.000000001",
            ],
        )
        assert pruned.exit_code == 0 and "deleted 1" in pruned.stderr
    finally:
        get_settings.cache_clear()
