"""``keel privacy``: export or erase one person's data (keel.privacy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import _app, _errors, _print_json, out

privacy_cli = typer.Typer(
    help="One person's data: threads, traces, feedback, usage, cache entries.",
    no_args_is_help=True,
)


@privacy_cli.command("export")
def privacy_export(
    user: Annotated[str, typer.Option("--user", help="The end-user id (OpenAI's user).")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here (default: stdout).")
    ] = None,
) -> None:
    """Everything Keel holds about a person, as JSON."""
    from keel.privacy import export_user

    with _errors():
        data = export_user(_app(), user)
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out_file is None:
        print(text)
    else:
        out_file.write_text(text + "\n", encoding="utf-8")
        out.print(f"wrote {out_file}")


@privacy_cli.command("erase")
def privacy_erase(
    user: Annotated[str, typer.Option("--user", help="The end-user id (OpenAI's user).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was removed as JSON.")
    ] = False,
) -> None:
    """Delete everything Keel holds about a person, everywhere, and say what went (the audit
    log records the erasure under a hash of the id)."""
    from keel.privacy import erase_user

    with _errors():
        done = erase_user(_app(), user)
    if as_json:
        _print_json(done.to_dict())
    else:
        out.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in done.to_dict().items()))
