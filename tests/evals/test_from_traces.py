"""Stored traces and negative feedback become evaluation cases (with provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.app import App
from keel.cli import cli
from keel.evals.datasets import load_dataset
from keel.ops.feedback import FeedbackStore
from keel.settings import Settings, get_settings
from keel.testing import ScriptedChatModel


def test_from_traces_and_from_feedback(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "refunds.md").write_text("# Refunds\n\nRefunds take 30 days.\n")
    (tmp_path / "keel.toml").write_text('[app]\nname = "loop"\n')
    settings = Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir)
    app = App.from_config(
        tmp_path / "keel.toml",
        settings=settings,
        model=ScriptedChatModel(script=["Refunds take 30 days [1].", "Ask support."]),
    )
    app.ingest()
    good = app.ask("how long do refunds take?")
    bad = app.ask("can I pay with bitcoin?")
    app.tracing.flush()
    store = FeedbackStore(app.engine)
    store.add(good.trace_id, 1.0)
    store.add(bad.trace_id, 0.0, comment="wrong", correction="We accept cards only.")
    app.close()

    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        config = str(tmp_path / "keel.toml")
        out = tmp_path / "evals" / "from_traces.jsonl"
        r = runner.invoke(cli, ["--config", config, "evals", "from-traces", "--output", str(out)])
        assert r.exit_code == 0, r.output
        cases = {c.input: c for c in load_dataset(out).cases}
        refund = cases["how long do refunds take?"]
        assert refund.reference == "Refunds take 30 days [1]."
        assert refund.reference_doc_ids == ["docs/refunds.md"]
        assert refund.provenance["source"] == "trace"
        again = runner.invoke(
            cli, ["--config", config, "evals", "from-traces", "--output", str(out)]
        )
        assert "0 case(s)" in again.stderr  # nothing appended twice

        fb = tmp_path / "evals" / "feedback.jsonl"
        r = runner.invoke(cli, ["--config", config, "evals", "from-feedback", "--output", str(fb)])
        assert r.exit_code == 0, r.output
        (case,) = load_dataset(fb).cases
        assert case.input == "can I pay with bitcoin?"
        assert case.reference == "We accept cards only."
        assert case.provenance["source"] == "feedback"

        exported = runner.invoke(
            cli, ["--config", config, "feedback", "export", "--max-score", "0.5"]
        )
        rows = [json.loads(line) for line in exported.stdout.splitlines()]
        assert [r["trace_id"] for r in rows] == [bad.trace_id]
        assert rows[0]["answer"] == "Ask support."
    finally:
        get_settings.cache_clear()
