"""How passages support an answer's claims (keel.rag.support): quotes and near-quotes are
scored without the embedding model, the others by embedding, and a claim is embedded once
per turn however many times it is scored (the grounding guard, then citation attribution)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keel.agents.citations import attribute
from keel.db import make_engine
from keel.guardrails.validators import GroundingValidator
from keel.rag.embeddings import Embedder, EmbeddingCache
from keel.rag.support import (
    NEAR_QUOTE,
    SupportPrefetch,
    _bigrams,
    near_quote,
    passage_sentences,
    support_scores,
)
from keel.rag.types import Hit, content_hash

PASSAGES = [
    "| Plan | Refund window |\n|---|---|\n| Annual | 30 days after the purchase or renewal |",
    "Two-factor authentication is turned on in Settings > Security > Two-factor. It asks "
    "for a code from an authenticator app at every sign-in.",
    "Exports are ZIP files of Markdown notes, made from Settings > Data > Export.",
]


@pytest.fixture()
def embedder(tmp_path: Path, model_cache_dir: Path) -> Embedder:
    # the app's embedder: passage sentences cached in the database, as in a served app
    return Embedder(cache=EmbeddingCache(make_engine(None, tmp_path)), cache_dir=model_cache_dir)


def test_quotes_and_near_quotes_need_no_embedding(embedder: Embedder) -> None:
    claims = [
        "Exports are ZIP files of Markdown notes, made from Settings > Data > Export.",  # quoted
        # two sentences of one passage joined, a word dropped: a near-quote
        "Two-factor authentication is turned on in Settings > Security > Two-factor and asks "
        "for a code from an authenticator app at every sign-in.",
        # a rendered table row
        "Annual: 30 days after the purchase or renewal.",
    ]
    before = embedder.encoded
    scores = support_scores(claims, PASSAGES, embedder)
    assert embedder.encoded == before  # not one claim (nor passage sentence) was embedded
    assert scores[0].tolist() == [0.0, 0.0, 1.0]
    assert scores[1, 1] >= NEAR_QUOTE and scores[1, [0, 2]].tolist() == [0.0, 0.0]
    assert scores[2, 0] >= NEAR_QUOTE


def test_paraphrases_and_short_claims_go_to_the_embedding_model(embedder: Embedder) -> None:
    # short: three of its four bigrams are in passage 2, but four words are too few to trust
    assert near_quote("Exports are ZIP files", [{("exports", "are"), ("are", "zip")}]) == [0.0]
    claims = [
        "You can download all your notes as a ZIP archive from the data settings.",
        "Exports are made in Settings and come as ZIP files.",  # the passage's words, reordered
        "ZIP files of Markdown notes",  # quoted, however short
    ]
    support_scores(["Nothing here is like the passages."], PASSAGES, embedder)  # their sentences
    before = embedder.encoded
    scores = support_scores(claims, PASSAGES, embedder)
    assert embedder.encoded - before == 2  # the two paraphrases went to the model
    assert int(np.argmax(scores[0])) == 2 and int(np.argmax(scores[1])) == 2
    assert scores[2].tolist() == [0.0, 0.0, 1.0]


def test_a_changed_fact_is_not_a_near_quote(embedder: Embedder) -> None:
    passage = "Annual plans can be refunded in full within 30 days of the purchase or renewal."
    changed = "Annual plans can be refunded in full within 90 days of the purchase or renewal."
    assert near_quote(changed, [set()]) == [0.0]
    (share,) = near_quote(changed, [set(_bigrams(passage))])
    assert 0.7 < share < NEAR_QUOTE  # two of its thirteen bigrams differ: embedded instead


def test_a_turn_embeds_each_claim_once(embedder: Embedder) -> None:
    answer = (
        "You can download all your notes as a ZIP archive from the data settings. "
        "Turning on two-factor sign-in happens under the security settings."
    )
    hits = [
        Hit(doc_id=f"d{i}", chunk_id=f"c{i}", text=t, score=1.0, source=f"docs/d{i}.md")
        for i, t in enumerate(PASSAGES)
    ]
    meta = {
        "keel_support_embedder": embedder,
        "keel_passages": PASSAGES,
        "keel_question": "How do I export my notes?",
        "keel_report": {},
    }
    before = embedder.encoded
    assert GroundingValidator(on_fail="fix").validate(answer, dict(meta)).outcome == "pass"
    guarded = embedder.encoded - before
    assert guarded >= 2  # the two paraphrased claims (and the passages' sentences, once)
    assert attribute(answer, hits, embedder) == [3, 2]
    assert embedder.encoded - before == guarded  # attribution embedded nothing again


def test_embed_queries_shares_embed_querys_cache(embedder: Embedder) -> None:
    texts = ["alpha claim here", "beta claim here", "alpha claim here"]
    before = embedder.encoded
    vectors = embedder.embed_queries(texts)
    assert embedder.encoded - before == 2  # the duplicate is embedded once
    assert np.allclose(vectors[0], vectors[2])
    assert np.allclose(vectors, embedder.encode(texts), atol=1e-5)
    before = embedder.encoded
    assert np.allclose(embedder.embed_query("beta claim here"), vectors[1])
    assert embedder.embed_queries([]).shape == (0, embedder.dimension)
    assert embedder.encoded == before


def test_embed_sentences_keeps_passage_sentences_in_memory_over_the_database_cache(
    embedder: Embedder,
) -> None:
    texts = ["Exports are ZIP files.", "Refunds take five days.", "Exports are ZIP files."]
    before = embedder.encoded
    first = embedder.embed_sentences(texts)
    assert embedder.encoded - before == 2 and np.allclose(first[0], first[2])
    assert embedder.cache is not None
    stored = embedder.cache.get_many(embedder.model_id, [content_hash(t) for t in texts])
    assert len(stored) == 2  # written through to the database cache for other processes
    embedder.cache = None  # now only the in-memory cache can serve them
    again = embedder.embed_sentences(texts[:2])
    assert embedder.encoded - before == 2 and np.allclose(again, first[:2])


def test_a_guarded_stream_embeds_each_sentence_once(embedder: Embedder) -> None:
    """A stream is checked on the whole text so far at every sentence; the sentences checked
    before come from the cache, so n sentences cost n embeddings, not n(n+1)/2."""
    from keel.agents.hooks import RunContext
    from keel.config import GuardsSection
    from keel.guardrails.runner import GuardRunner, Services

    runner = GuardRunner(
        GuardsSection(output={"grounding": {"on_fail": "fix"}}),
        Services(embedder=lambda: embedder),
    )
    ctx = RunContext(app="t", thread_id="t", scopes=None)
    ctx.hits = [
        Hit(doc_id=f"d{i}", chunk_id=f"c{i}", text=t, score=1.0, source=f"docs/d{i}.md")
        for i, t in enumerate(PASSAGES)
    ]
    ctx.question = "How do I export my notes and protect my account?"
    support_scores(["Nothing here is like the passages."], PASSAGES, embedder)  # their sentences
    sentences = [
        "You can download all your notes as a ZIP archive from the data settings. ",
        "Turning on two-factor sign-in happens under the security settings. ",
        "After that, every sign-in asks for a code from your authenticator app. ",
    ]
    guard = runner.stream_guard(ctx)
    before = embedder.encoded
    shown = "".join(guard.feed(word + " ") for s in sentences for word in s.split()) + guard.flush()
    assert shown.split() == "".join(sentences).split()  # every sentence was supported
    assert embedder.encoded - before == len(sentences)


def _queries_asked(embedder: Embedder) -> list[list[str]]:
    """What ``embedder.embed_queries`` is asked from now on, call by call."""
    asked: list[list[str]] = []
    real = embedder.embed_queries

    def embed_queries(texts: list[str]) -> np.ndarray:
        asked.append(list(texts))
        return real(texts)

    embedder.embed_queries = embed_queries  # type: ignore[method-assign]
    return asked


def test_a_prefetch_embeds_finished_sentences_that_are_not_quotes(embedder: Embedder) -> None:
    """SupportPrefetch: the passages' sentences first, then each finished sentence of the
    answer that the check would send to the model (not a quote, not too short); a restart
    forgets a reply's text, and after finish nothing more is taken."""
    asked = _queries_asked(embedder)
    before = embedder.encoded
    prefetch = SupportPrefetch(embedder, PASSAGES, min_words=4)
    quoted = "Exports are ZIP files of Markdown notes, made from Settings > Data > Export."
    prefetch.feed("You can get a refund for a month [1]. Too short. ")
    prefetch.feed(f"{quoted} The codes come from an app ")
    prefetch.restart()  # a retry: the reply begins again
    prefetch.feed("Sign-ins ask for a code from an app on your phone. More words follow")
    prefetch.finish()
    prefetch.feed("Ignored after the end. Entirely.")
    prefetch._worker.join(timeout=30)
    assert asked == [
        ["You can get a refund for a month."],  # without its citation, as the check embeds it
        ["Sign-ins ask for a code from an app on your phone."],
    ]
    assert prefetch.embedded == 2 + len(passage_sentences(PASSAGES)[0])
    assert embedder.encoded - before == prefetch.embedded  # all new to the model
    scored = support_scores(
        ["Sign-ins ask for a code from an app on your phone."], PASSAGES, embedder
    )
    assert embedder.encoded - before == prefetch.embedded  # the check found them all ready
    assert scored.shape == (1, 3)


