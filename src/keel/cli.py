"""The ``keel`` command line (typer + rich).

Exit codes: 0 ok, 1 a check failed or a backend failed, 2 usage or configuration error.
``--json`` prints machine-readable output on stdout; messages and progress go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from keel import __version__
from keel.errors import KeelError, UsageError

if TYPE_CHECKING:
    from keel.app import App

cli = typer.Typer(
    name="keel",
    help="Keel: chatbots and agents over your own documents, with the operations built in.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    config: Path | None = None


state = _State()


@contextmanager
def _errors() -> Iterator[None]:
    """Turn Keel's errors into a one-line message and the documented exit code."""
    try:
        yield
    except KeelError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        reason = _storage_failure(exc)
        if reason is None:
            raise
        err.print(f"[red]error:[/red] {reason}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _storage_failure(exc: Exception) -> str | None:
    """A data directory or database the command cannot use (unwritable, missing, not a
    database), as one line; None for any other failure."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError | sqlite3.Error):
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        return f"the keel database cannot be used: {detail}"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"the data directory cannot be used{where}: {exc.strerror or exc}"
    return None


def _config_path() -> Path:
    from keel.settings import get_settings

    if state.config is not None:
        return state.config
    configured = get_settings().config
    return configured if configured is not None else Path("keel.toml")


def _app() -> App:
    from keel.app import App

    return App.from_config(_config_path())


@contextmanager
def _progress(label: str, *, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (only on a terminal, never with --json); yields the
    ``(done, total)`` callback long work reports to."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    )
    with bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@cli.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="keel.toml to use (default: ./keel.toml or KEEL_CONFIG)."
        ),
    ] = None,
) -> None:
    state.config = config


@cli.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the app in.")],
    name: Annotated[str | None, typer.Option(help="App name (default: the folder's name).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the scaffold's own files.")] = False,
    guards: Annotated[
        bool, typer.Option("--guards/--no-guards", help="Write the default guard policy.")
    ] = True,
) -> None:
    """Create a working app: keel.toml, prompts, tools.py, docs/ and evals/."""
    from keel.scaffold import init_app

    with _errors():
        written = init_app(directory, name=name, force=force, guards=guards)
    err.print(f"Created a Keel app in {directory} ({len(written)} files). Next:")
    err.print(f'  cd {directory}\n  keel ingest docs\n  keel search "how do I add documents?"')


@cli.command()
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


@cli.command()
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


def _scopes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [s.strip() for s in value.split(",") if s.strip()]


def _print_answer(answer: Any) -> None:
    if answer.pending_approval:
        out.print("[yellow]Waiting for approval:[/yellow]")
        for call in answer.pending_approval:
            out.print(
                f"  {call['name']}({json.dumps(call['args'])})  call {call['id']}", markup=False
            )
        out.print(f"Resume with: keel resume {answer.thread_id} --approve (or --reject)")
        return
    out.print(answer.text, markup=False)
    for c in answer.citations:
        where = " › ".join(c["headings"]) if c["headings"] else c["title"]
        out.print(f"  [{c['n']}] {c['source']}  {where}", markup=False, style="dim")
    for t in answer.tool_calls:
        out.print(f"  tool {t['name']} → {t['status']}", markup=False, style="dim")


@cli.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question or message.")],
    thread: Annotated[str | None, typer.Option(help="Continue this thread (default: new).")] = None,
    scopes: Annotated[
        str | None, typer.Option(help="Comma-separated scopes the caller holds (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Ask the app one question (a turn in a thread), with citations."""
    with _errors():
        app = _app()
        answer = app.ask(question, thread_id=thread, scopes=_scopes(scopes))
        app.close()
    if as_json:
        _print_json(answer.to_dict())
        return
    _print_answer(answer)
    err.print(f"thread {answer.thread_id}", style="dim")


@cli.command()
def resume(
    thread: Annotated[str, typer.Argument(help="The thread waiting for approval.")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve every pending call.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject every pending call.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Approve or reject the tool calls a thread is waiting on, and continue it."""
    with _errors():
        if approve == reject:
            raise UsageError("give exactly one of --approve or --reject")
        app = _app()
        answer = app.resume(thread, "approve" if approve else "reject")
        app.close()
    if as_json:
        _print_json(answer.to_dict())
        return
    _print_answer(answer)


@cli.command()
def chat(
    thread: Annotated[str | None, typer.Option(help="Continue this thread (default: new).")] = None,
    scopes: Annotated[
        str | None, typer.Option(help="Comma-separated scopes the caller holds (default: all).")
    ] = None,
) -> None:
    """Chat in the terminal: answers stream; risky tool calls ask for your approval."""
    with _errors():
        app = _app()
        held = _scopes(scopes)
        err.print(f"Chatting with {app.name} (empty line or Ctrl-D to quit).", style="dim")
        while True:
            try:
                question = input("you> ").strip()
            except EOFError:
                break
            if not question:
                break
            out.print("bot> ", end="")
            answer: dict[str, Any] = {}
            for event in app.stream(question, thread_id=thread, scopes=held):
                if event["type"] == "token":
                    out.print(event["text"], end="", markup=False)
                elif event["type"] == "done":
                    answer = event["answer"]
            out.print()
            thread = answer.get("thread_id", thread)
            while answer.get("pending_approval"):
                decisions: dict[str, Any] = {}
                for call in answer["pending_approval"]:
                    prompt = f"approve {call['name']}({json.dumps(call['args'])})? [y/N] "
                    try:
                        reply = input(prompt).strip().lower()
                    except EOFError:
                        reply = ""
                    decisions[call["id"]] = "approve" if reply in ("y", "yes") else "reject"
                assert thread is not None
                result = app.resume(thread, decisions, scopes=held)
                out.print(f"bot> {result.text}", markup=False)
                answer = result.to_dict()
        app.close()


tools_cli = typer.Typer(help="The app's tools.", no_args_is_help=True)
cli.add_typer(tools_cli, name="tools")


@tools_cli.command("list")
def tools_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the tools as JSON.")] = False,
) -> None:
    """The tools the app's model may call (the allowlist in keel.toml)."""
    with _errors():
        app = _app()
        tools = list(app.toolset)
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "description": t.description,
            "scopes": sorted(t.scopes),
            "side_effects": t.side_effects,
            "requires_approval": t.requires_approval,
            "timeout_s": t.timeout_s,
            "parameters": t.parameters_schema(),
        }
        for t in tools
    ]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        err.print("no tools enabled (add them to [tools] enabled in keel.toml)")
    for r in rows:
        flags = [r["side_effects"]] + (["needs approval"] if r["requires_approval"] else [])
        scopes_text = f" scopes: {', '.join(r['scopes'])}" if r["scopes"] else ""
        out.print(f"[bold]{r['name']}[/bold] ({', '.join(flags)}){scopes_text}")
        out.print(f"    {r['description']}", markup=False)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    ui: Annotated[
        bool, typer.Option("--ui", help="Serve the web console at /ui (as [ui] enabled).")
    ] = False,
) -> None:
    """Serve the app over HTTP: native and OpenAI-compatible chat, with API keys and limits,
    and the web console at /ui when enabled."""
    import os

    import uvicorn

    with _errors():
        config = _config_path().resolve()
        app = _app()
        app.agent  # noqa: B018 - fail now, with exit 2, on a bad model or tool config
        app.guards.warm()  # the guards' models load now, not inside the first request
        console = ui or app.config.ui.enabled or app.settings.ui
        err.print(f"Keel gateway for {app.name} on http://{host}:{port} (docs at /docs)")
        if console:
            err.print(f"Web console at http://{host}:{port}/ui (sign in with an API key)")
        if workers == 1:
            from keel.api.server import create_app

            uvicorn.run(create_app(app, ui=console), host=host, port=port, log_level="warning")
        else:
            os.environ["KEEL_CONFIG"] = str(config)  # each worker builds the same app
            if ui:
                os.environ["KEEL_UI"] = "1"
            uvicorn.run(
                "keel.api.server:from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
            )


