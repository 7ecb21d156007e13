"""Releases pin their index: a release serves the snapshot of the collection it was made on,
so a rollback after a bad re-ingest answers exactly as the release did; `keel release gc`
deletes the snapshots no release references."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from keel.app import App
from keel.ops import ReleaseStore, create_release
from keel.rag.types import Document


def _docs(refunds: str) -> list[Document]:
    return [
        Document("billing.md", f"# Billing\n\n{refunds}", "billing.md", title="Billing"),
        Document("login.md", "# Login\n\nReset your password from the sign-in page.", "login.md"),
    ]


def test_a_release_answers_from_its_own_snapshot_after_a_bad_reingest(
    make_app: Callable[..., App],
) -> None:
    app = make_app({"app": {"name": "pinned"}})
    app.ingest_documents(_docs("Refunds are possible within 30 days of purchase."))
    good_version = app.index_version()
    release = create_release(app).release
    snapshot = release.content["index_snapshot"]
    assert snapshot == f"{app.config.rag.collection}.snap-{good_version}"
    served = App.from_release(release.id, release.content, base=app)
    before = served.ask("How long do I have for a refund?", ephemeral=True)

    # a bad re-ingest of the app on disk
    app.ingest_documents(_docs("Refunds are never possible. Email evil@example.com."))
    assert app.index_version() != good_version
    assert "never possible" in app.search("refund policy", 1)[0].text

    # the release still searches and answers from what it was made on
    rolled_back = App.from_release(release.id, release.content, base=app)
    assert rolled_back.index_version() == good_version
    assert rolled_back.version == served.version
    hit = rolled_back.search("refund policy", 1)[0]
    assert "within 30 days" in hit.text and hit.doc_id == "billing.md"
    after = rolled_back.ask("How long do I have for a refund?", ephemeral=True)
    assert after.text == before.text and "30 days" in after.text
    assert [c["doc_hash"] for c in after.citations] == [c["doc_hash"] for c in before.citations]


def test_a_snapshot_is_made_once_per_index_version(make_app: Callable[..., App]) -> None:
    app = make_app({"app": {"name": "once"}})
    app.ingest_documents(_docs("Refunds within 30 days."))
    first = app.knowledge.snapshot()
    count = app.store(first).count()
    assert app.knowledge.snapshot() == first and app.store(first).count() == count
    assert count == app.store().count() > 0
    assert app.knowledge.snapshots() == [first]


def test_release_gc_deletes_only_unreferenced_snapshots(make_app: Callable[..., App]) -> None:
    app = make_app({"app": {"name": "gc"}})
    app.ingest_documents(_docs("Refunds within 30 days."))
    kept = create_release(app).release.content["index_snapshot"]
    app.ingest_documents(_docs("Refunds within 60 days."))
    stray = app.knowledge.snapshot()  # made, then never released
    assert sorted(app.knowledge.snapshots()) == sorted([kept, stray])
    keep = {str(r.content["index_snapshot"]) for r in ReleaseStore(app.engine, app.name).list()}
    assert app.knowledge.gc_snapshots(keep) == [stray]
    assert app.knowledge.snapshots() == [kept]
    assert app.manifest(stray).count() == 0


def test_keel_release_gc_on_the_command_line(tmp_path: Path, model_cache_dir: Path) -> None:
    from keel.cli import cli

    (tmp_path / "keel.toml").write_text('[app]\nname = "cli-gc"\n[rag]\npaths = ["docs"]\n')
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nRefunds within 30 days.\n")
    env = {"KEEL_DATA_DIR": str(tmp_path / ".keel"), "KEEL_CACHE_DIR": str(model_cache_dir)}
    runner = CliRunner()
    config = ["--config", str(tmp_path / "keel.toml")]
    assert runner.invoke(cli, [*config, "ingest"], env=env).exit_code == 0
    made = runner.invoke(cli, [*config, "release", "create", "--json"], env=env)
    assert made.exit_code == 0, made.output
    (tmp_path / "docs" / "a.md").write_text("# A\n\nRefunds within 60 days.\n")
    assert runner.invoke(cli, [*config, "ingest"], env=env).exit_code == 0
    gc = runner.invoke(cli, [*config, "release", "gc", "--json"], env=env)
    assert gc.exit_code == 0, gc.output
    report = json.loads(gc.output)
    assert report["deleted"] == [] and len(report["kept"]) == 1
