"""``keel guard``: the guardrails' validators."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from keel.errors import UsageError

from ._common import _app, _config_path, _errors, _print_json, err, out

guard_cli = typer.Typer(
    help="Guardrails: list validators, try them on texts.", no_args_is_help=True
)


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
                k: (None if f.is_required() else f.get_default(call_default_factory=True))
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
    from keel.guardrails.checks import GuardVerdict, check
    from keel.guardrails.validators import VALIDATORS

    with _errors():
        if validator not in VALIDATORS:
            raise UsageError(f"unknown validator {validator!r} (see `keel guard list`)")
        options: dict[str, Any] = {}
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

        def show(verdict: GuardVerdict) -> None:
            row = verdict.to_dict()
            if as_json:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
                return
            mark = "[red]FAIL[/red]" if verdict.flagged else "[green]pass[/green]"
            score = f" score={row['score']}" if "score" in row else ""
            spans = row.get("spans") or []
            found = " ".join(f"{s['type']}@{s['start']}-{s['end']}" for s in spans)
            out.print(f"{verdict.line:>4} {mark}{score} {verdict.reason} {found}".rstrip())

        result = check(validator, lines, options=options, passages=passages, on_verdict=show)
        if not as_json:
            err.print(f"{result.flagged} of {result.checked} lines flagged")
