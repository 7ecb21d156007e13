"""Generated datasets: RAGAS test-set generation over the app's chunks with a scripted LLM
(offline, seeded, replayed from the cache byte for byte), and `keel evals generate`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from typer.testing import CliRunner

from keel.app import App
from keel.cli import cli
from keel.evals.datasets import load_dataset, save_dataset
from keel.evals.generate import ragas_testset
from keel.settings import get_settings
from keel.testing import ScriptedChatModel

DOCS = {
    "docs/refunds.md": (
        "# Refunds\n\nRefunds are paid within 30 days of purchase. Write to billing@example.com "
        "to ask for one. Annual plans are refunded pro rata.\n"
    ),
    "docs/sync.md": (
        "# Sync\n\nNotes sync every five minutes on every device. If notes do not sync, sign "
        "out and sign back in. Offline edits sync when the connection returns.\n"
    ),
    "docs/security.md": (
        "# Security\n\nTwo-factor authentication can be turned on under Settings. "
        "Authenticator apps and hardware keys are supported.\n"
    ),
}


def _input(prompt: str) -> dict[str, Any]:
    value = json.loads(prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0])
    assert isinstance(value, dict)
    return value


def _schema_title(prompt: str) -> str:
    found = re.search(r"JSON Schema:\n(\{.*?\})Do not use", prompt, re.S)
    assert found, prompt[:300]
    return str(json.loads(found.group(1))["title"])


KINDS: list[str] = []


def generator_llm(messages: list[BaseMessage]) -> str:
    """Answers each kind of prompt RAGAS's generator sends, read from the prompt itself."""
    prompt = str(messages[-1].text)
    title, data = _schema_title(prompt), _input(prompt)
    KINDS.append(title)
    words = re.findall(r"[A-Za-z]+", str(data.get("text", "")))
    if title == "StringIO":  # summary
        return json.dumps({"text": data["text"].split(". ")[0]})
    if title == "ThemesAndConcepts":
        return json.dumps({"output": sorted({w for w in words if len(w) > 4})[:3]})
    if title == "NEROutput":
        return json.dumps({"entities": sorted({w for w in words if w[0].isupper()})[:3]})
    if title == "Persona":
        name = sorted(w for w in words if len(w) > 4)[0].capitalize()
        return json.dumps({"name": f"{name} user", "role_description": f"Asks about {name}."})
    if title == "PersonaThemesMapping":
        themes = list(data["themes"])
        return json.dumps({"mapping": {p["name"]: themes for p in data["personas"]}})
    if title == "GeneratedQueryAnswer":  # single-hop query synthesis
        term = str(data.get("term") or "")
        sentences = [s for s in re.split(r"(?<=\.)\s+", data["context"]) if s.strip()]
        answer = next((s for s in sentences if term.lower() in s.lower()), sentences[0])
        return json.dumps(
            {"query": f"What do the docs say about {term.lower()}?", "answer": answer}
        )
    raise AssertionError(f"unexpected generator prompt {title}: {prompt[:200]}")


@pytest.fixture
def kb_app(make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]) -> App:
    write(tmp_path, DOCS)
    app = make_app()
    app.ingest()
    return app


def test_ragas_testset_is_generated_offline_seeded_and_replayed(
    kb_app: App, tmp_path: Path
) -> None:
    KINDS.clear()
    llm = ScriptedChatModel(script=[generator_llm] * 200)
    cases = ragas_testset(kb_app, llm, size=3, seed=7)
    assert {"StringIO", "ThemesAndConcepts", "NEROutput", "Persona", "GeneratedQueryAnswer"} <= set(
        KINDS
    )
    assert len(cases) == 3
    chunks = {c.id: c for c in kb_app.store().iter_chunks()}
    for case in cases:
        assert case.id.startswith("ragas-7-") and case.input.startswith("What do the docs say")
        assert case.reference and case.reference_contexts
        assert case.reference in case.reference_contexts[0]  # the answer is from its chunk
        (chunk_id,) = case.provenance["chunk_ids"]
        assert case.reference_doc_ids == [chunks[chunk_id].doc_id]
        assert case.tags[0] == "generated" and "query_synthesizer" in case.tags[1]
        assert case.provenance["source"] == "ragas-testset" and case.provenance["seed"] == 7
    first = tmp_path / "first.jsonl"
    save_dataset(cases, first)

    # the same seed, the LLM's answers replayed from the cache: the same file, byte for byte
    silent = ScriptedChatModel(script=[])
    again = ragas_testset(kb_app, silent, size=3, seed=7)
    assert silent.calls == []
    second = tmp_path / "second.jsonl"
    save_dataset(again, second)
    assert first.read_bytes() == second.read_bytes()


def test_keel_evals_generate_self_tests_offline(
    kb_app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path
) -> None:
    (tmp_path / "keel.toml").write_text('[app]\nname = "gen"\n')
    kb_app.close()
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / ".keel"))
    monkeypatch.setenv("KEEL_CACHE_DIR", str(model_cache_dir))
    get_settings.cache_clear()
    try:
        out = tmp_path / "evals" / "selftests.jsonl"
        args = ["--config", str(tmp_path / "keel.toml"), "evals", "generate", "--out", str(out)]
        r = CliRunner().invoke(cli, [*args, "--size", "2", "--seed", "3"])
        assert r.exit_code == 0, r.output
        cases = load_dataset(out).cases
        assert [c.id for c in cases] == ["selftest-3-0001", "selftest-3-0002"]
        assert all(c.reference_doc_ids for c in cases)
        bad = CliRunner().invoke(cli, [*args, "--size", "2", "--llm", "keel:extractive"])
        assert bad.exit_code == 2 and "cannot judge" in bad.output
    finally:
        get_settings.cache_clear()
