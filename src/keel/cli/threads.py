"""Conversation threads and retention: ``keel threads`` and ``keel prune``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import _app, _errors, _print_json, err, out

threads_cli = typer.Typer(help="Conversation threads.", no_args_is_help=True)


@threads_cli.command("list")
def threads_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Threads, most recently used first."""
    with _errors():
        app = _app()
        rows = [
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
            for r in app.threads.all()
        ]
        app.close()
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        out.print(f"{r['thread_id']}  {r['updated_at'][:19]}  owner={r['owner'] or '-'}")


@threads_cli.command("prune")
def threads_prune(
    older_than_days: Annotated[
        float | None, typer.Option(help="Default: threads.retention_days in keel.toml.")
    ] = None,
) -> None:
    """Delete threads idle for longer than the retention period."""
    with _errors():
        app = _app()
        gone = app.prune_threads(older_than_days)
        app.close()
    err.print(f"deleted {len(gone)} thread(s)")


def prune(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Apply the [retention] periods of keel.toml: delete older traces, feedback, usage rows,
    cache entries and threads (the gateway does it every retention.interval_s)."""
    with _errors():
        app = _app()
        report = app.prune()
        app.close()
    if as_json:
        _print_json(report)
        return
    for kind, count in report.items():
        out.print(f"{kind:<9} {'no period set' if count is None else f'{count} deleted'}")
