"""``keel monitor``: production monitoring."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, err, out

monitor_cli = typer.Typer(help="Production monitoring.", no_args_is_help=True)


@monitor_cli.command("drift")
def monitor_drift(
    reference: Annotated[
        Path | None,
        typer.Option(help="An evaluated dataset (JSONL/YAML) as the reference: train/serve skew."),
    ] = None,
    reference_window: Annotated[
        bool,
        typer.Option(
            "--reference-window",
            help="Use the production window just before the current one as the reference.",
        ),
    ] = False,
    window: Annotated[
        str,
        typer.Option(
            help="The current sample: the last N traced questions, or a duration (30m, 24h, 7d)."
        ),
    ] = "200",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Do recent production questions drift away from what was evaluated (or from an earlier
    window)? With neither --reference nor --reference-window, the reference is the deployed
    release's evaluated dataset, else the app's eval suite (evals/ beside keel.toml); the
    output says which. Exit 1 on alert. Each check is recorded; the gateway's /metrics shows
    the last."""
    from keel.evals.datasets import load_dataset
    from keel.evals.drift_reference import default_reference
    from keel.ops.monitor import Window, check_drift

    with _errors():
        if reference is not None and reference_window:
            raise UsageError("give either --reference DATASET or --reference-window, not both")
        if reference is not None and not reference.is_file():
            raise UsageError(f"no dataset file {reference}")
        span = Window.parse(window)
        app = _app()
        try:
            questions = None
            label = str(reference) if reference is not None else ""
            if reference is not None:
                questions = [c.input for c in load_dataset(reference).cases]
            elif not reference_window:
                found = default_reference(app)
                questions, label = found.questions, found.label
            report = check_drift(
                app,
                window=span,
                reference_questions=questions,
                reference_window=reference_window,
                reference_label=label,
            )
        finally:
            app.close()
    used = label or (f"the production window before the last {window}" if reference_window else "")
    if as_json:
        _print_json({**report.to_dict(), "reference": used})
    else:
        err.print(f"reference: {used}", markup=False)
        line = (
            f"mean shift {report.mean_shift:.4f}  MMD {report.mmd:.4f} (p={report.mmd_p_value:.3f})"
        )
        if report.top_score_ks is not None:
            line += f"  top-score KS {report.top_score_ks:.3f} (p={report.top_score_p_value:.3f})"
        if report.ood_rate is not None:
            line += f"  OOD {report.ood_rate:.0%}"
        if report.refusal_rate_change is not None:
            line += f"  refusals {report.refusal_rate_change:+.0%}"
        out.print(line, markup=False)
        for reason in report.reasons:
            err.print(f"[red]drift:[/red] {reason}")
        err.print("ALERT" if report.alert else "no drift")
    if report.alert:
        raise typer.Exit(1)
