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
        float | None,
        typer.Option(help="Only feedback scored at most this (0 bad .. 1 good); jsonl only."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl: evaluation cases; sft: chat examples for supervised fine-tuning; "
            "dpo: preference pairs (chosen, rejected).",
        ),
    ] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Write here (default: stdout).")] = None,
) -> None:
    """Feedback joined to its traces: evaluation cases (input, answer, contexts, correction,
    trace id), the start of the feedback-to-eval loop; or training data for tuning the
    language model elsewhere (--format sft|dpo), each record with its provenance."""
    from keel.ops.feedback_export import export_feedback, write_jsonl

    with _errors():
        if fmt not in ("jsonl", "sft", "dpo"):
            raise UsageError(f"unknown format {fmt!r} (jsonl, sft, dpo)")
        if fmt != "jsonl" and max_score is not None:
            raise UsageError(
                "--max-score selects evaluation cases (--format jsonl); sft and dpo pick "
                "good and bad replies by their scores themselves"
            )
        app = _app()
        if fmt == "jsonl":
            records = export_feedback(app.engine, max_score=max_score, turns=app.turn_record)
            what = "cases"
        else:
            from keel.tuning.llm_data import preference_pairs, rated_turns, sft_examples

            rated = rated_turns(
                app.engine, app.turn_record, system=app.definition.authored_prompts.system
            )
            if fmt == "sft":
                records = [e.to_dict() for e in sft_examples(rated)]
                what = "supervised examples"
            else:
                records = [p.to_dict() for p in preference_pairs(rated)]
                what = "preference pairs"
        count = write_jsonl(records, output if output is not None else sys.stdout)
        app.close()
    err.print(f"{count} {what} exported")
