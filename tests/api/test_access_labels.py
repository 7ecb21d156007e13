"""Document access labels (issue 19): tenant B's key never gets tenant A's chunks by any path
(search with or without a widening filter, native chat, streamed chat, the OpenAI route, the
Responses route, the console playground, a semantic-cache hit, the ``search_knowledge`` tool),
on embedded and server Chroma; and the rules that give documents their labels."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessage

from keel.api import create_app
from keel.app import App
from keel.errors import UsageError
from keel.rag.access import (
    LabelPolicy,
    label_metadata,
    labels_of,
    parse_labels,
    restrict,
)
from keel.rag.filters import matches
from keel.rag.loaders import iter_documents
from keel.rag.types import Document
from keel.settings import Settings
from keel.testing import ScriptedChatModel

A_TEXT = "The Zebra plan for tenant A costs 17 dollars a month, billed on the first day."
B_TEXT = "The Otter plan for tenant B costs 23 dollars a month, billed on the fifth day."
PUBLIC_TEXT = "Plans can be cancelled at any time from the billing page of the account."
QUESTION = "How much does the Zebra plan cost a month?"

CONFIG = {
    "app": {"name": "tenants"},
    "rag": {
        "paths": ["docs"],
        "labels": {"docs/tenant-a/**": ["tenant-a"], "docs/tenant-b/**": ["tenant-b"]},
    },
    "cache": {"enabled": True, "threshold": 0.9},
    "ui": {"enabled": True},
    "tools": {"enabled": ["keel:search_knowledge"]},
}


# --- the rules --------------------------------------------------------------------------------


def test_labels_are_checked_and_sorted() -> None:
    assert parse_labels("staff, tenant-a,staff") == ("staff", "tenant-a")
    assert parse_labels(["b", "a"]) == ("a", "b")
    assert parse_labels(None) == ()
    for bad in ("two words", "../x", "a" * 65, "-lead"):
        with pytest.raises(UsageError, match="invalid label"):
            parse_labels(bad)


def test_a_document_gets_its_own_labels_the_rules_and_else_the_default() -> None:
    policy = LabelPolicy.from_config({"internal/**": ["staff"]}, ["members"])
    doc = Document(id="internal/runbook.md", text="x", source="internal/runbook.md")
    assert labels_of(policy.apply(doc).metadata) == ("staff",)
    own = Document(id="faq.md", text="x", source="faq.md", metadata=label_metadata(["vip"]))
    assert labels_of(policy.apply(own).metadata) == ("vip",)
    assert labels_of(policy.apply(own, ["tenant-a"]).metadata) == ("tenant-a", "vip")
    plain = Document(id="faq.md", text="x", source="faq.md")
    assert labels_of(policy.apply(plain).metadata) == ("members",)
    public = LabelPolicy().apply(plain).metadata
    assert public == {"keel_label:*": True}
    assert policy.apply(plain).metadata != public  # labels are part of the document's hash
    assert policy.apply(plain).hash != LabelPolicy().apply(plain).hash


def test_the_reader_filter_is_added_and_a_request_cannot_name_label_keys() -> None:
    assert restrict(None, None) is None
    assert restrict({"lang": "en"}, None) == {"lang": "en"}
    only = restrict(None, frozenset())
    assert only == {"keel_label:*": True}
    both = restrict({"lang": "en"}, frozenset({"tenant-b"}))
    assert both == {
        "$and": [
            {"lang": "en"},
            {"$or": [{"keel_label:*": True}, {"keel_label:tenant-b": True}]},
        ]
    }
    a_chunk = {"lang": "en", **label_metadata(["tenant-a"])}
    assert not matches(a_chunk, both) and matches({"lang": "en", "keel_label:*": True}, both)
    for sneaky in (
        {"keel_label:tenant-a": True},
        {"$or": [{"lang": "en"}, {"keel_label:tenant-a": True}]},
    ):
        with pytest.raises(UsageError, match="keel_label"):
            restrict(sneaky, frozenset({"tenant-b"}))


def test_jsonl_labels_become_label_keys_and_bad_ones_skip_the_record(tmp_path: Path) -> None:
    records = [
        {"id": "a", "text": "alpha", "metadata": {"labels": ["staff"], "lang": "en"}},
        {"id": "b", "text": "beta", "metadata": {"labels": ["no good"]}},
        {"id": "c", "text": "gamma", "metadata": {"keel_label:admin": True}},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    items = {
        getattr(i, "id", None) or i.source: i
        for i in iter_documents([tmp_path / "d.jsonl"], root=tmp_path)
    }
    assert items["a"].metadata == {"lang": "en", "keel_label:staff": True}
    assert "invalid label" in next(i.reason for k, i in items.items() if k not in ("a", "c"))
    assert items["c"].metadata == {}  # label keys are never taken from a document
    (tmp_path / "runbook.md").write_text(
        "---\nlabels: [staff, oncall]\n---\n# Runbook\n\nRestart it.\n"
    )
    (doc,) = iter_documents([tmp_path / "runbook.md"], root=tmp_path)
    assert isinstance(doc, Document) and labels_of(doc.metadata) == ("oncall", "staff")


# --- a gateway with two tenants -------------------------------------------------------------


def _write_docs(root: Path) -> None:
    for rel, text in {
        "docs/public.md": f"# Billing\n\n{PUBLIC_TEXT}\n",
        "docs/tenant-a/plan.md": f"# Zebra plan\n\n{A_TEXT}\n",
        "docs/tenant-b/plan.md": f"# Otter plan\n\n{B_TEXT}\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture(
    params=["embedded", pytest.param("server", marks=pytest.mark.chroma_server)],
)
def tenants(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    model_cache_dir: Path,
    make_app: Callable[..., App],
) -> Iterator[dict[str, Any]]:
    chroma_url = request.getfixturevalue("chroma_server_url") if request.param == "server" else None
    _write_docs(tmp_path)
    config = {**CONFIG, "rag": {**CONFIG["rag"], "collection": f"tenants-{request.param}"}}
    settings = Settings(
        data_dir=tmp_path / ".keel", cache_dir=model_cache_dir, chroma_url=chroma_url
    )
    app = make_app(config, app_settings=settings)
    app.ingest()
    api = create_app(app)
    keys = api.state.gateway.keys
    a_key, _ = keys.create("a", ["chat"], ["tenant-a"])
    b_key, _ = keys.create("b", ["chat", "ingest"], ["tenant-b"])
    a_chunks = {
        h.chunk_id
        for h in app.search("Zebra plan", 10, readable=None)
        if h.doc_id.startswith("docs/tenant-a")
    }
    assert a_chunks
    with TestClient(api, raise_server_exceptions=False) as client:
        yield {
            "app": app,
            "client": client,
            "a": {"Authorization": f"Bearer {a_key}"},
            "b": {"Authorization": f"Bearer {b_key}"},
            "a_chunks": a_chunks,
        }


def _leaks(t: dict[str, Any], payload: Any) -> bool:
    text = json.dumps(payload) if not isinstance(payload, str) else payload
    return "Zebra plan for tenant A" in text or any(c in text for c in t["a_chunks"])


def test_search_shows_each_tenant_its_own_and_public_documents(tenants: dict[str, Any]) -> None:
    t, c = tenants, tenants["client"]
    a = c.post("/v1/search", json={"query": "plan cost", "k": 10}, headers=t["a"]).json()
    assert {h["doc_id"] for h in a["hits"]} == {"docs/public.md", "docs/tenant-a/plan.md"}
    b = c.post("/v1/search", json={"query": "Zebra plan cost", "k": 10}, headers=t["b"]).json()
    assert {h["doc_id"] for h in b["hits"]} == {"docs/public.md", "docs/tenant-b/plan.md"}
    assert not _leaks(t, b)
    # a request's own filter narrows, never widens
    widen = {"$or": [{"doc_id": "docs/tenant-a/plan.md"}, {"doc_id": "docs/public.md"}]}
    r = c.post("/v1/search", json={"query": "Zebra", "k": 10, "where": widen}, headers=t["b"])
    assert r.status_code == 200 and not _leaks(t, r.json())
    assert {h["doc_id"] for h in r.json()["hits"]} == {"docs/public.md"}
    sneaky = {"keel_label:tenant-a": True}
    r = c.post("/v1/search", json={"query": "Zebra", "where": sneaky}, headers=t["b"])
    assert r.status_code in (400, 422) and "keel_label" in r.text


def test_no_turn_path_gives_tenant_b_tenant_a_chunks(tenants: dict[str, Any]) -> None:
    t, c = tenants, tenants["client"]
    # tenant A asks first: its answer (from its own document) is cached in its partition
    first = c.post("/v1/chat", json={"message": QUESTION}, headers=t["a"]).json()
    assert "17 dollars" in first["text"] and _leaks(t, first)
    again = c.post("/v1/chat", json={"message": QUESTION}, headers=t["a"]).json()
    assert again["cache_hit"] is True

    native = c.post("/v1/chat", json={"message": QUESTION}, headers=t["b"]).json()
    assert native["cache_hit"] is False and not _leaks(t, native)
    streamed = c.post("/v1/chat", json={"message": QUESTION, "stream": True}, headers=t["b"])
    assert streamed.status_code == 200 and not _leaks(t, streamed.text)
    body = {"model": "tenants", "messages": [{"role": "user", "content": QUESTION}]}
    compat = c.post("/v1/chat/completions", json=body, headers=t["b"])
    assert compat.status_code == 200 and not _leaks(t, compat.json())
    compat_stream = c.post("/v1/chat/completions", json={**body, "stream": True}, headers=t["b"])
    assert compat_stream.status_code == 200 and not _leaks(t, compat_stream.text)
    responses = c.post(
        "/v1/responses", json={"model": "tenants", "input": QUESTION}, headers=t["b"]
    )
    assert responses.status_code == 200 and not _leaks(t, responses.json())

    # the console playground, signed in with B's key
    c.get("/ui/login")
    csrf = c.cookies.get("keel_csrf")
    signed_in = c.post(
        "/ui/login",
        data={"key": t["b"]["Authorization"].split()[1], "csrf": csrf, "next": "/ui"},
        headers={"Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text
    played = c.post(
        "/ui/api/chat",
        json={"message": QUESTION},
        headers={"X-Keel-CSRF": c.cookies.get("keel_csrf"), "Sec-Fetch-Site": "same-origin"},
    )
    assert played.status_code == 200, played.text
    assert "Otter" in played.text or "dollars" in played.text or "know" in played.text
    assert not _leaks(t, played.text)


def test_the_search_knowledge_tool_reads_as_the_caller(
    tmp_path: Path, model_cache_dir: Path, make_app: Callable[..., App]
) -> None:
    _write_docs(tmp_path)
    call = AIMessage(
        "",
        tool_calls=[{"id": "s1", "name": "search_knowledge", "args": {"query": "Zebra plan"}}],
    )
    model = ScriptedChatModel(script=[call, "done", call, "done", call, "done"])
    app = make_app(CONFIG, model=model)
    app.ingest()
    as_b = app.ask("find the Zebra plan", readable=frozenset({"tenant-b"}))
    results = [tc["content"] for tc in as_b.to_dict()["tool_calls"]]
    assert results and not any("Zebra plan for tenant A" in r for r in results)
    as_a = app.ask("find the Zebra plan", readable=frozenset({"tenant-a"}))
    assert any("Zebra plan for tenant A" in tc["content"] for tc in as_a.to_dict()["tool_calls"])
    # the async path (the tool step on the caller's event loop) reads as the caller too
    as_b_async = asyncio.run(app.aask("find the Zebra plan", readable=frozenset({"tenant-b"})))
    results = [tc["content"] for tc in as_b_async.to_dict()["tool_calls"]]
    assert results and not any("Zebra plan for tenant A" in r for r in results)


def test_keys_assign_only_labels_they_hold_and_tenant_uploads_stay_theirs(
    tenants: dict[str, Any],
) -> None:
    t, c = tenants, tenants["client"]
    doc = {"id": "notes.md", "text": "Tenant B keeps its Walrus notes here for the team."}
    refused = c.post(
        "/v1/ingest", json={"documents": [doc], "labels": ["tenant-a"]}, headers=t["b"]
    )
    assert refused.status_code == 403 and "tenant-a" in refused.text
    forged = {**doc, "metadata": {"keel_label:*": True}}
    assert c.post("/v1/ingest", json={"documents": [forged]}, headers=t["b"]).status_code == 422
    job = c.post("/v1/ingest", json={"documents": [doc]}, headers=t["b"]).json()

    deadline = time.monotonic() + 60
    while c.get(f"/v1/ingest/{job['id']}", headers=t["b"]).json()["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert c.get(f"/v1/ingest/{job['id']}", headers=t["b"]).json()["state"] == "done"
    hits = t["app"].search("Walrus notes", 10, readable=None)
    mine = [h for h in hits if h.doc_id == "uploads/notes.md"]
    assert mine and all(labels_of(h.metadata) == ("tenant-b",) for h in mine)
    a = c.post("/v1/search", json={"query": "Walrus notes", "k": 10}, headers=t["a"]).json()
    assert all(h["doc_id"] != "uploads/notes.md" for h in a["hits"])
