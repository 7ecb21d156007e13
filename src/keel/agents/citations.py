"""The citations of an answer: the passages the model cited as ``[n]``, or, when it cited none
it was given, the passages that support its sentences.

Models are asked to cite with ``[n]`` (the preamble of :mod:`keel.agents.context`). The
embedded model always does; small generative models often do not, or cite a number they were
not given. Then each answer sentence is attributed to the passages that support it
(:func:`keel.rag.support.support_scores`, the grounding guard's measure) and those citations
carry ``"attributed": True``; citations the model wrote carry ``"attributed": False``. A
sentence no passage supports gets no citation (the grounding guard reports it, when on); a
refusal, or a sentence that only repeats the question, is never attributed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keel.rag.types import Hit

if TYPE_CHECKING:
    from keel.rag.embeddings import Embedder

_MARKER = re.compile(r"\[(\d{1,3})\]")
_REFUSAL = re.compile(r"\b(i don't know|i do not know|i couldn't find|i could not find)\b", re.I)

DEFAULT_THRESHOLD = 0.55  # the grounding guard's default: the same notion of "supported"
MIN_WORDS = 4
TIE = 0.02  # passages this close to a sentence's best support are cited with it


def cited_numbers(text: str) -> list[int]:
    """The ``[n]`` markers in ``text``, in order of first use."""
    seen: list[int] = []
    for match in _MARKER.finditer(text):
        n = int(match.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def citations(
    text: str,
    hits: Sequence[Hit],
    *,
    embedder: Embedder | None = None,
    question: str = "",
    threshold: float = DEFAULT_THRESHOLD,
) -> list[dict[str, Any]]:
    """The answer's citations, each a passage's :attr:`Hit.citation` with its number ``n``
    and whether it was ``attributed`` by Keel rather than cited by the model."""
    numbers = cited_numbers(text)
    valid = [n for n in numbers if 1 <= n <= len(hits)]
    invalid = [n for n in numbers if not 1 <= n <= len(hits)]
    out = [{"n": n, **hits[n - 1].citation, "attributed": False} for n in valid]
    if (valid and not invalid) or embedder is None or not hits or not text.strip():
        return out
    cited = set(valid)
    for n in attribute(text, hits, embedder, question=question, threshold=threshold):
        if n not in cited:
            cited.add(n)
            out.append({"n": n, **hits[n - 1].citation, "attributed": True})
    return out


def attribute(
    text: str,
    hits: Sequence[Hit],
    embedder: Embedder,
    *,
    question: str = "",
    threshold: float = DEFAULT_THRESHOLD,
) -> list[int]:
    """Passage numbers supporting the sentences of ``text``, in order of first support: for
    each sentence, the passage that supports it best (and any within ``TIE`` of it), when
    that support reaches ``threshold``."""
    from keel.rag.sentences import split_sentences
    from keel.rag.support import restates, support_scores

    claims = [
        s
        for s in split_sentences(text)
        if len(s.split()) >= MIN_WORDS and not _REFUSAL.search(s) and not restates(s, question)
    ]
    if not claims:
        return []
    scores = support_scores(claims, [h.text for h in hits], embedder)
    order: list[int] = []
    for row in scores:
        best = float(row.max())
        if best < threshold:
            continue  # unsupported: no citation (the grounding guard reports it, when on)
        for j in sorted(range(len(hits)), key=lambda j: -float(row[j])):
            if row[j] >= best - TIE and j + 1 not in order:
                order.append(j + 1)
    return order
