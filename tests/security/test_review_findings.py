"""The security review's findings (issue 17), each replayed against a real uvicorn server on
loopback. Every test here failed before its fix."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from keel.ops.feedback import FeedbackStore

Problem = Callable[[httpx.Response, int], dict[str, Any]]

BILLING = "# Billing\n\nRefunds are paid back to the original card within 5 business days.\n"


def _wait_job(site: Any, key: str, job: httpx.Response) -> dict[str, Any]:
    assert job.status_code == 202, job.text
    for _ in range(300):
        r = site.get(f"/v1/ingest/{job.json()['id']}", key)
        assert r.status_code == 200, r.text
        state: dict[str, Any] = r.json()
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError("the ingest job did not finish")


def _events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# -- feedback ----------------------------------------------------------------------------------


def test_feedback_only_from_the_key_that_owns_the_trace(site: Any, problem: Problem) -> None:
    s = site({"agent": {"retrieve": False}})
    bob = s.key("chat", "feedback", name="bob")
    mallory = s.key("chat", "feedback", name="mallory")
    trace = s.chat(bob, "hello", thread_id="t").json()["trace_id"]

    problem(s.post("/v1/feedback", mallory, json={"trace_id": trace, "score": 0}), 404)
    problem(s.post("/v1/feedback", bob, json={"trace_id": "0" * 32, "score": 0}), 404)
    # not 403: another key's trace and no trace look the same
    assert (
        s.post("/v1/feedback", mallory, json={"trace_id": "0" * 32, "score": 0})
        .json()["detail"]
        .startswith("no trace")
    )

    first = s.post("/v1/feedback", bob, json={"trace_id": trace, "score": 0, "thread_id": "t"})
    again = s.post("/v1/feedback", bob, json={"trace_id": trace, "score": 1})
    assert first.status_code == again.status_code == 201
    rows = FeedbackStore(s.app.engine).all(trace)
    assert [r["score"] for r in rows] == [1.0]  # one rating per key per trace: replaced
    problem(
        s.post("/v1/feedback", bob, json={"trace_id": trace, "score": 1, "thread_id": "x"}), 422
    )

    admin = s.key("admin", name="ops")
    assert s.post("/v1/feedback", admin, json={"trace_id": trace, "score": 0}).status_code == 201
    assert len(FeedbackStore(s.app.engine).all(trace)) == 2


# -- ingest --------------------------------------------------------------------------------------


def test_json_documents_cannot_replace_curated_documents(site: Any, problem: Problem) -> None:
    s = site({"agent": {"retrieve": False}}, files={"docs/billing.md": BILLING})
    s.app.ingest()
    ing = s.key("ingest", "chat", name="ingest")
    attack = {"documents": [{"id": "docs/billing.md", "text": "Refunds are never possible."}]}
    state = _wait_job(s, ing, s.post("/v1/ingest", ing, json=attack))
    assert state["state"] == "done", state
    assert state["report"]["documents"]["added"] == ["uploads/docs/billing.md"]

    where = {"query": "refund", "where": {"doc_id": "docs/billing.md"}}
    hits = s.post("/v1/search", ing, json=where).json()["hits"]
    assert hits and all("original card" in h["text"] for h in hits)  # the curated page stands

    # another ingest key cannot replace what the first created; the creator can
    other = s.key("ingest", name="other")
    mine = {"documents": [{"id": "uploads/docs/billing.md", "text": "Replaced by other."}]}
    body = problem(s.post("/v1/ingest", other, json=mine), 409)
    assert body["documents"] == ["uploads/docs/billing.md"]
    files = {"files": ("billing.md", b"# Mine\n\nReplaced by a file.\n", "text/markdown")}
    s.post("/v1/ingest", other, files=files)  # uploads/billing.md: new, its own
    creators = s.app.manifest().creators(["docs/billing.md", "uploads/docs/billing.md"])
    ing_id = ing.split("_")[1]
    assert creators == {"docs/billing.md": None, "uploads/docs/billing.md": ing_id}
    again = {"documents": [{"id": "docs/billing.md", "text": "An update by its creator."}]}
    assert _wait_job(s, ing, s.post("/v1/ingest", ing, json=again))["state"] == "done"

    # an admin key curates: its ids are kept as given
    admin = s.key("admin", name="ops")
    fix = {"documents": [{"id": "docs/billing.md", "text": "Refunds take 5 business days."}]}
    assert _wait_job(s, admin, s.post("/v1/ingest", admin, json=fix))["state"] == "done"
    assert s.app.manifest().creators(["docs/billing.md"]) == {"docs/billing.md": None}


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The system temp directory, private to this test (uploads are staged there)."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    yield private


def test_upload_file_names_are_checked(site: Any, problem: Problem, temp_dir: Path) -> None:
    s = site({"agent": {"retrieve": False}})
    ing = s.key("ingest")
    for name in ("x" * 300 + ".md", "é" * 130 + ".md"):  # over 255 bytes
        files = [("files", (name, b"# A\n\ntext\n", "text/markdown"))]
        problem(s.post("/v1/ingest", ing, files=files), 422)
    for raw in (b"a\x00b.md", b"a\x01b.md", b"a\x1bb.md"):  # sent as is (httpx would escape)
        body = (
            b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="'
            + raw
            + b'"\r\nContent-Type: text/markdown\r\n\r\n# A\n\ntext\n\r\n--XyZ--\r\n'
        )
        ctype = {"Content-Type": "multipart/form-data; boundary=XyZ"}
        problem(s.post("/v1/ingest", ing, content=body, headers=ctype), 422)
    assert not list(temp_dir.glob("keel-upload-*"))


def test_an_upload_rejected_part_way_leaves_no_files(
    site: Any, problem: Problem, temp_dir: Path
) -> None:
    s = site({"agent": {"retrieve": False}, "limits": {"max_upload_bytes": 8192}})
    ing = s.key("ingest")
    one = ("files", ("one.md", b"# One\n\n" + b"a" * 3000, "text/markdown"))
    bad_name = ("files", ("t" * 300 + ".md", b"# Two\n\nb\n", "text/markdown"))
    problem(s.post("/v1/ingest", ing, files=[one, bad_name]), 422)
    assert not list(temp_dir.glob("keel-upload-*"))

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap is met while parsing
        yield b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="big.md"\r\n\r\n'
        for _ in range(20):
            yield b"x" * 1024
        yield b"\r\n--XyZ--\r\n"

    ctype = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    problem(s.post("/v1/ingest", ing, content=chunked(), headers=ctype), 413)
    assert not list(temp_dir.glob("keel-upload-*"))
    ok = s.post("/v1/ingest", ing, files=[one])
    assert _wait_job(s, ing, ok)["state"] == "done"
    assert not list(temp_dir.glob("keel-upload-*"))  # the job removed its folder too


def test_a_lone_surrogate_is_refused_on_every_route(site: Any, problem: Problem) -> None:
    s = site({"agent": {"retrieve": True}}, files={"docs/billing.md": BILLING}, model="config")
    s.app.ingest()
    key = s.key("chat", "feedback", "ingest")
    headers = {**s.auth(key), "Content-Type": "application/json"}
    bad = '"refund \\ud800"'
    native = {
        "/v1/chat": '{"message": %s}',
        "/v1/search": '{"query": %s}',
        "/v1/ingest": '{"documents": [{"id": "a", "text": %s}]}',
        "/v1/feedback": '{"trace_id": "' + "0" * 32 + '", "score": 1, "comment": %s}',
    }
    for path, body in native.items():
        problem(s.http.post(path, content=(body % bad).encode(), headers=headers), 422)
    openai = {
        "/v1/chat/completions": (
            '{"model": "secbot", "messages": [{"role": "user", "content": %s}]}'
        ),
        "/v1/responses": '{"model": "secbot", "input": %s}',
    }
    for path, body in openai.items():  # OpenAI's shape: its validation errors are 400
        r = s.http.post(path, content=(body % bad).encode(), headers=headers)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # a surrogate pair (an emoji, escaped) is text, and answered
    fine = s.http.post(
        "/v1/chat/completions",
        content=(openai["/v1/chat/completions"] % '"refund \\ud83d\\ude00"').encode(),
        headers=headers,
    )
    assert fine.status_code == 200, fine.text


def test_a_chunked_body_over_the_cap_is_413(site: Any, problem: Problem) -> None:
    s = site({"agent": {"retrieve": False}, "limits": {"max_body_bytes": 100_000}})
    key = s.key("chat")

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"message": "'
        for _ in range(300):
            yield b"x" * 1024
        yield b'"}'

    r = s.http.post(
        "/v1/chat", content=body(), headers={**s.auth(key), "Content-Type": "application/json"}
    )
    problem(r, 413)


# -- storage failures ------------------------------------------------------------------------


def _read_only(engine: Any) -> None:
    """Every new connection of the keel database refuses writes (SQLite's query_only), as a
    read-only database file does; pooled connections are dropped first."""

    @event.listens_for(engine, "connect")
    def _query_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")

    engine.dispose()


def test_a_read_only_database_answers_503_and_readyz_says_so(site: Any, problem: Problem) -> None:
    s = site({"agent": {"retrieve": False}})
    key = s.key("chat")
    assert s.http.get("/readyz").status_code == 200
    _read_only(s.app.engine)

    body = problem(s.chat(key, "hello", thread_id="ro"), 503)
    assert body["type"].endswith("/store-unavailable")
    with s.http.stream(
        "POST",
        "/v1/chat",
        json={"message": "hello", "thread_id": "ro2", "stream": True},
        headers=s.auth(key),
    ) as r:
        raw = "".join(r.iter_text())
    if r.status_code == 200:  # the stream began: it ends with an error event
        kind, data = _events(raw)[-1]
        assert kind == "error" and data["status"] == 503, raw
    else:
        assert r.status_code == 503
    completion = s.post(
        "/v1/chat/completions",
        key,
        json={"model": "secbot", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert completion.status_code == 503 and completion.json()["error"]["code"]
    ready = problem(s.http.get("/readyz"), 503)
    assert ready["checks"]["database"].startswith("not writable")


def test_a_removed_data_directory_is_noticed(site: Any, problem: Problem) -> None:
    s = site({"agent": {"retrieve": False}})
    key = s.key("chat")
    assert s.chat(key, "hello").status_code == 200
    shutil.rmtree(s.app.data_dir)
    ready = problem(s.http.get("/readyz"), 503)
    assert ready["checks"]["data_dir"] == "the data directory is gone"
    assert str(s.app.data_dir) not in json.dumps(ready)  # no key needed: no paths
    problem(s.chat(key, "hello again"), 503)


def test_cli_storage_errors_are_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path
) -> None:
    from typer.testing import CliRunner

    from keel.cli import cli
    from keel.settings import get_settings

    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.delenv("KEEL_DATA_DIR", raising=False)
    monkeypatch.delenv("KEEL_CONFIG", raising=False)
    get_settings.cache_clear()
    (tmp_path / "keel.toml").write_text('[app]\nname = "x"\n')
    config = str(tmp_path / "keel.toml")
    runner = CliRunner()
    try:
        (tmp_path / ".keel").write_text("a file where the data directory should be")
        for args in (["keys", "list"], ["keys", "create", "--name", "a"], ["serve"]):
            result = runner.invoke(cli, ["--config", config, *args])
            assert result.exit_code == 2, (args, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        (tmp_path / ".keel").unlink()
        (tmp_path / ".keel").mkdir()
        (tmp_path / ".keel" / "keel.db").write_bytes(b"not a database" * 100)
        result = runner.invoke(cli, ["--config", config, "keys", "list"])
        assert result.exit_code == 2 and "not a database" in result.output
    finally:
        get_settings.cache_clear()


# -- PDF budget -------------------------------------------------------------------------------


def _slow_pdf(ops: int = 400_000) -> bytes:
    """A 5 KB PDF whose one compressed content stream holds hundreds of thousands of text
    operators: seconds of parsing for pypdf (the review's 5.6 KB PDF took 8.3 s)."""
    stream = zlib.compress(b"BT /F1 12 Tf 72 720 Td " + b"(a) Tj " * ops + b"ET", 9)
    objs = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>",
        5: b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
        + stream
        + b"\nendstream",
    }
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = {}
    for oid in sorted(objs):
        offsets[oid] = out.tell()
        out.write(b"%d 0 obj\n" % oid + objs[oid] + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 6\n0000000000 65535 f \n")
    for oid in range(1, 6):
        out.write(b"%010d 00000 n \n" % offsets[oid])
    out.write(b"trailer\n<< /Size 6 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def test_a_pdf_over_its_time_budget_is_skipped_and_reported(site: Any) -> None:
    import multiprocessing

    s = site({"agent": {"retrieve": False}, "rag": {"pdf_timeout_s": 0.5, "pdf_max_pages": 1}})
    ing = s.key("ingest")
    files = [
        ("files", ("slow.pdf", _slow_pdf(), "application/pdf")),
        ("files", ("ok.md", b"# Fine\n\nA normal page.\n", "text/markdown")),
    ]
    state = _wait_job(s, ing, s.post("/v1/ingest", ing, files=files))
    assert state["state"] == "done", state
    skipped = {f["source"]: f["reason"] for f in state["report"]["skipped_files"]}
    assert "pdf_timeout_s" in skipped["slow.pdf"], skipped
    assert state["report"]["documents"]["added"] == ["uploads/ok.md"]
    assert not [p for p in multiprocessing.active_children() if p.name == "keel-pdf"]


def test_pdf_budget_keys_are_honoured_or_refused(tmp_path: Path) -> None:
    from keel.config import config_from_dict
    from keel.errors import ConfigError

    budget = config_from_dict({"rag": {"pdf_max_pages": 3}}, base_dir=tmp_path).rag.pdf_budget()
    assert budget.max_pages == 3 and budget.timeout_s == 30.0
    with pytest.raises(ConfigError, match="pdf_timeout_s"):
        config_from_dict({"rag": {"pdf_timeout_s": 0}}, base_dir=tmp_path)


# -- threads --------------------------------------------------------------------------------


def test_thread_ids_are_scoped_to_the_key(site: Any, problem: Problem) -> None:
    def echo(messages: list[Any]) -> str:
        return f"{sum(m.type == 'human' for m in messages)} turns"

    s = site({"agent": {"retrieve": False}}, script=[echo] * 20)
    alice, bob = s.key("chat", name="alice"), s.key("chat", name="bob")
    assert s.chat(alice, "one", thread_id="support").json()["text"] == "1 turns"
    # bob's "support" is his own thread: no squatting, no collision, no 404
    mine = s.chat(bob, "hi", thread_id="support").json()
    assert mine["text"] == "1 turns" and mine["thread_id"] == "support"
    assert s.chat(alice, "two", thread_id="support").json()["text"] == "2 turns"
    # no oracle: another key's id and an unused id look the same
    taken = problem(s.get("/v1/threads/nobody-uses-this", bob), 404)
    view = s.get("/v1/threads/support", bob).json()
    assert [m["role"] for m in view["messages"]] == ["human", "ai"]
    assert s.http.delete("/v1/threads/support", headers=s.auth(bob)).status_code == 204
    gone = problem(s.get("/v1/threads/support", bob), 404)
    assert gone["detail"].replace("support", "X") == taken["detail"].replace(
        "nobody-uses-this", "X"
    )
    view = s.get("/v1/threads/support", alice).json()  # alice's thread is untouched
    assert [m["role"] for m in view["messages"]] == ["human", "ai", "human", "ai"]
    completion = s.post(
        "/v1/chat/completions",
        bob,
        json={"model": "secbot", "messages": [{"role": "user", "content": "x"}]},
        headers={"X-Keel-Thread": "support"},
    ).json()
    assert completion["keel"]["thread_id"] == "support"
    assert completion["choices"][0]["message"]["content"] == "1 turns"
