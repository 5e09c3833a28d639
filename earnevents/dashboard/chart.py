"""The overview's chart: handler outcomes per minute over the last hour, drawn on the server.

:func:`build` turns the minutes :func:`earnevents.stats.per_minute` read into the shapes of
an SVG bar chart (one stacked bar per minute: succeeded, retried, failed), so the page
needs no script (the dashboard's CSP allows none) and the template only places what
this module measured. Colours come from CSS classes (``dashboard.css``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..stats import FIELDS, MinuteStats

WIDTH = 720
HEIGHT = 200
LEFT = 44
"""Room for the y axis' labels."""
BOTTOM = 22
"""Room for the x axis' labels."""
TOP = 8


@dataclass(frozen=True)
class Bar:
    """One segment of a minute's stacked bar."""

    x: float
    y: float
    width: float
    height: float
    field: str
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    totals: dict[str, int]
    """Each field's sum over the whole chart (the legend)."""
    plot_left: float
    plot_bottom: float
    plot_right: float


def nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is >= ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # not reached


def build(minutes: Sequence[MinuteStats]) -> Chart:
    """The chart of ``minutes`` (oldest first, as ``per_minute`` returns them)."""
    plot_w = WIDTH - LEFT - 4
    plot_h = HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h
    top_value = nice_max(max((m.succeeded + m.retried + m.failed for m in minutes), default=0))
    slot = plot_w / max(len(minutes), 1)
    bars: list[Bar] = []
    x_ticks: list[Tick] = []
    for i, minute in enumerate(minutes):
        x = LEFT + i * slot
        start = dt.datetime.fromtimestamp(minute.start, dt.timezone.utc)
        y = bottom
        for field in FIELDS:
            count = getattr(minute, field)
            if count <= 0:
                continue
            height = plot_h * count / top_value
            y -= height
            title = f"{start:%H:%M} UTC: {count} {field}"
            bars.append(Bar(round(x + 1, 2), round(y, 2), round(max(slot - 2, 1), 2), round(height, 2), field, title))
        if start.minute % 10 == 0:
            x_ticks.append(Tick(round(x + slot / 2, 2), bottom + 15, f"{start:%H:%M}"))
    y_ticks = [
        Tick(LEFT - 6, round(bottom - plot_h * fraction, 2), str(int(top_value * fraction)))
        for fraction in (0, 0.5, 1)
        if fraction == 0 or top_value * fraction == int(top_value * fraction)
    ]
    totals = {field: sum(getattr(m, field) for m in minutes) for field in FIELDS}
    return Chart(WIDTH, HEIGHT, bars, y_ticks, x_ticks, totals, LEFT, bottom, LEFT + plot_w)
