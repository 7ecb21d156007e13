"""What an app is for, as the off-topic check (task drift) reads it.

A request is on topic when its embedding is close to something the app is about: its
description, a paragraph of its system prompt, or a chunk of its knowledge (the nearest chunk
in its collection). The score is the highest of those cosine similarities; the ``off_topic``
validator flags a request whose score is under its threshold. It is separate from prompt
injection: "can you give me a recipe instead?" is no attack, but a support bot is not for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from keel.rag.embeddings import Embedder

__all__ = ["AppScope", "ScopeMatch"]

# A chunk's nearest neighbour in the app's knowledge: (cosine similarity, chunk text), or None
# when the collection is empty.
Nearest = Callable[["np.ndarray"], "tuple[float, str] | None"]


@dataclass(frozen=True)
class ScopeMatch:
    score: float  # the best cosine similarity
    source: str  # "description", "system prompt" or "knowledge"
    text: str  # the closest piece (shortened)


@dataclass
class AppScope:
    """The app's description, its system prompt and a lookup into its knowledge."""

    description: str = ""
    system_prompt: str = ""
    nearest: Nearest | None = None
    _pieces: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.description.strip():
            self._pieces.append(("description", self.description.strip()))
        for para in re.split(r"\n\s*\n", self.system_prompt):
            para = " ".join(para.split())
            # Template placeholders and one-word lines say nothing about the app's subject.
            if len(para.split()) >= 4 and "{" not in para:
                self._pieces.append(("system prompt", para))

    def __bool__(self) -> bool:
        return bool(self._pieces) or self.nearest is not None

    def match(self, text: str, embedder: Embedder) -> ScopeMatch:
        """The closest thing the app is about, for ``text``."""
        import numpy as np

        query = np.asarray(embedder.embed_query(text), dtype=np.float32)
        best = ScopeMatch(-1.0, "none", "")
        if self._pieces:
            vectors = embedder.encode([p for _, p in self._pieces])
            sims = vectors @ query
            i = int(sims.argmax())
            best = ScopeMatch(float(sims[i]), self._pieces[i][0], self._pieces[i][1][:120])
        if self.nearest is not None:
            found = self.nearest(query)
            if found is not None and found[0] > best.score:
                best = ScopeMatch(float(found[0]), "knowledge", found[1][:120])
        return best
