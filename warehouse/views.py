"""DuckDB views over the lake: deduplicated samples, shares, tenants.

Every process opens its own in-memory DuckDB over the Parquet files, so readers never block
the ingest that writes them. Delivery is at least once, so the same tick may sit in several
ingest batches (or in a crashed batch that never wrote its tick file): `tick` keeps, for each
(node, boot_id, seq), the earliest batch that committed its tick file, and every row view
keeps only rows of that batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from gpuledger.decode import TABLES
from warehouse.lake import DLQ_SCHEMA, Lake, schema_of
from warehouse.rollups import SHARE_SQL, USED_FRAC_SQL
from warehouse.sql import lit as _lit


def tenant_sql(rules: Sequence[dict[str, Any]], default: str = "unassigned") -> str:
    """Ordered tenant rules as one SQL CASE over slice workload columns (first match wins).

    Resolved at query time, so a rule change applies to every month not yet closed.
    """
    whens = []
    for rule in rules:
        tenant = _lit(rule["tenant"])
        if "namespace" in rule:
            cond = f"namespace = {_lit(rule['namespace'])}"
        elif "label" in rule:
            key, _, value = rule["label"].partition("=")
            cond = f"labels[{_lit(key)}] = {_lit(value)}"
        elif "account" in rule:
            cond = f"account = {_lit(rule['account'])}"
        elif "user" in rule:
            cond = f'"user" = {_lit(rule["user"])}'
        else:
            raise ValueError(f"tenant rule without a matcher: {rule!r}")
        whens.append(f"WHEN {cond} THEN {tenant}")
    if not whens:
        return _lit(default)
    return "CASE " + " ".join(whens) + f" ELSE {_lit(default)} END"


class Warehouse:
    """One DuckDB connection with the lake's views; cheap to create, one per process or thread."""

    def __init__(
        self,
        lake: Lake | str,
        tenant_rules: Sequence[dict[str, Any]] = (),
        default_tenant: str = "unassigned",
        threads: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        self._tenant = tenant_sql(tenant_rules, default_tenant)
        self._present: dict[str, bool] = {}
        self.refresh()

    def refresh(self) -> None:
        """(Re)define the raw views; a table that had no files yet is picked up once it has."""
        for kind in (*TABLES, "dlq"):
            glob = self.lake.dlq_glob() if kind == "dlq" else self.lake.glob(kind)
            if self._present.get(kind):
                continue  # files are only ever added: once present, always present
            present = self.lake.has_files(glob)
            if self._present.get(kind) == present:
                continue
            self._present[kind] = present
            if present:
                src = f"read_parquet({_lit(glob)}, hive_partitioning = true, hive_types = {{'date': DATE}})"
            else:
                empty = (DLQ_SCHEMA if kind == "dlq" else schema_of(kind)).empty_table()
                self.con.register(f"_empty_{kind}", empty)
                src = f"(SELECT *, NULL::DATE AS date FROM _empty_{kind})"
            self.con.execute(f"CREATE OR REPLACE VIEW raw_{kind} AS SELECT * FROM {src}")
        if not getattr(self, "_defined", False):
            self._define()
            self._defined = True

    def _define(self) -> None:
        c = self.con
        # Rejected messages, once each: a batch redone after a rebalance writes its rejects again.
        c.execute("""
            CREATE OR REPLACE VIEW dlq AS
            SELECT * FROM raw_dlq
            QUALIFY row_number() OVER (PARTITION BY topic, "partition", "offset" ORDER BY received_at) = 1""")
        c.execute("""
            CREATE OR REPLACE VIEW tick AS
            SELECT * FROM raw_tick
            QUALIFY row_number() OVER (PARTITION BY node, boot_id, seq ORDER BY batch) = 1""")
        for kind in ("gpu", "slice", "process"):
            c.execute(f"""
                CREATE OR REPLACE VIEW {kind}_sample AS
                SELECT r.* FROM raw_{kind} r
                SEMI JOIN tick t ON r.node = t.node AND r.boot_id = t.boot_id AND r.seq = t.seq
                                AND r.batch = t.batch""")
        c.execute(f"""
            CREATE OR REPLACE VIEW slice_share AS
            SELECT *, ({SHARE_SQL}) AS share, ({USED_FRAC_SQL}) AS used_frac, ({self._tenant}) AS tenant
            FROM slice_sample""")
        # Per slice tick: reserved = Δ·share / max(1, Σ shares on that GPU in that tick).
        c.execute("""
            CREATE OR REPLACE VIEW slice_acct AS
            SELECT *,
                   sum(share) OVER w AS gpu_sum_share,
                   interval_s * share / greatest(1.0, sum(share) OVER w) AS reserved_s,
                   interval_s * used_frac AS used_s
            FROM slice_share
            WINDOW w AS (PARTITION BY node, boot_id, seq, gpu_uuid)""")
        c.execute("""
            CREATE OR REPLACE VIEW gpu_acct AS
            WITH s AS (
                SELECT node, boot_id, seq, gpu_uuid, sum(share) AS sum_share, sum(used_frac) AS used_frac,
                       count(*) AS n_slices
                FROM slice_share GROUP BY ALL)
            SELECT g.*,
                   date_trunc('hour', g.ts - to_microseconds(CAST(g.interval_s * 500000 AS BIGINT))) AS hour,
                   coalesce(s.sum_share, 0.0) AS sum_share,
                   coalesce(s.n_slices, 0) AS n_slices,
                   g.interval_s AS capacity_s,
                   g.interval_s * least(1.0, coalesce(s.sum_share, 0.0)) AS reserved_s,
                   g.interval_s * coalesce(s.used_frac, 0.0) AS used_s,
                   g.interval_s * greatest(0.0, 1.0 - coalesce(s.sum_share, 0.0)) AS unallocated_s
            FROM gpu_sample g
            LEFT JOIN s ON g.node = s.node AND g.boot_id = s.boot_id AND g.seq = s.seq
                       AND g.uuid = s.gpu_uuid""")

    def sql(self, query: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyRelation:
        self.refresh()
        return self.con.sql(query, params=params) if params else self.con.sql(query)

    # -- first queries ---------------------------------------------------------------------

    def fleet_hourly(self) -> list[dict[str, Any]]:
        """Capacity, reserved, used and unallocated GPU-hours per cluster, GPU model and hour."""
        return _dicts(
            self.sql("""
            SELECT cluster, model, hour,
                   sum(capacity_s) / 3600 AS capacity_gpu_h,
                   sum(reserved_s) / 3600 AS reserved_gpu_h,
                   sum(used_s) / 3600 AS used_gpu_h,
                   sum(unallocated_s) / 3600 AS unallocated_gpu_h,
                   sum(used_s) / sum(capacity_s) AS utilization,
                   sum(reserved_s) / sum(capacity_s) AS allocation_rate
            FROM gpu_acct GROUP BY ALL ORDER BY hour, cluster, model""")
        )

    def summary(self) -> dict[str, Any]:
        """Fleet totals for the demo's closing lines."""
        row = _dicts(
            self.sql("""
            SELECT (SELECT count(*) FROM tick) AS ticks,
                   (SELECT count(DISTINCT node) FROM tick) AS nodes,
                   (SELECT count(DISTINCT uuid) FROM gpu_sample) AS gpus,
                   (SELECT count(DISTINCT slice_id) FROM slice_sample) AS slices,
                   (SELECT count(DISTINCT tenant) FROM slice_share) AS tenants,
                   sum(capacity_s) / 3600 AS capacity_gpu_h,
                   sum(reserved_s) / 3600 AS reserved_gpu_h,
                   sum(used_s) / 3600 AS used_gpu_h,
                   sum(unallocated_s) / 3600 AS unallocated_gpu_h,
                   sum(used_s) / nullif(sum(capacity_s), 0) AS utilization,
                   sum(reserved_s) / nullif(sum(capacity_s), 0) AS allocation_rate
            FROM gpu_acct""")
        )[0]
        return row

    def close(self) -> None:
        self.con.close()


def _dicts(rel: duckdb.DuckDBPyRelation) -> list[dict[str, Any]]:
    cols = rel.columns
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
