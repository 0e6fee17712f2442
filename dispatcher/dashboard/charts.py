"""Charts as geometry for server-rendered inline SVG: no JavaScript, no CDN.

The functions here compute rectangles and labels; the templates draw them, so
every label goes through Jinja's autoescaping like any other text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dispatcher.domain.metrics import Series

WIDTH = 600.0
HEIGHT = 140.0
BAR_HEIGHT = 18.0

STATUS_COLOURS = {
    "sent": "#2e7d32",
    "failed": "#c62828",
    "unknown": "#ef6c00",
    "retry_wait": "#f9a825",
    "cancelled": "#757575",
    "expired": "#6d4c41",
}
"""The statuses the throughput charts stack, bottom first, with their colours."""


@dataclass(frozen=True, slots=True)
class Rect:
    """One rectangle of a chart, with the tooltip it carries."""

    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class StackedBars:
    """A stacked bar chart over time."""

    rects: list[Rect]
    peak: float
    start: dt.datetime
    end: dt.datetime
    total: dict[str, float]
    width: float = WIDTH
    height: float = HEIGHT

    @property
    def empty(self) -> bool:
        """True when there is nothing to draw."""
        return not self.rects


def stacked(series: Series, *, start: dt.datetime, step: dt.timedelta, slots: int) -> StackedBars:
    """One bar per ``step`` from ``start``, stacking recipients by status."""
    values: list[dict[str, float]] = [{} for _ in range(slots)]
    for at, point in series.points:
        index = int((at - start) / step)
        if 0 <= index < slots:
            for label, value in point.items():
                values[index][label] = values[index].get(label, 0.0) + value
    peak = max((sum(v.get(s, 0.0) for s in STATUS_COLOURS) for v in values), default=0.0)
    rects: list[Rect] = []
    slot_w = WIDTH / slots
    for index, point in enumerate(values):
        y = HEIGHT
        for status, colour in STATUS_COLOURS.items():
            value = point.get(status, 0.0)
            if value <= 0 or peak <= 0:
                continue
            h = value / peak * HEIGHT
            y -= h
            at = start + index * step
            rects.append(
                Rect(
                    x=index * slot_w + 0.5,
                    y=y,
                    width=max(slot_w - 1.0, 0.5),
                    height=h,
                    colour=colour,
                    title=f"{at:%Y-%m-%d %H:%M} UTC: {value:g} {status}",
                )
            )
    total = {s: series.totals.get(s, 0.0) for s in STATUS_COLOURS}
    return StackedBars(rects=rects, peak=peak, start=start, end=start + slots * step, total=total)


@dataclass(frozen=True, slots=True)
class HorizontalBars:
    """Labelled horizontal bars, largest first (error codes by count)."""

    rows: list[tuple[str, float, float]]
    """(label, value, bar width)."""
    width: float = WIDTH

    @property
    def height(self) -> float:
        """The chart's height: one row per bar."""
        return max(len(self.rows), 1) * (BAR_HEIGHT + 4)


def horizontal(totals: dict[str, float], *, limit: int = 10) -> HorizontalBars:
    """The ``limit`` largest values as bars scaled to the largest."""
    top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    peak = max((v for _, v in top), default=0.0)
    bar_space = WIDTH * 0.55
    return HorizontalBars(
        rows=[(label, value, value / peak * bar_space if peak else 0.0) for label, value in top]
    )
