"""Tools for the Nimbus Notes support bot: plain, read-only Python functions.

Tool support is coming to Keel: once it lands, tools are registered in keel.toml (a [tools]
section listing their import paths). Until then this file is an example and is not loaded.
The prices below are the ones in docs/pricing.md.
"""

from __future__ import annotations

from typing import Literal

# US dollars per seat per month, by plan and billing period (docs/pricing.md).
_PRICE_PER_SEAT_MONTH: dict[str, dict[str, float]] = {
    "free": {"monthly": 0.0, "annual": 0.0},
    "plus": {"monthly": 8.0, "annual": 6.0},
    "business": {"monthly": 15.0, "annual": 12.0},
}
_MAX_MEMBERS: dict[str, int | None] = {"free": 3, "plus": 50, "business": None}


def plan_price(
    plan: Literal["free", "plus", "business"],
    seats: int,
    billing: Literal["monthly", "annual"] = "monthly",
) -> float:
    """Price of a Nimbus Notes plan for a number of seats, in US dollars, before tax.

    Args:
        plan: The plan: "free", "plus" or "business". Enterprise has custom pricing.
        seats: How many paid seats (Owner, Admins and Members; guests are free).
        billing: "monthly" gives the price per month; "annual" the price per year.

    Returns:
        The price per month (monthly billing) or per year (annual billing).

    Raises:
        ValueError: Unknown plan or billing period, fewer than 1 seat, or more members than
            the plan allows.
    """
    if plan not in _PRICE_PER_SEAT_MONTH:
        raise ValueError(f"unknown plan {plan!r}; Enterprise pricing is custom")
    if billing not in ("monthly", "annual"):
        raise ValueError(f"unknown billing period {billing!r}; use 'monthly' or 'annual'")
    if seats < 1:
        raise ValueError("seats must be at least 1")
    limit = _MAX_MEMBERS[plan]
    if limit is not None and seats > limit:
        raise ValueError(f"the {plan} plan allows at most {limit} members")
    per_month = _PRICE_PER_SEAT_MONTH[plan][billing] * seats
    return round(per_month * (12 if billing == "annual" else 1), 2)
