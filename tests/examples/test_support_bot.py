"""The support bot example works as its README says, and its eval cases retrieve their docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.app import App
from keel.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_bot"


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> App:
    data = tmp_path_factory.mktemp("support-bot")
    app = App.from_config(
        EXAMPLE / "keel.toml", settings=Settings(data_dir=data, cache_dir=model_cache_dir)
    )
    report = app.ingest()
    assert report.skipped == [] and len(report.added) == 10
    yield app
    app.close()


def cases() -> list[dict[str, object]]:
    lines = (EXAMPLE / "evals" / "cases.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("case", cases(), ids=lambda c: str(c["id"]))
def test_every_eval_case_retrieves_its_documents(bot: App, case: dict[str, object]) -> None:
    hits = bot.search(str(case["input"]), k=5)
    expected = set(case["reference_doc_ids"])  # type: ignore[arg-type]
    assert expected <= {h.doc_id for h in hits}


def test_hidden_html_and_scripts_never_reach_the_index(bot: App) -> None:
    texts = " ".join(c.text for c in bot.store().iter_chunks())
    assert "NN-TRACKING-7731" not in texts
    assert "ignore previous instructions" not in texts.lower()
    assert "passkeys" in texts.lower()  # the visible release notes are there
