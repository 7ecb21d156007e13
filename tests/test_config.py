from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import load_config
from keel.errors import ConfigError


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "keel.toml").write_text('[app]\nname = "x"\n')
    cfg = load_config(tmp_path / "keel.toml")
    assert cfg.model.id == "keel:extractive"
    assert cfg.rag.embeddings.model == "all-MiniLM-L6-v2" and cfg.rag.retrieval.mode == "hybrid"
    assert cfg.resolve("docs") == tmp_path / "docs" and cfg.rag_root == tmp_path.resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[app\nname=", "not valid TOML"),
        ('[rag]\nchunk_size = "big"\n', "rag.chunk_size"),
        ("[rag]\ncolection = 'typo'\n", "rag.colection"),
        ("[rag]\ncollection = 'a'\n", "rag.collection"),
        ("[rag.retrieval]\nmode = 'magic'\n", "rag.retrieval.mode"),
        ("[surprise]\n", "surprise"),
    ],
)
def test_bad_config_is_a_one_line_config_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "keel.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path / "keel.toml")
    assert "\n" not in str(info.value)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keel init"):
        load_config(tmp_path / "nope.toml")
