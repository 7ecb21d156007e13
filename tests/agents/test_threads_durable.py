"""A conversation survives its process being killed: SQLite and PostgreSQL checkpointers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from langchain_core.messages import HumanMessage
    from keel.app import App
    from keel.testing import ScriptedChatModel

    phase, thread = sys.argv[1], sys.argv[2]
    config = Path(sys.argv[3])

    def recall(messages):
        said = [m.content for m in messages if isinstance(m, HumanMessage)]
        return "You said: " + " | ".join(said)

    if phase == "first":
        app = App.from_config(config, model=ScriptedChatModel(script=["Hello Ada.", "Noted."]))
        app.ask("my name is Ada", thread_id=thread)
        app.ask("I like tea", thread_id=thread)
        print("asked", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown, no close()
    else:
        app = App.from_config(config, model=ScriptedChatModel(script=[recall]))
        answer = app.ask("what did I say?", thread_id=thread)
        history = [(m.type, m.content) for m in app.history(thread)]
        print(json.dumps({"answer": answer.text, "history": history}))
    """
)


def run(
    phase: str, thread: str, config: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, phase, thread, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_thread_continues_in_a_new_process_after_sigkill(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import json

    (tmp_path / "keel.toml").write_text('[app]\nname = "durable"\n[agent]\nretrieve = false\n')
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path / ".keel")}
    if backend == "postgres":
        env["KEEL_DATABASE_URL"] = request.getfixturevalue("pg_url")
    thread = f"t-{uuid.uuid4().hex[:8]}"

    first = run("first", thread, tmp_path / "keel.toml", env)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert first.stdout.strip() == "asked"

    second = run("second", thread, tmp_path / "keel.toml", env)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["answer"] == "You said: my name is Ada | I like tea | what did I say?"
    assert result["history"] == [
        ["human", "my name is Ada"],
        ["ai", "Hello Ada."],
        ["human", "I like tea"],
        ["ai", "Noted."],
        ["human", "what did I say?"],
        ["ai", result["answer"]],
    ]


_TOUCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from keel.agents.checkpoints import ThreadIndex
    from keel.db import make_engine

    url, data_dir, prefix, start = sys.argv[1:5]  # start: run_at_once's
    index = ThreadIndex(make_engine(url or None, Path(data_dir)), "touchy")
    while time.time() < float(start):
        time.sleep(0.005)
    for i in range(150):  # both processes start thread 0, then 1, ... for the same key
        index.touch(f"{prefix}-{i}", "k1")
    """
)


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_starting_the_same_threads_at_once(
    db: str, tmp_path: Path, request: pytest.FixtureRequest, at_once: Callable[..., None]
) -> None:
    """The loser of the race to record a new thread checks its owner and records the turn
    (on PostgreSQL its failed insert used to abort the transaction the check ran in: a 500)."""
    from keel.agents.checkpoints import ThreadIndex
    from keel.db import make_engine

    url = request.getfixturevalue("pg_url") if db == "postgres" else ""
    prefix = f"race{uuid.uuid4().hex[:8]}"
    at_once(_TOUCHER, [[url, str(tmp_path / ".keel"), prefix]] * 2)
    index = ThreadIndex(make_engine(url or None, tmp_path / ".keel"), "touchy")
    for i in (0, 75, 149):
        assert index.owner_of(f"{prefix}-{i}") == (True, "k1")
