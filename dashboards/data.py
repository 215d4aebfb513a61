"""What the pages show, computed from the rollups and the ledger, always within a tenant scope.

Every function takes the tenants the caller may see (`allowed`: None = all, for an admin) and
puts them into the SQL, so data of other tenants never leaves DuckDB. Nothing here reads raw
samples, except the process list of one GPU's drill-down (one date partition, one GPU).

Connections and cached results come from dashboards/pool.py (a bounded pool of `Accounting`
connections; month-sized results cached per process until the rollups or the ledger change).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from dashboards.filters import Filters
from dashboards.pool import AccountingPool, ResultCache
from warehouse.accounting import Accounting
from warehouse.chargeback import quantize_line
from warehouse.close import CloseSettings, closed_months, manifest_sha256, read_ledger
from warehouse.errors import MONEY_ERRORS
from warehouse.lake import Lake
from warehouse.ledger_model import ChargeLine
from warehouse.monthly import ACCRUAL_NOTE
from warehouse.pricing import month_bounds
from warehouse.rollups import Rollups
from warehouse.sql import lit, ts_lit
from warehouse.staging import samples_sql

Allowed = frozenset[str] | None


def in_list(col: str, values: frozenset[str] | tuple[str, ...] | None) -> str:
    if values is None:
        return ""
    if not values:
        return "FALSE"
    return f"{col} IN ({', '.join(lit(v) for v in sorted(values))})"


def where(*conds: str) -> str:
    return " AND ".join(f"({c})" for c in conds if c)


def month_of(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def prev_month(month: str) -> str:
    y, m = (int(x) for x in month.split("-"))
    return f"{y - (m == 1):04d}-{(m - 2) % 12 + 1:02d}"


@dataclass(frozen=True)
class MonthCharges:
    month: str
    lines: list[ChargeLine]
    closed: bool
    source: str  # manifest sha256 of a closed month, or the accrual note
    expected_exact: Decimal | None  # Σ capacity x price (+ energy, + corrections), independent of the lines
    error: str | None = None  # e.g. a GPU model without a price

    def conservation(self) -> tuple[bool, Decimal, Decimal, Decimal | None]:
        """(ok, Σ exact, Σ cents, expected): the lines add up exactly and to the cent."""
        exact = sum((ln.cost_exact for ln in self.lines), Decimal(0))
        cents = sum((ln.cost for ln in self.lines), Decimal(0))
        if self.expected_exact is None:
            return False, exact, cents, None
        ok = abs(exact - self.expected_exact) <= Decimal("1e-9") and cents == self.expected_exact.quantize(
            Decimal("0.01")
        )
        return ok, exact, cents, self.expected_exact


class DashboardData:
    """Queries for the pages; one per server process."""

    def __init__(
        self,
        lake: str | os.PathLike[str],
        settings: CloseSettings,
        connections: int = 4,
        retire_after_hours: float = 24.0,
    ) -> None:
        self.lake = Lake(lake)
        self.settings = settings
        self.retire_after_hours = retire_after_hours
        self.pool = AccountingPool(self._accounting, connections)
        self.results = ResultCache(self.lake)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def acct(self) -> Iterator[Accounting]:
        """A pooled connection sharing the idle periods (computed once per rollup change per process)."""
        with self.pool.get() as a:
            table = self.cached("idle_cache", a.idle_table)
            if getattr(a, "_idle_cache", None) is not table:
                a.share_idle(table)
                a._idle_cache = table  # type: ignore[attr-defined]
            yield a

    def _accounting(self) -> Accounting:
        # Without a price book usage and idle still show; costs say that prices are missing.
        s = self.settings
        kw = {"threads": 2, "retire_after_hours": self.retire_after_hours}
        return s.accounting(self.lake, priced=bool(s.book), **kw)

    # -- caching -----------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        return self.results.fingerprint()

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        return self.results.cached(key, compute)

    def warm(self) -> None:
        """Fill the month caches (called after a rollup update, so the next page load is quick)."""
        end = self.latest()
        if end is None:
            return
        month = month_of(end - timedelta(microseconds=1))
        for m in (month, prev_month(month)):
            self.month_charges(m)
        self.month_idle(month)
        self.month_coverage(month)

    # -- time ---------------------------------------------------------------------------------------

    def latest(self) -> datetime | None:
        """The end of the last hour with data: 'now' for the pages (a lake of last year shows its end)."""

        def q() -> datetime | None:
            with self.acct() as acct:
                (h,) = acct.sql("SELECT max(hour) FROM gpu_hourly").fetchall()[0]
            return None if h is None else h + timedelta(hours=1)

        return self.cached("latest", q)

    def latest_tick(self) -> datetime | None:
        """The fleet's last tick: coverage counts a node as unobserved from its last tick to this."""

        def q() -> datetime | None:
            with self.acct() as acct:
                return acct.sql("SELECT max(last_ts) FROM r_node_ticks").fetchall()[0][0]

        return self.cached("latest_tick", q)

    def window(self, f: Filters) -> tuple[datetime, datetime] | None:
        end = self.latest()
        if end is None:
            return None
        return end - timedelta(hours=f.hours), end

    # -- filters -----------------------------------------------------------------------------------

    def options(self, allowed: Allowed) -> dict[str, list[str]]:
        """Clusters, GPU models and tenants to offer in the filters (a viewer: only where it holds slices)."""

        def q() -> dict[str, list[str]]:
            with self.acct() as acct:
                if allowed is None:
                    cm = acct.sql("SELECT DISTINCT cluster, model FROM gpu_hourly").fetchall()
                    tenants = [r[0] for r in acct.sql("SELECT DISTINCT tenant FROM slice_hourly").fetchall()]
                else:
                    cm = acct.sql(
                        f"SELECT DISTINCT cluster, model FROM slice_hourly WHERE {in_list('tenant', allowed)}"
                    ).fetchall()
                    tenants = sorted(allowed)
            return {
                "clusters": sorted({c for c, _ in cm}),
                "models": sorted({m for _, m in cm}),
                "tenants": sorted(tenants),
            }

        return self.cached(("options", allowed), q)

    def gpu_visible(self, allowed: Allowed, gpu: str) -> bool:
        """Whether `gpu` carries a slice of `allowed` (any GPU for an admin that exists)."""
        table = "gpu_hourly" if allowed is None else "slice_hourly"
        with self.acct() as acct:
            cond = where(f"gpu_uuid = {lit(gpu)}", in_list("tenant", allowed))
            rows = acct.sql(f"SELECT 1 FROM {table} WHERE {cond} LIMIT 1").fetchall()
        return bool(rows)

    @staticmethod
    def gpu_where(f: Filters) -> str:
        return where(in_list("cluster", f.clusters or None), in_list("model", f.models or None))

    # -- month-sized, cached ------------------------------------------------------------------------

    def months(self) -> list[str]:
        def q() -> list[str]:
            with self.acct() as acct:
                rows = acct.sql(
                    "SELECT DISTINCT strftime(hour, '%Y-%m') FROM gpu_hourly WHERE hour IS NOT NULL"
                ).fetchall()
            return sorted({r[0] for r in rows} | set(closed_months(self.lake)), reverse=True)

        return self.cached("months", q)

    def month_charges(self, month: str) -> MonthCharges:
        """The closed ledger's lines, else the accrual to date (what warehouse.monthly.month_lines gives)."""

        def q() -> MonthCharges:
            if month in closed_months(self.lake):
                lines, manifest = read_ledger(self.lake, month)
                sha = manifest_sha256(self.lake, month)
                return MonthCharges(month, lines, True, sha, Decimal(manifest["totals"]["expected_exact"]))
            try:
                with self.acct() as acct:
                    ch = self.settings.charges(acct, month)
            except MONEY_ERRORS as exc:
                return MonthCharges(month, [], False, ACCRUAL_NOTE, None, str(exc))
            lines = [quantize_line(ln) for ln in ch.lines]
            return MonthCharges(month, lines, False, ACCRUAL_NOTE, ch.expected_total)

        return self.cached(("charges", month), q)

    def month_idle(self, month: str) -> list[dict[str, Any]]:
        m0, m1 = month_bounds(month)

        def q() -> list[dict[str, Any]]:
            with self.acct() as acct:
                return acct.idle_periods(start=m0, end=m1)

        return self.cached(("idle", month), q)

    def month_coverage(self, month: str) -> list[dict[str, Any]]:
        m0, m1 = month_bounds(month)
        end = self.latest_tick()  # not the end of the last hour: the rest of that hour is not missing yet
        stop = min(end, datetime(m1.year, m1.month, m1.day, tzinfo=UTC)) if end else m1

        def q() -> list[dict[str, Any]]:
            with self.acct() as acct:
                return acct.coverage(m0, stop)

        return self.cached(("coverage", month), q)

    def tenant_nodes(self, allowed: frozenset[str], start: datetime | date, end: datetime | date) -> set[str]:
        with self.acct() as acct:
            rows = acct.sql(
                f"SELECT DISTINCT node FROM slice_hourly WHERE "
                f"{where(in_list('tenant', allowed), f'hour >= {ts_lit(start)}', f'hour < {ts_lit(end)}')}"
            ).fetchall()
        return {r[0] for r in rows}

    @staticmethod
    def scoped_lines(lines: list[ChargeLine], allowed: Allowed, f: Filters) -> list[ChargeLine]:
        return [
            ln
            for ln in lines
            if (allowed is None or ln.tenant in allowed)
            and (not f.clusters or ln.cluster in f.clusters)
            and (not f.models or ln.gpu_model in f.models)
        ]

    @staticmethod
    def scoped_idle(rows: list[dict[str, Any]], allowed: Allowed, f: Filters) -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if (allowed is None or r["tenant"] in allowed)
            and (not f.clusters or r["cluster"] in f.clusters)
            and (not f.models or r["model"] in f.models)
        ]

    # -- pages -------------------------------------------------------------------------------------
    # Each page query is answered from the cache until the rollups or the ledger change: the same
    # view (the principal's tenants + the filters) asked again costs a dictionary lookup.

    def overview(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        return self.cached(("overview", allowed, f), lambda: self._overview(allowed, f))

    def tenants(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        return self.cached(("tenants", allowed, f), lambda: self._tenants(allowed, f))

    def tenant(self, allowed: Allowed, tenant: str, f: Filters) -> dict[str, Any] | None:
        return self.cached(("tenant", allowed, tenant, f), lambda: self._tenant(allowed, tenant, f))

    def gpu_heatmap(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        return self.cached(("heatmap", allowed, f), lambda: self._gpu_heatmap(allowed, f))

    def gpu_series(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        return self.cached(("gpu_series", allowed, f), lambda: self._gpu_series(allowed, f))

    def gpu_detail(self, allowed: Allowed, gpu: str, f: Filters) -> dict[str, Any] | None:
        return self.cached(("gpu", allowed, gpu, f), lambda: self._gpu_detail(allowed, gpu, f))

    def _overview(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        win = self.window(f)
        if win is None:
            return None
        start, end = win
        grain = "hour" if f.hours <= 7 * 24 else "day"
        month = month_of(end - timedelta(microseconds=1))
        m0, _ = month_bounds(month)
        gw = self.gpu_where(f)
        with self.acct() as acct:
            if allowed is None:
                series = {
                    dim: acct.measures([dim], grain=grain, start=start, end=end, where=gw)
                    for dim in ("cluster", "model")
                }
                totals = acct.measures([], grain=None, start=start, end=end, where=gw)
            else:
                tw = where(in_list("tenant", allowed), gw)
                series = {
                    dim: _sum_over(
                        acct.measures(["tenant", dim], grain=grain, start=start, end=end, where=tw),
                        dim,
                    )
                    for dim in ("cluster", "model")
                }
                totals = _sum_over(
                    acct.measures(["tenant"], grain=None, start=start, end=end, where=tw), None
                )
        charges = self.month_charges(month)
        lines = self.scoped_lines(charges.lines, allowed, f)
        idle = self.scoped_idle(self.month_idle(month), allowed, f)
        cov = self.month_coverage(month)
        nodes = None if allowed is None else self.tenant_nodes(allowed, m0, end)
        cov = [
            c
            for c in cov
            if (nodes is None or c["node"] in nodes) and (not f.clusters or c["cluster"] in f.clusters)
        ]
        t = totals[0] if totals else {}
        return {
            "scope": "fleet" if allowed is None else "tenants",
            "range": f.range,
            "start": start,
            "end": end,
            "grain": grain,
            "month": month,
            "currency": self.settings.currency,
            "series": series,
            "capacity_gpu_h": t.get("capacity_gpu_h"),
            "reserved_gpu_h": t.get("reserved_gpu_h") or 0.0,
            "used_gpu_h": t.get("used_gpu_h") or 0.0,
            "utilization": t.get("utilization"),
            "allocation_rate": t.get("allocation_rate"),
            "efficiency": t.get("efficiency"),
            # the SM-activity basis (issue 17), only where some slice tick had SM activity: else
            # it is the busy basis again and the page shows nothing for it (never "0 %")
            "sm": bool(t.get("sm_ticks")),
            "utilization_sm": t.get("utilization_sm"),
            "efficiency_sm": t.get("efficiency_sm"),
            "used_sm_gpu_h": t.get("used_sm_gpu_h") or 0.0,
            "unused_sm_gpu_h": t.get("unused_sm_gpu_h") or 0.0,
            "cost_to_date": sum((ln.cost for ln in lines), Decimal(0)),
            "cost_error": charges.error,
            "idle_gpu_h": sum(float(r["gpu_hours"]) for r in idle),
            "idle_cost": sum((r["cost"] for r in idle if r["cost"] is not None), Decimal(0)),
            "unobserved_gpu_h": sum(float(c["unobserved_gpu_h"] or 0) for c in cov),
            # data checks of the last rollup builds (warehouse/checks.py): the platform team's, so
            # an admin sees which rule broke where; a tenant viewer only that the data has a problem
            "checks_failed": [
                f"{c.check} on {c.date}: {c.failures} row(s)"
                + (f", e.g. {c.example}" if allowed is None else "")
                for c in Rollups(self.lake).failed_checks()
            ],
        }

    def _tenants(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        end = self.latest()
        if end is None:
            return None
        month = month_of(end - timedelta(microseconds=1))
        m0, _ = month_bounds(month)
        with self.acct() as acct:
            rows = acct.measures(
                ["tenant"],
                grain=None,
                start=m0,
                end=end,
                where=where(in_list("tenant", allowed), self.gpu_where(f)),
            )
        now = self.scoped_lines(self.month_charges(month).lines, allowed, f)
        last = self.scoped_lines(self.month_charges(prev_month(month)).lines, allowed, f)
        cost_now: dict[str, Decimal] = {}
        cost_last: dict[str, Decimal] = {}
        for ln in now:
            cost_now[ln.tenant] = cost_now.get(ln.tenant, Decimal(0)) + ln.cost
        for ln in last:
            cost_last[ln.tenant] = cost_last.get(ln.tenant, Decimal(0)) + ln.cost
        out = []
        for r in rows:
            t = r["tenant"]
            out.append(
                {
                    "tenant": t,
                    "cost_to_date": cost_now.get(t, Decimal(0)),
                    "cost_last_month": cost_last.get(t, Decimal(0)),
                    "reserved_gpu_h": r["reserved_gpu_h"] or 0.0,
                    "used_gpu_h": r["used_gpu_h"] or 0.0,
                    "efficiency": r["efficiency"],
                    "idle_gpu_h": r["idle_gpu_h"] or 0.0,
                    "slices": r["slices"],
                }
            )
        out.sort(key=lambda r: (-r["cost_to_date"], r["tenant"]))
        return {
            "month": month,
            "last_month": prev_month(month),
            "currency": self.settings.currency,
            "rows": out,
        }

    def _tenant(self, allowed: Allowed, tenant: str, f: Filters) -> dict[str, Any] | None:
        """One tenant's page; None when the tenant is outside `allowed` or unknown (same answer for both)."""
        if allowed is not None and tenant not in allowed:
            return None
        win = self.window(f)
        if win is None:
            return None
        start, end = win
        month = month_of(end - timedelta(microseconds=1))
        m0, _ = month_bounds(month)
        tw = where(f"tenant = {lit(tenant)}", self.gpu_where(f))
        grain = "hour" if f.hours <= 7 * 24 else "day"
        with self.acct() as acct:
            month_rows = acct.measures(["tenant"], grain=None, start=m0, end=end, where=tw)
            trend = acct.measures(["tenant"], grain=grain, start=start, end=end, where=tw)
            slices = acct.measures(
                ["slice", "workload", "kind", "cluster", "model", "node"],
                grain=None,
                start=start,
                end=end,
                where=tw,
            )
            idle = acct.idle_periods(start=start, end=end, tenant=tenant, limit=200)
        if not month_rows and not slices:
            return None
        idle = self.scoped_idle(idle, frozenset([tenant]), f)
        now = [
            ln for ln in self.scoped_lines(self.month_charges(month).lines, None, f) if ln.tenant == tenant
        ]
        last = [
            ln
            for ln in self.scoped_lines(self.month_charges(prev_month(month)).lines, None, f)
            if ln.tenant == tenant
        ]
        m = month_rows[0] if month_rows else {}
        return {
            "tenant": tenant,
            "month": month,
            "last_month": prev_month(month),
            "currency": self.settings.currency,
            "cost_to_date": sum((ln.cost for ln in now), Decimal(0)),
            "cost_last_month": sum((ln.cost for ln in last), Decimal(0)),
            "efficiency": m.get("efficiency"),
            "reserved_gpu_h": m.get("reserved_gpu_h") or 0.0,
            "used_gpu_h": m.get("used_gpu_h") or 0.0,
            "sm": bool(m.get("sm_ticks")),
            "efficiency_sm": m.get("efficiency_sm"),
            "unused_sm_gpu_h": m.get("unused_sm_gpu_h") or 0.0,
            "trend": trend,
            "slices": sorted(slices, key=lambda r: (-(r["reserved_gpu_h"] or 0), r["slice"])),
            "idle": idle,
        }

    def chargeback(self, allowed: Allowed, f: Filters, fleet_totals: bool = False) -> dict[str, Any]:
        months = self.months()
        month = f.month if f.month in months else (months[0] if months else None)
        if month is None:
            return {"months": [], "month": None}
        ch = self.month_charges(month)
        ok, exact, cents, expected = ch.conservation()
        lines = self.scoped_lines(ch.lines, allowed, f)
        out: dict[str, Any] = {
            "months": months,
            "month": month,
            "closed": ch.closed,
            "source": ch.source,
            "error": ch.error,
            "currency": self.settings.currency,
            "lines": lines,
            "total": sum((ln.cost for ln in lines), Decimal(0)),
            "conservation_ok": ok,
        }
        if fleet_totals:  # fleet totals are everybody's money: admins only
            out.update({"sum_exact": exact, "sum_cents": cents, "expected_exact": expected})
        return out

    def _gpu_heatmap(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        """Utilization per (node, GPU) over the window: used / capacity (a viewer: its slices' use)."""
        win = self.window(f)
        if win is None:
            return None
        start, end = win
        tcond = where(f"hour >= {ts_lit(start)}", f"hour < {ts_lit(end)}", self.gpu_where(f))
        with self.acct() as acct:
            if allowed is None:
                rows = acct.sql(f"""
                    SELECT cluster, node, gpu_uuid, any_value(model) AS model, min(gpu_index) AS gpu_index,
                           sum(used_s) / nullif(sum(capacity_s), 0) AS util,
                           sum(reserved_s) / nullif(sum(capacity_s), 0) AS alloc
                    FROM gpu_hourly WHERE {tcond} GROUP BY ALL
                    ORDER BY cluster, node, gpu_index, gpu_uuid""").fetchall()
            else:
                rows = acct.sql(f"""
                    WITH s AS (
                        SELECT gpu_uuid, hour, sum(used_s) AS u, sum(reserved_s) AS r FROM slice_hourly
                        WHERE {where(tcond, in_list("tenant", allowed))} GROUP BY ALL),
                    -- an hour can sit in two date partitions: one row per GPU-hour on each side
                    g AS (
                        SELECT gpu_uuid, hour, any_value(cluster) AS cluster, any_value(node) AS node,
                               any_value(model) AS model, min(gpu_index) AS gpu_index,
                               sum(capacity_s) AS capacity_s FROM gpu_hourly
                        WHERE {tcond} GROUP BY gpu_uuid, hour)
                    SELECT g.cluster, g.node, g.gpu_uuid, any_value(g.model) AS model,
                           min(g.gpu_index) AS gpu_index,
                           sum(s.u) / nullif(sum(g.capacity_s), 0) AS util,
                           sum(s.r) / nullif(sum(g.capacity_s), 0) AS alloc
                    FROM s JOIN g USING (gpu_uuid, hour)
                    GROUP BY g.cluster, g.node, g.gpu_uuid
                    ORDER BY g.cluster, g.node, gpu_index, g.gpu_uuid""").fetchall()
        cells = [
            {"cluster": c, "node": n, "gpu": g, "model": m, "index": i, "util": _f(u), "alloc": _f(a)}
            for c, n, g, m, i, u, a in rows
        ]
        return {"start": start, "end": end, "cells": cells}

    def _gpu_series(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        """Per GPU and period (hour up to 7 days, else day): utilization and the dcgm-exporter
        panels' readings, memory (max and mean MiB, total), power (mean W) and temperature (max and
        mean C). Means are sums over counts of the known readings, both added over the two date
        pieces an hour can have; a period without a known reading is None (a gap, never 0).
        A viewer sees the GPU-hours its slices held, utilization being its slices' use."""
        win = self.window(f)
        if win is None:
            return None
        start, end = win
        grain = "hour" if f.hours <= 7 * 24 else "day"
        tcond = where(
            f"hour >= {ts_lit(start)}",
            f"hour < {ts_lit(end)}",
            self.gpu_where(f),
            f"gpu_uuid = {lit(f.gpu)}" if f.gpu else "",
        )
        if allowed is None:
            held, used, used_sm, sm_ticks = "", "g.used_s", "g.used_sm_s", "g.sm_ticks"
        else:
            held = f"""JOIN (SELECT gpu_uuid, hour, sum(used_s) AS u, sum(used_sm_s) AS u_sm,
                                sum(sm_ticks) AS sm_ticks FROM slice_hourly
                         WHERE {where(tcond, in_list("tenant", allowed))} GROUP BY ALL) s
                       USING (gpu_uuid, hour)"""
            used, used_sm, sm_ticks = "s.u", "s.u_sm", "s.sm_ticks"
        with self.acct() as acct:
            rows = acct.sql(f"""
                WITH g AS (
                    SELECT gpu_uuid, hour, any_value(cluster) AS cluster, any_value(node) AS node,
                           any_value(model) AS model, min(gpu_index) AS gpu_index,
                           sum(capacity_s) AS capacity_s, sum(used_s) AS used_s,
                           max(mem_total_mib) AS mem_total_mib, max(mem_used_mib_max) AS mem_max,
                           sum(mem_used_mib_sum) AS mem_sum, sum(mem_ticks) AS mem_ticks,
                           sum(power_w_sum) AS power_sum, sum(power_ticks) AS power_ticks,
                           max(temp_c_max) AS temp_max, sum(temp_c_sum) AS temp_sum,
                           sum(temp_ticks) AS temp_ticks, sum(unhealthy_ticks) AS sick,
                           string_agg(unhealthy_reason, '; ') AS why,
                           sum(used_sm_s) AS used_sm_s, sum(sm_ticks) AS sm_ticks
                    FROM gpu_hourly WHERE {tcond} GROUP BY gpu_uuid, hour)
                SELECT date_trunc('{grain}', g.hour) AS period, g.cluster, g.node, g.gpu_uuid,
                       any_value(g.model), min(g.gpu_index),
                       sum({used}) / nullif(sum(g.capacity_s), 0),
                       sum({used}), sum(g.capacity_s),
                       max(g.mem_total_mib), max(g.mem_max),
                       sum(g.mem_sum) / nullif(sum(g.mem_ticks), 0),
                       sum(g.power_sum) / nullif(sum(g.power_ticks), 0),
                       max(g.temp_max),
                       sum(g.temp_sum) / nullif(sum(g.temp_ticks), 0),
                       sum(g.power_sum), sum(g.power_ticks),
                       sum(g.sick), string_agg(DISTINCT g.why, '; ' ORDER BY g.why),
                       sum({used_sm}), sum({sm_ticks})
                FROM g {held}
                GROUP BY period, g.cluster, g.node, g.gpu_uuid
                ORDER BY g.cluster, g.node, min(g.gpu_index), g.gpu_uuid, period""").fetchall()
        points = [
            {
                "period": p,
                "cluster": c,
                "node": n,
                "gpu": g,
                "model": m,
                "index": i,
                "util": _f(u),
                "used_s": _f(us),
                "capacity_s": _f(cs),
                "mem_total_mib": _f(mt),
                "mem_max_mib": _f(mm),
                "mem_avg_mib": _f(ma),
                "power_avg_w": _f(pw),
                "temp_max_c": _f(tx),
                "temp_avg_c": _f(ta),
                "power_sum_w": _f(ps),
                "power_ticks": int(pt or 0),
                # health events (issue 17): ticks the GPU was unhealthy in the period, and why
                "unhealthy_ticks": int(sk or 0),
                "unhealthy_reason": why,
                # the SM-activity basis: the slices' used_sm_s (busy where a tick had none) and
                # how many slice ticks had SM activity (0: no SM basis to show)
                "used_sm_s": _f(usm),
                "sm_ticks": int(smt or 0),
            }
            for p, c, n, g, m, i, u, us, cs, mt, mm, ma, pw, tx, ta, ps, pt, sk, why, usm, smt in rows
        ]
        return {"start": start, "end": end, "grain": grain, "points": points}

    def _gpu_detail(self, allowed: Allowed, gpu: str, f: Filters) -> dict[str, Any] | None:
        """Slices on one GPU in the window and the processes of its last hour; None if out of scope."""
        win = self.window(f)
        if win is None:
            return None
        start, end = win
        cond = where(f"gpu_uuid = {lit(gpu)}", in_list("tenant", allowed))
        with self.acct() as acct:
            slices = acct.measures(
                ["slice", "workload", "tenant", "kind", "node", "model"],
                grain=None,
                start=start,
                end=end,
                where=cond,
            )
            if not slices:
                return None
            node = slices[0]["node"]
            model = slices[0]["model"]
            last_hour = acct.sql(
                f"SELECT max(hour) FROM slice_hourly WHERE {cond} AND hour < {ts_lit(end)}"
            ).fetchall()[0][0]
        procs = self._processes(gpu, {s["slice"] for s in slices}, last_hour, allowed is None)
        return {
            "gpu": gpu,
            "node": node,
            "model": model,
            "slices": slices,
            "processes": procs,
            "hour": last_hour,
        }

    def _processes(
        self, gpu: str, slice_ids: set[str], hour: datetime | None, admin: bool
    ) -> list[dict[str, Any]]:
        """Processes seen on `gpu` in `hour`, of `slice_ids`: committed samples, each tick once
        (a redelivered batch must not double the averages and counts)."""
        if hour is None:
            return []
        window = f"ts >= {ts_lit(hour)} AND ts < {ts_lit(hour + timedelta(hours=1))}"
        src = samples_sql(self.lake, "process", [hour.date().isoformat()], where=window)
        if src is None:
            return []
        slice_cond = in_list("slice_id", frozenset(slice_ids))
        if admin:
            slice_cond = f"({slice_cond} OR slice_id IS NULL)"
        with self.acct() as acct:
            rows = acct.sql(f"""
                SELECT pid, slice_id, any_value("user") AS user, avg(sm_util_pct) AS sm_util_pct,
                       max(mem_used_mib) AS mem_used_mib, count(*) AS samples
                FROM {src} WHERE gpu_uuid = {lit(gpu)} AND {slice_cond}
                GROUP BY pid, slice_id ORDER BY slice_id NULLS LAST, pid LIMIT 500""").fetchall()
        return [
            {"pid": p, "slice": s, "user": u, "sm_util_pct": _f(su), "mem_used_mib": mm, "samples": n}
            for p, s, u, su, mm, n in rows
        ]

    def idle_now(self, allowed: Allowed, f: Filters) -> dict[str, Any] | None:
        """Allocations idle at their node's latest tick, longest first, with their cost so far."""
        end = self.latest()
        if end is None:
            return None
        start = end - timedelta(days=31)

        def q() -> list[dict[str, Any]]:
            with self.acct() as acct:
                last = dict(
                    acct.sql(
                        "SELECT node, max(last_ts) FROM r_node_ticks WHERE node IS NOT NULL GROUP BY node"
                    ).fetchall()
                )
                rows = acct.idle_periods(start=start, end=end)
            return [r for r in rows if last.get(r["node"]) is not None and r["end"] >= last[r["node"]]]

        rows = self.scoped_idle(self.cached("idle_now", q), allowed, f)
        rows.sort(key=lambda r: (-r["minutes"], r["slice_id"]))
        # The header's "data up to" is the fleet's last tick, not the end of its hour (which
        # read "14:00" at 13:20).
        return {"end": self.latest_tick() or end, "currency": self.settings.currency, "rows": rows}


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _sum_over(rows: list[dict[str, Any]], dim: str | None) -> list[dict[str, Any]]:
    """Slice measures of several tenants added up per (period, dim)."""
    acc: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in rows:
        key = (r.get("period"), r.get(dim) if dim else None)
        a = acc.setdefault(
            key,
            {
                "period": key[0],
                **({dim: key[1]} if dim else {}),
                "reserved_gpu_h": 0.0,
                "used_gpu_h": 0.0,
                "idle_gpu_h": 0.0,
                "slices": 0,
                "used_sm_gpu_h": 0.0,
                "unused_sm_gpu_h": 0.0,
                "sm_ticks": 0,
            },
        )
        a["reserved_gpu_h"] += float(r["reserved_gpu_h"] or 0)
        a["used_gpu_h"] += float(r["used_gpu_h"] or 0)
        a["idle_gpu_h"] += float(r["idle_gpu_h"] or 0)
        a["slices"] += int(r["slices"] or 0)
        a["used_sm_gpu_h"] += float(r.get("used_sm_gpu_h") or 0)
        a["unused_sm_gpu_h"] += float(r.get("unused_sm_gpu_h") or 0)
        a["sm_ticks"] += int(r.get("sm_ticks") or 0)
    out = []
    for key in sorted(acc, key=lambda k: (str(k[0]), str(k[1]))):
        a = acc[key]
        a["efficiency"] = a["used_gpu_h"] / a["reserved_gpu_h"] if a["reserved_gpu_h"] else None
        a["efficiency_sm"] = a["used_sm_gpu_h"] / a["reserved_gpu_h"] if a["reserved_gpu_h"] else None
        out.append(a)
    return out
