from __future__ import annotations

from typing import Any

import pytest

from keel.errors import UsageError
from keel.rag.filters import matches, validate_where

META = {"source": "docs/a.md", "page": 3, "lang": "en"}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, True),
        ({"source": "docs/a.md"}, True),
        ({"source": "docs/b.md"}, False),
        ({"page": {"$gte": 3}}, True),
        ({"page": {"$lt": 3}}, False),
        ({"lang": {"$in": ["en", "de"]}}, True),
        ({"lang": {"$nin": ["en"]}}, False),
        ({"lang": {"$ne": "fr"}}, True),
        ({"$and": [{"lang": "en"}, {"page": 3}]}, True),
        ({"$and": [{"lang": "en"}, {"page": 4}]}, False),
        ({"$or": [{"lang": "de"}, {"page": 3}]}, True),
        ({"missing": {"$gt": 1}}, False),
        ({"source": {"$gt": 1}}, False),  # type mismatch never matches, never raises
    ],
)
def test_matches(where: dict[str, Any] | None, expected: bool) -> None:
    assert matches(META, validate_where(where)) is expected


@pytest.mark.parametrize(
    "where",
    [
        {"$xor": []},
        {"$and": []},
        {"page": {"$gt": 1, "$lt": 5}},
        {"page": {"$between": [1, 2]}},
        {"lang": {"$in": "en"}},
        {"lang": ["en"]},
    ],
)
def test_invalid_filters_are_usage_errors(where: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        validate_where(where)
