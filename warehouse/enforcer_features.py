"""The enforcer's features from the lake: per slice, 5-minute memory peaks and core use, and its last sample.

Samples come only through the staging layer (committed batches, each tick once), and tenants and
rules through warehouse.rules. A closed day's windows are a rollup: computed once into
`rollups/enforcer_windows/date=D/` and recomputed only when the day's committed files change, so a
policy cycle reads eight days of small window files plus today's raw samples, never eight days of
raw samples.

Suspected out-of-memory (docs/enforcer.md) is decided here, in SQL, per tick of a vGPU slice whose
use was at or above `near_cap_frac` of its cap:
- `use_fell`: the slice's next tick shows less than half that use (memory freed at once: the process
  that held it died, HAMi-core having refused its allocation);
- `proc_gone`: the slice's next tick has fewer processes than this one (a process disappeared).
The window holding the near-cap tick is flagged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warehouse.lake import Lake
from warehouse.rules import tenant_sql
from warehouse.sql import lit
from warehouse.staging import committed_files, dates_between, samples_sql

ROLLUP = "enforcer_windows"

WINDOW_SCHEMA = pa.schema(
    [
        ("slice_id", pa.string()),
        ("w_start", pa.timestamp("us", tz="UTC")),
        ("mem_peak_mib", pa.int64()),
        ("util_max", pa.float64()),
        ("ticks", pa.int64()),
        ("pinned_ticks", pa.int64()),
        ("oom_suspect", pa.bool_()),
    ]
)


def window_sql(
    slices: str, procs: str | None, window_s: int, pinned_points: float, near_cap_frac: float
) -> str:
    """Per (slice, window): peak use, highest busy %, ticks, pinned ticks and the OOM flag."""
    nproc = (
        f"(SELECT node, boot_id, seq, slice_id, count(*) AS n FROM {procs} GROUP BY ALL)"
        if procs
        else "(SELECT NULL::VARCHAR node, NULL::VARCHAR boot_id, NULL::BIGINT seq, NULL::VARCHAR slice_id, "
        "0::BIGINT n WHERE FALSE)"
    )
    return f"""
WITH s AS (
  SELECT s.slice_id, s.ts, s.kind, s.mem_used_mib, s.mem_cap_mib, s.core_cap_pct, s.util_pct,
         coalesce(p.n, 0) AS nproc
  FROM {slices} s LEFT JOIN {nproc} p
    ON p.node = s.node AND p.boot_id = s.boot_id AND p.seq = s.seq AND p.slice_id = s.slice_id
), n AS (
  SELECT *, lead(mem_used_mib) OVER w AS next_used, lead(nproc) OVER w AS next_nproc
  FROM s WINDOW w AS (PARTITION BY slice_id ORDER BY ts)
)
SELECT slice_id,
       to_timestamp(floor(epoch(ts) / {window_s}) * {window_s}) AS w_start,
       max(mem_used_mib)::BIGINT AS mem_peak_mib,
       max(util_pct) AS util_max,
       count(*)::BIGINT AS ticks,
       count_if(core_cap_pct > 0 AND util_pct >= core_cap_pct - {float(pinned_points)!r})::BIGINT
         AS pinned_ticks,
       coalesce(bool_or(kind = 'vgpu' AND mem_cap_mib > 0
                        AND mem_used_mib >= {float(near_cap_frac)!r} * mem_cap_mib
                        AND (next_used < mem_used_mib / 2 OR next_nproc < nproc)), FALSE) AS oom_suspect
