"""Metadata filters in Chroma's ``where`` syntax, evaluated in Python for the BM25 side.

Supported: ``{"key": value}`` (equality), ``{"key": {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte":
value}}``, ``{"key": {"$in"|"$nin": [values]}}``, ``{"$and": [...]}``, ``{"$or": [...]}``.
The same dict goes to Chroma for the dense side, so both retrievers filter alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keel.errors import UsageError

_COMPARE = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def validate_where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check a filter's shape; ``None`` or ``{}`` means no filter."""
    if not where:
        return None
    if not isinstance(where, Mapping):
        raise UsageError("a filter must be a JSON object")
    _check(where)
    return dict(where)


def _check(where: Mapping[str, Any]) -> None:
    for key, cond in where.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise UsageError(f"{key} takes a non-empty list of filters")
            for sub in cond:
                if not isinstance(sub, Mapping) or not sub:
                    raise UsageError(f"{key} takes a list of non-empty filter objects")
                _check(sub)
        elif key.startswith("$"):
            raise UsageError(f"unknown filter operator {key!r}")
        elif isinstance(cond, Mapping):
            if len(cond) != 1:
                raise UsageError(f"filter on {key!r} must have exactly one operator")
            op, value = next(iter(cond.items()))
            if op not in _COMPARE:
                raise UsageError(f"unknown filter operator {op!r} on {key!r}")
            if op in ("$in", "$nin") and not isinstance(value, list):
                raise UsageError(f"{op} on {key!r} takes a list")
        elif not isinstance(cond, str | int | float | bool):
            raise UsageError(f"filter value for {key!r} must be a string, number or boolean")


def matches(meta: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """Whether chunk metadata satisfies a (validated) filter."""
    if not where:
        return True
    for key, cond in where.items():
        if key == "$and":
            if not all(matches(meta, sub) for sub in cond):
                return False
        elif key == "$or":
            if not any(matches(meta, sub) for sub in cond):
                return False
        elif isinstance(cond, Mapping):
            op, value = next(iter(cond.items()))
            try:
                if not _COMPARE[op](meta.get(key), value):
                    return False
            except TypeError:
                return False
        elif meta.get(key) != cond:
            return False
    return True
