"""What a monthly report says, in one `ReportContent` that both formats draw (report_html.py,
report_pdf.py), so the PDF and the HTML can never disagree on a number.

Reports are what tenants are billed by, so money is printed exactly from the ledger's Decimal
cents (never through a float), an amount that is not a whole number of cents is an error rather
than something to round quietly, and a report whose totals disagree with its own lines refuses to
render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from warehouse.ledger_model import (
    UNALLOCATED_TENANT,
    UNHEALTHY_TENANT,
    ChargeLine,
    MonthReport,
    tenant_display_name,
)
from warehouse.report_charts import (
    Bar,
    Chart,
    cost_bars_chart,
    gpu_hours_chart,
    idle_chart,
    utilization_chart,
)

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_CENT = Decimal("0.01")


# ---------------------------------------------------------------------------------------------
# Exact number formatting (Decimal in, text out; no float anywhere)


def _as_decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{where}: expected a Decimal, got {type(value).__name__} {value!r}")
    dec = Decimal(value)
    if not dec.is_finite():
        raise ValueError(f"{where}: {dec} is not a finite number")
    return dec


def _group(digits: str) -> str:
    """'1234567' -> '1,234,567'."""
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return ",".join(parts)


def _fixed(value: Decimal, places: int) -> str:
    """A Decimal rounded half-even to `places`, with thousands separators; never '-0.00'."""
    q = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    text = f"{abs(q):f}"
    whole, _, frac = text.partition(".")
    sign = "-" if q < 0 else ""
    return sign + _group(whole) + ("." + frac if frac else "")


def _cents(value: object, where: str) -> Decimal:
    dec = _as_decimal(value, where)
    if dec != dec.quantize(_CENT):
        raise ValueError(f"{where}: {dec} is not a whole number of cents; money must be rounded by the close")
    return dec


def format_money(value: object, currency: str, where: str = "amount") -> str:
    """'USD 1,234.56' exactly; an amount with fractions of a cent is an error, not rounded."""
    return f"{currency} {_fixed(_cents(value, where), 2)}"


def format_price(value: object, currency: str, where: str = "unit price") -> str:
    """A unit price as exact as the price book has it, with at least two decimals ('USD 2.125')."""
    dec = _as_decimal(value, where)
    exp = dec.normalize().as_tuple().exponent
    places = max(2, -exp) if isinstance(exp, int) else 2
    return f"{currency} {_fixed(dec, places)}"


def format_qty(value: object, places: int = 2, where: str = "quantity") -> str:
    """GPU-hours and kWh for reading: rounded half-even for display (the CSV keeps them exact)."""
    return _fixed(_as_decimal(value, where), places)


def format_pct(value: object, where: str = "ratio") -> str:
    """A ratio (0.234) as a percentage to one decimal ('23.4%')."""
    return _fixed(_as_decimal(value, where) * 100, 1) + "%"


def _opt(totals: dict[str, Decimal], key: str, fmt) -> str:  # type: ignore[no-untyped-def]
    value = totals.get(key)
    return "n/a" if value is None else fmt(value, where=f"totals[{key!r}]")


def _ts(value: datetime) -> str:
    """UTC, minutes unless the instant has seconds: the period edges people read."""
    utc = value.astimezone(UTC) if value.tzinfo else value
    if utc.second or utc.microsecond:
        return utc.strftime("%Y-%m-%d %H:%M:%S")
    return utc.strftime("%Y-%m-%d %H:%M")


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


# ---------------------------------------------------------------------------------------------
# The content both formats draw


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False
    weight: float = 1.0  # relative width in the PDF
    nowrap: bool = False  # names with hyphens (GPU models, UUIDs): never broken at a hyphen in HTML


@dataclass(frozen=True)
class TableBlock:
    key: str
    title: str
    columns: tuple[Column, ...]
    rows: list[list[str]]
    empty: str  # said instead of an empty table
    marked: frozenset[int] = frozenset()  # row indexes drawn as corrections
    note: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Chart | TableBlock]
    empty: str  # said when there are no blocks


@dataclass(frozen=True)
class ReportContent:
    title: str
    subtitle: str
    month: str
    has_data: bool
    total: str  # e.g. "USD 1,234.56"
    headline: list[tuple[str, str]]
    sections: list[Section] = field(default_factory=list)
    footer: str = ""


def _scope(report: MonthReport) -> str:
    return "Fleet" if report.tenant is None else f"Tenant {report.tenant}"


def _check(report: MonthReport) -> None:
    """Refuse a report that would mislead: wrong month, mixed currency, another tenant's data."""
    if not isinstance(report.month, str) or not _MONTH.match(report.month):
        raise ValueError(f"MonthReport.month: expected YYYY-MM, got {report.month!r}")
    if not report.currency:
        raise ValueError("MonthReport.currency is empty")
    for key in ("cost", "idle_cost"):
        if report.totals.get(key) is not None:
            _cents(report.totals[key], f"totals[{key!r}]")
    for cluster, model, cost in report.cost_by_cluster_model:
        _cents(cost, f"cost_by_cluster_model {cluster}/{model}")
    for i, idle in enumerate(report.top_idle):
        _cents(idle.cost, f"top_idle[{i}] cost")
    for ln in report.lines:
        where = f"charge line {ln.line_no}"
        _cents(ln.cost, f"{where} cost")
        if ln.currency != report.currency:
            raise ValueError(f"{where}: currency {ln.currency!r}, but the report is in {report.currency!r}")
        if ln.billing_period != report.month:
            raise ValueError(
                f"{where}: billed in {ln.billing_period}, not in the report's month {report.month}"
            )
        if report.tenant is not None and ln.tenant != report.tenant:
            raise ValueError(f"{where}: tenant {ln.tenant!r} in the report of tenant {report.tenant!r}")
    for i, h in enumerate(report.health):
        _cents(h.worth, f"health[{i}] worth")
        if report.tenant is not None and h.tenant != report.tenant:
            raise ValueError(f"health[{i}]: tenant {h.tenant!r} in the report of tenant {report.tenant!r}")
    if report.tenant is not None:
        for i, idle in enumerate(report.top_idle):
            if idle.tenant != report.tenant:
                raise ValueError(
                    f"top_idle[{i}]: tenant {idle.tenant!r} in the report of tenant {report.tenant!r}"
                )


