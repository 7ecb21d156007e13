"""``keel tools``: the app's tools."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import _app, _errors, _print_json, err, out

tools_cli = typer.Typer(help="The app's tools.", no_args_is_help=True)


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
