"""MkDocs hook: the reference pages are generated from the code before every build."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

GEN_DOCS = Path(__file__).resolve().with_name("gen_docs.py")


def on_pre_build(config: Any, **_: Any) -> None:
    spec = importlib.util.spec_from_file_location("keel_gen_docs", GEN_DOCS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(Path(config["docs_dir"]) / "reference")
