"""``keel audit``: the audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, err, out

audit_cli = typer.Typer(help="The audit log of administrative actions.", no_args_is_help=True)


@audit_cli.command("list")
def audit_list(
    since: Annotated[
        str | None, typer.Option(help="Only entries from this ISO date or time on.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="The newest N.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Keys created and revoked, documents ingested, releases deployed, promoted and rolled
    back, caches cleared, access denied: oldest first."""
    from datetime import UTC, datetime

    from keel.ops.audit import AuditLog

    with _errors():
        start = None
        if since is not None:
            try:
                moment = datetime.fromisoformat(since)
            except ValueError:
                raise UsageError(f"--since: not an ISO date or time: {since!r}") from None
            start = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        app = _app()
        rows = [
            e.to_dict() for e in AuditLog(app.engine, app.name).entries(since=start, limit=limit)
        ]
        app.close()
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        out.print(
            f"{r['seq']:>6}  {r['at'][:19]}  {r['actor']:<16} {r['action']:<20} {r['target']}",
            markup=False,
        )


@audit_cli.command("verify")
def audit_verify() -> None:
    """Check the audit log's hash chain: exit 1 naming the first row that was changed,
    inserted or removed."""
    from keel.ops.audit import AuditLog

    with _errors():
        app = _app()
        log = AuditLog(app.engine, app.name)
        broken = log.verify()
        app.close()
    if broken is not None:
        err.print(f"[red]audit log broken at row {broken.seq}:[/red] {broken.reason}")
        raise typer.Exit(1)
    err.print("audit log intact")
