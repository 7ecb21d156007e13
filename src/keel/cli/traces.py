"""``keel traces``: traces of the app's turns."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keel.errors import UsageError

from ._common import _app, _errors, _print_json, err, out

traces_cli = typer.Typer(help="Traces of the app's turns.", no_args_is_help=True)


@traces_cli.command("list")
def traces_list(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
    thread: Annotated[str | None, typer.Option(help="Only this thread.")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error.")] = None,
    min_latency_ms: Annotated[float | None, typer.Option(help="Slower than this.")] = None,
    guard: Annotated[
        str | None, typer.Option(help="Guard outcome: none, pass, flagged, tripped.")
    ] = None,
    app_version: Annotated[str | None, typer.Option(help="Only this app version.")] = None,
    release: Annotated[str | None, typer.Option(help="Only turns this release served.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Recent traces, newest first."""
    with _errors():
        app = _app()
        rows = app.tracing.list(
            limit=limit,
            thread_id=thread,
            status=status,
            min_latency_ms=min_latency_ms,
            guard_outcome=guard,
            app_version=app_version,
            release_id=release,
        )
        app.close()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        err.print("no traces yet (every ask, chat and gateway request records one)")
    for r in rows:
        question = " ".join((r.get("question") or "").split())[:60]
        out.print(
            f"{r['trace_id']}  {r['started_at'][:19]}  {r['duration_ms']:8.1f} ms  "
            f"{r['status']:<5} guard={r.get('guard_outcome') or '-':<7} {question}",
            markup=False,
        )


@traces_cli.command("show")
def traces_show(
    trace_id: Annotated[str, typer.Argument(help="The trace id (32 hex characters).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """A trace as a tree: retrieval, model calls, tools and guards, with versions."""
    from rich.tree import Tree

    with _errors():
        app = _app()
        found = app.tracing.get(trace_id)
        app.close()
        if found is None:
            raise UsageError(f"no trace {trace_id!r}")
    if as_json:
        _print_json(found)
        return

    from keel.ops import semconv

    def label(span: dict[str, Any]) -> str:
        a = span["attributes"]
        bits = [f"[bold]{span['name']}[/bold]", f"{span['duration_ms']:.1f} ms"]
        if span["status"] != "ok":
            bits.append(f"[red]{span['status']}[/red]")
        for key in (
            "gen_ai.response.model",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "keel.retrieve.hits",
            "keel.tool.status",
            semconv.GUARD_POINT,
            semconv.GUARD_OUTCOME,
            "keel.stop_reason",
        ):
            if key in a:
                bits.append(f"{key.split('.')[-1]}={a[key]}")
        return "  ".join(bits)

    def add(tree: Tree, span: dict[str, Any]) -> None:
        node = tree.add(label(span))
        for child in span["children"]:
            add(node, child)

    root = Tree(f"trace {trace_id}")
    for span in found["spans"]:
        add(root, span)
    out.print(root)
    from keel.ops.semconv import TURN_SPAN, find_span

    turn = find_span(found["spans"], TURN_SPAN)
    if turn is not None:
        a = turn["attributes"]
        for key in (
            "keel.app.version",
            "keel.index.version",
            "keel.prompt.system_version",
            "keel.prompt.examples_version",
            "gen_ai.request.model",
            "keel.git.commit",
        ):
            if key in a:
                out.print(f"  {key} = {a[key]}", markup=False)
        if a.get("keel.input"):
            out.print(f"  input:  {a['keel.input']}", markup=False)
        if a.get("keel.output"):
            out.print(f"  output: {a['keel.output']}", markup=False)
