"""``keel db``: the keel database's schema."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import _app, _errors, _print_json, err, out

db_cli = typer.Typer(help="The keel database's schema (migrations).", no_args_is_help=True)


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