def total_cost(report: MonthReport) -> Decimal:
    """The report's total: the sum of its lines, which `totals['cost']` must match to the cent."""
    summed = sum((_as_decimal(ln.cost, f"charge line {ln.line_no} cost") for ln in report.lines), Decimal(0))
    stated = report.totals.get("cost")
    if stated is None:
        return summed
    stated = _as_decimal(stated, "totals['cost']")
    if report.lines and stated != summed:
        raise ValueError(
            f"totals['cost'] is {stated} but the charge lines add up to {summed} "
            f"(difference {stated - summed}); the report would contradict itself"
        )
    return stated


def _headline(report: MonthReport, total: str) -> list[tuple[str, str]]:
    t, cur = report.totals, report.currency

    def gpu_h(value: Decimal, where: str) -> str:
        return format_qty(value, 2, where) + " GPU-h"

    def money(value: Decimal, where: str) -> str:
        return format_money(value, cur, where)

    return [
        ("Total cost", total),
        ("Capacity", _opt(t, "capacity_gpu_h", gpu_h)),
        ("Reserved", _opt(t, "reserved_gpu_h", gpu_h)),
        ("Used", _opt(t, "used_gpu_h", gpu_h)),
        ("Utilization (used / capacity)", _opt(t, "utilization", format_pct)),
        ("Allocation rate (reserved / capacity)", _opt(t, "allocation_rate", format_pct)),
        ("Efficiency (used / reserved)", _opt(t, "efficiency", format_pct)),
        ("Allocated-idle", _opt(t, "idle_gpu_h", gpu_h)),
        ("Allocated-idle cost", _opt(t, "idle_cost", money)),
    ]


