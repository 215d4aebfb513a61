"""Checks a command runs before it computes or writes anything: does the lake exist, does it hold
data for the month asked for, does the price book cover the GPU models that data holds.

They exist so that a mistake (a typo in --lake, a month with no data, a config without prices)
ends in one line that names it, not in a DuckDB traceback or an empty ledger that looks real.
Nothing here writes, and only warehouse/ opens lake files (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from warehouse.lake import as_lake
from warehouse.pricing import days, month_bounds
from warehouse.rollups import Rollups
from warehouse.sql import read_parquet


def sample_dates(lake: str | Path) -> list[str]:
    """Dates (YYYY-MM-DD) that hold committed ticks, oldest first."""
    return Rollups(as_lake(lake)).sample_dates()


def month_sample_dates(lake: str | Path, month: str) -> list[str]:
    """The dates of `month` (its own days only) that hold committed ticks."""
    m0, m1 = month_bounds(month)
    own = {d.isoformat() for d in days(m0, m1)}
    return [d for d in sample_dates(lake) if d in own]


def holdings(lake: str | Path) -> str:
    """'samples from A to B' or 'no samples', for messages about what a lake holds."""
    dates = sample_dates(lake)
    if not dates:
        return "no samples"
    return f"samples from {dates[0]} to {dates[-1]}" if len(dates) > 1 else f"samples of {dates[0]}"


def models_in(lake: str | Path, dates: Sequence[str] | None = None) -> list[str]:
    """GPU models with samples in the lake (on `dates`, when given), sorted."""
    from warehouse.staging import committed_files

    wanted = sample_dates(lake) if dates is None else list(dates)
    lake = as_lake(lake)
    files = committed_files(lake, "gpu", wanted)
    if not files:
        return []
    con = duckdb.connect()
    lake.register(con)
    try:
        rows = con.sql(f"SELECT DISTINCT model FROM {read_parquet(files)} ORDER BY 1").fetchall()
    finally:
        con.close()
    return [r[0] for r in rows if r[0] is not None]


def unpriced_models(
    lake: str | Path, book: Sequence[Mapping[str, Any]], dates: Sequence[str] | None = None
) -> list[str]:
    """Models the lake holds (on `dates`) that no price book entry names at all.

    A model priced only from a later date is left to the price book's own check, which names the
    model and the first date without a price.
    """
    named = {str(e.get("model")) for e in book}
    return [m for m in models_in(lake, dates) if m not in named]


def month_started(month: str, today: date) -> bool:
    return month_bounds(month)[0] <= today
