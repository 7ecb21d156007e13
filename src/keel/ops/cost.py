"""Token prices, the cost of a call, and a per-key daily cost ledger.

Prices
    :data:`DEFAULT_PRICES` holds the published list prices (USD per million tokens, standard
    tier, no batch or cached-input discounts) of common hosted models **as known in early 2025**.
    Providers change prices: the ``[costs.prices]`` table of ``keel.toml`` overrides any of
    them and adds others::

        [costs]
        daily_budget_usd_per_key = 5.0

        [costs.prices."openai:gpt-4o-mini"]
        input_per_million = 0.15
        output_per_million = 0.60

    Local models cost nothing: ``keel:extractive`` (and any ``keel:*`` id), the test model
    ``ScriptedChatModel`` and any ``ollama:*`` id. A model whose price is not known has no cost
    (``None``), never a guessed one; an OpenAI-compatible local server reached through
    ``openai:<name>`` is such a model until ``keel.toml`` gives it a price (0 for a local one).

Lookup (:meth:`PriceTable.price`), first the ``keel.toml`` prices, then the defaults:
the exact id; then the id without its provider prefix (``gpt-4o-mini`` finds
``openai:gpt-4o-mini`` and ``openai:gpt-4o-mini`` finds a price given as ``gpt-4o-mini``,
but two different providers' prices for the same name are never mixed up: an ambiguous bare
name has no price); then the prefix rules (``ollama:*`` and ``keel:*`` cost 0).

Ledger
    :class:`UsageLedger` sums requests, tokens and cost per API key and UTC day in the keel
    database (table ``keel_usage``, primary key ``(key_id, day)``), on SQLite and PostgreSQL
    alike. The gateway asks :meth:`UsageLedger.over_budget` before a turn.

SQLAlchemy is imported only when a ledger is used, so :mod:`keel.config` can import
:class:`CostsSection` without making ``import keel`` heavy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from keel.errors import StoreError, UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine, Table

__all__ = [
    "DEFAULT_PRICES",
    "FREE_PREFIXES",
    "CostsSection",
    "ModelPrice",
    "PriceTable",
    "UsageLedger",
    "usage_table",
]


class ModelPrice(BaseModel):
    """USD per one million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class CostsSection(BaseModel):
    """``[costs]`` in ``keel.toml``: model prices and the daily budget of each API key."""

    model_config = ConfigDict(extra="forbid")

    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="USD per million tokens by model id; overrides the built-in list prices.",
    )
    daily_budget_usd_per_key: float | None = Field(
        default=None,
        gt=0,
        description="Cost one API key may spend per UTC day; None: no budget.",
    )


def _p(input_per_million: float, output_per_million: float) -> ModelPrice:
    return ModelPrice(input_per_million=input_per_million, output_per_million=output_per_million)


_FREE = _p(0.0, 0.0)

#: List prices (USD per 1M tokens) as known in early 2025; ``[costs.prices]`` overrides them.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    # OpenAI
    "openai:gpt-4o": _p(2.50, 10.00),
    "openai:gpt-4o-mini": _p(0.15, 0.60),
    "openai:gpt-4.1": _p(2.00, 8.00),
    "openai:gpt-4.1-mini": _p(0.40, 1.60),
    "openai:gpt-4.1-nano": _p(0.10, 0.40),
    "openai:gpt-4-turbo": _p(10.00, 30.00),
    "openai:gpt-3.5-turbo": _p(0.50, 1.50),
    "openai:o1": _p(15.00, 60.00),
    "openai:o1-mini": _p(1.10, 4.40),
    "openai:o3-mini": _p(1.10, 4.40),
    "openai:o4-mini": _p(1.10, 4.40),
    # Anthropic
    "anthropic:claude-3-5-sonnet-latest": _p(3.00, 15.00),
    "anthropic:claude-3-7-sonnet-latest": _p(3.00, 15.00),
    "anthropic:claude-3-5-haiku-latest": _p(0.80, 4.00),
    "anthropic:claude-3-opus-latest": _p(15.00, 75.00),
    "anthropic:claude-3-haiku-20240307": _p(0.25, 1.25),
    # Google
    "google_genai:gemini-2.0-flash": _p(0.10, 0.40),
    "google_genai:gemini-2.0-flash-lite": _p(0.075, 0.30),
    # local: nothing to pay
    "keel:extractive": _FREE,
    "ScriptedChatModel": _FREE,
    "scripted": _FREE,
}

