"""Matplotlib charts for the monthly reports: the same figures as SVG (HTML) and PNG (PDF).

Figures are built on `matplotlib.figure.Figure` with an Agg canvas and never through pyplot,
so rendering a report touches no global figure registry and needs no display, and two
reports can be drawn in one process (the dashboard, the jobs runner) without interfering.

Charts are pictures of the numbers, not the numbers: every amount a chart shows also sits
exactly, to the cent, in a table next to it. Money labels drawn on bars are passed in already
formatted by the caller, so no float ever becomes a printed amount.

Determinism: SVG ids are salted with a fixed string and the date metadata is dropped, so the
same report gives the same SVG text (and the HTML the same string); PNGs carry no timestamp.
"""

from __future__ import annotations

import calendar
import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from warehouse.ledger_model import DailyPoint

PNG_DPI = 110
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_STYLE = {
    "svg.hashsalt": "gpuledger-report",  # stable clip-path/marker ids -> identical SVG text
    "svg.fonttype": "none",  # text stays text: smaller, selectable, searchable
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 7,
    "legend.frameon": False,
}
_RESERVED = "#9ecae1"
_USED = "#2171b5"
_CAPACITY = "#636363"
_IDLE = "#e6550d"
_COST = "#31a354"


@dataclass(frozen=True)
class Chart:
    """One chart of a report: a heading for the page and the figure under it."""

    key: str
    title: str
    figure: Figure


@dataclass(frozen=True)
class Bar:
    """One bar of a bar chart: its label, its length, and the exact text printed at its end."""

    label: str
    value: Decimal
    text: str


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


def _plain(text: str) -> str:
    """Labels are user data: `$` would start mathtext (and can raise on odd input), so escape it."""
    return text.replace("$", r"\$")


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _month_days(month: str) -> int:
    year, mon = (int(p) for p in month.split("-"))
    return calendar.monthrange(year, mon)[1]


def _day_axis(ax, month: str) -> None:  # type: ignore[no-untyped-def]
    days = _month_days(month)
    ax.set_xlim(0.5, days + 0.5)
    ax.set_xticks(list(range(1, days + 1, 2 if days > 15 else 1)))
    ax.set_xlabel(f"day of {month} (UTC)")


def _legend_above(ax, ncols: int) -> None:  # type: ignore[no-untyped-def]
    """Above the axes, where no bar or line can be hidden behind it whatever the data."""
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=ncols, borderaxespad=0.2)


def _ratio_pct(num: Decimal, den: Decimal) -> float:
    return float(num / den * 100) if den > 0 else math.nan


def utilization_chart(month: str, daily: Sequence[DailyPoint]) -> Chart:
    """Utilization and allocation rate per day: how much of what exists is held, and used."""
    days = [p.day.day for p in daily]
    util = [_ratio_pct(p.used_gpu_h, p.capacity_gpu_h) for p in daily]
    alloc = [_ratio_pct(p.reserved_gpu_h, p.capacity_gpu_h) for p in daily]
    with _style():
        fig = _figure(6.4, 2.6)
        ax = fig.add_subplot()
        ax.plot(
            days, alloc, color=_RESERVED, marker="o", markersize=2.5, label="allocation (reserved / capacity)"
        )
        ax.plot(days, util, color=_USED, marker="o", markersize=2.5, label="utilization (used / capacity)")
        top = max([100.0] + [v for v in util + alloc if not math.isnan(v)])
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel("% of capacity")
        _day_axis(ax, month)
        _legend_above(ax, 2)
    return Chart("utilization", "Utilization and allocation per day", fig)


def gpu_hours_chart(month: str, daily: Sequence[DailyPoint]) -> Chart:
    """Reserved against used GPU-hours per day, under the capacity line."""
    days = [p.day.day for p in daily]
    with _style():
        fig = _figure(6.4, 2.6)
        ax = fig.add_subplot()
        ax.bar(days, [float(p.reserved_gpu_h) for p in daily], width=0.8, color=_RESERVED, label="reserved")
        ax.bar(days, [float(p.used_gpu_h) for p in daily], width=0.45, color=_USED, label="used")
        ax.plot(
            days,
            [float(p.capacity_gpu_h) for p in daily],
            color=_CAPACITY,
            linestyle="--",
            linewidth=1,
            label="capacity",
        )
        ax.set_ylim(bottom=0)
        ax.set_ylabel("GPU-hours")
        _day_axis(ax, month)
        _legend_above(ax, 3)
    return Chart("gpu_hours", "Reserved vs used GPU-hours per day", fig)


def idle_chart(month: str, daily: Sequence[DailyPoint]) -> Chart:
    """Allocated-idle GPU-hours per day: held, paid for, and not used."""
    days = [p.day.day for p in daily]
    with _style():
        fig = _figure(6.4, 2.6)
        ax = fig.add_subplot()
        ax.bar(days, [float(p.idle_gpu_h) for p in daily], width=0.8, color=_IDLE)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("allocated-idle GPU-hours")
        _day_axis(ax, month)
    return Chart("idle", "Idle waste per day (allocated-idle GPU-hours)", fig)


def cost_bars_chart(bars: Sequence[Bar], currency: str) -> Chart:
    """Cost by cluster and GPU model, largest first, each bar labelled with its exact amount."""
    n = len(bars)
    with _style():
        fig = _figure(6.4, min(0.9 + 0.28 * n, 8.0))
        ax = fig.add_subplot()
        ys = list(range(n))
        values = [float(b.value) for b in bars]
        ax.barh(ys, values, color=_COST, height=0.6)
        ax.set_yticks(ys, [_plain(b.label) for b in bars])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        peak = max([0.0, *values])
        low = min([0.0, *values])
        ax.set_xlim(low * 1.35 if low < 0 else 0, peak * 1.35 if peak > 0 else 1)
        for y, value, bar in zip(ys, values, bars, strict=True):
            ax.annotate(
                _plain(bar.text),
                (max(value, 0.0), y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_xlabel(f"cost ({_plain(currency)})")
    return Chart("cost", "Cost by cluster and GPU model", fig)


def to_svg(chart: Chart) -> str:
    """The chart as an `<svg>` element ready to inline in HTML (no XML prolog, no DOCTYPE)."""
    buf = io.StringIO()
    with _style():
        chart.figure.savefig(buf, format="svg", metadata={"Date": None, "Creator": "gpuledger"})
    text = buf.getvalue()
    # The RDF <metadata> block only names the creator; inline it is dead weight.
    return _METADATA.sub("", text[text.index("<svg") :]).strip()


def to_png(chart: Chart, dpi: int = PNG_DPI) -> bytes:
    """The chart as PNG bytes at a modest DPI: sharp enough on paper, small enough to mail."""
    buf = io.BytesIO()
    with _style():
        chart.figure.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
