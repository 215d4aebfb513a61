"""The usage a month was closed with, kept beside its ledger.

A closed month's bill is frozen, but its rollups are not: data that arrives late changes them and
is billed as corrections in the next month. A report of the closed month must show the usage
its bill was made from, not a capacity recomputed from the late data beside a ledger that does not
bill it. So the close writes the month's daily measures (fleet and per tenant) and its idle periods
next to the charges; reports of a closed month read them, and the late data shows up as the next
month's corrections.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from warehouse.accounting import Accounting
from warehouse.lake import Lake

USAGE = "usage.parquet"
IDLE = "idle.parquet"
FLEET = ""  # the scope of fleet-wide rows (tenants are never empty strings)
GPU_H = pa.decimal128(38, 9)

USAGE_SCHEMA = pa.schema(
    [
        ("scope", pa.string()),  # FLEET or a tenant
        ("day", pa.date32()),
        ("capacity_gpu_h", GPU_H),  # a tenant's capacity is what it reserved
        ("reserved_gpu_h", GPU_H),
        ("used_gpu_h", GPU_H),
        ("idle_gpu_h", GPU_H),
    ]
)
IDLE_SCHEMA = pa.schema(
    [
        ("tenant", pa.string()),
        ("workload", pa.string()),
        ("cluster", pa.string()),
        ("node", pa.string()),
        ("gpu_uuid", pa.string()),
        ("model", pa.string()),
        ("slice_id", pa.string()),
        ("kind", pa.string()),
        ("start", pa.timestamp("us", tz="UTC")),
        ("end", pa.timestamp("us", tz="UTC")),
        ("minutes", pa.float64()),
        ("gpu_hours", pa.float64()),
        ("cost", pa.decimal128(18, 2)),
    ]
)


def dec9(v: Any) -> Decimal:
    """A measure as the reports show it: a float from DuckDB to 9 places."""
    return Decimal(0) if v is None else Decimal(repr(float(v))).quantize(Decimal("1e-9"))


def build(acct: Accounting, m0: date, m1: date) -> tuple[pa.Table, pa.Table]:
    """The month's daily measures (fleet, then each tenant) and all its idle periods."""
    rows: list[dict[str, Any]] = []
    for r in acct.measures([], grain="day", start=m0, end=m1):
        rows.append(_usage_row(FLEET, r, r["capacity_gpu_h"]))
    for r in acct.measures(["tenant"], grain="day", start=m0, end=m1):
        rows.append(_usage_row(r["tenant"], r, r["reserved_gpu_h"]))
    rows.sort(key=lambda r: (r["scope"], r["day"]))
    usage = pa.Table.from_pylist(rows, schema=USAGE_SCHEMA)
    periods = acct.idle_periods(start=m0, end=m1)
    idle = pa.Table.from_pylist(
        [{k: p.get(k) for k in IDLE_SCHEMA.names} for p in periods], schema=IDLE_SCHEMA
    )
    return usage, idle


def _usage_row(scope: str, r: dict[str, Any], capacity: Any) -> dict[str, Any]:
    return {
        "scope": scope,
        "day": r["period"].date(),
        "capacity_gpu_h": dec9(capacity),
        "reserved_gpu_h": dec9(r["reserved_gpu_h"]),
        "used_gpu_h": dec9(r["used_gpu_h"]),
        "idle_gpu_h": dec9(r["idle_gpu_h"]),
    }


class ClosedUsage:
    """A closed month's usage as written by the close (None from `read` for older ledgers)."""

    def __init__(self, usage: pa.Table, idle: pa.Table) -> None:
        self.usage = usage.to_pylist()
        self.idle = idle.to_pylist()

    @classmethod
    def read(cls, lake: Lake, ledger_dir: Path) -> ClosedUsage | None:
        u, i = ledger_dir / USAGE, ledger_dir / IDLE
        if not (lake.exists(u) and lake.exists(i)):
            return None  # closed before usage was kept: the reports recompute it
        return cls(lake.read_table(u), lake.read_table(i))

    def daily(self, tenant: str | None) -> list[dict[str, Any]]:
        scope = FLEET if tenant is None else tenant
        return [r for r in self.usage if r["scope"] == scope]

    def idle_periods(self, tenant: str | None) -> list[dict[str, Any]]:
        return [r for r in self.idle if tenant is None or r["tenant"] == tenant]
