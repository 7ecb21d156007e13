"""PDF parsing under a per-document budget: a page limit, and a time limit enforced by
parsing in a child process that is killed when the time is up.

A PDF's parse time is not bounded by its size (a few KB of compressed content streams can
take pypdf many seconds), and a thread cannot be stopped; a process can. Children are forked
from a ``forkserver`` that has pypdf and the loaders imported already (cheap to start, and
never a fork of a multi-threaded server). A document over its budget becomes a ``Skipped``
with the reason, which the ingest report lists.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from keel.rag.types import Document, Skipped


@dataclass(frozen=True)
class PdfBudget:
    """What one PDF may cost: ``timeout_s`` seconds of parsing, ``max_pages`` pages
    (``[rag] pdf_timeout_s`` and ``pdf_max_pages`` in keel.toml)."""

    timeout_s: float = 30.0
    max_pages: int = 2000


_context_lock = threading.Lock()
_context: Any = None


def _mp_context() -> Any:
    global _context
    with _context_lock:
        if _context is None:
            import multiprocessing

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["keel.rag.loaders", "pypdf"])
            _context = ctx
        return _context


def _child(conn: Connection, data: bytes, path: str, source: str, max_pages: int) -> None:
    from keel.rag.loaders import load_pdf

    try:
        conn.send(load_pdf(data, Path(path), source, max_pages=max_pages))
    except Exception as exc:  # reported, never raised in the parent
        from keel.rag.types import Skipped

        conn.send(Skipped(source, f"could not load pdf file: {type(exc).__name__}"))
    finally:
        conn.close()


def load_pdf_within(data: bytes, path: Path, source: str, budget: PdfBudget) -> Document | Skipped:
    """Parse one PDF in a child process; past ``budget.timeout_s`` the child is killed and
    the document skipped."""
    from keel.rag.types import Skipped

    ctx = _mp_context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child,
        args=(child, data, str(path), source, budget.max_pages),
        name="keel-pdf",
        daemon=True,
    )
    proc.start()
    child.close()
    try:
        if not parent.poll(budget.timeout_s):
            return Skipped(
                source,
                f"PDF parsing took longer than {budget.timeout_s:g} s ([rag] pdf_timeout_s)",
            )
        try:
            result: Document | Skipped = parent.recv()
        except EOFError:
            return Skipped(source, f"the PDF parser failed (exit code {proc.exitcode})")
        return result
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        proc.close()
