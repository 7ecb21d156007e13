"""``keel tune``: adapt the retriever to the app's documents and feedback, gated."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, _progress, err, out

tune_cli = typer.Typer(
    help="Tune the retriever (embedding model, reranker) on the app's own data.",
    no_args_is_help=True,
)

FromOpt = Annotated[
    str,
    typer.Option(
        "--from",
        help="Training pairs from: corpus (synthetic queries of the app's chunks), evals (the "
        "eval suite's reference documents, half of the cases), feedback (well-rated turns), "
        "all, or a comma-separated list.",
    ),
]
EpochsOpt = Annotated[int, typer.Option(min=1, max=100, help="Passes over the pairs.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the pairs' sampling and the training.")]
MaxPairsOpt = Annotated[
    int, typer.Option(min=1, help="At most this many corpus pairs (a seeded sample).")
]
BatchOpt = Annotated[int, typer.Option(min=2, max=1024, help="Training batch size.")]
SuiteOpt = Annotated[
    Path | None,
    typer.Option(help="The eval suite the gate measures on (default: the app's, if any)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _run(
    kind: str,
    sources: str,
    epochs: int,
    seed: int,
    max_pairs: int,
    batch_size: int,
    suite: Path | None,
    as_json: bool,
) -> None:
    from keel.tuning.gate import MIN_QUERIES
    from keel.tuning.train import TrainParams
    from keel.tuning.tune import TuneRequest, parse_sources, tune

    with _errors():
        if suite is not None and not suite.is_file():
            raise UsageError(f"no suite file {suite}")
        request = TuneRequest(
            kind=kind,  # type: ignore[arg-type]
            sources=parse_sources(sources),
            params=TrainParams(epochs=epochs, batch_size=batch_size, seed=seed),
            max_pairs=max_pairs,
            suite=suite,
            show_training_progress=err.is_terminal and not as_json,
        )
        app = _app()
        with _progress(f"tuning {kind}", quiet=as_json) as advance:
            artefact = tune(app, request, progress=lambda phase, done, total: advance(done, total))
        app.close()
    if as_json:
        _print_json(artefact.to_dict())
        return
    g = artefact.gate
    pairs = ", ".join(f"{n} from {s}" for s, n in artefact.pairs.items())
    out.print(f"tuned {kind} {artefact.id}: {pairs}; trained in {artefact.train_seconds:.0f} s")
    if g is not None:
        out.print(
            f"gate on {g.on}: nDCG@10 {g.before:.4f} -> {g.after:.4f} "
            f"(95% CI of the gain [{g.ci_low:+.4f}, {g.ci_high:+.4f}], {g.queries} queries)",
            markup=False,
        )
    section = "[rag.embeddings] model" if kind == "embeddings" else "[rag.rerank] model"
    if artefact.deployable:
        out.print(f'deployable: set {section} = "{artefact.ref}"', markup=False)
        if kind == "embeddings":
            out.print("then keel ingest (a tuned model indexes into a collection of its own)")
        out.print("and keel release create --gate <suite> to ship it")
    elif g is not None and g.queries < MIN_QUERIES:
        out.print(
            f"not deployable: {g.queries} held-out queries are too few to judge (at least "
            f"{MIN_QUERIES}; add eval cases with reference_doc_ids)",
            markup=False,
        )
    elif g is not None and g.ci_high < 0:
        out.print("not deployable: it is significantly worse than the current model", markup=False)
    else:
        out.print("not deployable: the gain is not significant", markup=False)


@tune_cli.command("embeddings")
def tune_embeddings(
    sources: FromOpt = "corpus",
    epochs: EpochsOpt = 1,
    seed: SeedOpt = 0,
    max_pairs: MaxPairsOpt = 2000,
    batch_size: BatchOpt = 32,
    suite: SuiteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the app's embedding model on pairs from its own data, then gate it against
    the current model on queries it never trained on."""
    _run("embeddings", sources, epochs, seed, max_pairs, batch_size, suite, as_json)


@tune_cli.command("reranker")
def tune_reranker(
    sources: FromOpt = "corpus",
    epochs: EpochsOpt = 1,
    seed: SeedOpt = 0,
    max_pairs: MaxPairsOpt = 2000,
    batch_size: BatchOpt = 16,
    suite: SuiteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a cross-encoder reranker ([rag.rerank]) on the same pairs, then gate it against
    the retrieval without it."""
    _run("reranker", sources, epochs, seed, max_pairs, batch_size, suite, as_json)


@tune_cli.command("list")
def tune_list(as_json: JsonOpt = False) -> None:
    """Tuned artefacts, newest first."""
    from keel.tuning.artefacts import ArtefactStore

    with _errors():
        app = _app()
        found = ArtefactStore(app.data_dir).list()
        app.close()
    if as_json:
        _print_json([a.to_dict() for a in found])
        return
    for a in found:
        g = a.gate
        figure = f"nDCG@10 {g.before:.3f} -> {g.after:.3f}" if g else "not gated"
        state = (
            f"withdrawn: {a.withdrawn}"
            if a.withdrawn
            else "deployable"
            if a.deployable
            else "not deployable"
        )
        out.print(f"{a.id}  {a.kind:<10} {a.created_at}  {figure}  {state}", markup=False)
    if not found:
        err.print("no tuned artefacts (keel tune embeddings makes one)")


@tune_cli.command("show")
def tune_show(
    artefact_id: Annotated[str, typer.Argument(help="An artefact id, prefix or tuned:<id>.")],
) -> None:
    """One artefact's manifest, as JSON."""
    from keel.tuning.artefacts import ArtefactStore

    with _errors():
        app = _app()
        artefact = ArtefactStore(app.data_dir).get(artefact_id)
        app.close()
    _print_json({**artefact.to_dict(), "path": str(artefact.path)})
    sys.stdout.flush()
