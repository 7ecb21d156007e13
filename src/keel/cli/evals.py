"""Evaluation: ``keel eval``, ``keel compare`` and the ``keel evals`` datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, _progress, err, out


def eval_suite(
    suite: Annotated[Path, typer.Argument(help="A suite file, e.g. evals/smoke.yaml.")],
    baseline: Annotated[
        Path | None, typer.Option(help="Compare with this run (default: the suite's baseline).")
    ] = None,
    save_baseline: Annotated[
        Path | None, typer.Option(help="Save this run as a baseline file.")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write an HTML report here.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Evaluate the app on a suite and gate it: exit 0 pass, 1 gate failed, 2 usage error."""
    from keel.evals.check import evaluate
    from keel.evals.reports import terminal_table, to_json, write_html, write_junit

    with _errors():
        if not suite.is_file():
            raise UsageError(f"no suite file {suite}")
        if baseline is not None and not baseline.is_file():
            raise UsageError(f"no baseline file {baseline}")
        with _progress("evaluating", quiet=as_json) as advance:
            result = evaluate(suite, baseline=baseline, progress=advance, record=True)
        if save_baseline is not None:
            result.run.save(save_baseline)
        if report is not None:
            write_html(result.run, result.result, report, baseline=result.baseline)
        if junit is not None:
            write_junit(result.run, result.result, junit)
    if as_json:
        _print_json(to_json(result.run, result.result))
    else:
        out.print(terminal_table(result.run, result.result))
        for reason in result.result.reasons:
            err.print(f"[red]gate:[/red] {reason}")
        for name, why in result.run.skipped_metrics.items():
            err.print(f"skipped {name}: {why}")
        verdict = "[green]PASS[/green]" if result.result.passed else "[red]FAIL[/red]"
        err.print(f"{result.suite.name}: {verdict} ({len(result.run.cases)} case runs)")
        if result.run_id:
            err.print(f"recorded as {result.run_id} (the web console lists it under /ui/evals)")
    if not result.result.passed:
        raise typer.Exit(1)


def compare(
    suite: Annotated[Path, typer.Argument(help="A suite file.")],
    model: Annotated[list[str], typer.Option("--model", help="A model id; give two or more.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Run one suite per model: quality, p50 / p95 latency and cost per 1,000 requests, with
    the Pareto frontier marked (choosing a model is the first step of the lifecycle)."""
    from keel.evals.compare import compare_models

    with _errors():
        if len(model) < 2:
            raise UsageError("give at least two --model options")
        comparison = compare_models(suite, model)
    if as_json:
        _print_json(comparison.to_json())
        return
    out.print(comparison.table())


evals_cli = typer.Typer(help="Evaluation datasets.", no_args_is_help=True)


@evals_cli.command("from-traces")
def evals_from_traces(
    output: Annotated[Path, typer.Option(help="Dataset file to append the cases to (JSONL).")],
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most recent N turns.")] = 100,
    thread: Annotated[str | None, typer.Option(help="Only this thread.")] = None,
) -> None:
    """Stored turns become evaluation cases: the question as input, the answer given then as
    the reference (review it), the cited documents as reference documents."""
    from keel.evals.datasets import case_ids, cases_from_traces, save_dataset

    with _errors():
        app = _app()
        cases = cases_from_traces(app, limit=limit, thread_id=thread, exclude=case_ids(output))
        if cases:
            save_dataset(cases, output)
        app.close()
    err.print(f"{len(cases)} case(s) appended to {output}")


@evals_cli.command("generate")
def evals_generate(
    out: Annotated[Path, typer.Option(help="Dataset file to append the cases to (JSONL).")],
    size: Annotated[int, typer.Option(min=1, max=10_000, help="How many cases.")] = 20,
    seed: Annotated[int, typer.Option(help="The same seed gives the same cases.")] = 0,
    llm: Annotated[
        str | None,
        typer.Option(
            help="Generate with RAGAS and this model (e.g. openai:gpt-4o-mini); without it, "
            "offline retrieval self-tests."
        ),
    ] = None,
) -> None:
    """Cases made from the app's own index, seeded: with --llm, RAGAS test-set generation
    (questions and reference answers from the chunks; the LLM's answers are cached, so a
    rerun with the same seed writes the same cases); without it, retrieval self-tests (a
    sentence of a chunk as the query, its document expected), offline."""
    from keel.evals.datasets import retrieval_selftests, save_dataset

    with _errors():
        app = _app()
        failures: list[str] = []
        try:
            if llm is None:
                cases = retrieval_selftests(app, size, seed)
            else:
                from keel.evals.generate import generate_testset

                generated = generate_testset(app, llm, size=size, seed=seed)
                cases, failures = generated.cases, generated.failures
            if cases:
                save_dataset(cases, out)
        finally:
            app.close()
    for reason in failures:
        err.print(f"failed: {reason}", markup=False)
    err.print(f"{len(cases)} case(s) appended to {out}; {len(failures)} step(s) failed")


@evals_cli.command("from-feedback")
def evals_from_feedback(
    output: Annotated[Path, typer.Option(help="Dataset file to append the cases to (JSONL).")],
    max_score: Annotated[
        float, typer.Option(help="Feedback scored at most this (0 bad .. 1 good).")
    ] = 0.5,
) -> None:
    """Negative feedback becomes evaluation cases, with its provenance (the feedback-to-eval
    loop): the correction, when given, is the reference."""
    from keel.evals.datasets import case_ids, cases_from_feedback, save_dataset

    with _errors():
        app = _app()
        cases = cases_from_feedback(app, max_score=max_score, exclude=case_ids(output))
        if cases:
            save_dataset(cases, output)
        app.close()
    err.print(f"{len(cases)} case(s) appended to {output}")
