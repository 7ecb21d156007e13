"""The README and the documentation (docs/) are tested code: their keel.toml examples are
valid, their Python compiles, they name only public paths, and the reference generated from
the code covers every command, config key and route."""

from __future__ import annotations

import importlib
import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from keel.config import config_from_dict
from keel.guardrails.runner import build_rules

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(p for p in DOCS.rglob("*.md") if "reference" not in p.parts)]


def blocks(lang: str, path: Path) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_toml_example_is_a_valid_keel_toml(page: Path, tmp_path: Path) -> None:
    for text in blocks("toml", page):
        config = config_from_dict(tomllib.loads(text), base_dir=tmp_path)
        build_rules(config.guards)  # validators and their options exist


def test_the_docs_show_keel_toml_examples() -> None:
    assert sum(len(blocks("toml", page)) for page in PAGES) >= 5


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_examples_compile(page: Path) -> None:
    for text in blocks("python", page):
        compile(text, _name(page), "exec")


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```\n(.*?)```", text, re.S)
    assert first_block is not None
    assert [line.split("#")[0].strip() for line in first_block.group(1).splitlines()] == [
        "make run",
        "make test",
    ]


def test_the_readme_fits_on_two_screens() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 120


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_the_docs_use_only_the_areas_public_paths(page: Path) -> None:
    """Users are sent to ``keel.<area>.<name>`` (each area's ``__all__``), never into its
    modules."""
    text = page.read_text(encoding="utf-8")
    deep = re.findall(r"\bkeel\.(?:rag|tools|agents|guardrails|api|ops|evals)\.[a-z_]+\.\w+", text)
    assert deep == []
    for area, name in re.findall(
        r"\bkeel\.(rag|tools|agents|guardrails|api|ops|evals)\.(\w+)", text
    ):
        module = importlib.import_module(f"keel.{area}")
        assert name in module.__all__, f"keel.{area}.{name}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_lead_somewhere(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        if target.startswith("reference/") or "/reference/" in target:
            continue  # generated at build time
        assert (page.parent / target).exists(), f"{_name(page)} links to {target}"


def _nav_pages(entries: list[object]) -> list[str]:
    found: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            found.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                found.extend(_nav_pages(value) if isinstance(value, list) else [str(value)])
    return found


def test_every_page_is_in_the_site_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = set(_nav_pages(config["nav"]))
    written = {str(p.relative_to(DOCS)) for p in PAGES if p != README}
    generated = {"reference/config.md", "reference/cli.md", "reference/http.md",
                 "reference/telemetry.md"}  # fmt: skip
    assert nav == written | generated


@pytest.fixture(scope="module")
def gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_covers_every_command_config_key_and_route(
    gen_docs: ModuleType, tmp_path: Path
) -> None:
    import click
    import typer

    from keel.api.server import create_app
    from keel.app import App
    from keel.cli import cli
    from keel.config import KeelConfig
    from keel.settings import Settings

    gen_docs.generate(tmp_path)
    cli_md = (tmp_path / "cli.md").read_text(encoding="utf-8")

    def commands(prefix: str, command: click.Command) -> list[str]:
        found = [prefix]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                found += commands(f"{prefix} {name}", sub)
        return found

    every = commands("keel", typer.main.get_command(cli))
    assert len(every) > 40
    for name in every:
        assert f"## `{name}`" in cli_md, name

    config_md = (tmp_path / "config.md").read_text(encoding="utf-8")
    for section, field in KeelConfig.model_fields.items():
        if section != "base_dir":
            assert f"## `[{section}]`" in config_md, section
            for key, sub in field.annotation.model_fields.items():  # type: ignore[union-attr]
                nested = getattr(sub.annotation, "model_fields", None) is not None
                wanted = f"## `[{section}.{key}]`" if nested else f"`{key}`"
                assert wanted in config_md, f"{section}.{key}"

    http_md = (tmp_path / "http.md").read_text(encoding="utf-8")
    app = App(config_from_dict({}, base_dir=tmp_path), settings=Settings(data_dir=tmp_path / "d"))
    try:
        paths = create_app(app, ui=True).openapi()["paths"]  # what the gateway serves
        routes = [
            (method.upper(), path)
            for path, item in paths.items()
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        ]
    finally:
        app.close()
    assert len(routes) >= 20
    for method, path in routes:
        assert f"`{method} {path}`" in http_md, (method, path)

    telemetry_md = (tmp_path / "telemetry.md").read_text(encoding="utf-8")
    assert "`keel.turn`" in telemetry_md and "`keel_model_errors_total`" in telemetry_md