def _share(part: Decimal, whole: Decimal) -> str:
    return format_pct(part / whole) if whole != 0 else "n/a"


def _tenant_table(report: MonthReport, total: Decimal) -> TableBlock:
    cost: dict[str, Decimal] = {}
    billed: dict[str, Decimal] = {}
    reserved: dict[str, Decimal] = {}
    used: dict[str, Decimal] = {}
    for ln in report.lines:
        cost[ln.tenant] = cost.get(ln.tenant, Decimal(0)) + ln.cost
        if ln.kwh is None:
            billed[ln.tenant] = billed.get(ln.tenant, Decimal(0)) + ln.gpu_hours
        if ln.reserved_gpu_hours is not None:
            reserved[ln.tenant] = reserved.get(ln.tenant, Decimal(0)) + ln.reserved_gpu_hours
        if ln.used_gpu_hours is not None:
            used[ln.tenant] = used.get(ln.tenant, Decimal(0)) + ln.used_gpu_hours
    cur = report.currency
    rows = [
        [
            tenant_display_name(tenant),
            format_qty(billed.get(tenant, Decimal(0))),
            format_qty(reserved[tenant]) if tenant in reserved else "",
            format_qty(used[tenant]) if tenant in used else "",
            format_money(amount, cur, f"tenant {tenant!r} cost"),
            _share(amount, total),
        ]
        for tenant, amount in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return TableBlock(
        key="tenants",
        title="Cost per tenant",
        columns=(
            Column("Tenant", weight=3),
            Column("Billed GPU-h", True),
            Column("Reserved GPU-h", True),
            Column("Used GPU-h", True),
            Column("Cost", True, 1.3),
            Column("Share", True, 0.7),
        ),
        rows=rows,
        empty="No charge lines this month.",
        note=" ".join(
            text
            for text, shown in (
                (
                    f"{UNALLOCATED_TENANT} is capacity nobody reserved, carried by the platform.",
                    UNALLOCATED_TENANT in cost,
                ),
                (
                    "Platform: unhealthy GPU time is tenants' time on unhealthy GPU ticks (see GPU health), "
                    "carried by the platform.",
                    any(t.startswith(UNHEALTHY_TENANT + "/") for t in cost),
                ),
            )
            if shown
        ),
    )


def _cost_rows(report: MonthReport) -> list[tuple[str, str, Decimal]]:
    rows = [
        (cluster, model, _as_decimal(cost, f"cost_by_cluster_model {cluster}/{model}"))
        for cluster, model, cost in report.cost_by_cluster_model
    ]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


def _cost_table(report: MonthReport, rows: list[tuple[str, str, Decimal]], total: Decimal) -> TableBlock:
    cur = report.currency
    return TableBlock(
        key="cost_by_cluster_model",
        title="Cost by cluster and GPU model: amounts and shares",  # not the chart's title again
        columns=(
            Column("Cluster", weight=2),
            Column("GPU model", weight=2, nowrap=True),
            Column("Cost", True),
            Column("Share", True),
        ),
        rows=[[c, m, format_money(v, cur, f"cost of {c}/{m}"), _share(v, total)] for c, m, v in rows],
        empty="No cost this month.",
    )


def _idle_table(report: MonthReport) -> TableBlock:
    cur = report.currency
    rows = [
        [
            p.tenant,
            p.workload,
            p.cluster,
            p.node,
            p.gpu_model,
            p.slice_id,
            _ts(p.start),
            _ts(p.end),
            _duration(p.end - p.start),
            format_qty(p.gpu_hours, 2, f"top_idle[{i}] gpu_hours"),
            format_money(p.cost, cur, f"top_idle[{i}] cost"),
        ]
        for i, p in enumerate(report.top_idle)
    ]
    return TableBlock(
        key="top_idle",
        title="Top idle workloads",
        columns=(
            Column("Tenant", weight=1.6),
            Column("Workload", weight=2.2),
            Column("Cluster", weight=1.2),
            Column("Node", weight=1.2, nowrap=True),
            Column("GPU model", weight=1.2, nowrap=True),
            Column("Slice", weight=2.4),
            Column("Start (UTC)", weight=1.5),
            Column("End (UTC)", weight=1.5),
            Column("Duration", True, 1.1),
            Column("GPU-h", True, 0.9),
            Column("Cost", True, 1.3),
        ),
        rows=rows,
        empty="No idle periods this month.",
        note="Reserved GPU-hours inside idle periods (used below the idle threshold), at the period's price.",
    )


def _line_type(ln: ChargeLine) -> str:
    if ln.corrects_period:
        kind = "correction" if ln.line_type == "correction" else f"{ln.line_type} correction"
        return f"{kind} of {ln.corrects_period}"
    return ln.line_type


def _lines_table(report: MonthReport) -> TableBlock:
    cur = report.currency
    rows: list[list[str]] = []
    marked: set[int] = set()
    for i, ln in enumerate(sorted(report.lines, key=lambda x: x.line_no)):
        where = f"charge line {ln.line_no}"
        if ln.kwh is not None:
            qty = format_qty(ln.kwh, 3, f"{where} kwh") + " kWh"
            price = format_price(ln.unit_price, cur, f"{where} unit_price") + " / kWh"
        else:
            qty = format_qty(ln.gpu_hours, 4, f"{where} gpu_hours") + " GPU-h"
            price = format_price(ln.unit_price, cur, f"{where} unit_price") + " / GPU-h"
        rows.append(
            [
                str(ln.line_no),
                _line_type(ln),
                tenant_display_name(ln.tenant),
                ln.cluster,
                ln.gpu_model,
                f"{_ts(ln.charge_start)} – {_ts(ln.charge_end)}",
                ln.price_from.isoformat(),
                qty,
                price,
                "" if ln.reserved_gpu_hours is None else format_qty(ln.reserved_gpu_hours, 4),
                "" if ln.used_gpu_hours is None else format_qty(ln.used_gpu_hours, 4),
                format_money(ln.cost, cur, f"{where} cost"),
            ]
        )
        if ln.corrects_period or ln.line_type == "correction":
            marked.add(i)
    return TableBlock(
        key="lines",
        title="Every line of the month, in ledger order",  # not the section's heading again
        columns=(
            Column("#", True, 0.5),
            Column("Type", weight=1.9),
            Column("Tenant", weight=1.6),
            Column("Cluster", weight=1.1),
            Column("GPU model", weight=1.1, nowrap=True),
            Column("Period segment (UTC, end exclusive)", weight=2.6),
            Column("Price from", weight=1.1),
            Column("Quantity", True, 1.5),
            Column("Unit price", True, 1.5),
            Column("Reserved GPU-h", True, 1.1),
            Column("Used GPU-h", True, 1.1),
            Column("Cost", True, 1.3),
        ),
        rows=rows,
        empty="No charge lines this month.",
        marked=frozenset(marked),
        note=(
            f"Mode {report.mode}: quantity is the billed GPU-hours. Correction lines carry late data "
            "for a closed month, billed in this one."
        ),
    )


def _health_table(report: MonthReport) -> TableBlock:
    """Tenants' slice time on unhealthy GPUs (lost, critical Xid: warehouse.rules) and what it cost
    them: nothing when the platform carries it (`[pricing] bill_unhealthy = false`)."""
    cur = report.currency
    rows = [
        [
            h.tenant,
            h.reason,
            format_qty(h.reserved_gpu_h, 4, f"health[{i}] reserved_gpu_h"),
            format_qty(h.billed_gpu_h, 4, f"health[{i}] billed_gpu_h"),
            format_money(h.worth, cur, f"health[{i}] worth"),
            "taken off the bill" if h.taken_off else "billed",
        ]
        for i, h in enumerate(report.health)
    ]
    taken_off = any(h.taken_off for h in report.health)
    return TableBlock(
        "gpu_health",
        "Time on unhealthy GPUs, per tenant and reason",
        (
            Column("Tenant", weight=1.6),
            Column("Reason", weight=2.6),
            Column("Reserved GPU-h", True),
            Column(f"Billable GPU-h ({report.mode})", True),
            Column("Worth", True, 1.3),
            Column("On the bill", weight=1.4),
        ),
        rows,
        "",
        note=(
            "GPU ticks with the GPU lost or a critical Xid error. "
            + (
                "The platform carries that time (its unhealthy lines), at the price of each period."
                if taken_off
                else "Billed as usual ([pricing] bill_unhealthy = true)."
            )
        ),
    )


def _rightsizing_table(report: MonthReport) -> TableBlock:
    """Memory the enforcer reclaimed below the allocations (docs/enforcer.md), and its worth."""
    rows = [
        [
            str(r["tenant"]),
            str(r["cluster"]),
            str(r["model"]),
            str(r["slices"]),
            format_qty(Decimal(str(r["gib_h"])), 1, "reclaimed GiB-hours"),
            format_qty(Decimal(str(r["gpu_h"])), 2, "reclaimed GPU-hours"),
            "—" if r["worth"] is None else format_money(r["worth"], report.currency, "reclaimed worth"),
        ]
        for r in report.rightsizing
    ]
    return TableBlock(
        "rightsizing",
        "Memory reclaimed by the enforcer",
        (
            Column("Tenant"),
            Column("Cluster"),
            Column("GPU model", nowrap=True, weight=1.6),
            Column("vGPU slices", True),
            Column("GiB-hours", True),
            Column("GPU-hours", True),
            Column("Worth", True),
        ),
        rows,
        "The enforcer reclaimed no memory this month.",
        note="Allocation minus cap, tick by tick; GPU-hours over the GPU's memory, at the price book.",
    )


def build_content(report: MonthReport) -> ReportContent:
    """Everything a report says, as text and charts, independent of the output format."""
    _check(report)
    total = total_cost(report)
    total_text = format_money(total, report.currency, "total cost")
    daily = sorted(report.daily, key=lambda p: p.day)
    cost_rows = _cost_rows(report)
    has_data = bool(report.lines or daily or report.top_idle or cost_rows)

    sections: list[Section] = []
    if has_data:
        month_blocks: list[Chart | TableBlock] = []
        if daily:
            month_blocks = [
                utilization_chart(report.month, daily),
                gpu_hours_chart(report.month, daily),
                idle_chart(report.month, daily),
            ]
        sections.append(Section("Over the month", month_blocks, "No daily data this month."))
        cost_blocks: list[Chart | TableBlock] = []
        if cost_rows:
            bars = [
                Bar(f"{c} · {m}", v, format_money(v, report.currency, f"cost of {c}/{m}"))
                for c, m, v in cost_rows
            ]
            cost_blocks += [cost_bars_chart(bars, report.currency), _cost_table(report, cost_rows, total)]
        if report.tenant is None:
            cost_blocks.append(_tenant_table(report, total))
        sections.append(Section("Cost", cost_blocks, "No cost this month."))
        sections.append(Section("Idle", [_idle_table(report)], ""))
        if report.health:
            sections.append(Section("GPU health", [_health_table(report)], ""))
        if report.rightsizing:
            sections.append(Section("Right-sizing", [_rightsizing_table(report)], ""))
        sections.append(Section("Charge lines", [_lines_table(report)], ""))

    scope = _scope(report)
    return ReportContent(
        title=f"GPU chargeback — {scope} — {report.month}",
        subtitle=(
            f"Billing period {report.month} · mode {report.mode} · idle policy {report.idle_policy} "
            f"· currency {report.currency}"
        ),
        month=report.month,
        has_data=has_data,
        total=total_text,
        headline=_headline(report, total_text),
        sections=sections,
        footer=(
            f"Ledger manifest sha256 {report.manifest_sha256} · mode {report.mode} · "
            f"idle policy {report.idle_policy}"
        ),
    )


def _no_data(month: str) -> str:
    return f"No data for {month}: the closed ledger holds no charge lines and no samples for this scope."
