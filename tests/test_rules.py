"""The accounting rules in SQL (warehouse/rules.py) and in Python (gpuledger/shares.py), value for value.

Every slice kind over a grid of caps, profiles, replica counts and utilisations: the exact share
and busy fraction of the SQL equal the Python fractions, the double-precision share is the same
number, and the idle test decides the same way, exact threshold included.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from gpuledger.lake_tables import table_schema
from gpuledger.shares import is_idle_tick, share, used_fraction
from warehouse import rules

UTILS = [None, 0.0, 1.25, 4.99, 5.0, 12.3, 100.0]


def grid() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"kind": "whole", "util_pct": u} for u in UTILS]
    for c, m, u in itertools.product(range(1, 8), range(1, 9), UTILS):
        out.append(
            {
                "kind": "mig",
                "compute_slices": c,
                "memory_slices": m,
                "gpu_compute_slices": 7,
                "gpu_memory_slices": 8,
                "util_pct": u,
            }
        )
    for cap, core, total, u in itertools.product(
        [None, 0, 1024, 20480, 40960, 81920, 100000],
        [None, 0, 25, 30, 33.3, 100],
        [None, 81920, 81559],
        [None, 0.0, 5.0, 30.0],
    ):
        out.append(
            {
                "kind": "vgpu",
                "mem_cap_mib": cap,
                "core_cap_pct": core,
                "gpu_mem_total_mib": total,
                "util_pct": u,
            }
        )
    for r, u in itertools.product(range(1, 9), UTILS):
        out.append({"kind": "timeslice", "replicas": r, "util_pct": u})
    return out


COLUMNS = {
    "kind": pa.string(),
    "compute_slices": pa.int64(),
    "memory_slices": pa.int64(),
    "gpu_compute_slices": pa.int64(),
    "gpu_memory_slices": pa.int64(),
    "mem_cap_mib": pa.int64(),
    "core_cap_pct": pa.float64(),
    "gpu_mem_total_mib": pa.int64(),
    "replicas": pa.int64(),
    "util_pct": pa.float64(),
}


@pytest.fixture(scope="module")
def computed() -> list[tuple[dict[str, Any], tuple]]:
    rows = grid()
    table = pa.Table.from_pylist(
        [{k: r.get(k) for k in COLUMNS} for r in rows], schema=pa.schema(list(COLUMNS.items()))
    )
    con = duckdb.connect()
    con.register("s", table)
    out = con.execute(f"""
        SELECT ({rules.SHARE_SQL}), ({rules.SHARE_NUM_SQL}), ({rules.SHARE_DEN_SQL}),
               ({rules.USED_FRAC_SQL}), ({rules.USED_NUM_SQL}), ({rules.USED_DEN_SQL}),
               {rules.idle_tick_sql(0.05, "NULL", "NULL")}
        FROM s""").fetchall()
    con.close()
    assert len(out) == len(rows)
    return list(zip(rows, out, strict=True))


def test_exact_share_is_the_python_share(computed: list[tuple[dict[str, Any], tuple]]) -> None:
    for row, (sh, num, den, *_) in computed:
        want = share(row, row.get("gpu_mem_total_mib"))
        assert want is not None, row
        assert Fraction(Decimal(num)) / den == want, row
        assert sh == pytest.approx(float(want), rel=1e-12, abs=1e-15), row


def test_used_fraction_is_the_python_one(computed: list[tuple[dict[str, Any], tuple]]) -> None:
    for row, (_, _, _, frac, num, den, _) in computed:
        want = used_fraction(row)
        if want is None:
            assert frac is None and num is None, row
            continue
        assert Fraction(Decimal(num)) / den == want, row
        assert frac == pytest.approx(float(want), rel=1e-12, abs=1e-15), row


def test_idle_test_decides_as_the_python_one(computed: list[tuple[dict[str, Any], tuple]]) -> None:
    idle_count = 0
    for row, (*_, idle) in computed:
        want = is_idle_tick(used_fraction(row), share(row, row.get("gpu_mem_total_mib")), 0.05)
        assert bool(idle) == want, row
        idle_count += want
    assert idle_count > 50  # the grid has idle and busy ticks of every kind


def test_threshold_exactly_is_not_idle_for_any_kind() -> None:
    mig_2g = {
        "kind": "mig",
        "compute_slices": 2,
        "memory_slices": 2,
        "gpu_compute_slices": 7,
        "gpu_memory_slices": 8,
    }
    quarter = {"kind": "timeslice", "replicas": 4}
    for sl, at in ((mig_2g, 5.0), (quarter, 1.25), ({"kind": "whole"}, 5.0)):
        s = dict(sl, util_pct=at)
        assert not is_idle_tick(used_fraction(s), share(s), 0.05), s


def test_vgpu_share_is_capped_at_the_whole_gpu() -> None:
    over = {"kind": "vgpu", "mem_cap_mib": 100000, "core_cap_pct": 30}
    assert share(over, 81920) == 1
    assert share({"kind": "vgpu", "mem_cap_mib": 20480, "core_cap_pct": None}, None) == 0  # nothing known
    assert share({"kind": "vgpu", "mem_cap_mib": 20480, "core_cap_pct": 50}, None) == Fraction(1, 2)


def test_follows_in_python_and_sql_agree() -> None:
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for gap in (0, 29, 30, 31, 60, 3600):  # seconds of silence before a 60 s tick
        ts = t0 + timedelta(seconds=60 + gap)
        sql = rules.follows_sql("prev", rules.tick_start_s("ts", "60.0"), "60.0")
        (got,) = con.execute(
            f"SELECT {sql} FROM (SELECT ?::TIMESTAMPTZ AS prev, ?::TIMESTAMPTZ AS ts)", [t0, ts]
        ).fetchall()[0]
        assert got == rules.follows(t0, ts, 60.0) == (gap <= 30), gap
    con.close()


_HEALTH_COLS = (
    "state",
    "xid_count",
    "xid_last",
    "xid_critical",
    "row_remap_failed",
    "row_remap_pending",
    "retired_pages_pending",
    "ecc_uncorrected",
)


def _unhealthy(rows: list[dict[str, Any]]) -> list[str | None]:
    """UNHEALTHY_REASON_SQL over gpu rows given as dicts, typed as the lake's gpu columns (absent: NULL)."""
    gpu = table_schema("gpu")
    t = pa.Table.from_pylist(rows, schema=pa.schema([gpu.field(c) for c in _HEALTH_COLS]))
    con = duckdb.connect()
    con.register("g", t)
    return [r[0] for r in con.sql(f"SELECT {rules.UNHEALTHY_REASON_SQL} FROM g").fetchall()]


