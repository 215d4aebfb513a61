"""DESIGN §6 measures as SQL over the rollups: by slice, workload, tenant, cluster, GPU model,
node and hour/day/month; idle periods as rows; coverage (unobserved GPU-hours per node and day).

Tenants are resolved here, at query time, from the workload identity the rollups keep, so a rule
change applies to everything not yet closed. Nothing here reads raw samples: the rollups are
brought up to date first (`update()`), which only recomputes dates whose files changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warehouse.lake import Lake
from warehouse.pricing import PriceBook
from warehouse.rollups import ROLLUP_VERSION, TABLES, Rollups, RollupStats
from warehouse.rules import WORKLOAD_SQL, follows_sql, price_join, tenant_sql
from warehouse.sql import dicts as _dicts
from warehouse.sql import lit as _lit
from warehouse.sql import read_parquet
from warehouse.sql import ts_lit as _ts

DERIVED = "_derived"  # under rollups/: tables computed from the rollups, keyed by their inputs

# Qualifying idle periods per slice and hour: the one table every idle measure reads.
IDLE_SQL = """
    SELECT hour, cluster, model, node, gpu_uuid, slice_id, boot_id, period, period_start, period_end,
           any_value(tenant) AS tenant, any_value(workload) AS workload, any_value(kind) AS kind,
           sum(reserved_s) AS reserved_s
    FROM idle_run_period WHERE qualifies
    GROUP BY hour, cluster, model, node, gpu_uuid, slice_id, boot_id, period, period_start, period_end"""
GRAINS = {"hour": "hour", "day": "date_trunc('day', hour)", "month": "date_trunc('month', hour)"}
# Dimensions a measure can be grouped by; the first four exist only on slice rows.
SLICE_DIMS = {"slice": "slice_id", "workload": "workload", "tenant": "tenant", "kind": "kind"}
GPU_DIMS = {"cluster": "cluster", "model": "model", "node": "node", "gpu": "gpu_uuid"}


class Accounting:
    """One DuckDB connection over the rollups of a lake, with tenants and prices."""

    def __init__(
        self,
        lake: Lake | str,
        *,
        tenant_rules: Sequence[dict[str, Any]] = (),
        default_tenant: str = "unassigned",
        idle_util_ratio: float = 0.05,
        idle_min_minutes: float = 30.0,
        price_book: PriceBook | None = None,
        retire_after_hours: float = 24.0,
        threads: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.rollups = Rollups(
            self.lake, idle_util_ratio=idle_util_ratio, threads=threads, memory_limit=memory_limit
        )
        self.tenant = tenant_sql(tenant_rules, default_tenant)
        self.idle_min_s = float(idle_min_minutes) * 60.0
        self.price_book = price_book
        self.retire_after_s = float(retire_after_hours) * 3600.0
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        self.lake.register(self.con)
        self._files: dict[str, list[str]] = {}
        self.idle_source = ""  # where the idle periods came from: computed, saved or shared
        if price_book is not None:
            self.con.execute(
                "CREATE TABLE prices (model VARCHAR, valid_from DATE, valid_to DATE, gpu_hour DECIMAL(18, 6))"
            )
            if price_book.rows():  # an empty book: no prices (DuckDB refuses an empty executemany)
                self.con.executemany("INSERT INTO prices VALUES (?, ?, ?, ?)", price_book.rows())
        self.refresh()

    def update(self, dates: Sequence[str] | None = None) -> RollupStats:
        """Bring the rollups up to date (only changed dates are recomputed) and re-read them."""
        stats = self.rollups.update(dates)
        self.refresh()
        return stats

    def refresh(self) -> None:
        changed = False
        for table in TABLES:
            files = self.rollups.files(table)
            if files != self._files.get(table):
                self._files[table] = files
                src = read_parquet(files)
                self.con.execute(f"CREATE OR REPLACE VIEW r_{table} AS SELECT * FROM {src}")
                changed = True
        if changed or not getattr(self, "_defined", False):
            self._define()
            self._defined = True

    def _define(self) -> None:
        c = self.con
        c.execute(f"""
            CREATE OR REPLACE VIEW slice_hourly AS
            SELECT *, ({self.tenant}) AS tenant, ({WORKLOAD_SQL}) AS workload FROM r_slice_hourly""")
        c.execute("CREATE OR REPLACE VIEW gpu_hourly AS SELECT * FROM r_gpu_hourly")
        # Idle runs stitched into periods across hours and dates: a run continues the previous one
        # of the same slice and agent boot when its first tick is the next seq and starts where
        # the previous run ended (DESIGN §6: a silence is unobserved, never idle). Partitions lead
        # with a 64-bit hash so that the sort rarely compares the UUID-prefixed strings behind it.
        follows = follows_sql("lag(end_ts) OVER w", "epoch(start_ts)", "interval_s")
        self.con.execute(f"""
            CREATE OR REPLACE VIEW idle_run_period AS
            WITH r AS (
                SELECT *, ({self.tenant}) AS tenant, ({WORKLOAD_SQL}) AS workload,
                       hash(slice_id, node, boot_id) AS rk,
                       CASE WHEN first_seq = lag(last_seq) OVER w + 1 AND {follows} THEN 0 ELSE 1 END
                           AS new_period
                FROM r_idle_runs
                WINDOW w AS (PARTITION BY hash(slice_id, node, boot_id), slice_id, node, boot_id
                             ORDER BY first_seq, hour)),
            p AS (
                SELECT *, sum(new_period) OVER (PARTITION BY rk, slice_id, node, boot_id
                                                ORDER BY first_seq, hour ROWS UNBOUNDED PRECEDING) AS period
                FROM r)
            SELECT * EXCLUDE (rk, new_period), min(start_ts) OVER pw AS period_start,
                   max(end_ts) OVER pw AS period_end,
                   epoch(max(end_ts) OVER pw) - epoch(min(start_ts) OVER pw) >= {self.idle_min_s}
                       AS qualifies
            FROM p WINDOW pw AS (PARTITION BY rk, slice_id, node, boot_id, period)""")
        self._idle_ready = False
        self._idle_for = ""  # the idle_key the idle periods were stitched for

    def idle_table(self) -> pa.Table:
        """The qualifying idle periods per hour (what `measures` and `idle_periods` read).

        Stitching periods is window functions over every idle run of the lake (seconds on a month
        of a large fleet), so it is done once per change of the rollups and kept; a process with
        several connections computes it on one and hands it to the others with `share_idle`.
        """
        if self.idle_source == "shared":  # stitched elsewhere, maybe over older rollups: do it here
            self._idle_ready = False
        self._ensure_idle()
        return self.con.sql("SELECT * FROM idle_period_hours").to_arrow_table()

    def share_idle(self, table: pa.Table) -> None:
        """Use an `idle_table()` computed on another connection over the same rollups."""
        self.refresh()
        self.con.register("_shared_idle", table)
        self._drop_idle()
        self.con.execute("CREATE TEMP VIEW idle_period_hours AS SELECT * FROM _shared_idle")
        self.idle_source = "shared"
        self._idle_ready = True

    def _drop_idle(self) -> None:
        kinds = self.con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'idle_period_hours'"
        ).fetchall()
        for (kind,) in kinds:
            self.con.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} idle_period_hours")

    def _ensure_idle(self) -> None:
        # A rollup date rebuilt in place keeps its file name (refresh sees no new file list), so
        # the periods are stitched again when the idle runs' files changed on disk (idle_key).
        key = self.idle_key()
        if self._idle_ready and (self.idle_source == "shared" or self._idle_for == key):
            return
        self._idle_for = key
        self._drop_idle()
        self.idle_source = "computed"
        saved = self.idle_path()
        if self.lake.exists(saved):
            try:
                src = _lit(self.lake.url(saved))
                self.con.execute(f"CREATE TEMP TABLE idle_period_hours AS SELECT * FROM read_parquet({src})")
                self.idle_source = "saved"
            except duckdb.Error:  # pruned by its writer between the check and the read: compute
                self._drop_idle()
        if self.idle_source == "computed":
            self.con.execute(f"CREATE TEMP TABLE idle_period_hours AS {IDLE_SQL}")
        self._idle_ready = True

    # -- idle periods kept beside the rollups ----------------------------------------------------

    def idle_key(self) -> str:
        """What the idle periods depend on: the idle-run rollup files as they are on disk, the
        tenant rules, the idle settings and the rollup version."""
        self.refresh()
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [ROLLUP_VERSION, self.tenant, WORKLOAD_SQL, self.idle_min_s, self.rollups.idle_util_ratio]
            ).encode()
        )
        for f in self._files.get("idle_runs", []):
            st = self.lake.stat(f)
            if st is None:
                continue
            h.update(f"{f}:{st[0]}:{st[1]};".encode())
        return h.hexdigest()

    def idle_path(self) -> Path:
        return self.rollups.root / DERIVED / f"idle-{self.idle_key()[:32]}.parquet"

    def save_idle(self, keep: int = 3) -> Path:
        """Stitch the idle periods once for every process over these rollups (the jobs runner
        does it after each rollup update), so no dashboard request waits for the stitching.

        Written atomically under a name keyed by `idle_key`; the oldest beyond `keep` are removed
        (a reader that loses the race computes the periods itself).
        """
        path = self.idle_path()
        if not self.lake.exists(path):
            self.lake.write_file(self.idle_table(), path)
        stats = {p: self.lake.stat(p) for p in self.lake.find(path.parent, "idle-*.parquet") if p != path}
        older = sorted((p for p, st in stats.items() if st is not None), key=lambda p: stats[p][1])
        for p in older[: max(0, len(older) - (keep - 1))]:
            self.lake.delete(p)
        return path

    def sql(self, query: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyRelation:
        self.refresh()
        return self.con.sql(query, params=params) if params else self.con.sql(query)

    # -- measures --------------------------------------------------------------------------------

    def measures(
        self,
        by: Sequence[str] = (),
        grain: str | None = "hour",
        start: datetime | date | None = None,
        end: datetime | date | None = None,
        where: str = "",
    ) -> list[dict[str, Any]]:
        """GPU-hours and ratios grouped by `by` (+ the time grain), for hours in [start, end).

        Grouped by GPU dimensions only (cluster, model, node, gpu): capacity, reserved, used,
        unallocated, allocated-idle, utilization, allocation rate, and on the SM-activity basis
        used_sm / utilization_sm / efficiency_sm. With a slice dimension
        (slice, workload, tenant, kind): reserved, used, burst, allocated-idle, efficiency, and on
        the SM-activity basis used_sm / efficiency_sm, and unhealthy (reserved on unhealthy GPU ticks);
        capacity and unallocated belong to GPUs, not to slices, and are not given. `sm_ticks`
        counts the slice ticks that had SM activity: 0 means the SM basis is the busy basis;
        `unused_sm_gpu_h` is idle on the SM basis, reserved GPU-hours the SMs did not use
        (docs/accounting.md), not the allocated-idle of the idle periods.
        """
        unknown = [d for d in by if d not in SLICE_DIMS and d not in GPU_DIMS]
        if unknown:
            raise ValueError(f"unknown dimension(s) {unknown}: expected among {[*SLICE_DIMS, *GPU_DIMS]}")
        self.refresh()
        self._ensure_idle()
        if grain is not None and grain not in GRAINS:
            raise ValueError(f"unknown grain {grain!r}: expected one of {list(GRAINS)}")
        cols = [SLICE_DIMS.get(d) or GPU_DIMS[d] for d in by]
        t = [f"{GRAINS[grain]} AS period"] if grain else []
        keys = ", ".join([*t, *[f"{c} AS {d}" for c, d in zip(cols, by, strict=True)]]) or "1 AS all_"
        conds = []
        if start is not None:
            conds.append(f"hour >= {_ts(start)}")
        if end is not None:
            conds.append(f"hour < {_ts(end)}")
        if where:
            conds.append(f"({where})")
        cond = ("WHERE " + " AND ".join(conds)) if conds else ""
        # Allocated-idle comes from the idle periods grouped by the same keys and joined on them
        # (a slice-hour can sit in two date partitions: joining row by row would count it twice).
        names = ["period"] * bool(grain) + list(by) or ["all_"]
        on = " AND ".join(f"m.{n} IS NOT DISTINCT FROM i.{n}" for n in names)
        idle_keys = keys.replace(" AS period", " AS period_") if grain else keys
        idle = f"""SELECT {idle_keys}, sum(reserved_s) AS idle_s FROM idle_period_hours
                   {("WHERE " + " AND ".join(conds)) if conds else ""} GROUP BY ALL"""
        if grain:  # idle_period_hours has its own `period` column (the period's number)
            idle = f"SELECT * RENAME (period_ AS period) FROM ({idle})"
        if any(d in SLICE_DIMS for d in by):
            m = f"""
                SELECT {keys},
                       sum(reserved_s) / 3600 AS reserved_gpu_h, sum(used_s) / 3600 AS used_gpu_h,
                       sum(burst_s) / 3600 AS burst_gpu_h,
                       sum(used_s) / nullif(sum(reserved_s), 0) AS efficiency,
                       count(DISTINCT slice_id) AS slices,
                       -- issue 17: the SM-activity basis (busy where a tick had none) and the
                       -- reserved GPU-hours on unhealthy GPU ticks (rules.UNHEALTHY_REASON_SQL)
                       sum(used_sm_s) / 3600 AS used_sm_gpu_h,
                       sum(used_sm_s) / nullif(sum(reserved_s), 0) AS efficiency_sm,
                       sum(unhealthy_reserved_s) / 3600 AS unhealthy_gpu_h,
                       sum(greatest(reserved_s - used_sm_s, 0)) / 3600 AS unused_sm_gpu_h,
                       sum(sm_ticks) AS sm_ticks
                FROM slice_hourly {cond} GROUP BY ALL"""
        else:
            m = f"""
                SELECT {keys},
                       sum(capacity_s) / 3600 AS capacity_gpu_h, sum(reserved_s) / 3600 AS reserved_gpu_h,
                       sum(used_s) / 3600 AS used_gpu_h, sum(unallocated_s) / 3600 AS unallocated_gpu_h,
                       sum(used_s) / nullif(sum(capacity_s), 0) AS utilization,
                       sum(reserved_s) / nullif(sum(capacity_s), 0) AS allocation_rate,
                       sum(used_s) / nullif(sum(reserved_s), 0) AS efficiency,
                       count(DISTINCT gpu_uuid) AS gpus,
                       -- the SM-activity basis (the slices' used_sm_s; busy where a tick had none)
                       sum(used_sm_s) / 3600 AS used_sm_gpu_h,
                       sum(used_sm_s) / nullif(sum(capacity_s), 0) AS utilization_sm,
                       sum(used_sm_s) / nullif(sum(reserved_s), 0) AS efficiency_sm,
                       sum(unused_sm_s) / 3600 AS unused_sm_gpu_h,
                       sum(sm_ticks) AS sm_ticks
                FROM gpu_hourly {cond} GROUP BY ALL"""
        q = f"""
            SELECT m.*, coalesce(i.idle_s, 0) / 3600 AS idle_gpu_h
            FROM ({m}) m LEFT JOIN ({idle}) i ON {on}
            ORDER BY {", ".join("m." + n for n in names)}"""
        return _dicts(self.sql(q))

    def summary(self) -> dict[str, Any]:
        """Fleet totals of the whole lake (the demo's closing lines): the same measures as the
        dashboards and the ledger, from the rollups."""
        self.refresh()
        (counts,) = _dicts(
            self.sql("""
                SELECT (SELECT coalesce(sum(ticks), 0) FROM r_node_ticks) AS ticks,
                       (SELECT count(DISTINCT node) FROM r_node_ticks) AS nodes,
                       (SELECT count(DISTINCT gpu_uuid) FROM gpu_hourly) AS gpus,
                       (SELECT count(DISTINCT slice_id) FROM slice_hourly) AS slices,
                       (SELECT count(DISTINCT tenant) FROM slice_hourly) AS tenants""")
        )
        (m,) = self.measures([], grain=None)
        keys = ("capacity_gpu_h", "reserved_gpu_h", "used_gpu_h", "unallocated_gpu_h", "idle_gpu_h")
        totals = {k: float(m[k] or 0) for k in keys}
        cap = totals["capacity_gpu_h"]
        return {
            **{k: int(v) for k, v in counts.items()},
            **totals,
            "utilization": totals["used_gpu_h"] / cap if cap else None,
            "allocation_rate": totals["reserved_gpu_h"] / cap if cap else None,
        }

    # -- idle periods ----------------------------------------------------------------------------

    def idle_periods(
        self,
        start: datetime | date | None = None,
        end: datetime | date | None = None,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Idle periods (>= idle_min_minutes) overlapping [start, end): who, where, when, GPU-hours, cost.

        GPU-hours and cost count the part of the period inside [start, end); cost at each hour's
        price (needs a price book), exact, then rounded to the cent per period.
        """
        self.refresh()
        self._ensure_idle()
        conds = ["TRUE"]
        if start is not None:
            conds.append(f"hour >= {_ts(start)}")
        if end is not None:
            conds.append(f"hour < {_ts(end)}")
        if tenant is not None:
            conds.append(f"tenant = {_lit(tenant)}")
        priced = self.price_book is not None
        cost = "sum(reserved_s * p.gpu_hour) AS cost_s" if priced else "NULL AS cost_s"
        join = "LEFT " + price_join("r") if priced else ""
        q = f"""
            SELECT any_value(tenant) AS tenant, any_value(workload) AS workload,
                   any_value(cluster) AS cluster,
                   node, any_value(gpu_uuid) AS gpu_uuid, any_value(r.model) AS model, slice_id,
                   any_value(kind) AS kind, period_start AS start, period_end AS "end",
                   (epoch(period_end) - epoch(period_start)) / 60 AS minutes,
                   sum(reserved_s) / 3600 AS gpu_hours, {cost}
            FROM idle_period_hours r {join}
            WHERE {" AND ".join(conds)}
            GROUP BY slice_id, node, boot_id, period, period_start, period_end
            ORDER BY {"cost_s DESC NULLS LAST, " if priced else ""}gpu_hours DESC, start, slice_id
            {f"LIMIT {int(limit)}" if limit else ""}"""
        rows = _dicts(self.sql(q))
        for r in rows:
            # price x GPU-seconds is exact in DECIMAL; one division and one rounding, here
            cost_s = r.pop("cost_s")
            r["cost"] = None if cost_s is None else (Decimal(cost_s) / 3600).quantize(Decimal("0.01"))
        return rows

    # -- coverage --------------------------------------------------------------------------------

    def coverage(self, start: datetime | date, end: datetime | date) -> list[dict[str, Any]]:
        """Observed and unobserved GPU-hours per node and day in [start, end).

        Unobserved time is the gaps between a node's ticks (agent down, node gone) times the GPUs
        it had before the gap, split over the days it spans. After a node's last tick it is
        unobserved until `end`, or until it is retired: a node with no tick for `retire_after`
        and none after leaves the fleet (DESIGN §6) at last tick + `retire_after`, and its rows
        say so in `retired_at`. Never billed.
        """
        retire_us = int(self.retire_after_s * 1_000_000)
        follows = follows_sql("prev_last", "epoch(first_ts) - first_interval_s", "first_interval_s")
        q = f"""
            WITH n AS (SELECT * FROM r_node_ticks),
            cross_gaps AS (      -- gaps between the last tick of one date and the first of the next
                SELECT cluster, node, prev_last AS gap_start,
                       first_ts - to_microseconds(CAST(first_interval_s * 1000000 AS BIGINT)) AS gap_end,
                       prev_gpus AS gpus
                FROM (SELECT *, lag(last_ts) OVER w AS prev_last, lag(last_gpus) OVER w AS prev_gpus
                      FROM n WINDOW w AS (PARTITION BY cluster, node ORDER BY first_ts))
                WHERE prev_last IS NOT NULL AND NOT {follows}),
            last AS (            -- each node's last tick, and when it retires without another
                SELECT cluster, node, max(last_ts) AS last_ts, arg_max(last_gpus, last_ts) AS gpus,
                       max(last_ts) + to_microseconds({retire_us}) AS retires
                FROM n GROUP BY cluster, node),
            tail AS (            -- after the node's last tick, to the end of the range or retirement
                SELECT cluster, node, last_ts AS gap_start, least({_ts(end)}, retires) AS gap_end, gpus
                FROM last WHERE last_ts < {_ts(end)}),
            gaps AS (SELECT * FROM cross_gaps UNION ALL SELECT * FROM tail),
            split AS (
                SELECT cluster, node, CAST(d AS DATE) AS day,
                       (epoch(least(gap_end, d + INTERVAL 1 DAY)) - epoch(greatest(gap_start, d))) * gpus
                           AS gpu_s
                FROM gaps, LATERAL (
                    SELECT unnest(generate_series(date_trunc('day', gap_start), date_trunc('day', gap_end),
                                                  INTERVAL 1 DAY)) AS d)
                WHERE gap_end > gap_start),
            within AS (SELECT cluster, node, CAST(first_ts AS DATE) AS day,
                              CAST(observed_gpu_s AS DOUBLE) AS observed_s, CAST(gap_gpu_s AS DOUBLE) AS gap_s
                       FROM n),
            u AS (
                SELECT cluster, node, day, sum(observed_s) AS observed_s, sum(gap_s) AS unobserved_s
                FROM (SELECT cluster, node, day, observed_s, gap_s FROM within
                      UNION ALL SELECT cluster, node, day, 0, gpu_s FROM split WHERE gpu_s > 0)
                GROUP BY ALL)
            SELECT u.cluster, u.node, u.day, u.observed_s / 3600 AS observed_gpu_h,
                   u.unobserved_s / 3600 AS unobserved_gpu_h,
                   CASE WHEN l.retires < {_ts(end)} THEN l.retires END AS retired_at
            FROM u JOIN last l USING (cluster, node)
            WHERE u.day >= CAST({_ts(start)} AS DATE)
              AND u.day <= CAST({_ts(end)} - INTERVAL 1 MICROSECOND AS DATE)
            ORDER BY u.day, u.cluster, u.node"""
        return _dicts(self.sql(q))

    def retired_nodes(self, end: datetime | date) -> list[dict[str, Any]]:
        """Nodes retired by `end`: no tick for `retire_after` since their last, and none after."""
        retire_us = int(self.retire_after_s * 1_000_000)
        q = f"""
            SELECT cluster, node, last_ts, retired_at, last_gpus AS gpus FROM (
                SELECT cluster, node, max(last_ts) AS last_ts, arg_max(last_gpus, last_ts) AS last_gpus,
                       max(last_ts) + to_microseconds({retire_us}) AS retired_at
                FROM r_node_ticks GROUP BY cluster, node)
            WHERE retired_at < {_ts(end)} ORDER BY cluster, node"""
        return _dicts(self.sql(q))

    def close(self) -> None:
        self.con.close()
