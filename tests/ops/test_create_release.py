"""`create_release` from Python (what `keel release create --gate` runs): the gate against
the suite's baseline, then against the stable release's own gate run."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel import App
from keel.errors import UsageError
from keel.evals import SuiteGate
from keel.ops import CreatedRelease, ReleaseStore, create_release
from keel.settings import get_settings


@pytest.fixture
def bot(ingested_bot: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEEL_GIT_COMMIT", "abc123")
    get_settings.cache_clear()
    return ingested_bot


def _create(root: Path, gate: SuiteGate | None = None, note: str = "") -> CreatedRelease:
    app = App.from_config(root / "keel.toml")
    try:
        return create_release(app, gate=gate, note=note)
    finally:
        app.close()


def test_create_release_gates_against_the_stable_release(bot: Path) -> None:
    suite = bot / "evals" / "support.yaml"
    first = _create(bot, gate=SuiteGate(suite), note="v1")
    assert first.deployable and first.release.note == "v1"
    assert first.gate is not None and first.gate.passed and first.gate.reasons == []
    assert first.gate.baseline == "suite baseline" and first.baseline_release is None
    assert first.gate.suite and first.gate.run["format"] == "keel.eval.run/1"
    assert first.run_id is not None  # the gate run is recorded with the app's eval runs
    stored = first.release.gate
    assert stored is not None and stored["passed"] is True and stored["run"] == first.gate.run
    assert first.release.content["git_commit"] == "abc123"

    # Without a gate: the same content is the same release.
    again = _create(bot)
    assert again.release.id == first.release.id and again.gate is None

    app = App.from_config(bot / "keel.toml")
    ReleaseStore(app.engine, app.name).set_stable(first.release.id, "test")
    app.close()

    # A worse app (retrieval off) fails against the stable release's gate run.
    toml = bot / "keel.toml"
    toml.write_text(toml.read_text() + "\n[agent]\nretrieve = false\n")
    worse = _create(bot, gate=SuiteGate(suite))
    assert worse.release.id != first.release.id
    assert not worse.deployable and worse.gate is not None and not worse.gate.passed
    assert worse.baseline_release == first.release.id
    assert worse.gate.baseline == f"release {first.release.id}" and worse.gate.reasons
    assert worse.release.gate is not None and worse.release.gate["passed"] is False


def test_a_missing_suite_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no suite file"):
        SuiteGate(tmp_path / "nope.yaml")