#: Model ids with these prefixes run locally and cost nothing.
FREE_PREFIXES: tuple[str, ...] = ("ollama:", "keel:")


def _bare(model_id: str) -> str:
    """The id without its provider prefix (``openai:gpt-4o`` → ``gpt-4o``)."""
    return model_id.split(":", 1)[1] if ":" in model_id else model_id


def _lookup(table: Mapping[str, ModelPrice], model_id: str) -> ModelPrice | None:
    found = table.get(model_id)
    if found is not None:
        return found
    bare = _bare(model_id)
    if ":" in model_id:
        # "openai:gpt-4o" finds a price given without a prefix, never another provider's
        return table.get(bare)
    candidates = {price for key, price in table.items() if _bare(key) == bare}
    # one name under providers with different prices: do not guess which one is meant
    return candidates.pop() if len(candidates) == 1 else None


class PriceTable:
    """Model prices: ``overrides`` (``[costs.prices]``) over :data:`DEFAULT_PRICES`."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self.overrides: dict[str, ModelPrice] = dict(overrides or {})
        self.defaults: dict[str, ModelPrice] = dict(DEFAULT_PRICES)

    def price(self, model_id: str) -> ModelPrice | None:
        """The price of ``model_id``, or ``None`` when it is not known."""
        model_id = model_id.strip()
        if not model_id:
            return None
        for table in (self.overrides, self.defaults):
            found = _lookup(table, model_id)
            if found is not None:
                return found
        if model_id.startswith(FREE_PREFIXES):
            return _FREE
        return None

    def cost(self, model_id: str, usage: Mapping[str, int]) -> float | None:
        """USD for ``usage`` (``input_tokens``, ``output_tokens``), rounded to 8 decimals.

        ``None`` when the model's price is not known.
        """
        price = self.price(model_id)
        if price is None:
            return None
        tokens_in = int(usage.get("input_tokens", 0) or 0)
        tokens_out = int(usage.get("output_tokens", 0) or 0)
        if tokens_in < 0 or tokens_out < 0:
            raise UsageError(f"token counts cannot be negative: {dict(usage)!r}")
        usd = (tokens_in * price.input_per_million + tokens_out * price.output_per_million) / 1e6
        return round(usd, 8)


# -- ledger ----------------------------------------------------------------------------------


@functools.cache
def usage_table() -> Table:
    """The ``keel_usage`` table (built on first use: SQLAlchemy is imported lazily)."""
    from sqlalchemy import BigInteger, Column, Date, Double, String, Table

    from keel.db import metadata

    return Table(
        "keel_usage",
        metadata,
        Column("key_id", String(64), primary_key=True),
        Column("day", Date, primary_key=True),
        Column("requests", BigInteger, nullable=False, default=0),
        Column("input_tokens", BigInteger, nullable=False, default=0),
        Column("output_tokens", BigInteger, nullable=False, default=0),
        Column("cost_usd", Double, nullable=False, default=0.0),
    )


@functools.cache
def end_user_usage_table() -> Table:
    """The ``keel_usage_end_users`` table: usage per key, end user (OpenAI's ``user`` /
    ``safety_identifier``) and UTC day."""
    from sqlalchemy import BigInteger, Column, Date, Double, String, Table

    from keel.db import metadata

    return Table(
        "keel_usage_end_users",
        metadata,
        Column("key_id", String(64), primary_key=True),
        Column("end_user", String(256), primary_key=True),
        Column("day", Date, primary_key=True),
        Column("requests", BigInteger, nullable=False, default=0),
        Column("input_tokens", BigInteger, nullable=False, default=0),
        Column("output_tokens", BigInteger, nullable=False, default=0),
        Column("cost_usd", Double, nullable=False, default=0.0),
    )


_RETRIES = 5


def _count(usage: Mapping[str, int], key: str) -> int:
    value = int(usage.get(key, 0) or 0)
    if value < 0:
        raise UsageError(f"{key} cannot be negative: {value}")
    return value


def _row(row: Any) -> dict[str, Any]:
    return {
        "requests": int(row.requests),
        "input_tokens": int(row.input_tokens),
        "output_tokens": int(row.output_tokens),
        "cost_usd": round(float(row.cost_usd), 8),
    }


class UsageLedger:
    """Requests, tokens and cost per API key and UTC day, in the keel database.

    ``clock`` (tests) returns the current time; the day is taken from it in UTC.
    Database failures raise :class:`~keel.errors.StoreError`.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))
        self.table = usage_table()
        self.end_users = end_user_usage_table()
        try:
            from keel.db import create_tables

            create_tables(engine, self.table.metadata, [self.table, self.end_users])
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create the usage table: {exc}".splitlines()[0]) from exc

    def _day(self) -> date:
        now = self.clock()
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        return now.date()

    def record(
        self,
        key_id: str,
        usage: Mapping[str, int],
        cost_usd: float | None,
        *,
        end_user: str | None = None,
    ) -> None:
        """Add one request with its ``usage`` and cost (``None``: price unknown, adds 0), to
        the key's day and, when the request named one, to the end user's."""
        from sqlalchemy.exc import IntegrityError, SQLAlchemyError

        tokens_in = _count(usage, "input_tokens")
        tokens_out = _count(usage, "output_tokens")
        usd = float(cost_usd or 0.0)
        if usd < 0:
            raise UsageError(f"cost cannot be negative: {usd}")
        day = self._day()
        counts = {"input_tokens": tokens_in, "output_tokens": tokens_out, "cost_usd": usd}
        rows: list[tuple[Table, dict[str, Any]]] = [(self.table, {"key_id": key_id, "day": day})]
        if end_user:
            who = {"key_id": key_id, "end_user": end_user[:256], "day": day}
            rows.append((self.end_users, who))
        for attempt in range(_RETRIES):
            try:
                with self.engine.begin() as conn:
                    for table, ids in rows:
                        _add(conn, table, ids, counts)
                return
            except IntegrityError:
                # another writer inserted the row first: the update will find it now
                if attempt == _RETRIES - 1:
                    raise StoreError(f"cannot record usage for key {key_id!r}") from None
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot record usage: {exc}".splitlines()[0]) from exc

    def per_end_user(
        self, day: date | None = None, *, key_id: str | None = None
    ) -> list[dict[str, Any]]:
        """One row per key and end user for ``day`` (default: today, UTC): ``key_id``,
        ``end_user``, ``day``, ``requests``, ``input_tokens``, ``output_tokens``,
        ``cost_usd``."""
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        t, wanted = self.end_users, day or self._day()
        query = select(t).where(t.c.day == wanted)
        if key_id is not None:
            query = query.where(t.c.key_id == key_id)
        try:
            with self.engine.connect() as conn:
                found = conn.execute(query.order_by(t.c.key_id, t.c.end_user)).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read usage: {exc}".splitlines()[0]) from exc
        return [
            {"key_id": r.key_id, "end_user": r.end_user, "day": wanted.isoformat(), **_row(r)}
            for r in found
        ]

    def today(self, key_id: str) -> dict[str, float]:
        """``requests``, ``input_tokens``, ``output_tokens``, ``cost_usd`` of the UTC day."""
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        t = self.table
        query = select(t).where(t.c.key_id == key_id, t.c.day == self._day())
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read usage: {exc}".splitlines()[0]) from exc
        if row is None:
            return {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        return _row(row)

    def per_key(self, day: date | None = None) -> list[dict[str, Any]]:
        """One row per key for ``day`` (default: today, UTC), by key id.

        Each: ``key_id``, ``day`` (ISO date), ``requests``, ``input_tokens``,
        ``output_tokens``, ``cost_usd``.
        """
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        t, wanted = self.table, day or self._day()
        query = select(t).where(t.c.day == wanted).order_by(t.c.key_id)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read usage: {exc}".splitlines()[0]) from exc
        return [{"key_id": r.key_id, "day": wanted.isoformat(), **_row(r)} for r in rows]

    def over_budget(self, key_id: str, budget_usd: float | None) -> bool:
        """Whether ``key_id`` has spent ``budget_usd`` or more today (``None``: never)."""
        if budget_usd is None:
            return False
        return self.today(key_id)["cost_usd"] >= budget_usd


def _add(conn: Any, table: Table, ids: Mapping[str, Any], counts: Mapping[str, Any]) -> None:
    """Add one request and its counts to the row ``ids`` names (created when missing)."""
    c = table.c
    where = [c[name] == value for name, value in ids.items()]
    update = (
        table.update()
        .where(*where)
        .values(
            requests=c.requests + 1,
            input_tokens=c.input_tokens + counts["input_tokens"],
            output_tokens=c.output_tokens + counts["output_tokens"],
            cost_usd=c.cost_usd + counts["cost_usd"],
        )
    )
    if conn.execute(update).rowcount == 0:
        conn.execute(table.insert().values(**ids, requests=1, **counts))