def test_a_prefetch_embeds_the_last_sentence_once_it_ends(embedder: Embedder) -> None:
    """The answer's last sentence is embedded as soon as it ends with ``.``, ``!`` or ``?``
    (before the model's end of reply), once, and a sentence the model then goes on with
    only cost that vector: the check embeds the longer sentence and scores as without a
    prefetch."""
    asked = _queries_asked(embedder)
    prefetch = SupportPrefetch(embedder, PASSAGES, min_words=4)
    for token in ("Sign-ins ask ", "for a code ", "from an app [2]", ".", " ", "It works "):
        prefetch.feed(token)
    prefetch.feed("on any phone")  # no end yet: nothing more is taken
    prefetch.feed("!")
    prefetch.finish()
    prefetch._worker.join(timeout=30)
    assert asked == [["Sign-ins ask for a code from an app."], ["It works on any phone!"]]

    going_on = SupportPrefetch(embedder, PASSAGES, min_words=4)
    going_on.feed("Exports are made as ZIP files.")
    going_on.feed(" of Markdown notes.")  # not a new sentence: the model went on
    going_on.finish()
    going_on._worker.join(timeout=30)
    assert asked[2:] == [
        ["Exports are made as ZIP files."],
        ["Exports are made as ZIP files. of Markdown notes."],
    ]
    claim = "Exports are made as ZIP files. of Markdown notes."
    before = embedder.encoded
    fresh = Embedder(cache_dir=embedder.cache_dir)
    assert np.allclose(
        support_scores([claim], PASSAGES, embedder), support_scores([claim], PASSAGES, fresh)
    )
    assert embedder.encoded == before  # the check found the longer sentence ready
