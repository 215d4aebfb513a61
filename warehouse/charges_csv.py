"""The charge lines of a month as a plain CSV, for people and spreadsheets.

Columns are the ledger's own (LEDGER_SCHEMA, in its order) so the CSV, the Parquet ledger and
the FOCUS export can be read side by side. Money and quantities are written as the exact
decimal text the ledger holds, never through a float; timestamps are UTC ISO 8601 with a `Z`.
The same lines give the same bytes, so a re-run close can be checked with a hash.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Context, Decimal
from pathlib import Path

import pyarrow as pa

from warehouse.lake import write_bytes_atomic
from warehouse.ledger_model import LEDGER_SCHEMA, ChargeLine, ordered_lines

COLUMNS: tuple[str, ...] = tuple(LEDGER_SCHEMA.names)
# Decimal columns are written at the ledger's scale (12 places, cents at 2), so lines fresh from
# the close and lines read back from the Parquet ledger give the same text.
DECIMAL_SCALES: dict[str, int] = {f.name: f.type.scale for f in LEDGER_SCHEMA if pa.types.is_decimal(f.type)}
TMP_SUFFIX = ".tmp"
_WIDE = Context(prec=80)  # room for 38 digits either side of the point: quantize never overflows


def format_decimal(value: Decimal) -> str:
    """Plain positional text (no exponent, no float rounding); a negative zero is written as zero."""
    if not value.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    if value.is_zero():
        value = abs(value)
    return format(value, "f")


def at_scale(value: Decimal, scale: int) -> Decimal:
    """`value` with exactly `scale` places; refuses to drop digits (round before writing)."""
    scaled = value.quantize(Decimal(1).scaleb(-scale), context=_WIDE)
    if scaled != value:
        raise ValueError(f"{value} has more than {scale} decimal places")
    return scaled


def format_timestamp(value: datetime) -> str:
    """UTC ISO 8601 with `Z`; sub-second digits only when there are any."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {value.isoformat()}: charge times must be timezone-aware UTC")
    if offset != timedelta(0):
        raise ValueError(f"datetime {value.isoformat()} is not UTC")
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def format_cell(value: object) -> str:
    """One CSV cell: null is the empty field (no string column of the ledger is ever empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError(f"unexpected bool {value!r}")
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):  # before date: datetime is a date
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | str):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to CSV")


def csv_bytes(header: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    """RFC 4180 CSV (CRLF line ends, minimal quoting) in UTF-8 without a BOM."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([format_cell(v) for v in row])
    return buf.getvalue().encode("utf-8")


def charges_csv_bytes(lines: Iterable[ChargeLine]) -> bytes:
    """The CSV for `lines`, ordered by (billing_period, line_no) whatever order they came in."""
    ordered = ordered_lines(lines)
    rows = []
    for ln in ordered:
        row = []
        for name in COLUMNS:
            value = getattr(ln, name)
            try:
                if name in DECIMAL_SCALES and value is not None:
                    value = at_scale(value, DECIMAL_SCALES[name])
                row.append(format_cell(value))
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise ValueError(f"charge line {ln.line_no} of {ln.billing_period}, {name}: {exc}") from exc
        rows.append(row)
    return csv_bytes(COLUMNS, rows)


def write_charges_csv(lines: Iterable[ChargeLine], path: str | os.PathLike[str]) -> Path:
    return write_bytes_atomic(path, charges_csv_bytes(lines))
