"""How well retrieved passages support the sentences of an answer.

One implementation for the two places that ask: the grounding guard (is every claim supported
by some passage?) and citation attribution (which passages support each claim, when a model
did not cite them itself). A claim quoted from a passage (after normalising case, spacing,
markup and citation markers) is supported by it with score 1. A near-quote, a claim of
:data:`NEAR_QUOTE_MIN_WORDS` words or more of whose word pairs (bigrams, in order) at least
:data:`NEAR_QUOTE` are found in one passage (a rendered table row, two sentences joined, a
word changed), is supported with that share as its score, without the embedding model. The
others are scored by the cosine similarity of their embedding to the passage's most similar
sentence. Passage sentences are embedded through :meth:`Embedder.embed_sentences`, whose
caches (in memory, then the database's) serve the popular chunks after the first time; claims
through :meth:`Embedder.embed_queries`, whose in-memory cache serves a claim scored a second
time in the same turn (the grounding guard, then citation attribution).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel.rag.sentences import split_sentences

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from keel.rag.embeddings import Embedder

CITATION_MARKS = re.compile(r"\s*(\[\d{1,3}\])+")
_MARKUP = re.compile(r"[*`]+")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")

NEAR_QUOTE = 0.9  # share of a claim's word bigrams found in one passage to call it a near-quote
NEAR_QUOTE_MIN_WORDS = 6  # shorter claims are quoted exactly or go to the embedding model


def normalise(text: str) -> str:
    """Lower case, single spaces, no markdown emphasis: for "is this quoted?" checks."""
    return _SPACE.sub(" ", _MARKUP.sub("", text)).strip().lower()


def without_citations(text: str) -> str:
    return CITATION_MARKS.sub("", text)


def _bigrams(text: str) -> list[tuple[str, str]]:
    words = _WORD.findall(text.lower())
    return list(itertools.pairwise(words))


def near_quote(claim: str, passage_bigrams: Sequence[set[tuple[str, str]]]) -> list[float]:
    """Per passage, the share of ``claim``'s word bigrams found in its bigrams (all 0 for a
    claim shorter than :data:`NEAR_QUOTE_MIN_WORDS`)."""
    grams = _bigrams(claim)
    if len(grams) + 1 < NEAR_QUOTE_MIN_WORDS:
        return [0.0] * len(passage_bigrams)
    return [sum(g in found for g in grams) / len(grams) for found in passage_bigrams]


def support_scores(
    claims: Sequence[str], passages: Sequence[str], embedder: Embedder
) -> npt.NDArray[np.float32]:
    """``[claim, passage]``: how well each passage supports each claim (1 when quoted)."""
    import numpy as np

    scores = np.zeros((len(claims), len(passages)), dtype=np.float32)
    if not claims or not passages:
        return scores
    owners: list[int] = []
    sentences: list[str] = []
    for j, passage in enumerate(passages):
        found = split_sentences(passage) or [passage]
        sentences += found
        owners += [j] * len(found)
    haystacks = [normalise(p) for p in passages]
    grams = [set(_bigrams(p)) for p in passages]
    todo: list[int] = []
    for i, claim in enumerate(claims):
        plain = normalise(without_citations(claim))
        quoted = [j for j, hay in enumerate(haystacks) if plain and plain in hay]
        if quoted:
            scores[i, quoted] = 1.0
            continue
        near = near_quote(without_citations(claim), grams)
        if max(near) >= NEAR_QUOTE:
            scores[i] = [x if x >= NEAR_QUOTE else 0.0 for x in near]
        else:
            todo.append(i)
    if todo:
        claim_v = embedder.embed_queries([without_citations(claims[i]) for i in todo])
        sentence_v = embedder.embed_sentences(sentences)
        sims = claim_v @ sentence_v.T  # [todo, sentences]
        owner = np.asarray(owners)
        for j in range(len(passages)):
            scores[todo, j] = sims[:, owner == j].max(axis=1)
    return scores


def restates(claim: str, question: str) -> bool:
    """Whether ``claim`` only repeats the question (a non-answer, however similar it is to
    the passages the question retrieved): a question itself, or one whose words are all the
    question's."""
    plain = without_citations(claim).strip()
    if plain.endswith("?"):
        return True
    if not question.strip():
        return False
    words = {w.lower() for w in _WORD.findall(plain)}
    asked = {w.lower() for w in _WORD.findall(question)}
    return bool(words) and words <= asked | {"question", "answer"}
