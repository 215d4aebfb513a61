"""The staging layer: committed, deduplicated samples, the exactly-once rule of DESIGN §5 in one place.

Ingest writes a batch's row files, then its tick file (the batch's commit record). Delivery is at
least once, so a tick can sit in several committed batches, or in a crashed batch that never wrote
its tick file. A reader of samples must therefore (1) read only row files whose batch committed and
(2) keep, for each (node, boot_id, seq), the rows of the earliest committed batch only. Every
reader of raw samples (rollups, alerts, the dashboard's process drill-down) gets its files and its
relation from here instead of globbing the lake itself.

All rows of a tick land in the date partition of the tick's timestamp, so deduplicating within
the dates a reader asked for is complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from warehouse import rules
from warehouse.lake import Lake
from warehouse.sql import lit

ROW_KINDS = ("gpu", "slice", "process")


def committed_files(lake: Lake, kind: str, dates: Iterable[str]) -> list[str]:
    """Files of `kind` (tick, gpu, slice, process) under `dates` whose batch committed.

    A batch's files share its name across tables; its tick file is written last, so a row file
    without one is a batch that crashed before committing (its messages are delivered again).
    """
    out: list[str] = []
    for day in dates:
        d = lake.table_dir(kind) / f"date={day}"
        if lake.remote:  # two listings instead of a request per file
            ticks = set(lake.list_names(lake.table_dir("tick") / f"date={day}"))
            out += [lake.url(d / n) for n in lake.list_names(d) if n in ticks]
            continue
        committed = lake.table_dir("tick") / f"date={day}"
        if d.exists():
            out += sorted(str(p) for p in d.glob("*.parquet") if (committed / p.name).exists())
    return out


def sample_dates(lake: Lake) -> list[str]:
    """The dates that hold tick files (committed or crashed batches alike)."""
    return [n[5:] for n in lake.list_dirs(lake.table_dir("tick")) if n.startswith("date=")]


def dates_between(first: date, last: date) -> list[str]:
    """The date partitions from `first` to `last`, both included."""
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def first_batch_ticks_sql(tick_src: str, where: str = "TRUE") -> str:
    """One row per (node, boot_id, seq): the earliest committed batch that holds the tick."""
    return f"""SELECT * FROM {tick_src} WHERE {where}
               QUALIFY row_number() OVER (PARTITION BY node, boot_id, seq ORDER BY batch) = 1"""


def samples_sql(lake: Lake, kind: str, dates: Iterable[str], where: str = "TRUE") -> str | None:
    """A relation of `kind` rows (gpu, slice, process) of committed batches, each tick once.

    `where` filters the rows (and their ticks: it may only name columns both share, e.g. ts,
    node). None when the dates hold no committed rows of that kind.
    """
    if kind not in ROW_KINDS:
        raise ValueError(f"sample kind {kind!r}: expected one of {', '.join(ROW_KINDS)}")
    days = list(dates)
    rows, ticks = committed_files(lake, kind, days), committed_files(lake, "tick", days)
    if not rows or not ticks:
        return None
    rows_src = "read_parquet([" + ", ".join(lit(f) for f in rows) + "], union_by_name = true)"
    ticks_src = "read_parquet([" + ", ".join(lit(f) for f in ticks) + "], union_by_name = true)"
    return f"""(SELECT r.* FROM {rows_src} r
                SEMI JOIN ({first_batch_ticks_sql(ticks_src, where)}) t
                  ON r.node = t.node AND r.boot_id = t.boot_id AND r.seq = t.seq AND r.batch = t.batch
                WHERE {where})"""


def slice_ticks_sql(
    lake: Lake,
    dates: Iterable[str],
    *,
    tenant: str = "'unassigned'",
    idle_util_ratio: float = 0.05,
    where: str = "TRUE",
) -> str | None:
    """Committed slice ticks, each once, with the accounting attached by the one set of rules:
    share, busy fraction, the GPU tick's totals (`gpu_sum_share`, `gpu_sum_used`), reserved and
    used GPU-seconds (over-commit scaled, floored to the nanosecond), the idle test, tenant
    (`tenant`: an SQL expression, `rules.tenant_sql`) and workload. None without committed rows.
    """
    src = samples_sql(lake, "slice", dates, where)
    if src is None:
        return None
    over = "gpu_sum_share > 1.0 OR gpu_sum_used > 1.0"  # the totals count only where they pass the GPU
    return f"""(
        WITH r AS (SELECT s.*, ({rules.SHARE_SQL}) AS share, ({rules.USED_FRAC_SQL}) AS used_frac
                   FROM {src} s),
        w AS (SELECT *, sum(share) OVER g AS gpu_sum_share, sum(coalesce(used_frac, 0)) OVER g AS gpu_sum_used
              FROM r WINDOW g AS (PARTITION BY node, boot_id, seq, gpu_uuid)),
        o AS (SELECT *, CASE WHEN {over} THEN gpu_sum_share END AS sum_share,
                        CASE WHEN {over} THEN gpu_sum_used END AS sum_used FROM w)
        SELECT * EXCLUDE (sum_share, sum_used),
               {rules.reserved_s_sql()} AS reserved_s, {rules.used_s_sql()} AS used_s,
               {rules.idle_tick_sql(idle_util_ratio)} AS idle,
               ({tenant}) AS tenant, ({rules.WORKLOAD_SQL}) AS workload
        FROM o)"""
