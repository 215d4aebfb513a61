"""Per-date rollups of the raw samples, so that dashboards, reports and the month close never
rescan a month of slice rows; kept current by the hour, so a 5-minute cycle costs what arrived.

All rows of a tick land in the date partition of the tick's timestamp, and every copy of a tick
(at-least-once delivery) has the same timestamp, so the same date and the same hour. An hour's
rollups therefore depend only on that hour's ticks: the first-batch rule, the over-commit totals
and the idle runs (cut at the hour) all hold within it. When a date's committed batches change
(ingest adds batches; retention may remove them), only the hours those batches touch are
recomputed, from the batches holding a tick of those hours (the hours of each committed batch are
kept per date under ``_state/batches/``); the date's files are then rewritten as the unchanged
hours' rows plus the recomputed ones, hour by hour, which is the table a full rebuild writes, to
the byte (tests/test_rollups_incremental.py). ``node_ticks`` (first/last tick and gaps per node
and date) is summed from per-hour pieces (by the hour of the timestamp, which never interleave)
kept under ``_state/node_hours/``. A state file, written last, records the inputs of the date.
The idle ratio or the rollup version changing rebuilds every hour.

GPU-seconds are fixed-point decimals (9 places) per slice tick and summed exactly, so hourly and
monthly sums do not depend on the order in which DuckDB's threads add them up: the close must be
byte-identical from run to run.

Tables (under ``rollups/<name>/date=YYYY-MM-DD/part.parquet``):

- ``slice_hourly``: per slice, workload identity and hour: ticks, reserved/used/burst seconds,
  used seconds on the SM-activity basis (`used_sm_s`) and its ticks that had SM activity
  (`sm_ticks`), and the reserved/used seconds of its ticks on unhealthy GPU ticks (`unhealthy_*`,
  rules.UNHEALTHY_REASON_SQL) with their reasons.
- ``gpu_hourly``: per GPU and hour: its NVML index, capacity, reserved, used, unallocated seconds,
  its unhealthy ticks and their reasons, the used seconds of its slices on the SM-activity basis
  (`used_sm_s`, busy where a tick had none), their ticks with SM activity (`sm_ticks`) and their
  reserved seconds the SMs did not use (`unused_sm_s`: Σ max(reserved − used_sm, 0) per row),
  energy (and `unhealthy_energy_j`, the energy of its unhealthy ticks), and memory, power and
  temperature (max, sum and count of the known readings).
- ``idle_runs``: maximal runs of consecutive idle ticks of a slice, cut at hour boundaries (so an
  hour's runs are its own), ordered hour first; the close and the idle views stitch them across
  hours and dates into idle periods.
- ``node_ticks``: per node: first and last tick of the date and the unobserved GPU-seconds of the
  gaps inside the date (the gaps between dates are found from first/last ticks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from warehouse import checks
from warehouse.lake import Lake, schema_of
from warehouse.rules import (
    HOUR_NO_SQL,
    SECONDS,
    SHARE_SQL,
    TICK_START_SQL,
    UNHEALTHY_REASON_SQL,
    USED_FRAC_SQL,
    follows_sql,
    gap_s_sql,
    idle_tick_sql,
    reserved_s_sql,
    tick_start_s,
    used_frac_sql,
    used_s_sql,
)
from warehouse.sql import lit as _lit
from warehouse.sql import read_parquet as _read
from warehouse.staging import committed_files, sample_dates

ROLLUPS = "rollups"
STATE = "_state"
TABLES = ("slice_hourly", "gpu_hourly", "idle_runs", "node_ticks")
HOURLY = ("slice_hourly", "gpu_hourly", "idle_runs")  # rows keyed by their (midpoint) hour
BATCHES = "batches"  # per date: the committed batches built from, and the hours each touches
NODE_HOURS = "node_hours"  # per date: node_ticks per hour of the timestamp, before the date's sum
# 8: recomputed by the hour (idle runs ordered hour first; node_ticks summed from hour pieces)
# 10: energy on unhealthy ticks (gpu_hourly.unhealthy_energy_j), the SM-activity basis per GPU-hour
# 11: the unhealthy rule reads memory health (xid_critical, row remap, retired pages, ECC)
ROLLUP_VERSION = 11  # bump when the SQL below changes meaning: every date is rebuilt
EXACT = "DECIMAL(38, 9)"  # double readings summed exactly (order-independent), then back to double
TS_HOUR_SQL = "(epoch_us(ts) // 3600000000)"  # the hour of a tick's timestamp (node_ticks' pieces)

IDENTITY = ("namespace", "pod", "container", "pod_uid", "labels", "job_id", "account", '"user"')


@dataclass(frozen=True)
class RollupStats:
    dates: int  # dates looked at
    rebuilt: int  # dates whose rollups were (re)computed
    slice_rows: int  # raw slice rows read by the recomputed hours
    hours: int = 0  # (date, hour) pieces recomputed


class Rollups:
    """Builds and locates the rollups of one lake."""

    def __init__(
        self,
        lake: Lake | str,
        *,
        idle_util_ratio: float = 0.05,
        threads: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.idle_util_ratio = float(idle_util_ratio)
        self.threads = threads
        self.memory_limit = memory_limit
        self.checks: list[checks.CheckResult] = []  # the last built date's data checks
        self.check_failures = 0  # failed checks of the dates built by this object

    # -- locations ----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.lake.root / ROLLUPS

    def sample_dates(self) -> list[str]:
        return sample_dates(self.lake)

    def _inputs(self, date: str) -> list[tuple[str, int]]:
        out = []
        for kind in ("tick", "gpu", "slice"):
            d = self.lake.table_dir(kind) / f"date={date}"
            out += [(f"{kind}/{n}", size) for n, size in self.lake.sizes(d)]
        return out

    def _signature(self, date: str) -> str:
        blob = json.dumps(
            {"v": ROLLUP_VERSION, "idle_util_ratio": self.idle_util_ratio, "inputs": self._inputs(date)},
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()

    def _state_path(self, date: str) -> Path:
        return self.root / STATE / f"date={date}.json"

    def is_current(self, date: str) -> bool:
        try:
            doc = json.loads(self.lake.read_text(self._state_path(date)))
        except FileNotFoundError:
            return False
        return doc.get("signature") == self._signature(date)

    # -- who keeps them current ---------------------------------------------------------------

    def mark_kept(self, by: str, now: datetime) -> None:
        """Say that a scheduler (`gpuledger jobs`) keeps the rollups current, as of `now`.

        Other readers (the dashboard) then only re-read the rollups instead of building them too.
        """
        body = json.dumps({"by": by, "at": now.astimezone(UTC).isoformat()}).encode()
        self.lake.write_bytes(self.root / STATE / "keeper.json", body)

    def kept_within(self, seconds: float, now: datetime) -> str | None:
        """Who marked the rollups kept within the last `seconds`, or None."""
        p = self.root / STATE / "keeper.json"
        try:
            doc = json.loads(self.lake.read_text(p))
            at = datetime.fromisoformat(doc["at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        age = (now - at).total_seconds()
        return str(doc.get("by", "?")) if 0 <= age <= seconds else None

    # -- building -----------------------------------------------------------------------------

    def update(
        self,
        dates: Iterable[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RollupStats:
        """Bring the rollups of `dates` (default: every date with samples) up to date: in each date
        whose inputs changed, only the hours that new (or removed) committed batches touch."""
        present = self.sample_dates()
        todo = present if dates is None else sorted(set(dates) & set(present))
        rebuilt = rows = hours = 0
        con = self._connect()
        try:
            for i, date in enumerate(todo):
                if not self.is_current(date):
                    r, h = self._build(con, date)
                    rows += r
                    hours += h
                    rebuilt += 1
                if progress:
                    progress(i + 1, len(todo))
        finally:
            con.close()
        return RollupStats(dates=len(todo), rebuilt=rebuilt, slice_rows=rows, hours=hours)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        if self.memory_limit:
            con.execute(f"SET memory_limit = {_lit(self.memory_limit)}")
        self.lake.register(con)
        return con

    def _files(self, kind: str, date: str) -> list[str]:
        """Files of one date whose batch committed (the staging layer's rule)."""
        return committed_files(self.lake, kind, [date])

    def _batches_path(self, date: str) -> Path:
        return self.root / STATE / BATCHES / f"date={date}.parquet"

    def _node_hours_path(self, date: str) -> Path:
        return self.root / STATE / NODE_HOURS / f"date={date}.parquet"

    def _state_key(self) -> str:
        return f"{ROLLUP_VERSION}:{self.idle_util_ratio!r}"

    def _known_batches(self, date: str) -> pa.Table | None:
        """The committed batches the date's rollups were built from, with the hours each touches
        (None: no usable record, so every hour of the date is computed)."""
        p = self._batches_path(date)
        if not self.lake.exists(p) or not all(self.lake.exists(self._table_path(t, date)) for t in TABLES):
            return None
        t = self.lake.read_table(p)
        meta = t.schema.metadata or {}
        return t if meta.get(b"key") == self._state_key().encode() else None

    def _hours_of(self, con: duckdb.DuckDBPyConnection, tick_files: list[str]) -> pa.Table:
        """(batch file name, midpoint hour, timestamp hour) of every tick in `tick_files`."""
        if not tick_files:
            return pa.table(
                {
                    "name": pa.array([], pa.string()),
                    "h": pa.array([], pa.int64()),
                    "tsh": pa.array([], pa.int64()),
                }
            )
        return con.sql(f"""
            SELECT DISTINCT parse_filename(filename) AS name, {HOUR_NO_SQL} AS h, {TS_HOUR_SQL} AS tsh
            FROM read_parquet([{", ".join(_lit(f) for f in tick_files)}], filename = true)
            ORDER BY name, h, tsh""").to_arrow_table()

    def _build(self, con: duckdb.DuckDBPyConnection, date: str) -> tuple[int, int]:
        """Recompute the hours of `date` whose committed batches changed; (slice rows, hours).

        An hour's rollups depend only on the ticks of that hour (every copy of a tick has the same
        timestamp, so the same hour: the first-batch rule, the over-commit totals and the idle runs,
        cut at the hour, all hold within it), so a recomputed hour gives the rows a full rebuild
        gives, and the date's files are the unchanged hours' rows plus the new ones, hour by hour.
        """
        signature = self._signature(date)
        tick_files = self._files("tick", date)
        by_name = {Path(f).name: f for f in tick_files}
        known = self._known_batches(date)
        if known is None:  # first build, or a new rollup version or idle ratio: every hour
            current = self._hours_of(con, tick_files)
            mids = tshs = None
        else:
            known_names = set(known["name"].to_pylist())
            new = [by_name[n] for n in sorted(set(by_name) - known_names)]
            gone = known_names - set(by_name)  # removed batches (retention): their hours change too
            added = self._hours_of(con, new)
            removed = pc.is_in(known["name"], pa.array(sorted(gone), pa.string()))
            keep = known.filter(pc.invert(removed)).cast(added.schema)
            current = pa.concat_tables([keep, added]).sort_by(
                [("name", "ascending"), ("h", "ascending"), ("tsh", "ascending")]
            )
            dirty = pa.concat_tables([known.filter(removed).cast(added.schema), added])
            mids = sorted(set(dirty["h"].to_pylist()))
            tshs = sorted(set(dirty["tsh"].to_pylist()))
        if mids == [] and tshs == []:  # only uncommitted row files came: nothing to recompute
            self.lake.write_bytes(
                self._state_path(date),
                json.dumps({"signature": signature, "date": date}, sort_keys=True).encode(),
            )
            return 0, 0
        # The tick, gpu and slice files of the batches that hold a tick of a dirty hour.
        if mids is None:
            names = sorted(by_name)
        else:
            touch = pc.or_(
                pc.is_in(current["h"], pa.array(mids, pa.int64())),
                pc.is_in(current["tsh"], pa.array(tshs, pa.int64())),
            )
            names = sorted(set(current.filter(touch)["name"].to_pylist()))
        wanted = set(names)
        files = {
            kind: [f for f in self._files(kind, date) if Path(f).name in wanted]
            for kind in ("tick", "slice", "gpu")
        }
        tables = self._compute(
            con,
            files["tick"] or [self._empty("tick")],
            files["slice"],
            files["gpu"],
            mids=mids,
            tshs=tshs,
            checks_for=date,
        )
        old = {t: self._read_old(t, date) if mids is not None else None for t in (*HOURLY, NODE_HOURS)}
        for name in HOURLY:
            merged = _merge_hours(old[name], tables[name], "hour", mids)
            self._write(name, date, merged)
        pieces = _merge_hours(old[NODE_HOURS], tables[NODE_HOURS], "tsh", tshs)
        self.lake.write_file(pieces, self._node_hours_path(date))
        self._write("node_ticks", date, self._node_ticks(con, pieces))
        # data checks per hour, kept beside the pieces so a date's result sums every hour's
        hour_checks = self._merge_checks(date, tables["checks"], mids)
        self.checks = checks.combine(date, hour_checks)
        checks.save(self.lake, self.root / STATE, date, self.checks, hourly=hour_checks)
        self.check_failures += sum(1 for c in self.checks if c.failures)
        self.lake.write_file(
            current.replace_schema_metadata({"key": self._state_key()}), self._batches_path(date)
        )
        # Written last: the state file says the date's files are complete.
        self.lake.write_bytes(
            self._state_path(date),
            json.dumps({"signature": signature, "date": date}, sort_keys=True).encode(),
        )
        n_hours = len(set(current["h"].to_pylist())) if mids is None else len(mids)
        return int(pc.sum(tables["slice_hourly"]["ticks"]).as_py() or 0), n_hours

    def _read_old(self, table: str, date: str) -> pa.Table | None:
        p = self._node_hours_path(date) if table == NODE_HOURS else self._table_path(table, date)
        return self.lake.read_table(p) if self.lake.exists(p) else None

    def _merge_checks(
        self, date: str, fresh: dict[int, list[checks.CheckResult]], mids: list[int] | None
    ) -> dict[int, list[checks.CheckResult]]:
        out: dict[int, list[checks.CheckResult]] = {}
        if mids is not None:
            kept = checks.load_hourly(self.lake, self.root / STATE, date)
            out = {h: r for h, r in kept.items() if h not in set(mids)}
        out.update(fresh)
        return dict(sorted(out.items()))

    def _node_ticks(self, con: duckdb.DuckDBPyConnection, pieces: pa.Table) -> pa.Table:
        """A node's ticks of the date from its per-hour pieces: sums, the first and last tick, and
        the gaps inside each piece plus those between consecutive pieces (hours of the timestamp
        never interleave, so this is the gap a window over every tick of the date finds)."""
        con.register("_pieces", pieces)
        try:
            gap = gap_s_sql("prev_last", "epoch(first_ts) - first_interval_s", "first_interval_s")
            return con.sql(f"""
                WITH p AS (SELECT *, lag(last_ts) OVER w AS prev_last, lag(last_gpus) OVER w AS prev_gpus
                           FROM _pieces WINDOW w AS (PARTITION BY cluster, node ORDER BY tsh))
                SELECT cluster, node,
                       min(first_ts) AS first_ts, first(first_interval_s ORDER BY tsh) AS first_interval_s,
                       max(last_ts) AS last_ts, last(last_gpus ORDER BY tsh) AS last_gpus,
                       sum(ticks)::INTEGER AS ticks,
                       sum(observed_gpu_s) AS observed_gpu_s,
                       sum(gap_gpu_s) + coalesce(sum(CAST({gap} * prev_gpus AS {SECONDS})), 0) AS gap_gpu_s
                FROM p GROUP BY cluster, node ORDER BY cluster, node""").to_arrow_table()
        finally:
            con.unregister("_pieces")

    def failed_checks(self) -> list[checks.CheckResult]:
        """Data checks failing on any date as last built (warehouse/checks.py)."""
        return checks.failures(self.lake, self.root / STATE)

    def empty_file(self, table: str) -> str:
        """An empty file with the rollup table's schema, so views exist before any rollup does."""
        path = self.root / STATE / f"empty-rollup-{table}-v{ROLLUP_VERSION}.parquet"
        if not self.lake.exists(path):
            con = self._connect()
            try:
                tables = self._compute(con, [self._empty("tick")], [], [])
                tables["node_ticks"] = self._node_ticks(con, tables[NODE_HOURS])
            finally:
                con.close()
            for name in TABLES:
                p = self.root / STATE / f"empty-rollup-{name}-v{ROLLUP_VERSION}.parquet"
                self.lake.write_file(tables[name].schema.empty_table(), p)
        return self.lake.url(path)

    def files(self, table: str) -> list[str]:
        """The rollup files of a table, or its empty file when there are none yet."""
        found = [self.lake.url(p) for p in self.lake.find(self.root / table, "date=*/*.parquet")]
        return found or [self.empty_file(table)]

    def _compute(
        self,
        con: duckdb.DuckDBPyConnection,
        tick_files: list[str],
        slice_files: list[str],
        gpu_files: list[str],
        mids: list[int] | None = None,
        tshs: list[int] | None = None,
        checks_for: str | None = None,
    ) -> dict[str, Any]:
        """The rollups of the hours `mids` (midpoint hours: slice_hourly, gpu_hourly, idle_runs) and
        the node pieces of the hours `tshs` (timestamp hours) from the given committed files; every
        hour in them when None. Each table comes sorted hour first, so a date is its hours in order.
        """
        ratio = self.idle_util_ratio

        def only(src: str, hour: str, hours: list[int] | None) -> str:
            if hours is None:
                return src
            listed = ", ".join(str(int(h)) for h in hours) or "NULL"
            return f"(SELECT * FROM {src} WHERE {hour} IN ({listed}))"

        ticks_all = _read(tick_files)
        ticks = only(ticks_all, HOUR_NO_SQL, mids)
        # The empty file of today's schema first, read by name: files written before a column was
        # added (issue 17's xid and SM activity) read it as null.
        slices = only(_read_all([self._empty("slice"), *slice_files]), HOUR_NO_SQL, mids)
        gpus = only(_read_all([self._empty("gpu"), *gpu_files]), HOUR_NO_SQL, mids)
        in_t = "TRUE"
        if mids is not None and tshs is not None:
            in_t = (
                f"{HOUR_NO_SQL} IN ({', '.join(map(str, mids)) or 'NULL'}) OR "
                f"{TS_HOUR_SQL} IN ({', '.join(map(str, tshs)) or 'NULL'})"
            )
        # Row files of uncommitted batches are already left out by file name. A tick delivered
        # twice sits in two committed batches: the first batch wins; rows of the others are
        # "losers" (almost always none, so the anti-join is skipped).
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE t AS
            SELECT cluster, node, boot_id, seq, ts, interval_s, n_gpus, batch,
                   row_number() OVER (PARTITION BY node, boot_id, seq ORDER BY batch) AS nth
            FROM {ticks_all} WHERE {in_t}""")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE losers AS SELECT node, boot_id, seq, batch FROM t WHERE nth > 1"
        )
        has_losers = con.execute("SELECT count(*) FROM losers").fetchall()[0][0] > 0
        con.execute("DELETE FROM t WHERE nth > 1")

        def rows(src: str) -> str:
            if not has_losers:
                return src
            return f"(SELECT * FROM {src} r ANTI JOIN losers l USING (node, boot_id, seq, batch))"

        # Strings are the expensive part of every row operation here (UUID-prefixed ids compare
        # slowly), so rows are keyed by 64-bit hashes: gk = (node, boot, GPU), sk = (slice, node,
        # boot), ident = the workload identity. A collision would merge two keys; `_collisions`
        # checks every key of the date against its strings and refuses the date if one collides.
        gk = "hash(node, boot_id, gpu_uuid)"
        # GPU ticks whose shares or busy fractions add up past 1 (over-commit): only these are
        # normalised, so the join below probes a small table.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE over AS
            SELECT gk, seq,
                   CASE WHEN sum(share) > 1.0 OR sum(used_frac) > 1.0 THEN sum(share) END AS sum_share,
                   CASE WHEN sum(share) > 1.0 OR sum(used_frac) > 1.0 THEN sum(used_frac) END AS sum_used,
                   sum(used_sm) AS sum_used_sm
            FROM (SELECT {gk} AS gk, seq, ({SHARE_SQL}) AS share,
                         coalesce(({USED_FRAC_SQL}), 0.0) AS used_frac,
                         coalesce(({used_frac_sql("sm_active")}), 0.0) AS used_sm FROM {rows(slices)})
            GROUP BY ALL HAVING sum(share) > 1.0 OR sum(used_frac) > 1.0 OR sum(used_sm) > 1.0""")
        # Unhealthy GPU ticks (rare): their reason, joined to the slice ticks on that GPU.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE sick AS
            SELECT gk, seq, reason FROM (
                SELECT hash(node, boot_id, uuid) AS gk, seq, ({UNHEALTHY_REASON_SQL}) AS reason
                FROM {rows(gpus)}) WHERE reason IS NOT NULL""")
        ident = ", ".join(IDENTITY)
        # One narrow row per slice tick, computed once: both the hourly sums and the idle runs
        # read it. The identity's columns are looked up once per slice-hour (`dims`).
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE a AS
            SELECT hash(r.slice_id, r.node, r.boot_id) AS sk, {HOUR_NO_SQL} AS h, hash({ident}) AS ident,
                   r.seq, r.ts, r.interval_s, r.share, r.util_pct IS NULL AS util_unknown,
                   {reserved_s_sql("o.sum_share", "r.share")} AS reserved_s,
                   {used_s_sql("o.sum_used", "r.used_frac")} AS used_s,
                   {used_s_sql("o.sum_used_sm", "r.used_sm")} AS used_sm_s,
                   {idle_tick_sql(ratio, "o.sum_share", "o.sum_used", "r.share", "r.used_frac")} AS idle,
                   r.mem_used_mib, u.reason AS unhealthy_reason, r.sm_active_pct IS NOT NULL AS sm_known
            FROM (SELECT *, ({SHARE_SQL}) AS share, ({USED_FRAC_SQL}) AS used_frac,
                         ({used_frac_sql("sm_active")}) AS used_sm FROM {rows(slices)}) r
            LEFT JOIN over o ON o.gk = hash(r.node, r.boot_id, r.gpu_uuid) AND o.seq = r.seq
            LEFT JOIN sick u ON u.gk = hash(r.node, r.boot_id, r.gpu_uuid) AND u.seq = r.seq""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE dims AS
            SELECT hash(slice_id, node, boot_id) AS sk, {HOUR_NO_SQL} AS h, hash({ident}) AS ident,
                   any_value(slice_id) AS slice_id, any_value(node) AS node, any_value(boot_id) AS boot_id,
                   min(slice_id) <> max(slice_id) OR min(node) <> max(node) OR min(boot_id) <> max(boot_id)
                       AS collides,
                   any_value(cluster) AS cluster, any_value(gpu_uuid) AS gpu_uuid, any_value(model) AS model,
                   any_value(kind) AS kind, {", ".join(f"any_value({c}) AS {c}" for c in IDENTITY)}
            FROM {rows(slices)} r GROUP BY sk, h, ident""")
        self._collisions(con, gpus)
        keys = "sk, h, ident"
        idle_cond = "idle"
        slice_hourly = con.sql(f"""
            WITH n AS (
                SELECT {keys},
                       count(*)::INTEGER AS ticks,
                       sum(CAST(interval_s AS {SECONDS})) AS observed_s,
                       sum(reserved_s) AS reserved_s,
                       sum(used_s) AS used_s,
                       sum(greatest(used_s - reserved_s, 0::{SECONDS})) AS burst_s,
                       sum(used_sm_s) AS used_sm_s,
                       coalesce(sum(reserved_s) FILTER (WHERE unhealthy_reason IS NOT NULL), 0)
                           AS unhealthy_reserved_s,
                       coalesce(sum(used_s) FILTER (WHERE unhealthy_reason IS NOT NULL), 0)
                           AS unhealthy_used_s,
                       coalesce(sum(used_sm_s) FILTER (WHERE unhealthy_reason IS NOT NULL), 0)
                           AS unhealthy_used_sm_s,
                       count(*) FILTER (WHERE {idle_cond})::INTEGER AS idle_ticks,
                       count(*) FILTER (WHERE sm_known)::INTEGER AS sm_ticks,
                       max(share) AS share_max,
                       max(mem_used_mib) AS mem_used_mib_max
                FROM a GROUP BY {keys}),
            -- the reasons, over the (rare) unhealthy slice ticks only: a DISTINCT string aggregate
            -- over every slice-hour cost more than the rest of this query
            rs AS (
                SELECT {keys}, string_agg(DISTINCT unhealthy_reason, '; ' ORDER BY unhealthy_reason)
                           AS unhealthy_reason
                FROM a WHERE unhealthy_reason IS NOT NULL GROUP BY {keys})
            SELECT to_timestamp(d.h * 3600) AS hour, d.cluster, d.node, d.gpu_uuid, d.model, d.slice_id,
                   d.kind, {", ".join("d." + c for c in IDENTITY)},
                   n.ticks, n.observed_s, n.reserved_s, n.used_s, n.burst_s, n.idle_ticks, n.share_max,
                   n.mem_used_mib_max, n.used_sm_s, n.unhealthy_reserved_s, n.unhealthy_used_s,
                   n.unhealthy_used_sm_s, rs.unhealthy_reason, n.sm_ticks
            FROM n JOIN dims d USING ({keys}) LEFT JOIN rs USING ({keys})
            ORDER BY d.h, d.cluster, d.node, d.gpu_uuid, d.slice_id, d.boot_id, d.namespace, d.pod,
                     d.container, d.pod_uid, d.job_id, d.account, d."user", n.ticks""").to_arrow_table()
        # Idle ticks -> runs: consecutive seq of one slice in one agent boot, each tick starting
        # where the previous one ended (a silence ends a run even when seq does not skip), cut at
        # the hour.
        # Consecutive seq are found with one sort, as `seq - row_number()` (constant along a run);
        # the same window gives each tick's predecessor, so a silence inside such a run (the agent
        # stalled but seq went on) is flagged without a second sort. Only runs holding a silence
        # (rare) are cut again, at their silences, by a window over their own ticks.
        follows = follows_sql("lag(ts) OVER w", tick_start_s(), "interval_s")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE i AS
            SELECT sk, h, ident, seq, ts, interval_s, reserved_s,
                   seq - row_number() OVER w AS run,
                   coalesce(lag(seq) OVER w = seq - 1 AND NOT {follows}, false) AS gap
            FROM a WHERE {idle_cond} WINDOW w AS (PARTITION BY sk, h ORDER BY seq)""")
        silent = con.execute("SELECT count(*) FROM i WHERE gap").fetchall()[0][0] > 0
        pieces = "SELECT *, 0 AS piece FROM i"
        if silent:
            pieces = """
                WITH cut AS (SELECT DISTINCT sk, h, run FROM i WHERE gap)
                SELECT i.*, 0 AS piece FROM i ANTI JOIN cut USING (sk, h, run)
                UNION ALL
                SELECT i.*, sum(gap::INTEGER) OVER (PARTITION BY sk, h, run ORDER BY seq) AS piece
                FROM i SEMI JOIN cut USING (sk, h, run)"""
        idle_runs = con.sql(f"""
            WITH p AS ({pieces}),
            r AS (
                SELECT sk, h, ident, min(seq) AS first_seq, max(seq) AS last_seq,
                       min({TICK_START_SQL}) AS start_ts, max(ts) AS end_ts,
                       arg_min(interval_s, seq) AS interval_s,
                       count(*)::INTEGER AS ticks, sum(reserved_s) AS reserved_s
                FROM p GROUP BY sk, h, ident, run, piece)
            SELECT d.cluster, d.node, d.boot_id, d.gpu_uuid, d.model, d.slice_id, d.kind,
                   {", ".join("d." + c for c in IDENTITY)},
                   to_timestamp(r.h * 3600) AS hour, r.first_seq, r.last_seq, r.start_ts, r.end_ts, r.ticks,
                   r.reserved_s, r.interval_s
            FROM r JOIN dims d USING ({keys})
            ORDER BY r.h, d.slice_id, d.node, d.boot_id, r.first_seq""").to_arrow_table()
        con.register("_slice_hourly", slice_hourly)
        gpu_hourly = con.sql(f"""
            WITH gs AS (
                SELECT to_timestamp(({HOUR_NO_SQL}) * 3600) AS hour, cluster, node, uuid AS gpu_uuid, model,
                       min("index")::INTEGER AS gpu_index,
                       count(*)::INTEGER AS ticks,
                       sum(CAST(interval_s AS {SECONDS})) AS capacity_s,
                       sum(CAST(energy_j AS {EXACT}))::DOUBLE AS energy_j,
                       count(energy_j)::INTEGER AS energy_ticks,
                       -- the energy of the unhealthy ticks: the platform's ([pricing] bill_unhealthy)
                       coalesce(sum(CAST(energy_j AS {EXACT})) FILTER (WHERE sick), 0)::DOUBLE
                           AS unhealthy_energy_j,
                       count(*) FILTER (WHERE state <> 'ok')::INTEGER AS not_ok_ticks,
                       -- health events for the GPU page's timeline (rules.UNHEALTHY_REASON_SQL)
                       count(*) FILTER (WHERE sick)::INTEGER AS unhealthy_ticks,
                       NULL::VARCHAR AS unhealthy_reason,  -- from `gr` below
                       -- the dcgm-exporter panels (memory, power, temperature) per GPU-hour, as sums
                       -- and counts so the two date pieces of an hour add up; readings in doubles
                       -- are summed as exact decimals, so the sum is the same in any order (the
                       -- files an hour is read from differ between a rebuild and an update)
                       max(mem_total_mib) AS mem_total_mib,
                       max(mem_used_mib) AS mem_used_mib_max,
                       sum(mem_used_mib)::DOUBLE AS mem_used_mib_sum,
                       count(mem_used_mib)::INTEGER AS mem_ticks,
                       sum(CAST(power_w AS {EXACT}))::DOUBLE AS power_w_sum,
                       count(power_w)::INTEGER AS power_ticks,
                       max(temp_c) AS temp_c_max,
                       sum(CAST(temp_c AS {EXACT}))::DOUBLE AS temp_c_sum,
                       count(temp_c)::INTEGER AS temp_ticks
                FROM (SELECT *, ({UNHEALTHY_REASON_SQL}) IS NOT NULL AS sick FROM {rows(gpus)}) GROUP BY ALL),
            -- the reasons of the (rare) unhealthy GPU ticks, from the `sick` table made above
            gr AS (
                SELECT to_timestamp(({HOUR_NO_SQL}) * 3600) AS hour, uuid AS gpu_uuid,
                       string_agg(DISTINCT u.reason, '; ' ORDER BY u.reason) AS unhealthy_reason
                FROM {rows(gpus)} g JOIN sick u ON u.gk = hash(g.node, g.boot_id, g.uuid) AND u.seq = g.seq
                GROUP BY ALL),
            sa AS (
                SELECT hour, gpu_uuid, sum(reserved_s) AS reserved_s, sum(used_s) AS used_s,
                       sum(ticks) AS slice_ticks, sum(used_sm_s) AS used_sm_s, sum(sm_ticks) AS sm_ticks,
                       sum(greatest(reserved_s - used_sm_s, 0)) AS unused_sm_s
                FROM _slice_hourly GROUP BY ALL)
            SELECT gs.* REPLACE (gr.unhealthy_reason AS unhealthy_reason),
                   coalesce(sa.reserved_s, 0) AS reserved_s, coalesce(sa.used_s, 0) AS used_s,
                   gs.capacity_s - coalesce(sa.reserved_s, 0) AS unallocated_s,
                   coalesce(sa.slice_ticks, 0)::BIGINT AS slice_ticks,
                   coalesce(sa.used_sm_s, 0) AS used_sm_s, coalesce(sa.sm_ticks, 0)::BIGINT AS sm_ticks,
                   coalesce(sa.unused_sm_s, 0) AS unused_sm_s
            FROM gs LEFT JOIN sa USING (hour, gpu_uuid) LEFT JOIN gr USING (hour, gpu_uuid)
            ORDER BY hour, cluster, node, gpu_uuid, model""").to_arrow_table()
        con.unregister("_slice_hourly")
        # A node's ticks per hour of their timestamp (summed per date by `_node_ticks`): the first
        # and last tick in the order (ts, boot_id, seq), and the gaps between its ticks inside it.
        in_tsh = "TRUE" if tshs is None else f"{TS_HOUR_SQL} IN ({', '.join(map(str, tshs)) or 'NULL'})"
        order = "ORDER BY ts, boot_id, seq"
        node_hours = con.sql(f"""
            WITH o AS (
                SELECT *, {TS_HOUR_SQL} AS tsh, lag(ts) OVER w AS prev_ts, lag(n_gpus) OVER w AS prev_gpus
                FROM t WHERE {in_tsh}
                WINDOW w AS (PARTITION BY cluster, node, {TS_HOUR_SQL} {order}))
            SELECT tsh, cluster, node,
                   min(ts) AS first_ts, first(interval_s {order}) AS first_interval_s,
                   max(ts) AS last_ts, last(n_gpus {order}) AS last_gpus,
                   count(*)::INTEGER AS ticks,
                   sum(CAST(interval_s * n_gpus AS {SECONDS})) AS observed_gpu_s,
                   coalesce(sum(CAST({gap_s_sql("prev_ts", tick_start_s(), "interval_s")} * prev_gpus
                                     AS {SECONDS})), 0) AS gap_gpu_s
            FROM o GROUP BY tsh, cluster, node ORDER BY tsh, cluster, node""").to_arrow_table()
        hour_checks: dict[int, list[checks.CheckResult]] = {}
        if checks_for is not None:  # the data checks, on the tables just computed, per hour
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW _slices AS SELECT kind, {HOUR_NO_SQL} AS h FROM {rows(slices)}"
            )
            con.register("_gpu_hourly", gpu_hourly)
            hours = mids
            if hours is None:
                hours = [r[0] for r in con.execute("SELECT DISTINCT h FROM a ORDER BY h").fetchall()]
            hour_checks = checks.run(con, checks_for, ticks, hours)
            con.unregister("_gpu_hourly")
            con.execute("DROP VIEW _slices")
        for tmp in ("t", "losers", "over", "sick", "a", "dims", "i"):
            con.execute(f"DROP TABLE {tmp}")
        return {
            "slice_hourly": slice_hourly,
            "gpu_hourly": gpu_hourly,
            "idle_runs": idle_runs,
            NODE_HOURS: node_hours,
            "checks": hour_checks,
        }

    @staticmethod
    def _collisions(con: duckdb.DuckDBPyConnection, gpus: str) -> None:
        """Refuse a date where two different ids got the same 64-bit key (never seen; ~1e-12/day)."""
        bad = con.execute("SELECT count(*) FROM dims WHERE collides").fetchall()[0][0]
        if not bad:
            bad = con.execute(f"""
                SELECT count(*) FROM (
                    SELECT hash(node, boot_id, uuid) AS gk
                    FROM (SELECT DISTINCT node, boot_id, uuid FROM {gpus})
                    GROUP BY gk HAVING count(*) > 1)""").fetchall()[0][0]
        if bad:
            raise RuntimeError(
                f"{bad} 64-bit key collision(s) among slice or GPU ids in one date: the rollup keys "
                f"must be widened (warehouse/rollups.py) before this date can be rolled up"
            )

    def _empty(self, kind: str) -> str:
        """An empty Parquet file of a sample table's schema, for dates that lack that table.

        Named by the schema's digest: read first and by name, it gives files written before a
        column was added that column as null, so a lake kept from an older version must not keep
        the older empty file (the rules would name a column no file has).
        """
        schema = schema_of(kind)
        digest = hashlib.sha256(str(schema).encode()).hexdigest()[:12]
        path = self.root / STATE / f"empty-{kind}-{digest}.parquet"
        if not self.lake.exists(path):
            self.lake.write_file(schema.empty_table(), path)
        return self.lake.url(path)

    def _table_path(self, name: str, date: str) -> Path:
        return self.root / name / f"date={date}" / "part.parquet"

    def _write(self, name: str, date: str, table: pa.Table) -> None:
        self.lake.write_file(table, self._table_path(name, date))


def _read_all(files: list[str]) -> str:
    """`read_parquet` over files whose columns may differ by version, matched by name."""
    return _read(files)[:-1] + ", union_by_name = true)"


def keep_current(acct: Any, fresh_s: float, now: datetime | None = None) -> bool:
    """One rollup builder: build the rollups of changed dates through `acct` (an Accounting), unless
    `gpuledger jobs` marked them kept within `fresh_s`; then only re-read them. True when this
    call built. The dashboard's timer calls it, so a dashboard alone keeps its rollups current and
    a dashboard beside the jobs runner never builds them twice."""
    if Rollups(acct.lake).kept_within(fresh_s, now or datetime.now(UTC)) is None:
        acct.update()
        acct.save_idle()  # stitched here, off the request path; the page connections load it
        return True
    acct.refresh()
    return False


def change_key(lake: Lake) -> str:
    """Changes whenever a rollup date is rebuilt or a month is closed: what results computed from
    the rollups and the ledger (the dashboards' month caches) are keyed by. Cheap: a listing of
    small state files, never the data."""
    h = hashlib.sha256()
    for d, pattern in ((lake.root / ROLLUPS / STATE, "date=*.json"), (lake.root / "ledger", "*/*")):
        for p in lake.find(d, pattern):
            st = lake.stat(p)
            if st is None:
                continue
            h.update(f"{p.name}:{p.parent.name}:{st[1]}:{st[0]};".encode())
    return h.hexdigest()


def _hour_no(table: pa.Table, column: str) -> np.ndarray:
    col = table[column]
    if pa.types.is_timestamp(col.type):
        col = pc.divide(col.cast(pa.int64()), 3_600_000_000 if col.type.unit == "us" else 3_600_000_000_000)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def _merge_hours(old: pa.Table | None, fresh: pa.Table, column: str, hours: list[int] | None) -> pa.Table:
    """A date's table from the rows of its unchanged hours (in `old`) and the recomputed ones
    (`fresh`, every row of the `hours` recomputed; all of them when None), hour by hour in order.

    Both are sorted hour first, so each hour is a contiguous slice of one or the other, and the
    result is the table a full rebuild sorts: in one chunk, so its Parquet bytes are the same too.
    """
    if old is None or hours is None:
        return fresh.combine_chunks()
    old = old.select(fresh.schema.names).cast(fresh.schema)
    dirty = set(hours)
    pieces: dict[int, pa.Table] = {}
    for src, take in ((old, lambda h: h not in dirty), (fresh, lambda h: True)):
        hs = _hour_no(src, column)
        if len(hs) == 0:
            continue
        cuts = np.flatnonzero(np.diff(hs)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(hs)]])
        for a, b in zip(starts, ends, strict=True):
            h = int(hs[a])
            if take(h):
                pieces[h] = src.slice(int(a), int(b - a))
    if not pieces:
        return fresh.schema.empty_table()
    return pa.concat_tables([pieces[h] for h in sorted(pieces)]).combine_chunks()
