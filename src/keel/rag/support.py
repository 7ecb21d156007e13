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

:class:`SupportPrefetch` fills those caches ahead: while a generative model writes its answer,
it embeds the passages' sentences and each finished sentence of the answer that will need the
model, so the check after the reply finds them ready (grounding's ``prefetch`` option).
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
_ENDED = re.compile(r"[.!?…][\"'”’)\]]*\s*$")  # text that ends as a sentence ends

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


def passage_sentences(passages: Sequence[str]) -> tuple[list[str], list[int]]:
    """The passages' sentences (what a claim's embedding is compared with) and, for each,
    the index of its passage."""
    owners: list[int] = []
    sentences: list[str] = []
    for j, passage in enumerate(passages):
        found = split_sentences(passage) or [passage]
        sentences += found
        owners += [j] * len(found)
    return sentences, owners


class _Lexical:
    """The checks that need no model: is a claim quoted, or near-quoted, from a passage?"""

    def __init__(self, passages: Sequence[str]) -> None:
        self.haystacks = [normalise(p) for p in passages]
        self.grams = [set(_bigrams(p)) for p in passages]

    def scores(self, claim: str) -> list[float] | None:
        """Per passage, 1 where ``claim`` is quoted, else the near-quote share where one is
        at least :data:`NEAR_QUOTE`; None when only the embedding model can tell."""
        plain = normalise(without_citations(claim))
        quoted = [j for j, hay in enumerate(self.haystacks) if plain and plain in hay]
        if quoted:
            return [1.0 if j in quoted else 0.0 for j in range(len(self.haystacks))]
        near = near_quote(without_citations(claim), self.grams)
        if max(near, default=0.0) >= NEAR_QUOTE:
            return [x if x >= NEAR_QUOTE else 0.0 for x in near]
        return None


def support_scores(
    claims: Sequence[str], passages: Sequence[str], embedder: Embedder
) -> npt.NDArray[np.float32]:
    """``[claim, passage]``: how well each passage supports each claim (1 when quoted)."""
    import numpy as np

    scores = np.zeros((len(claims), len(passages)), dtype=np.float32)
    if not claims or not passages:
        return scores
    lexical = _Lexical(passages)
    todo: list[int] = []
    for i, claim in enumerate(claims):
        found = lexical.scores(claim)
        if found is None:
            todo.append(i)
        else:
            scores[i] = found
    if todo:
        sentences, owners = passage_sentences(passages)
        claim_v = embedder.embed_queries([without_citations(claims[i]) for i in todo])
        sentence_v = embedder.embed_sentences(sentences)
        sims = claim_v @ sentence_v.T  # [todo, sentences]
        owner = np.asarray(owners)
        for j in range(len(passages)):
            scores[todo, j] = sims[:, owner == j].max(axis=1)
    return scores


class SupportPrefetch:
    """Embeds what :func:`support_scores` will ask the encoder for while a model is still
    writing its answer, so that checking the finished answer costs little more than its
    last sentence.

    Made when the passages are known (after retrieval): their sentences are embedded first
    (:meth:`Embedder.embed_sentences`). :meth:`feed` takes the answer's text as it streams;
    each sentence that is complete (another one has begun after it), and the last one as
    soon as it ends with ``.``, ``!`` or ``?`` (the answer usually ends there; should the model
    go on, that vector only cost time), that has ``min_words`` words or more, and is neither
    quoted nor near-quoted from a passage is embedded as a claim
    (:meth:`Embedder.embed_queries`, whose in-memory cache the check then reads). The work
    runs on one thread of its own, in order; :meth:`finish` says the answer is over and does
    not wait: the check waits for a sentence this thread is embedding at that moment (the
    embedder computes a text once for both) and embeds what is still queued itself. Vectors
    are a function of the text alone, so a sentence split differently at the end costs time,
    never a different score. ``embedded`` counts the texts this prefetch asked for (cached
    or not).
    """

    def __init__(self, embedder: Embedder, passages: Sequence[str], min_words: int = 4) -> None:
        import queue
        import threading

        self.embedder = embedder
        self.min_words = min_words
        self.passages = [p for p in passages if p.strip()]
        self.embedded = 0
        self._lexical = _Lexical(self.passages)
        self._text = ""
        self._handled = 0  # sentences of the answer already looked at
        self._queued: set[str] = set()  # claims already looked at (complete or last)
        self._jobs: queue.SimpleQueue[tuple[str, list[str]] | None] = queue.SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(
            target=self._work, name="keel-support-prefetch", daemon=True
        )
        if self.passages:
            self._jobs.put(("sentences", passage_sentences(self.passages)[0]))
            self._worker.start()

    def restart(self) -> None:
        """The model's reply begins again (a retry, or a fallback model): forget its text."""
        self._text, self._handled = "", 0

    def feed(self, text: str) -> None:
        """The next piece of the answer, as the model wrote it."""
        if self._closed or not self.passages or not text:
            return
        self._text += text
        found = split_sentences(self._text)
        done = found[:-1]  # the last one may go on
        for sentence in done[self._handled :]:
            self._claim(sentence)
        self._handled = max(self._handled, len(done))
        # The last sentence once it ends as a sentence ends: an answer usually stops there,
        # and the model's end of reply comes a token later, too late to embed it before the
        # check. Should the model go on with it, that vector only cost time.
        if found and _ENDED.search(without_citations(found[-1])):
            self._claim(found[-1])

    def _claim(self, sentence: str) -> None:
        claim = without_citations(sentence)
        if claim in self._queued or len(sentence.split()) < self.min_words:
            return
        self._queued.add(claim)
        if self._lexical.scores(claim) is None:
            self._jobs.put(("claims", [claim]))

    def finish(self) -> None:
        """The answer is complete: what is queued is still embedded, nothing more is taken."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)

    def _work(self) -> None:
        import logging

        while (job := self._jobs.get()) is not None:
            kind, texts = job
            try:
                if kind == "sentences":
                    self.embedder.embed_sentences(texts)
                else:
                    self.embedder.embed_queries(texts)
            except Exception as exc:  # the check embeds them itself, and fails there if it must
                logging.getLogger(__name__).warning(
                    "embedding ahead of the grounding check failed: %s: %s",
                    type(exc).__name__,
                    exc,
                )
                return
            self.embedded += len(texts)


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
