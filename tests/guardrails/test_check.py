"""`keel.guardrails.check` from Python (what `keel guard check` runs): one verdict per text."""

from __future__ import annotations

import pytest

from keel.errors import ConfigError, UsageError
from keel.guardrails import GuardCheck, check


def test_pii_verdicts_per_text() -> None:
    result = check("pii", ["call me at +1 415 555 0132", "  ", "nothing here"])
    assert isinstance(result, GuardCheck)
    assert result.validator == "pii" and result.options["on_fail"] == "noop"
    assert [(v.line, v.outcome) for v in result.verdicts] == [(1, "fail"), (3, "pass")]
    assert result.checked == 2 and result.flagged == 1
    phone = result.verdicts[0]
    assert phone.flagged and phone.text == "call me at +1 415 555 0132"
    span = phone.details["spans"][0]
    assert span["type"] == "PHONE_NUMBER" and phone.text[span["start"] : span["end"]].endswith(
        "0132"
    )
    row = phone.to_dict()
    assert row["line"] == 1 and row["outcome"] == "fail" and row["spans"] == phone.details["spans"]
    assert "text" not in row and row["latency_ms"] >= 0


def test_options_and_lines_of_a_string() -> None:
    seen: list[int] = []
    result = check(
        "length",
        "short\nthis one is far too long\n",
        options={"max_chars": 10},
        on_verdict=lambda v: seen.append(v.line),
    )
    assert [v.outcome for v in result.verdicts] == ["pass", "fail"]
    assert "limit 10" in result.verdicts[1].reason
    assert seen == [1, 2]
    assert result.options == {"on_fail": "noop", "max_chars": 10}


def test_unknown_validator_and_bad_options() -> None:
    with pytest.raises(UsageError, match="unknown validator 'nope'"):
        check("nope", ["x"])
    with pytest.raises(ConfigError, match=r"guards\.input\.length"):
        check("length", ["x"], options={"max_chars": 0})


def test_grounding_prefetch_is_refused_in_a_check() -> None:
    """No model writes in a check of given texts: the option would do nothing, so it is
    refused rather than ignored."""
    with pytest.raises(UsageError, match="prefetch"):
        check("grounding", ["An answer sentence here."], options={"prefetch": True})
