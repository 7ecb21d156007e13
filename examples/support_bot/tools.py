"""Tools for the Nimbus Notes support bot, registered in keel.toml under [tools] enabled.

- ``plan_price`` (read-only): the price of a plan for a number of seats (docs/pricing.md).
- ``open_ticket`` (writes, needs approval): files a support ticket; the agent pauses until a
  person approves the exact call. Tickets go to ``.keel/tickets.jsonl`` beside keel.toml.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from keel.tools import tool

# US dollars per seat per month, by plan and billing period (docs/pricing.md).
_PRICE_PER_SEAT_MONTH: dict[str, dict[str, float]] = {
    "free": {"monthly": 0.0, "annual": 0.0},
    "plus": {"monthly": 8.0, "annual": 6.0},
    "business": {"monthly": 15.0, "annual": 12.0},
}
_MAX_MEMBERS: dict[str, int | None] = {"free": 3, "plus": 50, "business": None}


@tool(
    examples=(
        "how much does the business plan cost for 12 seats?",
        "price of plus for 5 seats billed annually",
    )
)
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


EMAIL = r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$"
TICKETS = Path(__file__).resolve().parent / ".keel" / "tickets.jsonl"


@tool(
    side_effects="write",
    requires_approval=True,
    scopes=["tickets:write"],
    examples=('open a support ticket for me@example.com: "sync is broken on my laptop"',),
)
def open_ticket(
    email: Annotated[str, Field(pattern=EMAIL)],
    summary: Annotated[str, Field(min_length=3, max_length=500)],
) -> str:
    """Open a support ticket that a person on the support team will answer by email.

    Args:
        email: The customer's email address, where the team replies.
        summary: What the problem is, in the customer's words.
    """
    ticket = {
        "id": f"T-{uuid.uuid4().hex[:8].upper()}",
        "email": email,
        "summary": summary,
        "opened_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    TICKETS.parent.mkdir(parents=True, exist_ok=True)
    with TICKETS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(ticket) + "\n")
    return f"Ticket {ticket['id']} opened; the support team will reply to {email}."
