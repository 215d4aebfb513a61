"""The accounting definitions of DESIGN §6, each written once, as SQL that every query imports.

Rollups, alerts, the idle periods, coverage and the chargeback all build their queries from these
expressions, so a rule changed here changes everywhere at once. Each expression reads the column
names of a lake slice row (see `gpuledger.lake_tables.table_schema('slice')`); where a caller needs the
same rule in Python (the exporter, the simulated fleet), `gpuledger.shares` has it, tested value for
value against this SQL (tests/test_rules.py).

Money and idle tests are exact: GPU-seconds are fixed-point decimals floored to the nanosecond,
and the idle test compares exact fractions (cross-multiplied integers and decimals), so a ratio of
exactly the threshold is never flipped by binary floating point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from gpuledger.health import CRITICAL_XIDS
from warehouse.sql import lit

KINDS = ("whole", "mig", "vgpu", "timeslice")
SECONDS = "DECIMAL(18, 9)"  # one tick's GPU-seconds: exact sums, int64 storage

# -- share (DESIGN §6): the fraction of the physical GPU the allocation takes out of the pool -----
# HAMi's core 0 means no core reservation (compute term 0); a vGPU never holds more than its GPU.
SHARE_SQL = """
CASE kind
  WHEN 'whole' THEN 1.0
  WHEN 'mig' THEN greatest(compute_slices / gpu_compute_slices, memory_slices / gpu_memory_slices)
  WHEN 'vgpu' THEN least(1.0, greatest(coalesce(mem_cap_mib / gpu_mem_total_mib, 0.0),
                                       coalesce(core_cap_pct, 0.0) / 100.0))
  WHEN 'timeslice' THEN 1.0 / replicas
END"""

# The same share as an exact fraction SHARE_NUM / SHARE_DEN (a decimal over a positive integer),
# for the idle test. vGPU: both terms over 100 x memory total; capped at the whole GPU.
_CORE = "coalesce(CAST(core_cap_pct AS DECIMAL(18, 6)), 0)"
_VGPU_NUM = f"greatest(coalesce(mem_cap_mib * 100, 0), {_CORE} * gpu_mem_total_mib)"
SHARE_NUM_SQL = f"""
CASE kind
  WHEN 'whole' THEN 1
  WHEN 'mig' THEN CASE WHEN compute_slices * gpu_memory_slices >= memory_slices * gpu_compute_slices
                       THEN compute_slices ELSE memory_slices END
  WHEN 'vgpu' THEN CASE WHEN gpu_mem_total_mib IS NULL
                        THEN least(100, {_CORE})
                        ELSE least(100 * gpu_mem_total_mib, {_VGPU_NUM}) END
  WHEN 'timeslice' THEN 1
END"""
SHARE_DEN_SQL = """
CASE kind
  WHEN 'whole' THEN 1
  WHEN 'mig' THEN CASE WHEN compute_slices * gpu_memory_slices >= memory_slices * gpu_compute_slices
                       THEN gpu_compute_slices ELSE gpu_memory_slices END
  WHEN 'vgpu' THEN 100 * coalesce(gpu_mem_total_mib, 1)
  WHEN 'timeslice' THEN replicas
END"""

# -- used: the busy fraction of the whole GPU attributable to the slice --------------------------
# MIG: instance activity x its compute fraction. Unknown utilisation is NULL here: it counts as 0
# used (never billed as use) and is never idle (we do not flag what we cannot see).
USED_FRAC_SQL = """
CASE kind
  WHEN 'mig' THEN util_pct / 100.0 * compute_slices / gpu_compute_slices
  ELSE util_pct / 100.0
END"""
# ... and exactly, USED_NUM / USED_DEN (util_pct to the micro-percent, as sent).
USED_NUM_SQL = """
CASE kind
  WHEN 'mig' THEN CAST(util_pct AS DECIMAL(18, 6)) * compute_slices
  ELSE CAST(util_pct AS DECIMAL(18, 6))
