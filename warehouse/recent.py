"""The freshest samples of a time window, for the alert rules: committed, each tick once, with share,
reserved and used GPU-seconds, tenant and the idle test attached by the one set of rules.

The alerts cannot wait for the rollups (they lag by up to their schedule), so they read the raw
samples that arrived since their previous evaluation, through the staging layer (committed batches,
first batch per tick) and with every accounting rule from warehouse/rules.py: the alert fires on
exactly the ticks the accounting calls idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

from warehouse.lake import Lake
from warehouse.rules import (
    tenant_sql,
)
from warehouse.sql import lit as _lit
from warehouse.sql import ts_lit as _ts_lit
from warehouse.staging import committed_files, dates_between, first_batch_ticks_sql, slice_ticks_sql


class RecentSamples:
    """Deduplicated slice and GPU ticks of a time window, read from the date partitions it spans."""

    def __init__(
        self,
        lake: Lake,
        tenant_rules: Sequence[dict[str, Any]],
        default_tenant: str,
        idle_util_ratio: float = 0.05,
    ) -> None:
        self.lake = lake
        self.idle_util_ratio = idle_util_ratio
        self.tenant = tenant_sql(tenant_rules, default_tenant)
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")
        self.con.execute("SET threads = 2")  # a minute of ticks: more threads only cost start-up
        self.lake.register(self.con)

    def _files(self, kind: str, since: datetime, until: datetime) -> list[str]:
        return committed_files(self.lake, kind, dates_between(since.date(), until.date()))

    def load(self, since: datetime, until: datetime) -> int:
        """Ticks with since < ts <= until into temp tables `ticks`, `slices`, `gpus`; returns #ticks."""
        files = {k: self._files(k, since, until) for k in ("tick", "slice", "gpu")}
        window = f"ts > {_ts_lit(since)} AND ts <= {_ts_lit(until)}"
        c = self.con
        if not files["tick"]:
            for t in ("ticks", "slices", "gpus"):
                c.execute(f"DROP TABLE IF EXISTS {t}")
            c.execute(
                "CREATE TEMP TABLE ticks (cluster VARCHAR, node VARCHAR, boot_id VARCHAR, seq BIGINT, "
                "ts TIMESTAMPTZ, interval_s DOUBLE, batch BIGINT)"
            )
            c.execute("CREATE TEMP TABLE slices AS SELECT NULL::VARCHAR AS slice_id WHERE false")
            c.execute("CREATE TEMP TABLE gpus AS SELECT NULL::VARCHAR AS uuid WHERE false")
            return 0

        def src(kind: str) -> str:
            return "read_parquet([" + ", ".join(_lit(f) for f in files[kind]) + "], union_by_name = true)"

        c.execute(f"""
            CREATE OR REPLACE TEMP TABLE ticks AS
            SELECT cluster, node, boot_id, seq, ts, interval_s, batch
            FROM ({first_batch_ticks_sql(src("tick"), window)})""")
        n = c.execute("SELECT count(*) FROM ticks").fetchone()[0]  # type: ignore[index]
        staged = slice_ticks_sql(
            self.lake,
            dates_between(since.date(), until.date()),
            tenant=self.tenant,
            idle_util_ratio=self.idle_util_ratio,
            where=window,
        )
        if files["slice"] and staged is not None:
            c.execute(f"""
                CREATE OR REPLACE TEMP TABLE slices AS
                SELECT slice_id, cluster, node, boot_id, seq, ts, interval_s, gpu_uuid, model, kind,
                       namespace, pod, tenant, workload, share, used_frac, gpu_sum_share AS sum_share,
                       reserved_s, used_s, idle
                FROM {staged}""")
        else:
            c.execute("CREATE OR REPLACE TEMP TABLE slices AS SELECT NULL::VARCHAR AS slice_id WHERE false")
        if files["gpu"]:
            c.execute(f"""
                CREATE OR REPLACE TEMP TABLE gpus AS
                SELECT g.cluster, g.node, g.boot_id, g.seq, g.ts, g.interval_s, g.uuid, g.model, g.util_pct
                FROM {src("gpu")} g SEMI JOIN ticks t USING (node, boot_id, seq, batch)
                WHERE {window}""")
        else:
            c.execute("CREATE OR REPLACE TEMP TABLE gpus AS SELECT NULL::VARCHAR AS uuid WHERE false")
        return int(n)

    def slice_ticks(self) -> list[tuple]:
        """Per slice tick: who, where, reserved GPU-seconds and the idle test (None: util unknown)."""
        if self.con.execute("SELECT count(*) FROM slices").fetchone()[0] == 0:  # type: ignore[index]
            return []
        return self.con.execute("""
            SELECT node || '|' || boot_id || '|' || slice_id AS key, slice_id, cluster, node, gpu_uuid,
                   model, kind, tenant, workload, ts, interval_s, reserved_s,
                   CASE WHEN used_frac IS NULL THEN NULL ELSE idle END AS idle
            FROM slices ORDER BY key, ts""").fetchall()

    def gpu_ticks(self, ratio: float) -> list[tuple]:
        """Per GPU tick: allocated share, busy fraction (own util, else its slices'), idle test."""
        if self.con.execute("SELECT count(*) FROM gpus").fetchone()[0] == 0:  # type: ignore[index]
            return []
        has_slices = self.con.execute("SELECT count(*) FROM slices").fetchone()[0] > 0  # type: ignore[index]
        s = (
            """(SELECT node, boot_id, seq, gpu_uuid, sum(share) AS sum_share, count(*) AS n_slices,
                       sum(used_frac) AS used_frac, count(used_frac) AS known,
                       list(DISTINCT tenant ORDER BY tenant) AS tenants
                FROM slices GROUP BY ALL)"""
            if has_slices
            else """(SELECT NULL::VARCHAR AS node, NULL::VARCHAR AS boot_id, NULL::BIGINT AS seq,
                      NULL::VARCHAR AS gpu_uuid, NULL::DOUBLE AS sum_share, 0 AS n_slices,
                      NULL::DOUBLE AS used_frac, 0 AS known, NULL::VARCHAR[] AS tenants WHERE false)"""
        )
        return self.con.execute(f"""
            SELECT g.node || '|' || g.boot_id || '|' || g.uuid AS key, g.cluster, g.node, g.uuid, g.model,
                   g.ts, g.interval_s, coalesce(s.sum_share, 0) AS sum_share,
                   coalesce(g.util_pct / 100.0,
                            CASE WHEN s.known = s.n_slices THEN s.used_frac END) AS busy,
                   coalesce(s.n_slices, 0) AS n_slices, coalesce(s.tenants, []) AS tenants
            FROM gpus g LEFT JOIN {s} s
              ON g.node = s.node AND g.boot_id = s.boot_id AND g.seq = s.seq AND g.uuid = s.gpu_uuid
            ORDER BY key, g.ts""").fetchall()

    def node_last(self) -> list[tuple]:
        return self.con.execute(
            "SELECT cluster, node, max(ts), arg_max(interval_s, ts) FROM ticks GROUP BY ALL ORDER BY node"
        ).fetchall()

    def close(self) -> None:
        self.con.close()
