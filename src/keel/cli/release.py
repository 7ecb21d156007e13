"""``keel release``: versioned releases, deployment and the canary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keel.errors import UsageError

if TYPE_CHECKING:
    from keel.app import App
    from keel.ops.releases import ReleaseStore

from ._common import _app, _errors, _print_json, err, out

release_cli = typer.Typer(help="Versioned releases of the app.", no_args_is_help=True)


def _releases() -> tuple[App, ReleaseStore]:
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
    llm_adapter: Annotated[
        str | None,
        typer.Option(
            help="The id of the LLM adapter (fine-tuned elsewhere) the model served when this "
            "release was evaluated; recorded in the release."
        ),
    ] = None,
) -> None:
    """Record the app as it is now (config, prompts, tools, models, index, commit) as an
    immutable, content-addressed release."""
    from keel.ops.releases import create_release

    with _errors():
        app, store = _releases()
        suite_gate = None
        if gate is not None:
            from keel.evals.check import SuiteGate

            suite_gate = SuiteGate(gate)  # a missing suite file is a usage error
        release = create_release(
            app, gate=suite_gate, note=note, store=store, llm_adapter=llm_adapter
        ).release
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


@release_cli.command("gc")
def release_gc(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete the index snapshots no release references (each release pins the collection
    it was evaluated on)."""
    with _errors():
        app, store = _releases()
        keep = {
            str(r.content["index_snapshot"])
            for r in store.list()
            if r.content.get("index_snapshot")
        }
        gone = app.knowledge.gc_snapshots(keep)
        if gone:
            from keel.ops.audit import AuditLog

            AuditLog(app.engine, app.name).record("cli", "snapshots.deleted", app.name,
                                                  {"snapshots": gone})  # fmt: skip
    if as_json:
        _print_json({"deleted": gone, "kept": sorted(keep)})
    else:
        out.print(f"deleted {len(gone)} snapshot(s), {len(keep)} referenced")
