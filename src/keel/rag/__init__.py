"""Knowledge: documents in, chunks embedded and indexed, hybrid search out.

The names below are this area's public API (pinned by ``tests/test_exported_members.py``);
each is imported from its module the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel._lazy import lazy_exports

if TYPE_CHECKING:
    from keel.rag.embeddings import Embedder
    from keel.rag.retrieve import Retriever
    from keel.rag.types import Chunk, Document, Hit, IngestReport

_EXPORTS = {
    "Document": "keel.rag.types",
    "Chunk": "keel.rag.types",
    "Hit": "keel.rag.types",
    "IngestReport": "keel.rag.types",
    "Embedder": "keel.rag.embeddings",
    "Retriever": "keel.rag.retrieve",
}
__all__ = [
    "Chunk",
    "Document",
    "Embedder",
    "Hit",
    "IngestReport",
    "Retriever",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