FROM n GROUP BY ALL ORDER BY slice_id, w_start"""


def _day_key(lake: Lake, day: str) -> str:
    names = [Path(f).name for k in ("slice", "process", "tick") for f in committed_files(lake, k, [day])]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _compute_day(
    con: duckdb.DuckDBPyConnection, lake: Lake, day: str, window_s: int, pinned: float, near: float
) -> pa.Table:
    slices = samples_sql(lake, "slice", [day])
    if slices is None:
        return WINDOW_SCHEMA.empty_table()
    procs = samples_sql(lake, "process", [day])
    return con.sql(window_sql(slices, procs, window_s, pinned, near)).to_arrow_table().cast(WINDOW_SCHEMA)


def windows(
    lake: Lake,
    now: datetime,
    *,
    days: float = 8.0,
    window_s: int = 300,
    pinned_points: float = 5.0,
    near_cap_frac: float = 0.95,
    since: datetime | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The windows of every slice over the last `days` up to `now`: closed days from their rollup
    (written on first use, rewritten when the day's committed files change), today from samples.
    `since`: only windows starting after it (the enforcer's steady cycles fold only those)."""
    con = con or duckdb.connect()
    lo = now - timedelta(days=days)
    if since is not None and since > lo:
        lo = since
    first = lo.astimezone(UTC).date()
    parts: list[pa.Table] = []
    today = now.astimezone(UTC).date().isoformat()
    for day in dates_between(first, now.astimezone(UTC).date()):
        if day == today:
            parts.append(_compute_day(con, lake, day, window_s, pinned_points, near_cap_frac))
            continue
        key = _day_key(lake, day)
        params = f"{window_s}-{pinned_points!r}-{near_cap_frac!r}".replace(".", "_")
        d = lake.root / "rollups" / ROLLUP / f"date={day}"
        want = d / f"w-{params}-{key}.parquet"
        if not want.exists():
            t = _compute_day(con, lake, day, window_s, pinned_points, near_cap_frac)
            lake.write_file(t, want)
            for old in d.glob("w-*.parquet"):
                if old != want:
                    old.unlink(missing_ok=True)
        parts.append(
            con.sql(f"SELECT * FROM read_parquet({lit(str(want))}, hive_partitioning = false)")
            .to_arrow_table()
            .cast(WINDOW_SCHEMA)
        )
    t = pa.concat_tables(parts) if parts else WINDOW_SCHEMA.empty_table()
    return con.sql(
        f"SELECT * FROM t WHERE w_start > {lit(lo.isoformat())}::TIMESTAMPTZ "
        f"AND w_start <= {lit(now.isoformat())}::TIMESTAMPTZ ORDER BY slice_id, w_start"
    ).to_arrow_table()


def latest_slices(
    lake: Lake,
    now: datetime,
    tenant_rules: Sequence[Mapping[str, Any]] = (),
    default_tenant: str = "unassigned",
    *,
    hours: float = 24.0,
    slice_ids: Sequence[str] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> list[dict[str, Any]]:
    """Each slice's last sample in the last `hours` (caps, use, identity, tenant): the policy's
    view of the slice now, and the re-check just before a decision is sent."""
    con = con or duckdb.connect()
    since = now - timedelta(hours=hours)
    where = f"ts > {lit(since.isoformat())}::TIMESTAMPTZ AND ts <= {lit(now.isoformat())}::TIMESTAMPTZ"
    src = samples_sql(lake, "slice", dates_between(since.date(), now.astimezone(UTC).date()), where)
    if src is None:
        return []
    only = ""
    if slice_ids is not None:
        only = (
            "WHERE slice_id IN (" + ", ".join(lit(s) for s in slice_ids) + ")" if slice_ids else "WHERE FALSE"
        )
    sql = f"""
SELECT slice_id, arg_max(cluster, ts) AS cluster, arg_max(node, ts) AS node, arg_max(model, ts) AS model,
       arg_max(kind, ts) AS kind, arg_max(gpu_uuid, ts) AS gpu_uuid, arg_max(pod_uid, ts) AS pod_uid,
       arg_max(container, ts) AS container, arg_max({tenant_sql(tenant_rules, default_tenant)}, ts) AS tenant,
       min(ts) AS first_seen, max(ts) AS last_ts, arg_max(interval_s, ts) AS interval_s,
       arg_max(mem_cap_mib, ts) AS mem_cap_mib, arg_max(core_cap_pct, ts) AS core_cap_pct,
       arg_max(mem_used_mib, ts) AS mem_used_mib, arg_max(gpu_mem_total_mib, ts) AS gpu_mem_total_mib,
       arg_max(memory_slices, ts) AS memory_slices, arg_max(gpu_memory_slices, ts) AS gpu_memory_slices,
       arg_max(replicas, ts) AS replicas
FROM {src} {only} GROUP BY slice_id ORDER BY slice_id"""
    return con.sql(sql).to_arrow_table().to_pylist()
