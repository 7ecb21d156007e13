"""Feedback becomes training data for tuning the language model elsewhere: supervised chat
examples and preference pairs, each as the model saw its prompt, with provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keel.agents.context import split_user_turn
from keel.app import App
from keel.cli import cli
from keel.ops.feedback import FeedbackStore
from keel.settings import Settings, get_settings
from keel.testing import ScriptedChatModel
from keel.tuning import preference_pairs, rated_turns, sft_examples


@pytest.fixture
def rated_app(tmp_path: Path, model_cache_dir: Path) -> dict[str, Any]:
    """An app with three rated turns: one good, one corrected, and the same question as the
    good one answered badly (same passages, so the same prompt)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "refunds.md").write_text("# Refunds\n\nRefunds take 30 days.\n")
    (tmp_path / "keel.toml").write_text('[app]\nname = "loop"\n[guards.output.prompt_leak]\n')
    settings = Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir)
    app = App.from_config(
        tmp_path / "keel.toml",
        settings=settings,
        model=ScriptedChatModel(
            script=["Refunds take 30 days [1].", "Ask support.", "No idea, sorry."]
        ),
    )
    app.ingest()
    good = app.ask("how long do refunds take?")
    corrected = app.ask("can I pay with bitcoin?")
    bad = app.ask("how long do refunds take?")
    app.tracing.flush()
    store = FeedbackStore(app.engine)
    store.add(good.trace_id, 1.0, key_id="k1")
    store.add(corrected.trace_id, 0.0, correction="We accept cards only.", key_id="k1")
    store.add(bad.trace_id, 0.0, key_id="k1")
    store.add("made-up-trace", 0.0, correction="orphan", key_id="k1")  # trace unknown
    ids = {"good": good.trace_id, "corrected": corrected.trace_id, "bad": bad.trace_id}
    return {"app": app, "ids": ids, "dir": tmp_path, "settings": settings}


def test_examples_and_pairs_show_the_prompt_the_model_saw(rated_app: dict[str, Any]) -> None:
    app: App = rated_app["app"]
    ids = rated_app["ids"]
    system = app.definition.authored_prompts.system
    assert "keel-canary" in app.prompts.system  # what the model gets carries the marker
    rated = rated_turns(app.engine, app.turn_record, system=system)
    app.close()
    assert len(rated) == 3  # the feedback on an unknown trace has no question to train on

    examples = sft_examples(rated)
    replies = {e.provenance["trace_id"]: e.messages[-1].content for e in examples}
    assert replies == {
        ids["good"]: "Refunds take 30 days [1].",
        ids["corrected"]: "We accept cards only.",
    }
    first = next(e for e in examples if e.provenance["trace_id"] == ids["good"])
    assert [m.role for m in first.messages] == ["system", "user", "assistant"]
    assert first.messages[0].content == system and "keel-canary" not in system
    question, passages = split_user_turn(first.messages[1].content)
    assert question == "how long do refunds take?"
    assert [p.source for p in passages] == ["docs/refunds.md"]
    assert "Refunds take 30 days." in passages[0].text
    assert first.provenance["target"] == "rated_answer"
    assert first.provenance["app_version"]  # lineage of the turn

    pairs = {(p.chosen, p.rejected): p for p in preference_pairs(rated)}
    assert set(pairs) == {
        ("We accept cards only.", "Ask support."),
        ("Refunds take 30 days [1].", "No idea, sorry."),
    }
    by_rating = pairs[("Refunds take 30 days [1].", "No idea, sorry.")]
    assert by_rating.provenance["kind"] == "rating"
    assert by_rating.provenance["chosen"]["trace_id"] == ids["good"]
    assert by_rating.provenance["rejected"]["trace_id"] == ids["bad"]
    assert pairs[("We accept cards only.", "Ask support.")].provenance["kind"] == "correction"


def test_keel_feedback_export_sft_and_dpo(
    rated_app: dict[str, Any], model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rated_app["app"].close()
    tmp_path: Path = rated_app["dir"]
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    get_settings.cache_clear()
    config = str(tmp_path / "keel.toml")
    runner = CliRunner()
    try:
        sft = runner.invoke(cli, ["--config", config, "feedback", "export", "--format", "sft"])
        assert sft.exit_code == 0, sft.output
        rows = [json.loads(line) for line in sft.stdout.splitlines()]
        assert len(rows) == 2 and "2 supervised examples exported" in sft.stderr
        for row in rows:
            assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
            assert "keel-canary" not in json.dumps(row)  # the prompt-leak marker is a secret
            assert row["provenance"]["source"] == "feedback"

        out = tmp_path / "dpo.jsonl"
        dpo = runner.invoke(
            cli,
            ["--config", config, "feedback", "export", "--format", "dpo", "--output", str(out)],
        )
        assert dpo.exit_code == 0, dpo.output
        pairs = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(pairs) == 2
        for pair in pairs:
            assert set(pair) == {"prompt", "chosen", "rejected", "provenance"}
            assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
            assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"

        refused = runner.invoke(
            cli,
            ["--config", config, "feedback", "export", "--format", "dpo", "--max-score", "0.5"],
        )
        assert refused.exit_code == 2 and "--max-score" in refused.stderr
        unknown = runner.invoke(cli, ["--config", config, "feedback", "export", "--format", "x"])
        assert unknown.exit_code == 2 and "unknown format 'x'" in unknown.stderr
    finally:
        get_settings.cache_clear()
