"""The /admin usage chart: turns and tokens per day, as PNG bytes.

CPU work of a few hundred milliseconds (more the first time, when matplotlib is imported and
builds its font cache): Runtime.usage_chart runs it on a thread of its own, never on the event
loop nor asyncio's shared executor. It draws on a Figure with the Agg canvas directly, never
through pyplot, so it keeps no global figure state between charts.
"""
from __future__ import annotations

import io
from datetime import datetime, time, timedelta
from typing import Sequence

from .store import Day

WIDTH, HEIGHT, DPI = 8.0, 5.0, 100  # 800 × 500 pixels: readable in Discord's preview
TURNS_COLOUR, IN_COLOUR, OUT_COLOUR = "#5865F2", "#57A773", "#E8A33D"


def render_usage_chart(days: Sequence[Day], title: str) -> bytes:
    """Two panels over the same days: turns (bars), and tokens in and out (stacked bars)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, DateFormatter, DayLocator
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    figure = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    turns_axes, tokens_axes = figure.subplots(2, 1, sharex=True)
    when = [datetime.combine(d.day, time()) for d in days]  # a bar centred on each day's tick
    width = 0.8 if len(days) <= 31 else 0.9
    turns_axes.bar(when, [d.turns for d in days], width=width, color=TURNS_COLOUR)
    turns_axes.set_ylabel("turns")
    turns_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    tokens_axes.bar(when, [d.tokens_in for d in days], width=width, color=IN_COLOUR, label="in")
    tokens_axes.bar(when, [d.tokens_out for d in days], width=width, color=OUT_COLOUR, label="out",
                    bottom=[d.tokens_in for d in days])
    tokens_axes.set_ylabel("tokens")
    tokens_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    tokens_axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    tokens_axes.legend(loc="upper left", frameon=False, ncols=2)
    tokens_axes.xaxis.set_major_locator(DayLocator() if len(days) <= 14 else AutoDateLocator(minticks=3, maxticks=10))
    tokens_axes.xaxis.set_major_formatter(DateFormatter("%b %d"))
    if when:
        tokens_axes.set_xlim(when[0] - timedelta(hours=15), when[-1] + timedelta(hours=15))
    # headroom (the tokens' legend sits above their bars); empty days still draw a sensible axis
    for axes, highest, room in ((turns_axes, max((d.turns for d in days), default=0), 1.08),
                                (tokens_axes, max((d.tokens_in + d.tokens_out for d in days), default=0), 1.25)):
        axes.grid(axis="y", alpha=0.3)
        axes.spines[["top", "right"]].set_visible(False)
        axes.set_ylim(0, max(1, highest) * room)
    figure.suptitle(title)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
