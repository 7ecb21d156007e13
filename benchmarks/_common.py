"""Helpers shared by the benchmarks: a throwaway Keel app over a data folder, BEIR files."""

from __future__ import annotations

import csv
import json
import math
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from keel.app import App
from keel.config import config_from_dict
from keel.settings import Settings, get_settings


def temp_app(root: Path, rag: dict[str, Any], workdir: Path | None = None) -> App:
    """An App whose ingest root is ``root`` and whose state lives in a fresh temp folder."""
    base = workdir or Path(tempfile.mkdtemp(prefix="keel-bench-"))
    config = config_from_dict({"rag": {"root": str(root), **rag}}, base_dir=base)
    settings = Settings(data_dir=base / ".keel", cache_dir=get_settings().cache_dir)
    return App(config, settings=settings)


def load_queries(folder: Path) -> dict[str, str]:
    with (folder / "queries.jsonl").open(encoding="utf-8") as f:
        return {str(q["_id"]): q["text"] for q in map(json.loads, filter(str.strip, f))}


def load_qrels(folder: Path, split: str = "test") -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels[row["query-id"]][row["corpus-id"]] = int(row["score"])
    return dict(qrels)


def ndcg_at(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    rel = {d for d, g in relevant.items() if g > 0}
    return len(rel & set(ranked[:k])) / len(rel) if rel else 0.0


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
