"""`keel eval` gates the support bot; a worse configuration fails with exit 1 and names the
cases that got worse; reports open offline; the pytest plugin and `keel compare` work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import cli
from keel.settings import get_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_bot"


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("evalbot") / "support_bot"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".keel", "__pycache__"))
    mp = pytest.MonkeyPatch()
    mp.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    mp.setenv("KEEL_DATA_DIR", str(root / ".keel"))
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["--config", str(root / "keel.toml"), "ingest"])
    assert result.exit_code == 0, result.output
    yield root
    mp.undo()
    get_settings.cache_clear()


def test_keel_eval_passes_against_the_committed_baseline(bot: Path, tmp_path: Path) -> None:
    report, junit = tmp_path / "report.html", tmp_path / "junit.xml"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(bot / "evals" / "support.yaml"),
            "--report",
            str(report),
            "--junit",
            str(junit),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    html = report.read_text()
    assert "<html" in html and 'src="http' not in html and 'href="http' not in html
    assert "refund-annual" in html
    import xml.etree.ElementTree as ET

    assert ET.parse(junit).getroot().get("failures") in ("0", None)

    # the run is recorded in the app's database, for the web console
    from keel.db import make_engine
    from keel.evals.store import EvalRunStore

    store = EvalRunStore(make_engine(None, bot / ".keel"))
    runs = store.list(suite=data["run"]["suite"])
    assert runs and runs[0]["passed"] is True and runs[0]["cases"] == len(data["run"]["cases"])
    found = store.get(runs[0]["id"])
    assert found is not None and found[0]["gate"]["passed"] is True
    assert found[0]["baseline"] is not None  # gated against the committed baseline
    assert [c.case_id for c in found[1].cases] == [c["case_id"] for c in data["run"]["cases"]]


def test_a_worse_configuration_fails_the_gate_and_names_the_cases(bot: Path) -> None:
    worse = bot.parent / "worse_bot"
    shutil.copytree(bot, worse, ignore=shutil.ignore_patterns(".keel"))
    with (worse / "keel.toml").open("a") as f:
        f.write("\n[agent]\nretrieve = false\n")  # retrieval turned off
    result = CliRunner().invoke(cli, ["eval", str(worse / "evals" / "support.yaml"), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is False
    worse_cases = {c["case_id"] for c in data["gate"]["worse_cases"]}
    assert "refund-annual" in worse_cases


def test_bad_suite_is_a_usage_error(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["eval", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    bad = tmp_path / "evals" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("name: x\ndataset: cases.jsonl\nmetrics: {no_such_metric: {}}\n")
    result = CliRunner().invoke(cli, ["eval", str(bad)])
    assert result.exit_code == 2 and "no_such_metric" in result.stderr


def test_pytest_plugin_collects_suites(bot: Path) -> None:
    env = {**os.environ}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(bot / "evals"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(bot),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=bot,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_keel_compare_prints_quality_latency_cost(bot: Path) -> None:
    closed = "http://127.0.0.1:9/v1"  # nothing listens: the second model fails fast, offline
    os.environ["KEEL_OPENAI_BASE_URL"] = closed
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli,
            [
                "compare",
                str(bot / "evals" / "support.yaml"),
                "--model",
                "keel:extractive",
                "--model",
                "openai:gpt-4o-mini",
                "--json",
            ],
        )
    finally:
        del os.environ["KEEL_OPENAI_BASE_URL"]
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert rows["keel:extractive"]["quality"] == pytest.approx(1.0)
    assert rows["keel:extractive"]["pareto"] is True
    assert rows["openai:gpt-4o-mini"]["errors"] > 0
