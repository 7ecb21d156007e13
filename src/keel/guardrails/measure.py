"""Evaluation helpers for the PII detector (used by ``benchmarks/guards.py`` and the tests).

Samples use the presidio-research format: ``{"full_text": str, "spans": [{"entity_type",
"entity_value", "start_position", "end_position"}, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from keel.guardrails.spans import Span

__all__ = ["GOLD_ALIASES", "evaluate_pii", "load_presidio", "micro_average"]

# Gold labels of public PII corpora -> the entity types keel's detector reports.
GOLD_ALIASES: Mapping[str, str] = {
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "CITY": "LOCATION",
    "COUNTRY": "LOCATION",
    "PER": "PERSON",
    "NAME": "PERSON",
    "ORG": "ORGANIZATION",
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE": "PHONE_NUMBER",
    "TELEPHONENUM": "PHONE_NUMBER",
    "CREDITCARDNUMBER": "CREDIT_CARD",
    "IBAN": "IBAN_CODE",
    "SSN": "US_SSN",
    "SOCIALNUM": "US_SSN",
    "IP": "IP_ADDRESS",
    "IPV4": "IP_ADDRESS",
    "IPV6": "IP_ADDRESS",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
    "ZIP": "ZIP_CODE",
    "ZIPCODE": "ZIP_CODE",
    "URL": "DOMAIN_NAME",
    "DRIVERLICENSENUM": "US_DRIVER_LICENSE",
    "ADDRESS": "STREET_ADDRESS",
}

Detector = Callable[[str], Sequence[Span]]


def load_presidio(path: Path) -> list[dict[str, Any]]:
    """Load a presidio-research JSON list (``synth_dataset_v2`` format)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples")
    return [dict(sample) for sample in data]


def _f_beta(precision: float, recall: float, beta: float = 2.0) -> float:
    if precision == 0.0 and recall == 0.0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def _overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    return max(0, min(a_end, b_end) - max(a_start, b_start))


def evaluate_pii(
    samples: Sequence[Mapping[str, Any]],
    entities: Collection[str] | None = None,
    *,
    detector: Detector | None = None,
    aliases: Mapping[str, str] = GOLD_ALIASES,
) -> dict[str, dict[str, float]]:
    """Per-entity-type span scores of a PII detector on labelled samples.

    A predicted span matches a gold span when both have the same type and they overlap by at
    least 50% of the gold span's length. Matching is many-to-many, because corpora label one
    address or name sometimes as one span and sometimes as several: a gold span is found (a
    ``tp``) when some prediction matches it, else it is a ``fn``; a prediction that matches no
    gold span is a ``fp``. So ``recall = tp / support`` and ``precision = matched predictions /
    all predictions``.

    Each type gets ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f2`` (F-beta with
    beta=2: recall weighs more) and ``support`` (gold spans). Gold labels are renamed with
    ``aliases`` first (e.g. ``GPE`` -> ``LOCATION``). ``predicted`` is the number of
    predicted spans. Types the detector predicts that have
    no gold span in the data are reported too (support 0, every prediction a false positive).
    ``entities`` restricts both gold and predictions to those types (gold names such as
    ``GPE`` are renamed the same way); ``detector`` defaults to
    :func:`keel.guardrails.pii.detect_pii` (restricted to ``entities``).
    """
    keep = None if entities is None else {aliases.get(e, e) for e in entities}
    if detector is None:
        from keel.guardrails.pii import ENTITY_TYPES, detect_pii

        wanted = None if keep is None else keep & set(ENTITY_TYPES)

        def detector(text: str) -> Sequence[Span]:
            return detect_pii(text, wanted)

    counts: dict[str, dict[str, int]] = {}

    def row(kind: str) -> dict[str, int]:
        return counts.setdefault(kind, {"tp": 0, "fn": 0, "fp": 0, "pred_ok": 0, "support": 0})

    for sample in samples:
        text = str(sample["full_text"])
        gold = [
            (
                aliases.get(s["entity_type"], s["entity_type"]),
                s["start_position"],
                s["end_position"],
            )
            for s in sample.get("spans") or []
        ]
        if keep is not None:
            gold = [g for g in gold if g[0] in keep]
        predicted = [p for p in detector(text) if keep is None or p.entity_type in keep]
        matched_pred: set[int] = set()
        for kind, g_start, g_end in gold:
            r = row(kind)
            r["support"] += 1
            need = 0.5 * max(1, g_end - g_start)
            hits = [
                i
                for i, p in enumerate(predicted)
                if p.entity_type == kind and _overlap(p.start, p.end, g_start, g_end) >= need
            ]
            if hits:
                r["tp"] += 1
                matched_pred.update(hits)
            else:
                r["fn"] += 1
        for i, p in enumerate(predicted):
            r = row(p.entity_type)
            if i in matched_pred:
                r["pred_ok"] += 1
            else:
                r["fp"] += 1

    result: dict[str, dict[str, float]] = {}
    for kind in sorted(counts):
        c = counts[kind]
        n_pred = c["pred_ok"] + c["fp"]
        precision = c["pred_ok"] / n_pred if n_pred else 0.0
        recall = c["tp"] / c["support"] if c["support"] else 0.0
        result[kind] = {
            "tp": float(c["tp"]),
            "fp": float(c["fp"]),
            "fn": float(c["fn"]),
            "precision": precision,
            "recall": recall,
            "f2": _f_beta(precision, recall),
            "support": float(c["support"]),
            "predicted": float(n_pred),
        }
    return result


def micro_average(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Pool the counts of :func:`evaluate_pii`'s result over all types."""
    tp = sum(s["tp"] for s in scores.values())
    fp = sum(s["fp"] for s in scores.values())
    fn = sum(s["fn"] for s in scores.values())
    predicted = sum(s.get("predicted", s["tp"] + s["fp"]) for s in scores.values())
    precision = (predicted - fp) / predicted if predicted else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f2": _f_beta(precision, recall),
        "support": tp + fn,
        "predicted": predicted,
    }
