"""``keel init``: the scaffold writes a working app, and never clobbers one by accident."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from keel.config import KeelConfig, load_config
from keel.errors import UsageError
from keel.scaffold import init_app, sanitize_app_name, template_files

EXPECTED = {
    "keel.toml",
    ".gitignore",
    "tools.py",
    "prompts/system.md",
    "prompts/examples.yaml",
    "docs/getting-started.md",
    "docs/adding-documents.md",
    "docs/search-and-citations.md",
    "docs/configuration.md",
    "evals/cases.jsonl",
    "evals/smoke.yaml",
}


def _rel(paths: list[Path], root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_writes_every_template_file_and_lists_them_sorted(tmp_path: Path) -> None:
    app = tmp_path / "my-app"
    written = init_app(app)

    assert written == sorted(written)
    assert _rel(written, app) == EXPECTED
    assert {p.as_posix() for p in template_files()} == EXPECTED
    on_disk = {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
    assert on_disk == EXPECTED
    assert all(p.stat().st_size > 0 for p in written)
    assert ".keel/" in (app / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_keel_toml_validates_with_the_substituted_name(tmp_path: Path) -> None:
    app = tmp_path / "My Docs_Bot!"
    init_app(app)

    text = (app / "keel.toml").read_text(encoding="utf-8")
    assert "{{" not in text
    config = load_config(app / "keel.toml")
    assert config.app.name == "my-docs-bot"
    assert config.model.id == "keel:extractive"
    assert config.rag.collection == "docs"
    assert config.rag.paths == ["docs"]
    assert config.rag.embeddings.model == "all-MiniLM-L6-v2"
    assert config.rag.retrieval.mode == "hybrid"
    assert config.base_dir == app.resolve()
    # Every file keel.toml points at exists.
    assert config.prompts.system is not None and config.prompts.examples is not None
    assert config.resolve(config.prompts.system).is_file()
    assert config.resolve(config.prompts.examples).is_file()
    for path in config.rag.paths:
        assert config.resolve(path).is_dir()


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if name == "base_dir" or field.default is None:  # TOML has no null: left commented
            continue
        sub = field.annotation
        if getattr(sub, "__origin__", None) is dict:  # free-form tables ([guards.input], prices)
            continue
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys |= _keys(sub, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _toml_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys |= _toml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_keel_toml_sets_every_config_key_to_its_default(tmp_path: Path) -> None:
    init_app(tmp_path / "app")
    raw = tomllib.loads((tmp_path / "app" / "keel.toml").read_text(encoding="utf-8"))
    optional = {"prompts.system", "prompts.examples"}  # default None, set by the scaffold
    # The guard policy: free-form [guards.<point>.<validator>] tables, not config keys.
    policy = {k for k in _toml_keys(raw) if k.count(".") == 3 and k.startswith("guards.")}
    assert policy
    assert _toml_keys(raw) - optional - policy == _keys(KeelConfig)
    defaults = KeelConfig().model_dump()
    for section in ("model", "rag", "tools", "agent"):
        for key, value in raw[section].items():
            assert value == defaults[section][key], f"{section}.{key}"


def test_explicit_name_is_used_and_sanitised(tmp_path: Path) -> None:
    init_app(tmp_path / "a", name="Support Bot 2")
    assert load_config(tmp_path / "a").app.name == "support-bot-2"
    with pytest.raises(UsageError):
        init_app(tmp_path / "b", name="!!!")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("My App", "my-app"), ("docs_bot.v2", "docs-bot-v2"), ("--x--", "x"), ("___", "")],
)
def test_sanitize_app_name(raw: str, expected: str) -> None:
    assert sanitize_app_name(raw) == expected
    assert re.fullmatch(r"[a-z0-9-]*", sanitize_app_name(raw))


def test_refuses_an_existing_app_and_writes_nothing(tmp_path: Path) -> None:
    app = tmp_path / "app"
    init_app(app)
    (app / "docs" / "getting-started.md").write_text("# Mine\n", encoding="utf-8")
    (app / "evals" / "cases.jsonl").unlink()  # even a missing scaffold file is not restored
    before = _snapshot(app)

    with pytest.raises(UsageError, match=r"keel\.toml"):
        init_app(app)

    assert _snapshot(app) == before
    assert not (app / "evals" / "cases.jsonl").exists()


def test_refuses_when_any_scaffold_file_exists_and_writes_nothing(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "prompts").mkdir(parents=True)
    (app / "prompts" / "system.md").write_text("my prompt\n", encoding="utf-8")
    before = _snapshot(app)

    with pytest.raises(UsageError, match=r"system\.md"):
        init_app(app)

    assert _snapshot(app) == before
    assert not (app / "keel.toml").exists()


def test_refusal_message_is_one_line(tmp_path: Path) -> None:
    init_app(tmp_path)
    with pytest.raises(UsageError) as excinfo:
        init_app(tmp_path)
    assert "\n" not in str(excinfo.value)


def test_force_overwrites_scaffold_files_and_leaves_user_files(tmp_path: Path) -> None:
    app = tmp_path / "app"
    init_app(app)
    (app / "keel.toml").write_text("broken = [", encoding="utf-8")
    (app / "docs" / "configuration.md").write_text("edited\n", encoding="utf-8")
    (app / "docs" / "my-page.md").write_text("# My page\n", encoding="utf-8")
    (app / "notes.txt").write_text("keep me\n", encoding="utf-8")

    written = init_app(app, force=True)

    assert _rel(written, app) == EXPECTED
    assert load_config(app).app.name == "app"
    assert (app / "docs" / "configuration.md").read_text(encoding="utf-8").startswith("# ")
    assert (app / "docs" / "my-page.md").read_text(encoding="utf-8") == "# My page\n"
    assert (app / "notes.txt").read_text(encoding="utf-8") == "keep me\n"


def test_force_refuses_a_directory_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "tools.py").mkdir()
    with pytest.raises(UsageError, match="directory"):
        init_app(tmp_path, force=True)
    assert not (tmp_path / "keel.toml").exists()


def test_refuses_a_file_as_the_target_directory(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match="not a directory"):
        init_app(target)
    assert target.read_text(encoding="utf-8") == "x"


def test_unrelated_files_and_empty_directory_are_fine(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _rel(init_app(empty), empty) == EXPECTED

    busy = tmp_path / "busy"
    (busy / "docs").mkdir(parents=True)
    (busy / "README.md").write_text("hello\n", encoding="utf-8")
    (busy / "docs" / "faq.md").write_text("# FAQ\n", encoding="utf-8")
    assert _rel(init_app(busy), busy) == EXPECTED
    assert (busy / "README.md").read_text(encoding="utf-8") == "hello\n"
    assert (busy / "docs" / "faq.md").read_text(encoding="utf-8") == "# FAQ\n"


def test_eval_cases_parse_and_reference_existing_docs(tmp_path: Path) -> None:
    init_app(tmp_path)
    lines = (tmp_path / "evals" / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    cases = [json.loads(line) for line in lines if line.strip()]

    assert len(cases) == 5
    assert len({c["id"] for c in cases}) == len(cases)
    for case in cases:
        assert set(case) == {"id", "input", "reference", "reference_doc_ids"}
        assert case["input"].strip() and case["reference"].strip()
        assert case["reference_doc_ids"]
        for doc_id in case["reference_doc_ids"]:
            assert not doc_id.startswith("/") and "\\" not in doc_id
            assert (tmp_path / doc_id).is_file(), doc_id

    suite = yaml.safe_load((tmp_path / "evals" / "smoke.yaml").read_text(encoding="utf-8"))
    assert suite["dataset"] == "cases.jsonl"
    assert suite["metrics"]["recall_at_k"] == {"k": 5, "threshold": 0.8}


def test_prompts_and_docs_are_real_content(tmp_path: Path) -> None:
    init_app(tmp_path)
    examples = yaml.safe_load((tmp_path / "prompts" / "examples.yaml").read_text("utf-8"))
    assert len(examples) == 2
    assert all(set(e) == {"question", "answer"} for e in examples)

    system = (tmp_path / "prompts" / "system.md").read_text(encoding="utf-8").lower()
    assert "[1]" in system and "don't know" in system and "instructions" in system

    for page in (tmp_path / "docs").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# ") and "\n## " in text, page.name
        assert 300 <= len(text.split()) <= 700, page.name


def test_template_tools_module_works(tmp_path: Path) -> None:
    from keel.tools import Toolset

    init_app(tmp_path)
    (tool,) = Toolset.from_imports(["tools:convert_length"], tmp_path)
    assert tool.name == "convert_length" and tool.examples
    convert = tool.func  # @tool returns the function unchanged
    assert callable(convert)
    assert convert(1, "km", "m") == 1000.0
    assert convert(12, "in", "ft") == 1.0
    with pytest.raises(ValueError, match="unknown unit"):
        convert(1, "parsec", "m")


# The policy a security reviewer signs (issue 17): point -> validator -> (on_fail, extra).
DEFAULT_POLICY = {
    "input": {"language": "exception", "injection": "exception", "pii": "fix", "secrets": "fix"},
    "context": {"injection": "filter"},
    "tool_args": {"pii": "exception"},
    "tool_result": {"injection": "filter"},
    "output": {"secrets": "fix", "prompt_leak": "exception"},
}


def _policy(config: KeelConfig) -> dict[str, dict[str, str]]:
    return {
        point: {name: str(rule["on_fail"]) for name, rule in getattr(config.guards, point).items()}
        for point in DEFAULT_POLICY
    }


def test_new_apps_are_guarded_by_default(tmp_path: Path) -> None:
    init_app(tmp_path / "app")
    config = load_config(tmp_path / "app" / "keel.toml")
    policy = _policy(config)
    for point, rules in DEFAULT_POLICY.items():
        for name, action in rules.items():
            assert policy[point].get(name) == action, f"guards.{point}.{name}"
    assert config.guards.tool_args["pii"]["tools"] == "external"
    # requests in other languages are refused before the (English) injection detector runs
    assert list(config.guards.input)[:2] == ["language", "injection"]
    assert config.guards.input["language"]["allowed"] == ["en"]
    # extractive model: the grounding rule is written, commented, with its reason
    text = (tmp_path / "app" / "keel.toml").read_text(encoding="utf-8")
    assert "# [guards.output.grounding]" in text
    assert "grounding" not in config.guards.output


def test_example_support_bot_has_the_same_policy() -> None:
    root = Path(__file__).resolve().parents[1]
    example = load_config(root / "examples" / "support_bot" / "keel.toml")
    assert _policy(example) == {p: dict(r) for p, r in DEFAULT_POLICY.items()}
    # on the real model (make run-llm): the same guards, every option, plus output grounding
    llm = load_config(root / "examples" / "support_bot" / "keel.llm.toml")
    assert llm.model.id.startswith("openai:")
    assert llm.guards.output["grounding"] == {"on_fail": "fix"}
    guards = llm.guards.model_dump()
    del guards["output"]["grounding"]
    assert guards == example.guards.model_dump()


def test_no_guards_writes_no_validator_and_says_so(tmp_path: Path) -> None:
    init_app(tmp_path / "app", guards=False)
    text = (tmp_path / "app" / "keel.toml").read_text(encoding="utf-8")
    config = load_config(tmp_path / "app" / "keel.toml")
    assert all(not getattr(config.guards, p) for p in DEFAULT_POLICY)
    assert "--no-guards" in text and "[guards.input" not in text
    assert config.guards.message  # the [guards] table itself stays


def test_cli_init_no_guards(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from keel.cli import cli

    result = CliRunner().invoke(cli, ["init", str(tmp_path / "bare"), "--no-guards"])
    assert result.exit_code == 0, result.output
    assert not load_config(tmp_path / "bare" / "keel.toml").guards.input
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "guarded")])
    assert result.exit_code == 0, result.output
    assert "injection" in load_config(tmp_path / "guarded" / "keel.toml").guards.input


def test_a_generative_model_gets_output_grounding(tmp_path: Path) -> None:
    init_app(tmp_path / "app", model="openai:gpt-4o-mini")
    config = load_config(tmp_path / "app" / "keel.toml")
    assert config.model.id == "openai:gpt-4o-mini"
    assert config.guards.output["grounding"] == {"on_fail": "fix"}
    assert _policy(config) == {  # the rest of the policy is the default one
        **{p: dict(r) for p, r in DEFAULT_POLICY.items()},
        "output": {**DEFAULT_POLICY["output"], "grounding": "fix"},
    }
    init_app(tmp_path / "extractive", model="keel:extractive")  # the default, said out loud
    extractive = load_config(tmp_path / "extractive" / "keel.toml")
    assert "grounding" not in extractive.guards.output
    init_app(tmp_path / "bare", model="openai:gpt-4o-mini", guards=False)
    bare = load_config(tmp_path / "bare" / "keel.toml")
    assert bare.model.id == "openai:gpt-4o-mini" and not bare.guards.output


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("keel:foo", "unknown embedded model"),
        ("gpt-4o", "needs <provider>:<model>"),
        ("openai:", "needs <provider>:<model>"),
        ('openai:a"b', "is not usable"),
        ("  ", "is not usable"),
    ],
)
def test_an_unusable_model_id_is_refused_and_nothing_written(
    tmp_path: Path, model: str, reason: str
) -> None:
    from typer.testing import CliRunner

    from keel.cli import cli

    result = CliRunner().invoke(cli, ["init", str(tmp_path / "app"), "--model", model])
    assert result.exit_code == 2 and reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "app").exists()


def test_the_scaffolds_embedded_model_id_is_the_models_own() -> None:
    from keel import scaffold
    from keel.agents.models import EXTRACTIVE

    assert scaffold._EXTRACTIVE == EXTRACTIVE
