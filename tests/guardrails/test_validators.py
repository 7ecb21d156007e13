"""Keel's validators on positives and hard negatives, through guardrails-ai Guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import GuardsSection
from keel.guardrails.runner import GuardRunner, Services
from keel.rag.embeddings import Embedder


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(cache_dir=tmp_path_factory.mktemp("models"))


def run(embedder: Embedder, name: str, text: str, **options: object) -> tuple[str | None, dict]:
    point = {name: {"on_fail": options.pop("on_fail", "fix"), **options}}
    runner = GuardRunner(GuardsSection(output=point), Services(embedder=lambda: embedder))
    passages = options.get("passages")
    result, decision = runner.run(runner.rules["output"][0], text, passages=PASSAGES)
    del passages
    return result, {"outcome": decision.outcome, "reason": decision.reason, **decision.details}


PASSAGES = [
    "Refunds are possible within 30 days of purchase. Money returns in 5 to 10 business days.",
    "Two-factor authentication is turned on in **Settings > Security**.",
]


def test_grounding_keeps_supported_sentences_and_drops_invented_ones(embedder: Embedder) -> None:
    quoted = "Refunds are possible within 30 days of purchase [1]."
    assert run(embedder, "grounding", quoted)[1]["outcome"] == "pass"
    paraphrase = "You can get your money back if you ask within thirty days of buying."
    assert run(embedder, "grounding", paraphrase)[1]["outcome"] == "pass"
    mixed = (
        "Refunds are possible within 30 days of purchase [1]. "
        "Our headquarters are located on the planet Mars near a large volcano."
    )
    fixed, details = run(embedder, "grounding", mixed)
    assert details["outcome"] == "fail" and details["unsupported"] == [
        "Our headquarters are located on the planet Mars near a large volcano."
    ]
    assert fixed == "Refunds are possible within 30 days of purchase [1]."
    invented, _ = run(embedder, "grounding", "The Eiffel Tower was painted green in 1901.")
    assert invented == "I don't know: the documents I have do not answer this."
    # a refusal is never "ungrounded"
    assert run(embedder, "grounding", "I don't know the answer to that.")[1]["outcome"] == "pass"


def test_topic_denylist_by_name_and_by_meaning(embedder: Embedder) -> None:
    topics = ["medical diagnosis", "investment advice"]
    assert run(embedder, "topic_denylist", "I need a medical diagnosis", topics=topics)[0] is None
    meaning = "Which stocks should I buy to double my savings this year?"
    assert run(embedder, "topic_denylist", meaning, topics=topics)[0] is None
    fine = "How do I export my notes as Markdown?"
    assert run(embedder, "topic_denylist", fine, topics=topics)[1]["outcome"] == "pass"


def test_pii_fix_redacts_with_stable_placeholders(embedder: Embedder) -> None:
    runner = GuardRunner(
        GuardsSection(input={"pii": {"on_fail": "fix"}}), Services(embedder=lambda: embedder)
    )
    memory: dict = {}
    first, _ = runner.check(
        "input", "Mail ada@example.com or call +44 20 7946 0958.", memory=memory
    )
    assert first == "Mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>."
    second, _ = runner.check("input", "Again: ada@example.com, not bob@example.com", memory=memory)
    assert second == "Again: <EMAIL_ADDRESS_1>, not <EMAIL_ADDRESS_2>"
    clean, decisions = runner.check("input", "Order 12345 shipped on version 1.2.3.4", memory={})
    assert clean == "Order 12345 shipped on version 1.2.3.4" and decisions[0].outcome == "pass"


def test_secrets_are_redacted(embedder: Embedder) -> None:
    import random

    rng = random.Random(7)
    token = "ghp_" + "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789") for _ in range(36)
    )
    fixed, details = run(embedder, "secrets", f"my token is {token} ok")
    assert token not in (fixed or "") and details["outcome"] == "fail"
    assert (
        run(embedder, "secrets", "the id is 123e4567-e89b-12d3-a456-426614174000")[1]["outcome"]
        == "pass"
    )


def test_length_and_json(embedder: Embedder) -> None:
    assert run(embedder, "length", "x" * 20, max_chars=5)[0] == "xxxxx"
    assert (
        run(embedder, "json_schema", "{}", schema={"type": "array"}, on_fail="exception")[0] is None
    )


def test_structured_guard_with_pydantic() -> None:
    from pydantic import BaseModel

    from keel.guardrails.runner import structured_guard

    class Ticket(BaseModel):
        email: str
        priority: int

    guard = structured_guard(Ticket)
    ok = guard.parse('{"email": "a@b.co", "priority": 2}')
    assert ok.validation_passed and ok.validated_output == {"email": "a@b.co", "priority": 2}
    bad = guard.parse('{"email": "a@b.co"}')
    assert not bad.validation_passed


def test_keel_guard_cli_check(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from keel.cli import cli

    texts = tmp_path / "texts.txt"
    texts.write_text("call me at +1 415 555 0132\nnothing here\n")
    result = CliRunner().invoke(cli, ["guard", "check", "--validator", "pii", str(texts), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["outcome"] for r in rows] == ["fail", "pass"]
    assert rows[0]["spans"][0]["type"] == "PHONE_NUMBER"
    listed = CliRunner().invoke(cli, ["guard", "list", "--json"])
    assert {r["name"] for r in json.loads(listed.stdout)} >= {"injection", "pii", "grounding"}
    bad = CliRunner().invoke(cli, ["guard", "check", "--validator", "nope"], input="x\n")
    assert bad.exit_code == 2
