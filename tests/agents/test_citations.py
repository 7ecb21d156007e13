"""Citations for answers that do not cite: attributed from the passages that support each
sentence (the grounding guard's measure), marked as attributed; and grounding that does not
take the question, repeated, for an answer."""

from __future__ import annotations

import pytest

from keel.agents.citations import citations
from keel.guardrails.validators import GroundingValidator
from keel.rag.embeddings import Embedder
from keel.rag.types import Hit

PASSAGES = [
    "Annual plans can be refunded in full within 30 days of the purchase or the renewal.",
    "Two-factor authentication is turned on in Settings > Security > Two-factor.",
    "Exports are ZIP files of Markdown notes, made from Settings > Data > Export.",
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(cache_dir=tmp_path_factory.mktemp("emb"))


def _hits() -> list[Hit]:
    return [
        Hit(doc_id=f"d{i}", chunk_id=f"c{i}", text=t, score=1.0, source=f"docs/d{i}.md")
        for i, t in enumerate(PASSAGES)
    ]


def test_an_answer_without_markers_gets_attributed_citations(embedder: Embedder) -> None:
    text = "You can get a full refund on an annual plan within 30 days of buying it."
    cites = citations(text, _hits(), embedder=embedder, question="refund?")
    assert [(c["n"], c["doc_id"], c["attributed"]) for c in cites] == [(1, "d0", True)]


def test_model_citations_are_kept_and_bad_numbers_lead_to_attribution(
    embedder: Embedder,
) -> None:
    cited = citations("Exports are ZIP files [3].", _hits(), embedder=embedder)
    assert [(c["n"], c["attributed"]) for c in cited] == [(3, False)]
    wrong = "Turn on two-factor authentication in Settings > Security [9]."
    assert [(c["n"], c["attributed"]) for c in citations(wrong, _hits(), embedder=embedder)] == [
        (2, True)
    ]


def test_refusals_echoes_and_unsupported_sentences_are_never_attributed(
    embedder: Embedder,
) -> None:
    hits = _hits()
    q = "How long do I have to ask for a refund?"
    assert citations("I don't know: the documents do not say.", hits, embedder=embedder) == []
    assert citations(f"Question: {q}", hits, embedder=embedder, question=q) == []
    assert citations("The moon is made of green cheese today.", hits, embedder=embedder) == []


def test_grounding_does_not_pass_the_question_repeated(embedder: Embedder) -> None:
    q = "How long do I have to ask for a refund?"
    meta = {
        "keel_support_embedder": embedder,
        "keel_passages": PASSAGES,
        "keel_question": q,
        "keel_report": {},
    }
    validator = GroundingValidator(on_fail="fix")
    echo = validator.validate(f"Question: {q}", dict(meta))
    assert echo.outcome == "fail"
    answer = validator.validate(
        "Annual plans can be refunded in full within 30 days of the purchase.", dict(meta)
    )
    assert answer.outcome == "pass"
