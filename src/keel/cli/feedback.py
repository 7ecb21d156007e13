"""``keel feedback``: human feedback on answers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _errors, err

feedback_cli = typer.Typer(help="Human feedback on answers.", no_args_is_help=True)


@feedback_cli.command("export")
def feedback_export(
    max_score: Annotated[
        float | None, typer.Option(help="Only feedback scored at most this (0 bad .. 1 good).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format: jsonl.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Write here (default: stdout).")] = None,
) -> None:
    """Feedback joined to its traces, as evaluation cases (input, answer, contexts,
    correction, trace id): the start of the feedback-to-eval loop."""
    from keel.ops.feedback_export import export_feedback, write_jsonl

    with _errors():
        if fmt != "jsonl":
            raise UsageError(f"unknown format {fmt!r} (jsonl)")
        app = _app()
        cases = export_feedback(app.engine, max_score=max_score, turns=app.turn_record)
        count = write_jsonl(cases, output if output is not None else sys.stdout)
        app.close()
    err.print(f"{count} cases exported")
