"""The shapes the month close produces and the exports and reports consume.

Kept apart from the SQL that computes them so that the FOCUS writer, the CSV writer and the
report renderer can be built and tested against hand-made lines, and so that the ledger's
Parquet schema is written down once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from itertools import pairwise

import pyarrow as pa

# A charge line is one (tenant, cluster, GPU model, price segment) of a billing period.
LINE_TYPES = ("usage", "unallocated", "unhealthy", "idle_share", "energy", "correction")
UNALLOCATED_TENANT = "__unallocated__"
# The platform's lines for tenants' slice time on unhealthy GPU ticks ([pricing] bill_unhealthy =
# false): tenant "__unhealthy__/<reason>", so the reason is on the line without a new column.
UNHEALTHY_TENANT = "__unhealthy__"


def is_platform_tenant(tenant: str) -> bool:
    """True for the platform's own lines (unallocated capacity, unhealthy GPU time), not a tenant's."""
    return tenant == UNALLOCATED_TENANT or tenant.startswith(UNHEALTHY_TENANT + "/")


def tenant_display_name(tenant: str) -> str:
    """A line's tenant as people read it (reports, dashboards): the platform's unhealthy lines by
    their reason, e.g. "Platform: unhealthy GPU time (xid 79: GPU fell off the bus)"; every other
    tenant as it is. The CSV and FOCUS exports keep the machine-readable key."""
    if tenant.startswith(UNHEALTHY_TENANT + "/"):
        return f"Platform: unhealthy GPU time ({tenant.partition('/')[2]})"
    return tenant


# Exact quantities: GPU-hours and kWh to 12 places, money exact to 12 places and rounded to cents.
QTY = pa.decimal128(38, 12)
MONEY = pa.decimal128(38, 12)
CENTS = pa.decimal128(18, 2)

LEDGER_SCHEMA = pa.schema(
    [
        ("billing_period", pa.string()),  # YYYY-MM the line is billed in
        ("line_no", pa.int32()),  # 1.. in a stable order: the same inputs give the same numbers
        ("line_type", pa.string()),  # one of LINE_TYPES
        ("tenant", pa.string()),  # UNALLOCATED_TENANT for the platform's own line
        ("cluster", pa.string()),
        ("gpu_model", pa.string()),
        ("charge_start", pa.timestamp("us", tz="UTC")),  # the price segment inside the period
        ("charge_end", pa.timestamp("us", tz="UTC")),  # exclusive
        ("price_from", pa.date32()),  # effective date of the price-book entry used
        ("gpu_hours", QTY),  # quantity billed (reserved / used / hybrid GPU-hours, or shared idle)
        ("unit_price", MONEY),  # per GPU-hour (energy lines: per kWh)
        ("kwh", QTY),  # energy lines only, else null
        ("currency", pa.string()),
        ("cost_exact", MONEY),  # gpu_hours x unit_price (energy: kwh x unit_price), unrounded
        ("cost", CENTS),  # rounded by largest remainder: the lines of a period add up to the cent
        ("mode", pa.string()),  # reserved | used | hybrid
        ("idle_policy", pa.string()),  # platform | weighted | even
        ("corrects_period", pa.string()),  # correction lines: the closed month they correct, else null
        ("reserved_gpu_hours", QTY),  # context for reading the line; null on platform/energy lines
        ("used_gpu_hours", QTY),
        ("corrects_line_type", pa.string()),  # correction lines: the line type they correct
    ]
)


@dataclass(frozen=True)
class ChargeLine:
    billing_period: str
    line_no: int
    line_type: str
    tenant: str
    cluster: str
    gpu_model: str
    charge_start: datetime
    charge_end: datetime
    price_from: date
    gpu_hours: Decimal
    unit_price: Decimal
    kwh: Decimal | None
    currency: str
    cost_exact: Decimal
    cost: Decimal
    mode: str
    idle_policy: str
    corrects_period: str | None = None
    reserved_gpu_hours: Decimal | None = None
    used_gpu_hours: Decimal | None = None
    corrects_line_type: str | None = None


def ordered_lines(lines: Iterable[ChargeLine]) -> list[ChargeLine]:
    """Lines in (billing_period, line_no) order, refusing a line number that appears twice."""
    ordered = sorted(lines, key=lambda ln: (ln.billing_period, ln.line_no))
    for a, b in pairwise(ordered):
        if (a.billing_period, a.line_no) == (b.billing_period, b.line_no):
            raise ValueError(f"charge line {a.line_no} of {a.billing_period} appears twice")
    return ordered


def lines_to_table(lines: list[ChargeLine]) -> pa.Table:
    cols = {name: [getattr(ln, name) for ln in lines] for name in LEDGER_SCHEMA.names}
    return pa.table(cols, schema=LEDGER_SCHEMA)


def table_to_lines(table: pa.Table) -> list[ChargeLine]:
    return [ChargeLine(**row) for row in table.cast(LEDGER_SCHEMA).to_pylist()]


@dataclass(frozen=True)
class DailyPoint:
    day: date
    capacity_gpu_h: Decimal
    reserved_gpu_h: Decimal
    used_gpu_h: Decimal
    idle_gpu_h: Decimal  # allocated-idle: reserved GPU-hours inside idle periods


@dataclass(frozen=True)
class IdlePeriod:
    tenant: str
    workload: str  # namespace/pod, Slurm job or user: who to talk to
    cluster: str
    node: str
    gpu_uuid: str
    gpu_model: str
    slice_id: str
    start: datetime
    end: datetime
    gpu_hours: Decimal  # reserved GPU-hours inside the period
    cost: Decimal  # at the period's price, to the cent


@dataclass(frozen=True)
class UnhealthyTime:
    """A tenant's slice time on unhealthy GPU ticks of one reason in a month, and what it was billed."""

    tenant: str
    reason: str  # rules.UNHEALTHY_REASON_SQL; reasons of one slice-hour joined by "; "
    reserved_gpu_h: Decimal  # reserved GPU-hours on unhealthy GPU ticks
    billed_gpu_h: Decimal  # what the mode bills of them (reserved, used or hybrid GPU-hours)
    worth: Decimal  # billed_gpu_h at each segment's price, to the cent (half-even)
    taken_off: bool  # True: carried by the platform (bill_unhealthy = false); False: billed


@dataclass(frozen=True)
class MonthReport:
    """Everything one monthly report shows; `tenant` None is the fleet report."""

    month: str
    tenant: str | None
    currency: str
    mode: str
    idle_policy: str
    manifest_sha256: str  # ties the report to the closed ledger it was made from
    daily: list[DailyPoint]
    lines: list[ChargeLine]
    cost_by_cluster_model: list[tuple[str, str, Decimal]]
    top_idle: list[IdlePeriod]
    totals: dict[str, Decimal] = field(default_factory=dict)
    # totals keys: capacity_gpu_h, reserved_gpu_h, used_gpu_h, idle_gpu_h, idle_cost, cost,
    # utilization, allocation_rate, efficiency (ratios as Decimal, may be absent when undefined)
    # memory the enforcer reclaimed (warehouse/enforcer_views.rightsizing_month rows of this scope)
    rightsizing: list[dict[str, object]] = field(default_factory=list)
    # slice time on unhealthy GPU ticks (chargeback.unhealthy_by_tenant rows of this scope)
    health: list[UnhealthyTime] = field(default_factory=list)