def test_unhealthy_reason_names_state_then_critical_xid() -> None:
    rows = [
        ("ok", 0, None),  # healthy
        ("ok", None, None),  # events not readable: healthy, never taken off a bill on a guess
        ("ok", 2, 13),  # an application's own fault: billed
        ("ok", 1, 79),
        ("ok", 3, 48),
        ("ok", 0, 79),  # no event this tick: xid_last is stale
        ("lost", None, None),
        ("unknown", 1, 79),  # state first
        (None, 1, 119),
    ]
    got = _unhealthy([{"state": s, "xid_count": c, "xid_last": x} for s, c, x in rows])
    assert got == [
        None,
        None,
        None,
        "xid 79: GPU fell off the bus",
        "xid 48: double-bit ECC error",
        None,
        "gpu lost",
        "gpu unknown",
        "xid 119: GSP RPC timeout",
    ]


def test_unhealthy_reason_memory_health_in_order_and_null_is_healthy() -> None:
    ok = {"state": "ok", "xid_count": 0}
    clean = {"row_remap_failed": False, "row_remap_pending": False, "ecc_uncorrected": 0}
    rows = [
        {**ok, **clean},  # a healthy Hopper
        {"state": "ok"},  # an old producer, or nothing readable: healthy
        {**ok, "xid_count": 2, "xid_last": 13, "xid_critical": 79},  # critical, then an app's fault
        {**ok, "xid_count": 1, "xid_last": 13, "xid_critical": 13},  # not in the table: the tenant's
        {**ok, **clean, "row_remap_failed": True, "row_remap_pending": True, "ecc_uncorrected": 4},
        {**ok, **clean, "row_remap_pending": True, "ecc_uncorrected": 4},
        {**ok, "retired_pages_pending": True},  # pre-Ampere: page retirement waits for a reset
        {**ok, "retired_pages_pending": False, "ecc_uncorrected": 1},
        {**ok, **clean, "ecc_uncorrected": None},  # ECC off
        {**ok, "xid_count": 1, "xid_last": 48, "xid_critical": 48, "row_remap_failed": True},  # Xid first
        {"state": "lost", "row_remap_failed": True},  # state first
    ]
    assert _unhealthy(rows) == [
        None,
        None,
        "xid 79: GPU fell off the bus",
        None,
        "row remap failure",
        "memory repair pending, reset needed",
        "memory repair pending, reset needed",
        "uncorrectable ECC error since driver load",
        None,
        "xid 48: double-bit ECC error",
        "gpu lost",
    ]


def test_critical_xids_are_defined_once_for_collector_and_warehouse() -> None:
    from gpuledger import health

    assert rules.CRITICAL_XIDS is health.CRITICAL_XIDS
    assert health.first_critical_xid([13, 43, 79, 48]) == 79
    assert health.first_critical_xid([13, 31]) is None
    assert health.first_critical_xid([]) is None


def test_used_fraction_on_both_bases() -> None:
    # whole GPU 80% busy, 30% SM active; a MIG 3/7 slice 50% busy, SM activity 20%; a whole GPU
    # with no GPM: sm_active falls back to busy.
    con = duckdb.connect()
    src = """(VALUES ('whole', 80.0, 30.0, NULL, NULL), ('mig', 50.0, 20.0, 3, 7),
                     ('whole', 40.0, NULL, NULL, NULL))
             t(kind, util_pct, sm_active_pct, compute_slices, gpu_compute_slices)"""
    busy = [r[0] for r in con.sql(f"SELECT {rules.used_frac_sql('busy')} FROM {src}").fetchall()]
    sm = [r[0] for r in con.sql(f"SELECT {rules.used_frac_sql('sm_active')} FROM {src}").fetchall()]
    assert busy == pytest.approx([0.8, 0.5 * 3 / 7, 0.4], abs=1e-12)
    assert sm == pytest.approx([0.3, 0.2 * 3 / 7, 0.4], abs=1e-12)
    assert rules.used_frac_sql() == rules.USED_FRAC_SQL
    with pytest.raises(ValueError, match="used_basis 'sm'"):
        rules.used_frac_sql("sm")
