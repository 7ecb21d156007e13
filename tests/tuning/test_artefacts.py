"""The artefact store under two real processes (the same weights added at once), the gate's
minimum of held-out queries, and withdrawal when a person whose feedback trained a model is
erased."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from keel.tuning.artefacts import MANIFEST, ArtefactStore, GateFigures


def _add_many(data_dir: str, worker: int, rounds: int) -> list[str]:
    store = ArtefactStore(Path(data_dir))
    ids = []
    for n in range(rounds):
        work = store.root / f".training-{worker}-{n}"
        work.mkdir(parents=True)
        (work / "model.safetensors").write_bytes(b"the same weights" * 1000)
        (work / "config.json").write_text('{"dim": 384}')
        artefact = store.add(
            "embeddings",
            work,
            base_model="all-MiniLM-L6-v2",
            training_data_hash=f"{worker}-{n}",
            pairs={"corpus": 1},
            params={},
            train_seconds=1.0,
        )
        ids.append(artefact.id)
    return ids


def test_two_processes_adding_the_same_weights_keep_one_whole_artefact(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_add_many, [(str(tmp_path), w, 25) for w in (1, 2)])
    assert len({i for ids in results for i in ids}) == 1  # content-addressed: one artefact
    store = ArtefactStore(tmp_path)
    (artefact,) = store.list()
    assert (artefact.path / "model.safetensors").read_bytes() == b"the same weights" * 1000
    manifest = json.loads((artefact.path / MANIFEST).read_text())
    assert manifest["id"] == artefact.id and manifest["training_data_hash"].endswith("-24")
    # nothing left behind: no staged manifests, no training folders
    assert sorted(p.name for p in artefact.path.iterdir()) == sorted(
        ["model.safetensors", "config.json", MANIFEST]
    )
    assert [p.name for p in store.root.iterdir()] == ["embeddings"]


def test_the_gate_never_passes_on_too_few_queries() -> None:
    from keel.tuning.gate import MIN_QUERIES, judge
    from keel.tuning.pairs import Query

    def worse(q: str) -> list[str]:
        return ["other", "a"]

    def better(q: str) -> list[str]:
        return ["a"]

    few = [Query(f"q{i}", frozenset({"a"})) for i in range(MIN_QUERIES - 1)]
    figures = judge(few, worse, better, on="test")
    assert figures.ci_low > 0 and not figures.passed  # better on every query, but too few
    enough = judge([*few, Query("q", frozenset({"a"}))], worse, better, on="test")
    assert enough.ci_low > 0 and enough.passed


def _artefact(store: ArtefactStore, traces: tuple[str, ...], weights: bytes) -> str:
    work = store.root / f".training-{len(weights)}"
    work.mkdir(parents=True)
    (work / "model.safetensors").write_bytes(weights)
    return store.add(
        "embeddings",
        work,
        base_model="all-MiniLM-L6-v2",
        training_data_hash="h",
        pairs={"feedback": len(traces)} if traces else {"corpus": 1},
        params={},
        train_seconds=1.0,
        gate=GateFigures("ndcg@10", "suite s", 20, 0.5, 0.6, 0.01, 0.2, True),
        feedback_traces=traces,
    ).id


def test_erasing_a_person_withdraws_the_models_trained_on_their_feedback(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    from keel.app import App
    from keel.config import config_from_dict
    from keel.errors import ConfigError
    from keel.privacy import erase_user
    from keel.settings import Settings
    from keel.testing import ScriptedChatModel

    app = App(
        config_from_dict({"app": {"name": "withdraw"}, "agent": {"retrieve": False}}, tmp_path),
        settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
        model=ScriptedChatModel(script=["Refunds take 30 days."] * 2),
    )
    mine = app.ask("How long do refunds take?", end_user="ada").trace_id
    theirs = app.ask("And for annual plans?", end_user="bob").trace_id
    store = ArtefactStore(app.data_dir)
    trained_on_ada = _artefact(store, (theirs, mine), b"w1" * 100)
    not_on_ada = _artefact(store, (theirs,), b"w2" * 100)
    assert store.resolve(trained_on_ada, "embeddings", allow_ungated=False).deployable

    report = erase_user(app, "ada")
    assert report.artefacts == 1 and report.to_dict()["artefacts"] == 1
    withdrawn = store.get(trained_on_ada)
    assert not withdrawn.deployable and "erased" in (withdrawn.withdrawn or "")
    assert [p.name for p in withdrawn.path.iterdir()] == [MANIFEST]  # the weights are gone
    assert (store.get(not_on_ada).path / "model.safetensors").is_file()
    assert "ada" not in (withdrawn.withdrawn or "")  # the record names a hash, not the person
    for allow in (False, True):  # an erasure is not a gate: allow_ungated does not bring it back
        with pytest.raises(ConfigError, match="withdrawn"):
            store.resolve(trained_on_ada, "embeddings", allow_ungated=allow)
    assert store.resolve(not_on_ada, "embeddings", allow_ungated=False).deployable
    assert erase_user(app, "ada").artefacts == 0  # withdrawn once
    app.close()