db_cli = typer.Typer(help="The keel database's schema (migrations).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


def _raw_engine() -> Any:
    """The app's database engine, without the schema check (what `keel db` migrates)."""
    from keel.db import make_engine

    app = _app()
    return make_engine(app.settings.database_url, app.data_dir)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Migrate the keel database (KEEL_DATABASE_URL, else .keel/keel.db) to this Keel's
    schema. Run it once, from one machine, after a backup; SQLite upgrades on its own."""
    from keel.db import HEAD, current_revision, upgrade

    with _errors():
        engine = _raw_engine()
        before = current_revision(engine)
        after = upgrade(engine)
        engine.dispose()
    err.print(f"schema {before or 'unversioned'} -> {after} (this Keel needs {HEAD})")


@db_cli.command("current")
def db_current(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The database's schema revision and the one this Keel needs; exit 1 when behind."""
    from keel.db import HEAD, current_revision

    with _errors():
        engine = _raw_engine()
        revision = current_revision(engine)
        engine.dispose()
    if as_json:
        _print_json({"current": revision, "head": HEAD, "up_to_date": revision == HEAD})
    else:
        out.print(f"{revision or 'unversioned'} (head {HEAD})", markup=False)
    if revision != HEAD:
        raise typer.Exit(1)


keys_cli = typer.Typer(help="API keys for the gateway.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


def _key_store() -> Any:
    from keel.api.keys import KeyStore

    return KeyStore(_app().engine)


def _audit(action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """An operator's action from the command line, in the app's audit log."""
    from keel.ops.audit import AuditLog

    app = _app()
    AuditLog(app.engine, app.name).record("cli", action, target, details)


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: chat, ingest, feedback, traces:read, admin.")
    ] = "chat",
    replace: Annotated[
        bool, typer.Option(help="Revoke the active keys with the same name first.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Create a key. It is shown once: store it now."""
    with _errors():
        store = _key_store()
        if replace:
            for old in store.list():
                if old.name == name and old.revoked_at is None:
                    store.revoke(old.id)
                    _audit("key.revoked", old.id, {"name": old.name, "replaced": True})
        plain, key = store.create(name, scopes)
        _audit("key.created", key.id, {"name": key.name, "scopes": sorted(key.scopes)})
    if as_json:
        _print_json({"key": plain, **key.to_dict()})
        return
    out.print(plain, markup=False)
    err.print(f"key {key.id} ({', '.join(sorted(key.scopes))}): shown once, store it now")


@keys_cli.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Keys (never their secrets)."""
    with _errors():
        keys = _key_store().list()
    if as_json:
        _print_json([k.to_dict() for k in keys])
        return
    for k in keys:
        state = "revoked" if k.revoked_at else "active"
        out.print(f"{k.id}  {k.name}  {','.join(sorted(k.scopes))}  {state}", markup=False)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key: it stops working at once."""
    with _errors():
        if not _key_store().revoke(key_id):
            raise UsageError(f"no active key {key_id!r}")
        _audit("key.revoked", key_id)
    err.print(f"revoked {key_id}")


@cli.command("eval")
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


@cli.command("compare")
def compare_models(
    suite: Annotated[Path, typer.Argument(help="A suite file.")],
    model: Annotated[list[str], typer.Option("--model", help="A model id; give two or more.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Run one suite per model: quality, p50 / p95 latency and cost per 1,000 requests, with
    the Pareto frontier marked (choosing a model is the first step of the lifecycle)."""
    from dataclasses import asdict

    from keel.evals.compare import compare_models, compare_table
    from keel.evals.suites import load_suite

    with _errors():
        if len(model) < 2:
            raise UsageError("give at least two --model options")
        parsed = load_suite(suite)
        rows = compare_models(parsed, model)
    if as_json:
        _print_json([asdict(r) for r in rows])
        return
    out.print(compare_table(rows, quality_metric=next(iter(parsed.metrics))))


release_cli = typer.Typer(help="Versioned releases of the app.", no_args_is_help=True)
cli.add_typer(release_cli, name="release")


def _releases() -> tuple[Any, Any]:
    from keel.ops.releases import ReleaseStore

    app = _app()
    return app, ReleaseStore(app.engine, app.name)


def _release_dict(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "app": r.app,
        "created_at": r.created_at.isoformat(),
        "deployable": r.deployable,
        "gate": {k: v for k, v in r.gate.items() if k != "run"} if r.gate else None,
        "note": r.note,
        "index_version": r.content.get("index_version"),
        "models": r.content.get("models"),
        "git_commit": r.content.get("git_commit"),
    }


@release_cli.command("create")
def release_create(
    note: Annotated[str, typer.Option(help="What this release is.")] = "",
    gate: Annotated[
        Path | None, typer.Option(help="An eval suite: deployable only if its gate passes.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the release id.")
    ] = False,
) -> None:
    """Record the app as it is now (config, prompts, tools, models, index, commit) as an
    immutable, content-addressed release."""
    with _errors():
        app, store = _releases()
        gate_summary = None
        if gate is not None:
            from keel.evals.check import evaluate

            if not gate.is_file():
                raise UsageError(f"no suite file {gate}")
            from keel.evals.runner import RunResult

            # Against the stable release's own gate run when it has one (the suite's
            # baseline file otherwise): a release must not be worse than what serves.
            stable = store.get(store.state()["stable"] or "") if store.state()["stable"] else None
            stable_run = (stable.gate or {}).get("run") if stable is not None else None
            result = evaluate(
                gate,
                app=app,
                baseline_run=RunResult.from_json(stable_run) if stable_run else None,
                record=True,
            )
            gate_summary = {
                "suite": result.suite.name,
                "passed": result.result.passed,
                "reasons": result.result.reasons,
                "dataset_version": result.run.dataset_version,
                "baseline": f"release {stable.id}" if stable_run and stable else "suite baseline",
                "run": result.run.to_json(),
            }
        release = store.create(app.release_content(), note=note, gate=gate_summary)
        app.close()
    if as_json:
        _print_json(_release_dict(release))
        return
    if quiet:
        out.print(release.id, markup=False)
        return
    state = "deployable" if release.deployable else "NOT deployable (gate failed)"
    out.print(f"{release.id}  {state}", markup=False)


@release_cli.command("list")
def release_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Releases, newest first, with what serves traffic."""
    with _errors():
        app, store = _releases()
        rows = [_release_dict(r) for r in store.list()]
        state = store.state()
        app.close()
    if as_json:
        _print_json({"releases": rows, "state": state})
        return
    for r in rows:
        role = (
            "stable"
            if r["id"] == state["stable"]
            else f"canary {state['weight']:.0%}"
            if r["id"] == state["canary"]
            else ""
        )
        out.print(f"{r['id']}  {r['created_at'][:19]}  {role:<11} {r['note']}", markup=False)


@release_cli.command("show")
def release_show(
    release_id: Annotated[str, typer.Argument(help="A release id or prefix.")],
) -> None:
    """One release's full content, as JSON."""
    with _errors():
        app, store = _releases()
        release = store.get(release_id)
        app.close()
        if release is None:
            raise UsageError(f"no release {release_id!r}")
    _print_json({**_release_dict(release), "content": release.content})


@release_cli.command("diff")
def release_diff(
    a: Annotated[str, typer.Argument(help="A release id or prefix.")],
    b: Annotated[str, typer.Argument(help="Another one.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """What differs between two releases (config, prompts, tools, models, index)."""
    with _errors():
        app, store = _releases()
        changes = store.diff(a, b)
        app.close()
    if as_json:
        _print_json(changes)
        return
    for c in changes:
        out.print(f"{c['path']}: {c['a']!r} -> {c['b']!r}", markup=False)
        if c.get("patch"):
            out.print(c["patch"], markup=False)


@release_cli.command("deploy")
def release_deploy(
    release_id: Annotated[str, typer.Argument(help="A release id or prefix.")],
    canary: Annotated[
        float | None, typer.Option(help="Serve it as a canary with this share of traffic.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual",
) -> None:
    """Make a release stable, or a canary with a traffic weight."""
    with _errors():
        app, store = _releases()
        release = store.get(release_id)
        if release is None:
            raise UsageError(f"no release {release_id!r}")
        if canary is None:
            store.set_stable(release.id, reason)
        else:
            store.set_canary(release.id, canary, reason)
        state = store.state()
        app.close()
    err.print(f"stable {state['stable']}, canary {state['canary']} ({state['weight']:.0%})")


@release_cli.command("promote")
def release_promote(reason: Annotated[str, typer.Option(help="Why.")] = "manual") -> None:
    """The canary becomes stable."""
    with _errors():
        app, store = _releases()
        release = store.promote(reason)
        app.close()
    err.print(f"promoted {release.id}")


@release_cli.command("rollback")
def release_rollback(reason: Annotated[str, typer.Option(help="Why.")] = "manual") -> None:
    """Stop the canary; stable keeps serving."""
    with _errors():
        app, store = _releases()
        store.rollback(reason)
        app.close()
    err.print("canary rolled back")


@release_cli.command("check")
def release_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Judge only; never roll back.")
    ] = False,
) -> None:
    """Judge the canary against stable now (what the gateway does every check_interval_s):
    exit 1 when it is significantly worse (and, unless --dry-run, roll it back)."""
    from keel.ops.canary import CanaryPolicy, canary_verdict

    with _errors():
        app, store = _releases()
        d = app.config.deploy
        verdict = canary_verdict(
            store,
            CanaryPolicy(min_sample=d.min_sample, alpha=d.alpha, margin=d.margin),
            rollback=not dry_run,
        )
        app.close()
        if verdict is None:
            raise UsageError("no canary is deployed")
    if as_json:
        _print_json(verdict.to_dict())
    else:
        for rid in (verdict.stable, verdict.canary):
            if rid is None:
                continue
            h = verdict.health[rid]
            role = "canary" if rid == verdict.canary else "stable"
            out.print(
                f"{role:<7} {rid}  requests {h['requests']}  errors {h['error_rate']:.1%}  "
                f"guard trips {h['guard_trip_rate']:.1%}  negative feedback "
                f"{h['negative_feedback']}/{h['feedback']}",
                markup=False,
            )
        for reason in verdict.reasons:
            err.print(f"[red]worse:[/red] {reason}")
        if verdict.rollback:
            err.print("canary rolled back" if not dry_run else "canary would be rolled back")
        else:
            err.print("canary healthy (or not enough data yet)")
    if verdict.rollback:
        raise typer.Exit(1)


monitor_cli = typer.Typer(help="Production monitoring.", no_args_is_help=True)
cli.add_typer(monitor_cli, name="monitor")


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


evals_cli = typer.Typer(help="Evaluation datasets.", no_args_is_help=True)
cli.add_typer(evals_cli, name="evals")


@evals_cli.command("from-traces")
def evals_from_traces(
    output: Annotated[Path, typer.Option(help="Dataset file to append the cases to (JSONL).")],
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most recent N turns.")] = 100,
    thread: Annotated[str | None, typer.Option(help="Only this thread.")] = None,
) -> None:
    """Stored turns become evaluation cases: the question as input, the answer given then as
    the reference (review it), the cited documents as reference documents."""
    from keel.evals.datasets import Case, save_dataset

    with _errors():
        app = _app()
        rows = app.tracing.list(limit=limit, thread_id=thread)
        existing = _existing_ids(output)
        cases = []
        for row in rows:
            if not row.get("question") or f"trace-{row['trace_id']}" in existing:
                continue
            record = app.turn_record(row["trace_id"]) or {}
            cited = _cited_docs(app, row["trace_id"])
            cases.append(
                Case(
                    id=f"trace-{row['trace_id']}",
                    input=row["question"],
                    reference=row.get("answer") or None,
                    reference_doc_ids=cited,
                    provenance={
                        "source": "trace",
                        "trace_id": row["trace_id"],
                        "app_version": record.get("app_version"),
                        "model": record.get("model"),
                    },
                )
            )
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
    from keel.evals.datasets import Case, save_dataset
    from keel.ops.feedback_export import export_feedback

    with _errors():
        app = _app()
        existing = _existing_ids(output)
        cases = [
            Case(
                id=c["id"],
                input=c["input"],
                reference=c.get("reference"),
                reference_doc_ids=list(c.get("reference_doc_ids") or []),
                provenance=dict(c.get("provenance") or {}),
            )
            for c in export_feedback(app.engine, max_score=max_score, turns=app.turn_record)
            if c.get("input") and c["id"] not in existing
        ]
        if cases:
            save_dataset(cases, output)
        app.close()
    err.print(f"{len(cases)} case(s) appended to {output}")


def _existing_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    from keel.evals.datasets import load_dataset

    return {c.id for c in load_dataset(path).cases}


def _cited_docs(app: Any, trace_id: str) -> list[str]:
    found = app.tracing.get(trace_id) or {"spans": []}
    stack, docs = list(found["spans"]), []
    while stack:
        span = stack.pop()
        stack.extend(span["children"])
        for cite in span["attributes"].get("keel.citations", []) or []:
            doc = str(cite).split("#", 1)[0]
            if doc not in docs:
                docs.append(doc)
    return docs


threads_cli = typer.Typer(help="Conversation threads.", no_args_is_help=True)
cli.add_typer(threads_cli, name="threads")


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


@cli.command("prune")
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


cache_cli = typer.Typer(help="The semantic cache ([cache] in keel.toml).", no_args_is_help=True)
cli.add_typer(cache_cli, name="cache")


@cache_cli.command("stats")
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Cached answers by partition (release, index version, API key)."""
    with _errors():
        app = _app()
        stats = {"enabled": app.config.cache.enabled, **app.cache.stats()}
        app.close()
    if as_json:
        _print_json(stats)
        return
    state_ = "on" if stats["enabled"] else "off"
    out.print(
        f"cache {state_}: {stats['entries']} entries, threshold {stats['threshold']}, "
        f"ttl {stats['ttl_s']:g} s, at most {stats['max_entries']} per partition",
        markup=False,
    )
    for p in stats["partitions"]:
        out.print(
            f"{p['release']}  index={p['index_version']}  key={p['key_id'] or '-'}  "
            f"{p['entries']} entries  newest {p['newest'][:19]}",
            markup=False,
        )


@cache_cli.command("clear")
def cache_clear(
    key: Annotated[str | None, typer.Option(help="Only this API key's entries.")] = None,
    expired: Annotated[bool, typer.Option(help="Only entries past ttl_s.")] = False,
) -> None:
    """Delete cached answers (all of this app's, one key's, or the expired ones)."""
    with _errors():
        if key is not None and expired:
            raise UsageError("give --key or --expired, not both")
        app = _app()
        gone = app.cache.purge_expired() if expired else app.cache.clear(key)
        if not expired:
            _audit("cache.cleared", key or "all", {"entries": gone})
        app.close()
    err.print(f"deleted {gone} cached answer(s)")


audit_cli = typer.Typer(help="The audit log of administrative actions.", no_args_is_help=True)
cli.add_typer(audit_cli, name="audit")


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


traces_cli = typer.Typer(help="Traces of the app's turns.", no_args_is_help=True)
cli.add_typer(traces_cli, name="traces")


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


feedback_cli = typer.Typer(help="Human feedback on answers.", no_args_is_help=True)
cli.add_typer(feedback_cli, name="feedback")


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


guard_cli = typer.Typer(
    help="Guardrails: list validators, try them on texts.", no_args_is_help=True
)
cli.add_typer(guard_cli, name="guard")


@guard_cli.command("list")
def guard_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The validators Keel ships, their options, and where this app runs them."""
    from keel.guardrails.runner import POINTS
    from keel.guardrails.validators import VALIDATORS

    configured: dict[str, list[str]] = {}
    config = _config_path()
    if config.exists():
        with _errors():
            app = _app()
            for point in POINTS:
                for name in getattr(app.config.guards, point):
                    configured.setdefault(name, []).append(point)
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "description": " ".join((cls.__doc__ or "").split()),
            "options": {
                k: (None if f.is_required() else f.default)
                for k, f in cls.options_model.model_fields.items()
            },
            "points": configured.get(name, []),
        }
        for name, cls in VALIDATORS.items()
    ]
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        where = f"  [runs at: {', '.join(r['points'])}]" if r["points"] else ""
        out.print(f"[bold]{r['name']}[/bold]{where}")
        out.print(f"    {r['description']}", markup=False)
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items())
        out.print(f"    options: {opts or '-'}", markup=False, style="dim")


@guard_cli.command("check")
def guard_check(
    validator: Annotated[str, typer.Option("--validator", "-v", help="Validator name.")],
    file: Annotated[
        Path | None, typer.Argument(help="Texts, one per line (default: standard input).")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="A validator option, KEY=JSON.")
    ] = None,
    context: Annotated[
        Path | None, typer.Option(help="Grounding: a file with the context passages.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Run one validator on each line of a file (or stdin): outcome, score and spans."""
    from keel.config import GuardsSection
    from keel.guardrails.runner import GuardRunner, Services
    from keel.guardrails.validators import VALIDATORS

    with _errors():
        if validator not in VALIDATORS:
            raise UsageError(f"unknown validator {validator!r} (see `keel guard list`)")
        options: dict[str, Any] = {"on_fail": "noop"}
        for item in option or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--option takes KEY=VALUE, not {item!r}")
            try:
                options[key] = json.loads(raw)
            except json.JSONDecodeError:
                options[key] = raw
        if file is not None and not file.is_file():
            raise UsageError(f"no such file: {file}")
        lines = (file.read_text(encoding="utf-8") if file else sys.stdin.read()).splitlines()
        passages = [context.read_text(encoding="utf-8")] if context else []
        embedder_holder: list[Any] = []

        def embedder() -> Any:
            if not embedder_holder:
                from keel.rag.embeddings import Embedder
                from keel.settings import get_settings

                embedder_holder.append(Embedder(cache_dir=get_settings().cache_dir))
            return embedder_holder[0]

        runner = GuardRunner(GuardsSection(input={validator: options}), Services(embedder))
        (rule,) = runner.rules["input"]
        flagged = 0
        for n, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            _, decision = runner.run(rule, text, passages=passages)
            flagged += decision.outcome == "fail"
            row = {
                "line": n,
                "outcome": decision.outcome,
                "reason": decision.reason,
                "latency_ms": round(decision.latency_ms, 3),
                **decision.details,
            }
            if as_json:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                mark = "[red]FAIL[/red]" if decision.outcome == "fail" else "[green]pass[/green]"
                score = f" score={row['score']}" if "score" in row else ""
                spans = row.get("spans") or []
                found = " ".join(f"{s['type']}@{s['start']}-{s['end']}" for s in spans)
                out.print(f"{n:>4} {mark}{score} {decision.reason} {found}".rstrip())
        if not as_json:
            err.print(f"{flagged} of {len([t for t in lines if t.strip()])} lines flagged")


@cli.command()
def version(
    as_json: Annotated[bool, typer.Option("--json", help="Print versions as JSON.")] = False,
) -> None:
    """Keel's version, and the app's and index's content versions."""
    with _errors():
        config = _config_path()
        info: dict[str, Any] = {"keel": __version__}
        if config.exists():
            app = _app()
            info.update(app=app.name, app_version=app.version, index_version=app.index_version())
            app.close()
    if as_json:
        _print_json(info)
        return
    out.print(f"keel {info['keel']}")
    if "app" in info:
        out.print(f"app {info['app']} version {info['app_version']}")
        out.print(f"index version {info['index_version']}")


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
