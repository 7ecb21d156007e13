"""`import keel` stays light, and the areas import along the data flow only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "keel"
HEAVY = [
    "torch",
    "chromadb",
    "sentence_transformers",
    "transformers",
    "bm25s",
    "sqlalchemy",
    "langchain_text_splitters",
    "pypdf",
    "bs4",
    "numpy",
    "onnxruntime",
    "sklearn",  # imported when an injection detector is made (its character n-grams)
]


def test_import_keel_loads_no_heavy_library() -> None:
    code = (
        "import sys, keel, keel.cli, keel.config, keel.app, keel.rag.store, keel.rag.loaders; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# area -> areas of keel it may import (besides errors, settings, config, db and itself)
ALLOWED = {
    "rag": set(),
    "tools": {"rag"},
    "agents": {"rag", "tools", "guardrails", "ops"},
    "guardrails": {"rag", "tools", "ops"},
    "ops": set(),
    "evals": {"app", "rag", "tools", "agents", "guardrails", "ops"},
    "api": {"app", "worker", "privacy", "rag", "tools", "agents", "guardrails", "ops", "evals"},
    "tuning": {"app", "rag", "tools", "agents", "guardrails", "ops", "evals"},
}
SHARED = {"errors", "settings", "config", "db", "testing", "_lazy"}


def _keel_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "keel" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_areas_import_along_the_data_flow() -> None:
    problems = []
    for area, allowed in ALLOWED.items():
        for path in (SRC / area).rglob("*.py"):
            bad = _keel_imports(path) - allowed - SHARED - {area}
            if bad:
                problems.append(f"{path.relative_to(SRC)} imports {sorted(bad)}")
    # nothing imports the edges (the cli and api packages themselves aside)
    for path in SRC.rglob("*.py"):
        if {"cli", "api"} & _keel_imports(path) and not {"cli", "api"} & set(
            path.relative_to(SRC).parts
        ):
            problems.append(f"{path.relative_to(SRC)} imports an edge (cli/api)")
    assert problems == []
