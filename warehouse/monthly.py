"""Assemble a month's report data: money from the closed ledger, usage and idle from the rollups.

A closed month reports its ledger, tied to the manifest by hash. An open month reports an accrual
computed now with the current settings, and says so instead of a manifest hash.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from warehouse.accounting import Accounting
from warehouse.chargeback import quantize_line, unhealthy_by_tenant
from warehouse.close import (
    CloseSettings,
    closed_months,
    ledger_dir,
    manifest_sha256,
    month_dates,
    read_ledger,
)
from warehouse.closed_usage import ClosedUsage, dec9
from warehouse.lake import Lake, as_lake
from warehouse.ledger_model import ChargeLine, DailyPoint, IdlePeriod, MonthReport, is_platform_tenant
from warehouse.pricing import month_bounds
from warehouse.sql import lit as _lit

TOP_IDLE = 15
ACCRUAL_NOTE = "not closed: accrual to date"


def month_lines(
    lake: Lake | str | Path, month: str, settings: CloseSettings, acct: Accounting | None = None
) -> tuple[list[ChargeLine], str, bool]:
    """(lines, manifest sha256 or accrual note, closed?) for a month.

    An open month is accrued on `acct` as it stands (the caller keeps its rollups current), or on
    a connection of its own after bringing the month's rollups up to date.
    """
    lake = acct.lake if acct is not None else as_lake(lake)
    if month in closed_months(lake):
        lines, _ = read_ledger(lake, month)
        return lines, manifest_sha256(lake, month), True
    own = acct is None
    acct = acct or settings.accounting(lake)
    try:
        if own:
            acct.update(month_dates(month))
        charges = settings.charges(acct, month)
    finally:
        if own:
            acct.close()
    return [quantize_line(ln) for ln in charges.lines], ACCRUAL_NOTE, False


def tenant_numbered(lines: list[ChargeLine]) -> list[ChargeLine]:
    """A tenant's lines numbered from 1 in ledger order: the ledger's own numbers would tell a
    tenant how many lines the other tenants have between its own."""
    return [replace(ln, line_no=i) for i, ln in enumerate(sorted(lines, key=lambda ln: ln.line_no), start=1)]


def build_reports(
    lake: Lake | str | Path,
    month: str,
    settings: CloseSettings,
    tenant: str | None = None,
    fleet: bool = True,
    acct: Accounting | None = None,
) -> list[MonthReport]:
    """The fleet report (unless `tenant` is given) and one report per tenant (or only `tenant`).

    With `acct` (a caller's connection over rollups it keeps current, e.g. the dashboard's) the
    rollups are read as they are; without, the month's rollups are brought up to date first.
    """
    m0, m1 = month_bounds(month)
    own = acct is None
    if acct is None:
        acct = settings.accounting(lake)
    try:
        if own:
            acct.update(month_dates(month))
        lines, sha, closed = month_lines(acct.lake, month, settings, acct)
        # A closed month reports the usage its bill was made from (late data: next month's corrections).
        kept = ClosedUsage.read(acct.lake, ledger_dir(acct.lake, month)) if closed else None
        tenants = sorted({ln.tenant for ln in lines if not is_platform_tenant(ln.tenant)})
        if tenant is not None:
            tenants = [tenant]
        scopes: list[str | None] = ([None] if fleet and tenant is None else []) + list(tenants)
        rs = _rightsizing(acct.lake, month, settings)
        # slice time on unhealthy GPU ticks, by the month's own money settings (the report's
        # "GPU health" section; none in a healthy month)
        health = unhealthy_by_tenant(acct, month, settings.policy()) if acct.price_book is not None else []
        out = []
        for scope in scopes:
            r = _report(acct, month, m0, m1, scope, lines, sha, settings, kept)
            r.rightsizing.extend(x for x in rs if scope is None or x["tenant"] == scope)
            r.health.extend(h for h in health if scope is None or h.tenant == scope)
            out.append(r)
        return out
    finally:
        if own:
            acct.close()


def _rightsizing(lake: Lake | str | Path, month: str, settings: CloseSettings) -> list[dict[str, Any]]:
    """The enforcer's reclaimed memory of the month (empty without an enforcer state)."""
    from warehouse.enforcer_views import rightsizing_month
    from warehouse.pricing import PriceBook

    book = PriceBook(settings.book, settings.currency)
    return rightsizing_month(lake, month, settings.tenant_rules, settings.default_tenant, book)


