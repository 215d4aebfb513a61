"""SQL literals for the DuckDB queries built as text (identifiers and values never come from
users unquoted: tenant names and rule values are user data)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import duckdb


def lit(text: object) -> str:
    """A quoted SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def ts_lit(value: datetime | date) -> str:
    """A TIMESTAMPTZ literal in UTC; a date means its midnight UTC, a naive datetime is UTC."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return f"TIMESTAMPTZ {lit(value.isoformat())}"


def read_parquet(files: Iterable[str]) -> str:
    """`read_parquet([...])` over an explicit file list."""
    return "read_parquet([" + ", ".join(lit(f) for f in files) + "])"


def dicts(rel: duckdb.DuckDBPyRelation) -> list[dict[str, Any]]:
    """A relation's rows as dicts by column name."""
    cols = rel.columns
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
