"""The README's configuration examples are valid: docs are tested code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from keel.config import config_from_dict
from keel.guardrails.runner import build_rules

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_every_toml_example_is_a_valid_keel_toml(tmp_path: Path) -> None:
    examples = blocks("toml")
    assert len(examples) >= 2
    for text in examples:
        config = config_from_dict(tomllib.loads(text), base_dir=tmp_path)
        build_rules(config.guards)  # validators and their options exist


def test_python_examples_compile() -> None:
    for text in blocks("python"):
        compile(text, "README.md", "exec")


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```\n(.*?)```", text, re.S)
    assert first_block is not None
    assert [line.split("#")[0].strip() for line in first_block.group(1).splitlines()] == [
        "make run",
        "make test",
    ]


def test_the_readme_uses_only_the_areas_public_paths() -> None:
    """Users are sent to ``keel.<area>.<name>`` (each area's ``__all__``), never into its
    modules."""
    import importlib

    text = README.read_text(encoding="utf-8")
    deep = re.findall(r"\bkeel\.(?:rag|tools|agents|guardrails|api|ops|evals)\.[a-z_]+\.\w+", text)
    assert deep == []
    for area, name in re.findall(
        r"\bkeel\.(rag|tools|agents|guardrails|api|ops|evals)\.(\w+)", text
    ):
        module = importlib.import_module(f"keel.{area}")
        assert name in module.__all__, f"keel.{area}.{name}"
