"""Prices, costs and the per-key daily ledger (SQLite and PostgreSQL: the same code path)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, event

from keel.db import make_engine
from keel.errors import UsageError
from keel.ops.cost import (
    DEFAULT_PRICES,
    CostsSection,
    ModelPrice,
    PriceTable,
    UsageLedger,
    usage_table,
)


def price(i: float, o: float) -> ModelPrice:
    return ModelPrice(input_per_million=i, output_per_million=o)


# -- prices ----------------------------------------------------------------------------------


def test_defaults_cover_common_models_with_list_prices() -> None:
    table = PriceTable()
    for model in (
        "openai:gpt-4o",
        "openai:gpt-4o-mini",
        "openai:gpt-4.1",
        "openai:gpt-4.1-mini",
        "openai:o3-mini",
        "anthropic:claude-3-5-sonnet-latest",
        "anthropic:claude-3-5-haiku-latest",
    ):
        found = table.price(model)
        assert found is not None and found.input_per_million > 0, model
        assert found.output_per_million >= found.input_per_million, model
    assert table.price("openai:gpt-4o-mini") == price(0.15, 0.60)
    # 1M input + 1M output of gpt-4o-mini
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert table.cost("openai:gpt-4o-mini", usage) == pytest.approx(0.75)


def test_cost_is_rounded_to_8_decimals_and_reads_missing_counts_as_zero() -> None:
    table = PriceTable()
    got = table.cost("openai:gpt-4o", {"input_tokens": 1234, "output_tokens": 567})
    assert got == round((1234 * 2.5 + 567 * 10.0) / 1e6, 8) == 0.008755
    assert table.cost("openai:gpt-4o", {"total_tokens": 99}) == 0.0
    assert table.cost("openai:gpt-4o", {"input_tokens": 1}) == 0.0000025
    with pytest.raises(UsageError):
        table.cost("openai:gpt-4o", {"input_tokens": -1})


def test_local_models_cost_nothing() -> None:
    table = PriceTable()
    usage = {"input_tokens": 10_000, "output_tokens": 5_000}
    for model in (
        "keel:extractive",
        "keel:anything-embedded",
        "ScriptedChatModel",
        "scripted",
        "ollama:llama3.1",
        "ollama:qwen2.5:7b",
    ):
        assert table.price(model) == price(0, 0), model
        assert table.cost(model, usage) == 0.0, model


def test_unknown_models_have_no_price_never_a_guess() -> None:
    table = PriceTable()
    usage = {"input_tokens": 100, "output_tokens": 100}
    for model in (
        "openai:my-finetune",
        "some-local-model",
        "gpt-4o-mini-2024-07-18",  # a dated snapshot is not the alias
        "azure_openai:gpt-4o",  # the same name under another provider
        "",
        "  ",
    ):
        assert table.price(model) is None, model
        assert table.cost(model, usage) is None, model


def test_an_id_without_its_provider_prefix_finds_the_price() -> None:
    table = PriceTable()
    assert table.price("gpt-4o-mini") == DEFAULT_PRICES["openai:gpt-4o-mini"]
    assert table.price("claude-3-5-haiku-latest") == price(0.80, 4.00)
    assert table.price("extractive") == price(0, 0)


def test_overrides_win_also_across_the_prefix() -> None:
    table = PriceTable(
        {
            "openai:gpt-4o-mini": price(1, 2),
            "gpt-4o": price(3, 4),  # given without a prefix
            "openai:my-local-llama": price(0, 0),  # an OpenAI-compatible local server
            "ollama:big-rented-gpu": price(0.5, 0.5),  # beats the ollama:* rule
        }
    )
    assert table.price("openai:gpt-4o-mini") == price(1, 2)
    assert table.price("gpt-4o-mini") == price(1, 2)
    assert table.price("openai:gpt-4o") == price(3, 4)
    assert table.price("gpt-4o") == price(3, 4)
    assert table.price("openai:my-local-llama") == price(0, 0)
    assert table.price("ollama:big-rented-gpu") == price(0.5, 0.5)
    assert table.price("ollama:other") == price(0, 0)
    assert table.price("openai:gpt-4.1") == DEFAULT_PRICES["openai:gpt-4.1"]  # untouched


def test_a_bare_name_priced_differently_by_two_providers_is_ambiguous() -> None:
    table = PriceTable({"azure_openai:gpt-9": price(1, 1), "openai:gpt-9": price(2, 2)})
    assert table.price("gpt-9") is None
    assert table.price("openai:gpt-9") == price(2, 2)
    same = PriceTable({"azure_openai:gpt-9": price(2, 2), "openai:gpt-9": price(2, 2)})
    assert same.price("gpt-9") == price(2, 2)


def test_costs_section_validates_like_the_rest_of_keel_toml() -> None:
    section = CostsSection.model_validate(
        {
            "prices": {"openai:gpt-4o": {"input_per_million": 2, "output_per_million": 8}},
            "daily_budget_usd_per_key": 5,
        }
    )
    assert section.prices["openai:gpt-4o"] == price(2, 8)
    assert section.daily_budget_usd_per_key == 5.0
    assert CostsSection().prices == {} and CostsSection().daily_budget_usd_per_key is None
    assert PriceTable(section.prices).price("gpt-4o") == price(2, 8)
    for bad in (
        {"budget": 1},  # unknown key
        {"prices": {"m": {"input_per_million": -1, "output_per_million": 1}}},
        {"prices": {"m": {"input_per_million": 1}}},
        {"prices": {"m": {"input_per_million": 1, "output_per_million": 1, "x": 1}}},
        {"daily_budget_usd_per_key": 0},
    ):
        with pytest.raises(ValidationError):
            CostsSection.model_validate(bad)


def test_importing_the_price_model_does_not_load_sqlalchemy() -> None:
    """keel.config imports CostsSection: `import keel` must stay light."""
    code = "import sys, keel.ops.cost; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- ledger ----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(None, tmp_path)
    else:
        eng = make_engine(request.getfixturevalue("pg_url"), tmp_path)
    yield eng
    eng.dispose()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_ledger_sums_per_key_and_day(engine: Engine, unique: str) -> None:
    clock = Clock(datetime(2031, 3, 4, 23, 30, tzinfo=UTC))
    ledger = UsageLedger(engine, clock=clock)
    a, b = f"a-{unique}", f"b-{unique}"
    empty = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    assert ledger.today(a) == empty
    ledger.record(a, {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120}, 0.0015)
    ledger.record(a, {"input_tokens": 50, "output_tokens": 5}, 0.00025)
    ledger.record(a, {"input_tokens": 7, "output_tokens": 3}, None)  # unknown price adds 0
    ledger.record(b, {}, 0.0)
    assert ledger.today(a) == {
        "requests": 3,
        "input_tokens": 157,
        "output_tokens": 28,
        "cost_usd": 0.00175,
    }
    assert ledger.today(b)["requests"] == 1

    rows = [r for r in ledger.per_key() if r["key_id"] in (a, b)]
    assert [r["key_id"] for r in rows] == [a, b]
    assert rows[0] == {
        "key_id": a,
        "day": "2031-03-04",
        "requests": 3,
        "input_tokens": 157,
        "output_tokens": 28,
        "cost_usd": 0.00175,
    }

    # a new UTC day starts from zero; the old day is still there
    clock.now = datetime(2031, 3, 5, 0, 30, tzinfo=UTC)
    assert ledger.today(a) == empty
    ledger.record(a, {"input_tokens": 1, "output_tokens": 1}, 0.5)
    assert ledger.today(a)["cost_usd"] == 0.5
    assert [r["requests"] for r in ledger.per_key(date(2031, 3, 4)) if r["key_id"] == a] == [3]
    assert [r["requests"] for r in ledger.per_key() if r["key_id"] == a] == [1]


def test_the_day_is_the_utc_day(engine: Engine, unique: str) -> None:
    # 01:00 at UTC+5 is still the previous day in UTC
    east = timezone(timedelta(hours=5))
    ledger = UsageLedger(engine, clock=lambda: datetime(2031, 6, 2, 1, 0, tzinfo=east))
    ledger.record(f"k-{unique}", {"input_tokens": 1}, 0.1)
    rows = [r for r in ledger.per_key(date(2031, 6, 1)) if r["key_id"] == f"k-{unique}"]
    assert len(rows) == 1


def test_ledger_survives_a_new_instance(engine: Engine, unique: str) -> None:
    UsageLedger(engine).record(f"k-{unique}", {"input_tokens": 3, "output_tokens": 4}, 0.25)
    assert UsageLedger(engine).today(f"k-{unique}")["cost_usd"] == 0.25


def test_budget(engine: Engine, unique: str) -> None:
    ledger = UsageLedger(engine)
    key = f"k-{unique}"
    assert not ledger.over_budget(key, 1.0)
    assert not ledger.over_budget(key, None)
    ledger.record(key, {"input_tokens": 1}, 0.6)
    assert not ledger.over_budget(key, 1.0)
    ledger.record(key, {"input_tokens": 1}, 0.4)
    assert ledger.over_budget(key, 1.0)  # spent the whole budget: the next turn is refused
    assert not ledger.over_budget(key, None)  # no budget configured
    assert not ledger.over_budget(f"other-{unique}", 1.0)  # budgets are per key


def test_bad_records_are_refused(engine: Engine, unique: str) -> None:
    ledger = UsageLedger(engine)
    with pytest.raises(UsageError):
        ledger.record(f"k-{unique}", {"input_tokens": -5}, 0.0)
    with pytest.raises(UsageError):
        ledger.record(f"k-{unique}", {"input_tokens": 5}, -0.1)
    assert ledger.today(f"k-{unique}")["requests"] == 0


def test_concurrent_records_add_up_exactly(engine: Engine, unique: str) -> None:
    ledger = UsageLedger(engine)
    keys = [f"c0-{unique}", f"c1-{unique}"]
    threads_n, per_thread = 8, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                ledger.record(keys[(n + i) % 2], {"input_tokens": 3, "output_tokens": 2}, 0.001)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = threads_n * per_thread
    got = [ledger.today(k) for k in keys]
    assert sum(int(g["requests"]) for g in got) == total
    assert all(g["requests"] == total / 2 for g in got)
    assert sum(g["input_tokens"] for g in got) == 3 * total
    assert sum(g["output_tokens"] for g in got) == 2 * total
    assert all(g["cost_usd"] == round(0.001 * total / 2, 8) for g in got)


@pytest.mark.postgres
def test_the_insert_race_is_retried_as_an_update(pg_url: str, tmp_path: Path, unique: str) -> None:
    """Another instance inserts the day's row between our update (0 rows) and our insert."""
    engine = make_engine(pg_url, tmp_path)
    other = make_engine(pg_url, tmp_path)
    ledger = UsageLedger(engine)
    key = f"race-{unique}"
    raced: list[bool] = []

    def racer(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO KEEL_USAGE") and not raced:
            raced.append(True)
            UsageLedger(other).record(key, {"input_tokens": 10}, 0.5)

    event.listen(engine, "before_cursor_execute", racer)
    try:
        ledger.record(key, {"input_tokens": 1, "output_tokens": 2}, 0.25)
    finally:
        event.remove(engine, "before_cursor_execute", racer)
    assert raced == [True]
    assert ledger.today(key) == {
        "requests": 2,
        "input_tokens": 11,
        "output_tokens": 2,
        "cost_usd": 0.75,
    }
    engine.dispose()
    other.dispose()


def test_usage_table_shape() -> None:
    t = usage_table()
    assert t.name == "keel_usage"
    assert [c.name for c in t.primary_key.columns] == ["key_id", "day"]
    assert {c.name for c in t.columns} == {
        "key_id",
        "day",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    }
