"""The artefact store under two real processes (the same weights added at once), and the
gate's minimum of held-out queries."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from keel.tuning.artefacts import MANIFEST, ArtefactStore


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
