"""Which language a text is written in, for the ``language`` guard.

The injection detector reads English (its encoder is all-MiniLM-L6-v2): on attacks written in
other languages it is thin (``benchmarks/guards.py --parts loco``), and no recipe tried with
that encoder holds up there. An app that serves its users in English (or in a few languages)
can say so, and a request in any other language is then refused before a model sees it. The
identifier is py3langid (a numpy port of langid.py, BSD-3-Clause; 97 languages, its model ships
in the wheel, about 0.1 ms a sentence). It is naive Bayes over byte n-grams: short texts get
low confidence in every language ("thanks", "SSO?"), so they pass.

A text is judged whole (in the detector's windows when long) and sentence by sentence, for
sentences of ``min_letters`` letters or more, so that an instruction in another language does
not hide behind a paragraph of English. A piece is foreign when its most likely language is not
allowed and has probability ``min_confidence`` or more (by default 0.5: more likely than all
the others together). ``zxx`` (no linguistic content: numbers, codes) is never foreign.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier

__all__ = ["Identified", "foreign_piece", "identify", "known_languages"]

NO_LANGUAGE = "zxx"  # py3langid's label for text with no linguistic content
_LETTER = re.compile(r"[^\W\d_]")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Identified:
    """The most likely language of a text (an ISO 639 code) and its probability."""

    language: str
    confidence: float


_LOADED: list[LanguageIdentifier] = []


def _identifier() -> LanguageIdentifier:
    """The process's identifier: its model file is decompressed once (about 0.6 s)."""
    if not _LOADED:
        with _LOCK:
            if not _LOADED:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _LOADED.append(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    return _LOADED[0]


def known_languages() -> frozenset[str]:
    """The language codes the identifier tells apart."""
    return frozenset(_identifier().nb_classes) - {NO_LANGUAGE}


def identify(text: str) -> Identified:
    language, confidence = _identifier().classify(text)
    return Identified(str(language), float(confidence))


def _pieces(text: str, min_letters: int) -> list[str]:
    from keel.guardrails.injection import windows
    from keel.rag.sentences import split_sentences

    whole = windows(text)
    sentences = [s for s in split_sentences(text) if len(_LETTER.findall(s)) >= min_letters]
    return whole + [s for s in sentences if s not in whole]


def foreign_piece(
    text: str, allowed: frozenset[str], min_confidence: float = 0.5, min_letters: int = 40
) -> Identified | None:
    """The first piece of ``text`` (see the module's docstring) written in a language not in
    ``allowed`` with probability ``min_confidence`` or more; None when there is none."""
    for piece in _pieces(text, min_letters):
        found = identify(piece)
        if (
            found.language not in allowed
            and found.language != NO_LANGUAGE
            and found.confidence >= min_confidence
        ):
            return found
    return None
