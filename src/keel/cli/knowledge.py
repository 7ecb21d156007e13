"""The knowledge base: ``keel ingest`` and ``keel search``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, _progress, err, out


def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders (default: rag.paths).")
    ] = None,
    collection: Annotated[
        str | None, typer.Option(help="Collection (default: rag.collection).")
    ] = None,
    prune: Annotated[
        bool, typer.Option(help="Delete documents that are gone from these paths.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load, chunk, embed and index documents; unchanged ones are skipped."""
    with _errors():
        app = _app()
        with _progress("ingesting", quiet=as_json) as advance:
            # On the command line, paths are relative to the current directory.
            targets = [p if p.is_absolute() else Path.cwd() / p for p in paths or []]
            report = app.ingest(
                targets or None, prune=prune, collection=collection, progress=advance
            )
        app.close()
    if as_json:
        _print_json(report.to_dict())
        return
    s = report.summary()
    err.print(
        f"{report.collection}: {s['added']} added, {s['updated']} updated, "
        f"{s['unchanged']} unchanged, {s['deleted']} deleted, {s['skipped']} skipped "
        f"({report.chunks_written} chunks written, {report.embedded} embedded) "
        f"in {report.seconds:.1f}s; index version {report.index_version}"
    )
    for skipped in report.skipped:
        err.print(f"  skipped {skipped.source}: {skipped.reason}")


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="How many hits.")] = 5,
    collection: Annotated[
        str | None, typer.Option(help="Collection (default: rag.collection).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="hybrid, dense or bm25 (default: rag.retrieval.mode).")
    ] = None,
    where: Annotated[
        str | None, typer.Option(help='Metadata filter as JSON, e.g. {"source": "docs/a.md"}.')
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
) -> None:
    """Search the knowledge base: hybrid dense + BM25 retrieval with citations."""
    from keel.rag.retrieve import MODES

    with _errors():
        if mode is not None and mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}: use hybrid, dense or bm25")
        flt = None
        if where:
            try:
                flt = json.loads(where)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--where is not valid JSON: {exc}") from exc
        app = _app()
        hits = app.search(query, k, where=flt, mode=mode, collection=collection)
        app.close()
    if as_json:
        _print_json([h.to_dict() for h in hits])
        return
    if not hits:
        err.print("no results (is the collection ingested? try `keel ingest`)")
        return
    for n, hit in enumerate(hits, start=1):
        where_in = " › ".join(hit.headings) if hit.headings else hit.title
        page = f" p.{hit.page}" if hit.page else ""
        out.print(f"[bold][{n}][/bold] {hit.source}{page}  {where_in}  (score {hit.score:.4f})")
        snippet = " ".join(hit.text.split())
        out.print(f"    {snippet[:300]}{'…' if len(snippet) > 300 else ''}", markup=False)
        out.print(f"    doc {hit.doc_id}  chunk {hit.chunk_id}  chars {hit.start}-{hit.end}")
