"""Two gateway instances as two real processes (`keel serve`) on one keel database: a thread
is busy for both, whichever instance a turn lands on (a lease in the database, or in Redis
when KEEL_REDIS_URL is set), and its history stays well formed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.testing import unused_port

pytestmark = pytest.mark.slow


KEEL = [sys.executable, "-c", "from keel.cli import main; main()"]


def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = unused_port()
    log_path = tmp_path / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*KEEL, "--config", str(tmp_path / "keel.toml"), "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}", log_path


def _instances(tmp_path: Path, env: dict[str, str], n: int) -> Iterator[list[str]]:
    """n `keel serve` processes on one app, once each answers /healthz. A free port found by
    binding port 0 can be taken by another socket before the server binds it: an instance that
    exits for that reason starts again on another port; any other exit fails with its log."""
    started = [_serve(tmp_path, env) for _ in range(n)]
    try:
        deadline = time.monotonic() + 120
        for i in range(n):
            while True:
                proc, url, log_path = started[i]
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "an instance did not start"
                if proc.poll() is not None:
                    log = log_path.read_text(errors="replace")
                    assert "address already in use" in log.lower(), (
                        f"an instance exited:\n{log[-3000:]}"
                    )
                    started[i] = _serve(tmp_path, env)
                time.sleep(0.2)
        yield [url for _, url, _ in started]
    finally:
        for proc, _, _ in started:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("shared", ["database", "redis"])
def test_a_thread_is_busy_across_two_instances(
    tmp_path: Path,
    model_server: Callable[..., Any],
    model_cache_dir: Path,
    shared: str,
    request: pytest.FixtureRequest,
) -> None:
    model_url = model_server("Slowly answered.", delay_s=1.5).url
    (tmp_path / "keel.toml").write_text(
        '[app]\nname = "multi"\n[agent]\nretrieve = false\n'
        '[model]\nid = "openai:slow"\nmax_retries = 0\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATA_DIR": str(tmp_path / ".keel"),
        "KEEL_CACHE_DIR": str(model_cache_dir),
        "KEEL_OPENAI_BASE_URL": model_url,
        "KEEL_OPENAI_API_KEY": "local",
    }
    if shared == "redis":
        env["KEEL_REDIS_URL"] = request.getfixturevalue("redis_url")
    made = subprocess.run(
        [
            *KEEL,
            "--config",
            str(tmp_path / "keel.toml"),
            "keys",
            "create",
            "--name",
            "t",
            "--scopes",
            "chat,ingest",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    gen = _instances(tmp_path, env, 2)
    a, b = next(gen)
    try:
        statuses: dict[str, int] = {}
        start = threading.Barrier(2)

        def turn(url: str) -> None:
            start.wait()
            reply = httpx.post(
                f"{url}/v1/chat",
                json={"message": "hello", "thread_id": "shared-thread"},
                headers=headers,
                timeout=60,
            )
            statuses[url] = reply.status_code

        threads = [threading.Thread(target=turn, args=(u,)) for u in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses.values()) == [200, 409], statuses
        # the thread's history, read through the other instance, is one whole turn
        history = httpx.get(f"{b}/v1/threads/shared-thread", headers=headers, timeout=30)
        assert history.status_code == 200, history.text
        roles = [m["role"] for m in history.json()["messages"]]
        assert roles == ["human", "ai"] or roles == ["user", "assistant"], roles
        # and the thread is free again on both instances
        again = httpx.post(
            f"{a}/v1/chat",
            json={"message": "again", "thread_id": "shared-thread"},
            headers=headers,
            timeout=60,
        )
        assert again.status_code == 200, again.text
        if shared == "database":
            # an ingestion job accepted by A is followed to its end through B
            job = httpx.post(
                f"{a}/v1/ingest",
                json={"documents": [{"id": "faq.md", "text": "Refunds take 30 days."}]},
                headers=headers,
                timeout=60,
            )
            assert job.status_code == 202, job.text
            state = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = httpx.get(
                    f"{b}/v1/ingest/{job.json()['id']}", headers=headers, timeout=30
                ).json()
                if state.get("state") in ("done", "failed"):
                    break
                time.sleep(0.3)
            assert state.get("state") == "done", state
            assert state["report"]["added"] == 1, state
    finally:
        gen.close()


def _keel(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{args[0]}-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [*KEEL, "--config", str(tmp_path / "keel.toml"), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _job_state(url: str, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    reply = httpx.get(f"{url}/v1/ingest/{job_id}", headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _wait_for(url: str, job_id: str, headers: dict[str, str], states: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 150
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = _job_state(url, job_id, headers)
        if state.get("state") in states:
            return state
        time.sleep(1.2)  # under the key's 60 requests a minute
    return state


@pytest.mark.parametrize("shared", ["database", "redis", "postgres"])
def test_jobs_run_on_a_separate_worker(
    tmp_path: Path, model_cache_dir: Path, shared: str, request: pytest.FixtureRequest
) -> None:
    """A gateway that runs no worker queues the job; a `keel worker` process runs it; a worker
    killed mid-job leaves it to the next worker, which finishes it."""
    (tmp_path / "keel.toml").write_text('[app]\nname = "jobs"\n[agent]\nretrieve = false\n')
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATA_DIR": str(tmp_path / ".keel"),
        "KEEL_CACHE_DIR": str(model_cache_dir),
        "KEEL_EMBEDDED_WORKER": "false",
    }
    if shared == "redis":
        env["KEEL_REDIS_URL"] = request.getfixturevalue("redis_url")
    if shared == "postgres":
        from sqlalchemy import create_engine, text

        base = request.getfixturevalue("pg_url")
        name = f"keel_jobs_{os.getpid()}_{time.monotonic_ns() % 10**8}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        env["KEEL_DATABASE_URL"] = base.rsplit("/", 1)[0] + f"/{name}"
    made = subprocess.run(
        [*KEEL, "--config", str(tmp_path / "keel.toml"), "keys", "create", "--name", "t",
         "--scopes", "admin"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    gen = _instances(tmp_path, env, 1)
    (gateway,) = next(gen)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        small = {"documents": [{"id": "faq.md", "text": "Refunds take 30 days."}]}
        job = httpx.post(f"{gateway}/v1/ingest", json=small, headers=headers, timeout=60)
        assert job.status_code == 202, job.text
        time.sleep(2)
        assert _job_state(gateway, job.json()["id"], headers)["state"] == "queued"
        workers.append(_keel(tmp_path, env, "worker"))
        done = _wait_for(gateway, job.json()["id"], headers, {"done", "failed"})
        assert done.get("state") == "done" and done["report"]["added"] == 1, done
        if shared != "database":
            return  # a killed worker: here on SQLite, and in the fleet test below

        # a job long enough to kill its worker in the middle of it
        many = {
            "documents": [
                {"id": f"doc-{i}.md", "text": f"Document {i}. " + "Refund policy text. " * 200}
                for i in range(300)
            ]
        }
        job = httpx.post(f"{gateway}/v1/ingest", json=many, headers=headers, timeout=60)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        running = _wait_for(gateway, job_id, headers, {"running", "done", "failed"})
        assert running.get("state") == "running", running
        workers[0].kill()
        workers[0].wait()
        assert _job_state(gateway, job_id, headers)["state"] == "running"  # as it was left
        workers.append(_keel(tmp_path, env, "worker"))  # takes it once its lease expired
        done = _wait_for(gateway, job_id, headers, {"done", "failed"})
        assert done.get("state") == "done", done
        report = done["report"]
        assert done["attempts"] == 2, done
        assert report["added"] + report["updated"] + report["unchanged"] == 300, done
        search = httpx.post(
            f"{gateway}/v1/search",
            json={"query": "Document 399", "k": 3},
            headers=headers,
            timeout=120,
        )
        assert search.status_code == 200 and search.json()["hits"], search.text
    finally:
        for w in workers:
            w.kill()
            w.wait()
        gen.close()


def _fresh_pg_database(base: str) -> str:
    from sqlalchemy import create_engine, text

    name = f"keel_fleet_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.chroma_server
def test_a_fleet_on_postgres_redis_and_a_chroma_server(
    tmp_path: Path,
    model_server: Callable[..., Any],
    model_cache_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Two `keel serve` instances and a `keel worker`, separate processes sharing PostgreSQL,
    Redis and a `chroma run` server: an upload posted to A finishes on the worker and reads
    back on B; one thread is busy on both; a CLI ingest during a gateway ingest of the same
    collection ends with what a clean run builds; the rate limit holds across both; a worker
    killed mid-job leaves the job to the next one."""
    db = _fresh_pg_database(request.getfixturevalue("pg_url"))
    redis = request.getfixturevalue("redis_url")
    chroma = request.getfixturevalue("chroma_server_url")
    model_url = model_server("Slowly answered.", delay_s=1.5).url
    (tmp_path / "keel.toml").write_text(
        '[app]\nname = "fleet"\n[agent]\nretrieve = false\n'
        f'[rag]\ncollection = "fleet-{time.monotonic_ns() % 10**8}"\n'
        '[model]\nid = "openai:slow"\nmax_retries = 0\n'
        "[limits]\nrequests_per_minute = 400\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATA_DIR": str(tmp_path / ".keel"),
        "KEEL_CACHE_DIR": str(model_cache_dir),
        "KEEL_OPENAI_BASE_URL": model_url,
        "KEEL_OPENAI_API_KEY": "local",
        "KEEL_DATABASE_URL": db,
        "KEEL_REDIS_URL": redis,
        "KEEL_CHROMA_URL": chroma,
        "KEEL_EMBEDDED_WORKER": "false",
    }
    config = ["--config", str(tmp_path / "keel.toml")]

    def keys(scopes: str) -> dict[str, str]:
        made = subprocess.run(
            [*KEEL, *config, "keys", "create", "--name", scopes, "--scopes", scopes],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}

    headers, limited = keys("admin"), keys("chat")
    gen = _instances(tmp_path, env, 2)
    a, b = next(gen)
    workers = [_keel(tmp_path, env, "worker")]
    try:
        # an upload posted to A is run by the worker and followed to its end on B
        files = {"files": ("faq.md", b"# FAQ\n\nRefunds take 30 days.\n", "text/markdown")}
        job = httpx.post(f"{a}/v1/ingest", files=files, headers=headers, timeout=60)
        assert job.status_code == 202, job.text
        done = _wait_for(b, job.json()["id"], headers, {"done", "failed"})
        assert done.get("state") == "done" and done["report"]["added"] == 1, done

        # one thread is busy on both instances
        statuses: dict[str, int] = {}
        start = threading.Barrier(2)

        def turn(url: str) -> None:
            start.wait()
            reply = httpx.post(
                f"{url}/v1/chat",
                json={"message": "hello", "thread_id": "fleet-thread"},
                headers=headers,
                timeout=60,
            )
            statuses[url] = reply.status_code

        threads = [threading.Thread(target=turn, args=(u,)) for u in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses.values()) == [200, 409], statuses
        history = httpx.get(f"{b}/v1/threads/fleet-thread", headers=headers, timeout=30)
        assert [m["role"] for m in history.json()["messages"]] in (
            ["human", "ai"],
            ["user", "assistant"],
        ), history.text

        # a CLI ingest while the worker ingests into the same collection
        docs = tmp_path / "docs"
        docs.mkdir()
        for i in range(40):
            (docs / f"cli-{i}.md").write_text(f"# CLI {i}\n\n" + "Shipping policy. " * 60)
        posted = {
            "documents": [
                {"id": f"api-{i}.md", "text": f"API {i}. " + "Warranty terms. " * 60}
                for i in range(40)
            ]
        }
        job = httpx.post(f"{a}/v1/ingest", json=posted, headers=headers, timeout=60)
        assert job.status_code == 202, job.text
        cli = subprocess.run(
            [*KEEL, *config, "ingest", str(docs), "--json"],
            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        done = _wait_for(b, job.json()["id"], headers, {"done", "failed"})
        assert done.get("state") == "done", done
        from keel.app import App
        from keel.settings import Settings

        shared = App.from_config(
            tmp_path / "keel.toml",
            settings=Settings(
                data_dir=tmp_path / ".keel", cache_dir=model_cache_dir, database_url=db,
                chroma_url=chroma,
            ),
        )  # fmt: skip
        clean = App.from_config(
            tmp_path / "keel.toml",
            settings=Settings(data_dir=tmp_path / ".clean", cache_dir=model_cache_dir),
        )
        try:
            from keel.rag.types import Document
            from keel.worker import IngestWork, UploadedFile, _items

            upload = IngestWork(
                "files", "x", True, files=[UploadedFile("faq.md", files["files"][1])]
            )
            with _items(clean, upload) as loaded:  # loaded as the worker loads an upload
                clean.ingest_documents(loaded)
            clean.ingest([str(docs)])
            clean.ingest_documents(
                Document(d["id"], d["text"], f"api/{d['id']}") for d in posted["documents"]
            )
            assert set(shared.manifest().entries()) == set(clean.manifest().entries())
            assert shared.store().ids() == clean.store().ids()
            assert not shared.manifest().last_run_interrupted()
        finally:
            shared.close()
            clean.close()

        # the rate limit holds across both instances (Redis)
        codes = [
            httpx.get(f"{(a, b)[i % 2]}/v1/models", headers=limited, timeout=30).status_code
            for i in range(401)
        ]
        assert codes[:400].count(200) == 400 and codes[400] == 429, codes[-3:]

        # a worker killed mid-job: the next worker finishes the job
        many = {
            "documents": [
                {"id": f"bulk-{i}.md", "text": f"Bulk {i}. " + "Return policy text. " * 200}
                for i in range(300)
            ]
        }
        job = httpx.post(f"{a}/v1/ingest", json=many, headers=headers, timeout=60)
        assert job.status_code == 202, job.text
        running = _wait_for(b, job.json()["id"], headers, {"running", "done", "failed"})
        assert running.get("state") == "running", running
        workers[0].kill()
        workers[0].wait()
        workers.append(_keel(tmp_path, env, "worker"))
        done = _wait_for(b, job.json()["id"], headers, {"done", "failed"})
        assert done.get("state") == "done" and done["attempts"] == 2, done
    finally:
        for w in workers:
            w.kill()
            w.wait()
        gen.close()


def test_two_instances_roll_back_a_canary_that_does_not_build_once(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    """Two `keel serve` processes find at once that the canary does not build (its tools are
    not in the code): every turn is answered by stable, and the canary is rolled back once."""
    from keel.api.keys import KeyStore
    from keel.app import App
    from keel.ops.releases import ReleaseStore
    from keel.settings import Settings

    (tmp_path / "keel.toml").write_text(
        '[app]\nname = "multi"\n[agent]\nretrieve = false\n'
        "[limits]\nrequests_per_minute = 10000\n[deploy]\nrefresh_s = 0\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATA_DIR": str(tmp_path / ".keel"),
        "KEEL_CACHE_DIR": str(model_cache_dir),
    }
    app = App.from_config(
        tmp_path / "keel.toml",
        settings=Settings(data_dir=tmp_path / ".keel", cache_dir=model_cache_dir),
    )
    store = ReleaseStore(app.engine, app.name)
    content = app.release_content()
    stable = store.create(content, note="v1").id
    content["tools"] = [{"type": "function", "function": {"name": "gone", "parameters": {}}}]
    broken = store.create(content, note="names a tool this code lacks").id
    store.set_stable(stable, "v1")
    store.set_canary(broken, 0.9, "most threads to a release that does not build")
    key, _ = KeyStore(app.engine).create("t", ["chat"])
    headers = {"Authorization": f"Bearer {key}"}
    gen = _instances(tmp_path, env, 2)
    urls = next(gen)
    try:
        served: list[tuple[int, str | None]] = []
        start = threading.Barrier(8)

        def turns(url: str, n: int) -> None:
            start.wait()
            for i in range(6):
                r = httpx.post(
                    f"{url}/v1/chat",
                    json={"message": "hello", "thread_id": f"t{n}-{i}"},
                    headers=headers,
                    timeout=60,
                )
                served.append((r.status_code, r.json().get("release_id")))

        threads = [threading.Thread(target=turns, args=(urls[n % 2], n)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(served) == 48 and set(served) == {(200, stable)}, served
        assert store.state() == {"stable": stable, "canary": None, "weight": 0.0}
        rollbacks = [e for e in store.history() if e["action"] == "rollback"]
        assert len(rollbacks) == 1 and rollbacks[0]["from"] == broken, rollbacks
        assert "tools only on one side: gone" in rollbacks[0]["reason"]
    finally:
        gen.close()
        app.close()
