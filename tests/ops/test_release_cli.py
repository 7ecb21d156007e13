"""`keel release` and `keel monitor drift` on a small app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keel.cli import cli
from keel.settings import get_settings


@pytest.fixture
def bot(ingested_bot: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEEL_GIT_COMMIT", "abc123")
    get_settings.cache_clear()
    return ingested_bot


def test_release_create_gate_deploy_diff_promote_rollback(bot: Path) -> None:
    runner = CliRunner()
    cfg = ["--config", str(bot / "keel.toml")]
    suite = str(bot / "evals" / "support.yaml")
    first = runner.invoke(
        cli, [*cfg, "release", "create", "--gate", suite, "--json", "--note", "v1"]
    )
    assert first.exit_code == 0, first.output
    r1 = json.loads(first.stdout)
    assert r1["deployable"] and r1["gate"]["passed"] and r1["git_commit"] == "abc123"
    again = json.loads(runner.invoke(cli, [*cfg, "release", "create", "--json"]).stdout)
    assert again["id"] == r1["id"]  # content-addressed: nothing changed, same release
    tuned = runner.invoke(cli, [*cfg, "release", "create", "-q", "--llm-adapter", "lora-v3"])
    assert tuned.exit_code == 0, tuned.output
    adapter_release = tuned.stdout.strip()
    assert adapter_release != r1["id"]  # the adapter is part of what was released
    shown = json.loads(runner.invoke(cli, [*cfg, "release", "show", adapter_release]).stdout)
    assert shown["content"]["llm_adapter"] == "lora-v3"
    blank = runner.invoke(cli, [*cfg, "release", "create", "--llm-adapter", " "])
    assert blank.exit_code == 2 and "llm adapter id" in blank.stderr

    (bot / "prompts" / "system.md").write_text("You answer briefly from the docs [n].\n")
    r2 = json.loads(runner.invoke(cli, [*cfg, "release", "create", "--json"]).stdout)
    assert r2["id"] != r1["id"]
    diff = json.loads(
        runner.invoke(cli, [*cfg, "release", "diff", r1["id"], r2["id"], "--json"]).stdout
    )
    assert [c["path"] for c in diff] == ["prompts.system"] and "briefly" in diff[0]["patch"]

    assert runner.invoke(cli, [*cfg, "release", "deploy", r1["id"]]).exit_code == 0
    assert (
        runner.invoke(cli, [*cfg, "release", "deploy", r2["id"], "--canary", "0.1"]).exit_code == 0
    )
    listed = json.loads(runner.invoke(cli, [*cfg, "release", "list", "--json"]).stdout)
    assert listed["state"] == {"stable": r1["id"], "canary": r2["id"], "weight": 0.1}
    assert runner.invoke(cli, [*cfg, "release", "rollback", "--reason", "worse"]).exit_code == 0
    listed = json.loads(runner.invoke(cli, [*cfg, "release", "list", "--json"]).stdout)
    assert listed["state"]["canary"] is None and listed["state"]["stable"] == r1["id"]
    bad = runner.invoke(cli, [*cfg, "release", "deploy", "rel-nope"])
    assert bad.exit_code == 2

    # A worse release (retrieval off) is gated against the stable release's own gate run.
    toml = bot / "keel.toml"
    toml.write_text(toml.read_text() + "\n[agent]\nretrieve = false\n")
    worse = runner.invoke(cli, [*cfg, "release", "create", "--gate", suite, "--json"])
    assert worse.exit_code == 0, worse.output
    r3 = json.loads(worse.stdout)
    assert not r3["deployable"] and r3["gate"]["baseline"] == f"release {r1['id']}"
    assert r3["gate"]["reasons"] and "run" not in r3["gate"]
    refused = runner.invoke(cli, [*cfg, "release", "deploy", r3["id"], "--canary", "0.1"])
    assert refused.exit_code == 2 and "not deployable" in refused.output


def test_monitor_drift_quiet_on_evaluated_questions_alerts_on_others(bot: Path) -> None:
    runner = CliRunner()
    cfg = ["--config", str(bot / "keel.toml")]
    cases = [json.loads(line) for line in (bot / "evals" / "cases.jsonl").read_text().splitlines()]
    reference = bot / "evals" / "cases.jsonl"
    too_few = runner.invoke(cli, [*cfg, "monitor", "drift", "--reference", str(reference)])
    assert too_few.exit_code == 2
    for case in cases:  # production traffic like what was evaluated
        assert runner.invoke(cli, [*cfg, "ask", case["input"]]).exit_code == 0
    quiet = runner.invoke(cli, [*cfg, "monitor", "drift", "--reference", str(reference), "--json"])
    assert quiet.exit_code == 0, quiet.output
    off_topic = [
        "What is the boiling point of tungsten?",
        "Who painted the Sistine Chapel ceiling?",
        "How many moons does Jupiter have?",
        "Explain photosynthesis in simple words.",
        "What is the capital of Mongolia?",
        "How do I bake sourdough bread?",
        "Which river is the longest in Africa?",
        "What causes the northern lights?",
        "How fast can a cheetah run?",
        "When did the Roman empire fall?",
        "What is quantum entanglement?",
        "How do vaccines train the immune system?",
    ]
    for question in off_topic:
        runner.invoke(cli, [*cfg, "ask", question])
    drifted = runner.invoke(
        cli, [*cfg, "monitor", "drift", "--reference", str(reference), "--window", "12", "--json"]
    )
    assert drifted.exit_code == 1, drifted.output
    assert json.loads(drifted.stdout)["alert"] is True
    # the production window before the current one as the reference: the same shift
    windows = runner.invoke(
        cli, [*cfg, "monitor", "drift", "--reference-window", "--window", "12", "--json"]
    )
    assert windows.exit_code == 1, windows.output
    report = json.loads(windows.stdout)
    assert report["refusal_rate_change"] is not None and report["top_score_ks"] is not None
    recent = runner.invoke(
        cli, [*cfg, "monitor", "drift", "--reference", str(reference), "--window", "1h"]
    )
    assert recent.exit_code == 1  # the last hour holds both kinds of questions
    for bad in (["--reference-window", "--window", "5"], ["--reference-window", "--window", "x"]):
        refused = runner.invoke(cli, [*cfg, "monitor", "drift", *bad])
        assert refused.exit_code == 2 and "--window" in refused.output, bad
    # no reference given: the app's eval suite (evals/support.yaml), and the output says so
    default = runner.invoke(cli, [*cfg, "monitor", "drift", "--window", "12", "--json"])
    assert default.exit_code == 1, default.output
    assert json.loads(default.stdout)["reference"].startswith("the app's eval suite support-bot")
    # once an evaluated release is deployed, its eval dataset is the reference
    suite = str(bot / "evals" / "support.yaml")
    release = runner.invoke(cli, [*cfg, "release", "create", "--gate", suite, "--quiet"])
    assert release.exit_code == 0, release.output
    rid = release.stdout.strip()
    assert runner.invoke(cli, [*cfg, "release", "deploy", rid]).exit_code == 0
    for question in off_topic:  # (the gate's own eval turns are the latest traces now)
        runner.invoke(cli, [*cfg, "ask", question])
    deployed = runner.invoke(cli, [*cfg, "monitor", "drift", "--window", "12"])
    assert deployed.exit_code == 1, deployed.output
    assert f"reference: the deployed release {rid}'s eval dataset (support-bot)" in (
        deployed.output
    )

    # each check is recorded; the gateway shows the last one as gauges
    from fastapi.testclient import TestClient

    from keel.api import create_app
    from keel.app import App

    app = App.from_config(bot / "keel.toml")
    with TestClient(create_app(app)) as client:
        metrics = client.get("/metrics").text
    app.close()
    assert 'keel_drift{measure="alert"} 1.0' in metrics
    assert 'keel_drift{measure="mmd_p_value"}' in metrics


def test_drift_without_a_reference_names_what_to_give(make_app: Any) -> None:
    from keel.errors import UsageError
    from keel.evals.drift_reference import default_reference

    app = make_app({})  # no deployed release, no evals/ folder
    with pytest.raises(UsageError, match="--reference DATASET or --reference-window"):
        default_reference(app)