END"""
USED_DEN_SQL = "CASE kind WHEN 'mig' THEN 100 * gpu_compute_slices ELSE 100 END"


def used_frac_sql(basis: str = "busy") -> str:
    """The busy fraction of a slice tick on a `[pricing] used_basis`.

    `busy` (the default) is USED_FRAC_SQL itself: kernel-busy time, util_pct. `sm_active` reads
    the GPM SM activity (`sm_active_pct`: % of time at least one warp was resident, which is what
    a kernel actually occupied) in its place, with the same MIG scaling; where a tick has no SM
    activity (no GPM on that GPU, or a slice sharing its GPU -- vgpu, timeslice -- whose part of
    the GPU's SM activity cannot be told, so the collector leaves it null) it falls back to the
    busy reading of that tick, so a fleet mixing GPM and older GPUs is billed on the best basis each
    GPU has, and nothing measured is dropped. MIG slices carry their instance's SM activity, whole-GPU
    slices their GPU's.
    """
    if basis == "busy":
        return USED_FRAC_SQL
    if basis != "sm_active":
        raise ValueError(f"used_basis {basis!r}: expected one of busy, sm_active")
    return USED_FRAC_SQL.replace("util_pct", "coalesce(sm_active_pct, util_pct)")


# -- health (issue 17): a GPU tick that the platform, not a tenant, pays for ---------------------
# The critical Xid codes are defined once, in gpuledger.health (the collector picks xid_critical
# by the same table).
_XID_CASE = " ".join(f"WHEN {code} THEN {lit(f'xid {code}: {why}')}" for code, why in CRITICAL_XIDS.items())
_XID_IN = ", ".join(map(str, CRITICAL_XIDS))
# The reason a GPU tick is unhealthy, as short text, NULL when healthy. Reads a lake gpu row, in
# this order (the first that holds names the tick):
# 1. `state` not ok (lost: fell off the bus; unknown: NVML could not read it): 'gpu lost' ...;
# 2. a critical Xid (CRITICAL_XIDS) during the tick: `xid_critical` (the tick's first critical
#    code, so a benign Xid after it hides nothing), else (a producer from before xid_critical)
#    `xid_last` when xid_count > 0 (such a producer's last code of the tick only): 'xid 79: GPU
#    fell off the bus' ...; a code outside the table is the tenant's own fault and stays billed;
# 3. `row_remap_failed`: the GPU has no spare rows left for bad memory: 'row remap failure';
# 4. `row_remap_pending` or `retired_pages_pending`: a memory repair waits for a GPU reset, and
#    until then the bad rows or pages stay in use: 'memory repair pending, reset needed';
# 5. `ecc_uncorrected` > 0: an uncorrectable ECC error since the driver loaded (the count is
#    volatile: it clears at the reset that also repairs the memory): 'uncorrectable ECC error
#    since driver load'.
# NULL fields are healthy (events not readable, ECC off, a generation without that repair scheme,
# a producer from before the field): we do not take a tick off a tenant's bill on what we could
# not see. Corrected ECC errors and remapped-row counts alone are healthy: the memory was repaired.
UNHEALTHY_REASON_SQL = f"""
CASE
  WHEN state IS NOT NULL AND state <> 'ok' THEN 'gpu ' || state
  WHEN xid_critical IN ({_XID_IN}) THEN CASE xid_critical {_XID_CASE} END
  WHEN coalesce(xid_count, 0) > 0 AND xid_last IN ({_XID_IN})
    THEN CASE xid_last {_XID_CASE} END
  WHEN row_remap_failed THEN 'row remap failure'
  WHEN row_remap_pending OR retired_pages_pending THEN 'memory repair pending, reset needed'
  WHEN ecc_uncorrected > 0 THEN 'uncorrectable ECC error since driver load'
END"""

# -- time ----------------------------------------------------------------------------------------
# A tick covers (ts - Δ, ts] and belongs to the hour of its midpoint ts - Δ/2, as hours since the
# epoch: integer arithmetic instead of a time-zone-aware date_trunc (it cost as much as the rest).
HOUR_NO_SQL = "(epoch_us(ts) - CAST(interval_s * 500000 AS BIGINT)) // 3600000000"
TICK_START_SQL = "(ts - to_microseconds(CAST(interval_s * 1000000 AS BIGINT)))"  # ts - Δ


def follows_sql(prev_end: str, start_s: str, interval_s: str) -> str:
    """TRUE when a tick (or run) starting at `start_s` (epoch seconds) continues one that ended at
    the timestamp `prev_end`.

    DESIGN §6: each tick starts where the previous one ended, within Δ/2. A later start is a gap
    (agent down, stalled or suspended): unobserved time, which ends an idle run even when `seq`
    does not skip, and which coverage counts as unobserved GPU time.
    """
    return f"({start_s} - epoch({prev_end}) <= {interval_s} / 2)"


def gap_s_sql(prev_end: str, start_s: str, interval_s: str) -> str:
    """Seconds of the gap before a tick starting at `start_s`, when it does not follow (else NULL)."""
    follows = follows_sql(prev_end, start_s, interval_s)
    return f"CASE WHEN NOT {follows} THEN {start_s} - epoch({prev_end}) END"


def tick_start_s(ts: str = "ts", interval_s: str = "interval_s") -> str:
    """Epoch seconds at which a tick stamped `ts` starts: ts - Δ."""
    return f"(epoch({ts}) - {interval_s})"


def nanos(expr: str) -> str:
    """GPU-seconds floored to the nanosecond: the shares of a GPU tick then never add up past its
    interval, so unallocated time is never negative."""
    return f"CAST(floor(({expr}) * 1e9) / 1e9 AS {SECONDS})"


def reserved_s_sql(sum_share: str = "sum_share", share: str = SHARE_SQL) -> str:
    """Reserved GPU-seconds of a slice tick: Δ·share / max(1, Σ shares on that GPU in that tick).

    `share`: SHARE_SQL, or the name of a column that already holds it (computed once per row)."""
    return nanos(f"interval_s * ({share}) / greatest(1.0, coalesce({sum_share}, 1.0))")


def used_s_sql(sum_used: str = "sum_used", used: str = USED_FRAC_SQL) -> str:
    """Used GPU-seconds of a slice tick: busy time scaled down when busy fractions on one GPU add
    up past the whole GPU (over-commit), floored to the nanosecond. `used`: USED_FRAC_SQL or a
    column holding it."""
    return nanos(f"interval_s * coalesce(({used}), 0.0) / greatest(1.0, coalesce({sum_used}, 1.0))")


def ratio_lit(ratio: float) -> str:
    """The idle ratio as an exact decimal literal (its shortest repr: 0.05 is 5/100, not a double)."""
    d = Decimal(repr(float(ratio)))
    return f"CAST({lit(str(d))} AS DECIMAL(18, 9))"


def idle_tick_sql(
    ratio: float,
    sum_share: str = "sum_share",
    sum_used: str = "sum_used",
    share: str = SHARE_SQL,
    used: str = USED_FRAC_SQL,
) -> str:
    """DESIGN §6 idle test of one slice tick: used / reserved < ratio, compared exactly.

    `sum_share` / `sum_used` are the GPU tick's totals when they pass 1 (over-commit), else NULL.
    Without over-commit the test is u < ratio x s on exact fractions (cross-multiplied), so a
    ratio of exactly the threshold is not idle for any slice kind. On an over-committed GPU the
    normalised fractions u / Σu and s / Σs are compared unfloored in double precision.
    Unknown utilisation is never idle. `share` / `used`: the double-precision share and busy
    fraction, as SQL or as the names of columns that hold them.
    """
    r = ratio_lit(ratio)
    exact = f"(({USED_NUM_SQL}) * ({SHARE_DEN_SQL}) < {r} * ({SHARE_NUM_SQL}) * ({USED_DEN_SQL}))"
    # The exact decimal test costs more than the rest of a row's work, so it decides only the
    # ticks whose double-precision ratio sits within 1e-9 of the threshold (CASE evaluates a branch
    # for its own rows only); a difference larger than that, binary rounding cannot flip.
    bound = f"{float(ratio)!r} * ({share})"
    near = f"(({used}) BETWEEN {bound} * (1 - 1e-9) AND {bound} * (1 + 1e-9))"
    fast = f"(({used}) < {bound})"
    scaled = (
        f"(({used}) / greatest(1.0, coalesce({sum_used}, 1.0)) < "
        f"{float(ratio)!r} * ({share}) / greatest(1.0, coalesce({sum_share}, 1.0)))"
    )
    return (
        f"(util_pct IS NOT NULL AND CASE WHEN {sum_share} IS NOT NULL OR {sum_used} IS NOT NULL "
        f"THEN {scaled} "
        f"WHEN {near} THEN {exact} ELSE {fast} END)"
    )


# -- workload and tenant -------------------------------------------------------------------------

WORKLOAD_SQL = """coalesce(namespace || '/' || coalesce(pod, slice_id), 'slurm-job/' || job_id,
                           'user/' || "user", slice_id)"""


def tenant_sql(rules: Sequence[Mapping[str, Any]], default: str = "unassigned") -> str:
    """Ordered tenant rules as one SQL CASE over slice workload columns (first match wins).

    Resolved at query time, so a rule change applies to every month not yet closed.
    """
    whens = []
    for rule in rules:
        tenant = lit(rule["tenant"])
        if "namespace" in rule:
            cond = f"namespace = {lit(rule['namespace'])}"
        elif "label" in rule:
            key, _, value = rule["label"].partition("=")
            cond = f"labels[{lit(key)}] = {lit(value)}"
        elif "account" in rule:
            cond = f"account = {lit(rule['account'])}"
        elif "user" in rule:
            cond = f'"user" = {lit(rule["user"])}'
        else:
            raise ValueError(f"tenant rule without a matcher: {rule!r}")
        whens.append(f"WHEN {cond} THEN {tenant}")
    if not whens:
        return lit(default)
    return "CASE " + " ".join(whens) + f" ELSE {lit(default)} END"


# -- prices --------------------------------------------------------------------------------------


def price_join(alias: str = "x", prices: str = "p") -> str:
    """The effective-dated price of a row's GPU model on the date of its hour (a `prices` table
    of (model, valid_from, valid_to, gpu_hour) rows, valid_to exclusive)."""
    return (
        f"JOIN prices {prices} ON {prices}.model = {alias}.model "
        f"AND CAST({alias}.hour AS DATE) >= {prices}.valid_from "
        f"AND CAST({alias}.hour AS DATE) < {prices}.valid_to"
    )


# -- the same rules in Python: gpuledger.shares (the collector may import only gpuledger) --------


def follows(prev_end: datetime, ts: datetime, interval_s: float) -> bool:
    """Python twin of `follows_sql`: a tick stamped `ts` starts where one that ended at `prev_end`
    did, within Δ/2 (else there was a gap, which ends an idle run)."""
    return (ts - prev_end).total_seconds() - interval_s <= interval_s / 2
