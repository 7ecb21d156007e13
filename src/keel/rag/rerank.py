"""A reranking stage: a cross-encoder reads the question with each fused candidate and
orders them by its score (``[rag.rerank]``, off unless configured).

Hybrid retrieval ranks chunks by two cheap signals; a cross-encoder reads the question and
the passage together, which ranks better and costs one model pass per candidate, so it sees
only the ``candidates`` best fused chunks. ``Hit.score`` of those becomes the cross-encoder's
score; a search for more than ``candidates`` chunks gets the rest after them in their fused
order (and score). Every hit keeps its dense and BM25 ranks. No pretrained cross-encoder
ships offline, so the model is one that ``keel tune reranker`` trained (or a local
sentence-transformers ``CrossEncoder`` folder).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from keel.rag.types import Hit

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = ["Reranker"]


class Reranker:
    """Rescores hits with a sentence-transformers ``CrossEncoder`` (loaded on first use)."""

    def __init__(
        self, load_from: str, model_id: str, *, candidates: int = 20, batch_size: int = 32
    ) -> None:
        self.load_from = load_from
        self.model_id = model_id
        self.candidates = candidates
        self.batch_size = batch_size
        self._model: CrossEncoder | None = None
        self._lock = threading.Lock()  # loading
        self._use = threading.Lock()  # a fast tokenizer may not be used by two threads at once

    @property
    def model(self) -> CrossEncoder:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import CrossEncoder

                    self._model = CrossEncoder(self.load_from, device="cpu", local_files_only=True)
        return self._model

    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        pairs: list[Any] = [(query, t) for t in texts]
        model = self.model
        with self._use:
            out = model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        return [float(s) for s in out]

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` by the cross-encoder (ties keep the fused order)."""
        scored = self.scores(query, [h.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: (-scored[i], i))
        return [replace(hits[i], score=scored[i]) for i in order[:k]]
