"""Charts over time from the trace store, drawn on the server as inline SVG.

No chart library and no script: each chart is a ``<svg>`` of bars with a ``<title>`` per bar
(the browser shows it on hover), sized by its ``viewBox`` and styled from the console's CSS.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import Engine, select

from keel.ops.tracing import traces_table

# window name -> (length, bucket size, label format)
WINDOWS: dict[str, tuple[timedelta, timedelta, str]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=5), "%H:%M"),
    "24h": (timedelta(hours=24), timedelta(hours=1), "%H:%M"),
    "7d": (timedelta(days=7), timedelta(hours=6), "%d %b %H:%M"),
    "30d": (timedelta(days=30), timedelta(days=1), "%d %b"),
}
GUARD_TRIPS = ("flagged", "tripped")
MAX_ROWS = 200_000


@dataclass
class Bucket:
    start: datetime
    requests: int = 0
    errors: int = 0
    guard_trips: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None


def buckets(
    engine: Engine,
    window: str = "24h",
    *,
    release_id: str | None = None,
    now: datetime | None = None,
) -> list[Bucket]:
    """Traces of the last ``window``, counted per bucket: requests, errors, guard trips
    (guard outcome flagged or tripped), cost and the latencies (for the median)."""
    length, size, _ = WINDOWS[window]
    at = now or datetime.now(UTC)
    step = size.total_seconds()
    # buckets on round boundaries (whole hours, days in UTC); the last one holds now
    end = datetime.fromtimestamp((at.timestamp() // step + 1) * step, UTC)
    start = end - length
    n = int(length / size)
    out = [Bucket(start + i * size) for i in range(n)]
    t = traces_table
    query = (
        select(t.c.started_at, t.c.duration_ms, t.c.status, t.c.guard_outcome, t.c.cost_usd)
        .where(t.c.started_at >= start, t.c.started_at < end)
        .limit(MAX_ROWS)
    )
    if release_id:
        query = query.where(t.c.release_id == release_id)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    for started_at, duration_ms, status, guard, cost in rows:
        at = started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
        i = min(n - 1, max(0, int((at - start) / size)))
        b = out[i]
        b.requests += 1
        b.errors += status == "error"
        b.guard_trips += guard in GUARD_TRIPS
        b.cost_usd += float(cost or 0.0)
        b.latencies.append(float(duration_ms))
    return out


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:.4f}" if value < 1 else f"${value:,.2f}"
    if unit == "ms":
        return f"{value:,.0f} ms"
    return f"{value:,.0f}"


def bar_chart(
    title: str, points: list[tuple[str, float | None]], *, unit: str = "", css: str = ""
) -> Markup:
    """A bar chart of ``(label, value)`` points (None: no data, no bar) as inline SVG."""
    width, height, left, bottom, top = 600, 160, 56, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    values = [v for _, v in points if v is not None]
    peak = max(values) if values else 0.0
    scale = peak if peak > 0 else 1.0
    slot = plot_w / max(1, len(points))
    parts = [
        f'<svg class="chart {escape(css)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - 8}" '
        f'y2="{top + plot_h}"/>',
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">'
        f"{escape(_fmt(peak, unit))}</text>",
        f'<text class="tick" x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, (label, value) in enumerate(points):
        x = left + i * slot
        if value is not None and value > 0:
            h = max(1.0, plot_h * value / scale)
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(1.0, slot - 2):.1f}" height="{h:.1f}">'
                f"<title>{escape(label)}: {escape(_fmt(value, unit))}</title></rect>"
            )
        if i == 0 or i == len(points) - 1 or (len(points) > 6 and i == len(points) // 2):
            anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
            tx = x if i == 0 else x + slot if i == len(points) - 1 else x + slot / 2
            parts.append(
                f'<text class="tick" x="{tx:.1f}" y="{height - 6}" text-anchor="{anchor}">'
                f"{escape(label)}</text>"
            )
    if not values:
        parts.append(
            f'<text class="empty" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
            'text-anchor="middle">no traces in this window</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def charts(bs: list[Bucket], window: str) -> list[dict[str, Any]]:
    """The four console charts: requests, p50 latency, guard trips and cost per bucket."""
    fmt = WINDOWS[window][2]
    labels = [b.start.strftime(fmt) for b in bs]
    series: list[tuple[str, list[float | None], str, str]] = [
        ("Requests", [float(b.requests) for b in bs], "", "requests"),
        ("Latency p50", [b.p50_ms for b in bs], "ms", "latency"),
        ("Guard trips", [float(b.guard_trips) for b in bs], "", "guards"),
        ("Cost", [b.cost_usd for b in bs], "$", "cost"),
    ]
    out = []
    for title, values, unit, css in series:
        known = [v for v in values if v is not None]
        total: float | None
        if css == "latency":
            lat = [x for b in bs for x in b.latencies]
            total = statistics.median(lat) if lat else None
        else:
            total = sum(known)
        out.append(
            {
                "title": title,
                "svg": bar_chart(title, list(zip(labels, values, strict=True)), unit=unit, css=css),
                "total": _fmt(total, unit) if total is not None else "—",
                "total_label": "p50 over the window" if css == "latency" else "in the window",
            }
        )
    return out
