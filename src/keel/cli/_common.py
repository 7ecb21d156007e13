"""What every ``keel`` command shares: the typer app and its ``--config`` option, loading the
app, the one-line errors and their exit codes, ``--json`` output and progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from keel.errors import KeelError

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


def _audit(action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """An operator's action from the command line, in the app's audit log."""
    from keel.ops.audit import AuditLog

    app = _app()
    AuditLog(app.engine, app.name).record("cli", action, target, details)


def _scopes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [s.strip() for s in value.split(",") if s.strip()]
