"""Setting an app up: ``keel init`` and ``keel version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from keel import __version__

from ._common import _app, _config_path, _errors, _print_json, err, out


def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the app in.")],
    name: Annotated[str | None, typer.Option(help="App name (default: the folder's name).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the scaffold's own files.")] = False,
    guards: Annotated[
        bool, typer.Option("--guards/--no-guards", help="Write the default guard policy.")
    ] = True,
    model: Annotated[
        str | None,
        typer.Option(
            help="The model id (default: keel:extractive), e.g. openai:gpt-4o-mini; a "
            "generative model also gets output grounding."
        ),
    ] = None,
) -> None:
    """Create a working app: keel.toml, prompts, tools.py, docs/ and evals/."""
    from keel.scaffold import init_app

    with _errors():
        written = init_app(directory, name=name, force=force, guards=guards, model=model)
    err.print(f"Created a Keel app in {directory} ({len(written)} files). Next:")
    err.print(f'  cd {directory}\n  keel ingest docs\n  keel search "how do I add documents?"')


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
