"""Keel: agents and RAG over your own documents, with the operations work built in.

The root API is deliberately tiny (pinned by ``tests/test_exported_members.py``)::

    import keel
    app = keel.App.from_config("keel.toml")

Heavy libraries (torch, chromadb, sentence-transformers) load only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["App", "__version__"]

if TYPE_CHECKING:
    from keel.app import App


def __getattr__(name: str) -> Any:
    if name == "App":
        from keel.app import App

        return App
    raise AttributeError(f"module 'keel' has no attribute {name!r}")