def _report(
    acct: Any,
    month: str,
    m0: date,
    m1: date,
    tenant: str | None,
    all_lines: list[ChargeLine],
    sha: str,
    settings: CloseSettings,
    kept: ClosedUsage | None = None,
) -> MonthReport:
    lines = [ln for ln in all_lines if tenant is None or ln.tenant == tenant]
    if tenant is not None:
        lines = tenant_numbered(lines)
    if kept is not None:
        daily = [
            DailyPoint(r["day"], r["capacity_gpu_h"], r["reserved_gpu_h"], r["used_gpu_h"], r["idle_gpu_h"])
            for r in kept.daily(tenant)
        ]
    elif tenant is None:
        rows = acct.measures([], grain="day", start=m0, end=m1)
        daily = [
            DailyPoint(
                r["period"].date(),
                dec9(r["capacity_gpu_h"]),
                dec9(r["reserved_gpu_h"]),
                dec9(r["used_gpu_h"]),
                dec9(r["idle_gpu_h"]),
            )
            for r in rows
        ]
    else:
        rows = acct.measures(["tenant"], grain="day", start=m0, end=m1, where=f"tenant = {_lit(tenant)}")
        # A tenant's capacity is what it holds: its reserved GPU-hours.
        daily = [
            DailyPoint(
                r["period"].date(),
                dec9(r["reserved_gpu_h"]),
                dec9(r["reserved_gpu_h"]),
                dec9(r["used_gpu_h"]),
                dec9(r["idle_gpu_h"]),
            )
            for r in rows
        ]
    by_cm: dict[tuple[str, str], Decimal] = {}
    for ln in lines:
        by_cm[(ln.cluster, ln.gpu_model)] = by_cm.get((ln.cluster, ln.gpu_model), Decimal(0)) + ln.cost
    idle_rows = kept.idle_periods(tenant) if kept else acct.idle_periods(start=m0, end=m1, tenant=tenant)
    top = [
        IdlePeriod(
            tenant=r["tenant"],
            workload=r["workload"],
            cluster=r["cluster"],
            node=r["node"],
            gpu_uuid=r["gpu_uuid"],
            gpu_model=r["model"],
            slice_id=r["slice_id"],
            start=r["start"],
            end=r["end"],
            gpu_hours=dec9(r["gpu_hours"]),
            cost=Decimal(r["cost"] if r["cost"] is not None else 0).quantize(Decimal("0.01")),
        )
        for r in idle_rows[:TOP_IDLE]
    ]
    cap = sum((d.capacity_gpu_h for d in daily), Decimal(0))
    res = sum((d.reserved_gpu_h for d in daily), Decimal(0))
    used = sum((d.used_gpu_h for d in daily), Decimal(0))
    idle = sum((d.idle_gpu_h for d in daily), Decimal(0))
    totals: dict[str, Decimal] = {
        "capacity_gpu_h": cap,
        "reserved_gpu_h": res,
        "used_gpu_h": used,
        "idle_gpu_h": idle,
        "idle_cost": sum(
            (Decimal(r["cost"]) for r in idle_rows if r["cost"] is not None), Decimal(0)
        ).quantize(Decimal("0.01")),
        "cost": sum((ln.cost for ln in lines), Decimal(0)),
    }
    if cap:
        totals["utilization"] = (used / cap).quantize(Decimal("1e-6"))
        totals["allocation_rate"] = (res / cap).quantize(Decimal("1e-6"))
    if res:
        totals["efficiency"] = (used / res).quantize(Decimal("1e-6"))
    return MonthReport(
        month=month,
        tenant=tenant,
        currency=settings.currency,
        mode=settings.mode,
        idle_policy=settings.idle_policy,
        manifest_sha256=sha,
        daily=daily,
        lines=lines,
        cost_by_cluster_model=[(c, m, v) for (c, m), v in sorted(by_cm.items())],
        top_idle=top,
        totals=totals,
    )
