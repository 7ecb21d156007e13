"""Datasets: JSONL / YAML loading, errors with line numbers, versions, retrieval self-tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from keel.app import App
from keel.errors import ConfigError, UsageError
from keel.evals.datasets import Case, load_dataset, retrieval_selftests, save_dataset

EXAMPLE = Path(__file__).parents[2] / "examples" / "support_bot" / "evals" / "cases.jsonl"

KB = {
    "docs/billing.md": (
        "# Billing\n\n## Refunds\n\nYou can ask for a full refund within 30 days of purchase by "
        "writing to the billing team.\nMonthly plans are refundable for seven days after the "
        "charge.\n\n## Invoices\n\nInvoices are emailed on the first day of each month as PDF "
        "files.\nA company address can be added to every invoice from the billing settings.\n"
    ),
    "docs/security.md": (
        "# Security\n\nTwo-factor authentication can be turned on under the security settings "
        "page.\nWe support authenticator apps and hardware security keys for every account.\n\n"
        "## Sessions\n\nActive sessions can be signed out remotely from the devices list.\n"
    ),
    "docs/sync.md": (
        "# Sync\n\nIf notes do not sync, sign out, sign back in and check your connection.\n"
        "Offline edits are merged automatically when the device reconnects to the network.\n"
    ),
    "docs/export.md": (
        "# Export\n\nEvery notebook can be exported as Markdown, HTML or PDF from its menu.\n"
        "Exports of large notebooks are prepared in the background and sent by email.\n"
    ),
}


def test_loads_the_example_dataset() -> None:
    ds = load_dataset(EXAMPLE)
    assert len(ds) >= 5 and ds.path == EXAMPLE
    first = ds.cases[0]
    assert first.id == "refund-annual" and first.reference_doc_ids == ["docs/billing.md"]
    assert len(ds.version) == 12 and load_dataset(EXAMPLE).version == ds.version


def test_jsonl_and_yaml_forms(tmp_path: Path) -> None:
    jl = tmp_path / "cases.jsonl"
    jl.write_text(
        '{"id": "a", "input": "Hi?", "reference": "Hello", "tags": ["x"]}\n\n'
        '{"id": "b", "conversation": [{"role": "user", "content": "Hi"}, '
        '{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Refunds?"}], '
        '"expected_tool_calls": [{"name": "plan_price", "args": {"plan": "plus"}}]}\n'
    )
    ds = load_dataset(jl)
    assert [c.id for c in ds.cases] == ["a", "b"]
    assert ds.cases[1].input == "Refunds?" and len(ds.cases[1].history) == 2
    yml = tmp_path / "cases.yaml"
    yml.write_text("cases:\n  - id: a\n    input: Hi?\n    reference: Hello\n    tags: [x]\n")
    assert load_dataset(yml).cases[0] == ds.cases[0]
    (tmp_path / "list.yml").write_text("- {id: a, input: 'Hi?', reference: Hello, tags: [x]}\n")
    assert load_dataset(tmp_path / "list.yml").version == load_dataset(yml).version


@pytest.mark.parametrize(
    ("name", "text", "where", "reason"),
    [
        ("bad.jsonl", '{"id": "a", "input": "x"}\n{"id": "b", "input": \n', ":2:", "JSON"),
        ("dup.jsonl", '{"id": "a", "input": "x"}\n\n{"id": "a", "input": "y"}\n', ":3:", "dupl"),
        ("noin.jsonl", '{"id": "a"}\n', ":1:", "'input'"),
        ("noid.jsonl", '{"input": "x"}\n', ":1:", "'id'"),
        ("extra.jsonl", '{"id": "a", "input": "x", "color": 1}\n', ":1:", "unknown field"),
        ("bad.yaml", "- id: a\n  input: x\n- id: b\n  refernce: y\n  input: z\n", ":3:", "refern"),
        ("syntax.yaml", "- id: a\n  input: [x\n", ":3", "YAML"),
    ],
)  # fmt: skip
def test_errors_name_file_and_line(
    tmp_path: Path, name: str, text: str, where: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_dataset(path)
    assert f"{name}{where}" in str(exc.value) and reason in str(exc.value)


def test_version_follows_content(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    save_dataset([Case(id="a", input="One?"), Case(id="b", input="Two?")], path)
    v1 = load_dataset(path).version
    path.write_text(path.read_text().replace("Two?", "Two!"))
    assert load_dataset(path).version != v1
    reformatted = tmp_path / "same.jsonl"
    rows = [json.loads(line) for line in (tmp_path / "cases.jsonl").read_text().splitlines()]
    reformatted.write_text("\n".join(json.dumps(r, indent=None, sort_keys=True) for r in rows))
    assert load_dataset(reformatted).version == load_dataset(path).version


def test_save_appends_safely(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "input": "x"}')  # no trailing newline
    save_dataset([Case(id="b", input="y", reference_doc_ids=["d.md"])], path)
    assert [c.id for c in load_dataset(path).cases] == ["a", "b"]
    with pytest.raises(UsageError):
        save_dataset([Case(id="a", input="again")], path)
    assert len(load_dataset(path).cases) == 2


@pytest.fixture
def kb_app(make_app: Callable[..., App], tmp_path: Path, write: Callable[..., None]) -> App:
    write(tmp_path, KB)
    app = make_app({"rag": {"paths": ["docs"], "chunk_size": 200, "chunk_overlap": 0}})
    app.ingest()
    return app


def test_selftests_are_seeded_and_retrievable(kb_app: App) -> None:
    a = retrieval_selftests(kb_app, 5, seed=1)
    assert a == retrieval_selftests(kb_app, 5, seed=1)
    assert [c.input for c in a] != [c.input for c in retrieval_selftests(kb_app, 5, seed=2)]
    assert len(a) == 5
    found = 0
    for case in a:
        assert len(case.input.split()) >= 6
        assert case.provenance["source"] == "selftest" and case.provenance["seed"] == 1
        assert case.provenance["chunk_id"] and case.reference_doc_ids
        found += case.reference_doc_ids[0] in {h.doc_id for h in kb_app.search(case.input, 3)}
    assert found >= 4
