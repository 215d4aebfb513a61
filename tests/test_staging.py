"""The staging layer (warehouse/staging.py): only committed batches, each tick once, for every reader.

A lake with the same ticks in two committed batches (a redelivery), plus a batch that crashed
before its commit record: every reader sees each tick's rows exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import scenario

from dashboards.data import DashboardData
from gpuledger.decode import decode_batch
from warehouse.close import CloseSettings
from warehouse.lake import Lake, new_batch_id
from warehouse.staging import committed_files, samples_sql

G = scenario.B0
BOOT = scenario.BOOT_B


def _tick(k: int) -> dict[str, Any]:
    """node-b's tick k with two processes on B0's slice (pid 1 busy k %, pid 2 at 10 %)."""
    m = scenario.node_b(k)
    sid = m["slices"][0]["slice_id"]
    m["processes"] = [
        {"pid": 1, "gpu_uuid": G, "slice_id": sid, "mem_used_mib": 100 * k, "sm_util_pct": float(k)},
        {"pid": 2, "gpu_uuid": G, "slice_id": sid, "mem_used_mib": 50, "sm_util_pct": 10.0},
    ]
    return m


def _write(lake: Lake, msgs: list[dict[str, Any]], commit: bool = True) -> None:
    batch = new_batch_id()
    decoded = decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20)
    assert not decoded.rejects
    paths = lake.write_batch(decoded, batch)
    if not commit:  # a crash between the row files and the tick file (the commit record)
        for p in paths:
            if p.parent.parent.name == "tick":
                p.unlink()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lk = Lake(tmp_path / "lake")
    _write(lk, [_tick(k) for k in range(1, 21)])
    _write(lk, [_tick(k) for k in range(11, 21)])  # redelivered: ticks 11..20 again
    _write(lk, [_tick(k) for k in range(21, 31)], commit=False)  # never committed
    return lk


def test_each_tick_once_and_only_committed_batches(lake: Lake) -> None:
    day = "2026-10-15"
    assert len(committed_files(lake, "process", [day])) == 2  # the crashed batch's file is not one
    src = samples_sql(lake, "process", [day])
    assert src is not None
    n, ticks, pids = duckdb.sql(
        f"SELECT count(*), count(DISTINCT seq), count(DISTINCT pid) FROM {src}"
    ).fetchall()[0]
    assert (n, ticks, pids) == (40, 20, 2)
    for kind, per_tick in (("slice", 5), ("gpu", 2)):
        src = samples_sql(lake, kind, [day])
        assert duckdb.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0] == 20 * per_tick
    assert samples_sql(lake, "process", ["2026-10-14"]) is None
    with pytest.raises(ValueError, match="sample kind 'tick'"):
        samples_sql(lake, "tick", [day])


def test_process_drill_down_counts_a_redelivered_batch_once(lake: Lake) -> None:
    """The GPU page's process table: 20 ticks in hour 23 (ts 23:01..23:20), pid 1 busy 1..20 %."""
    settings = CloseSettings(
        tenant_rules=tuple(scenario.RULES),
        default_tenant="unassigned",
        currency="USD",
        book=(),
        kwh="",
        mode="reserved",
        idle_policy="platform",
        idle_util_ratio=0.05,
        idle_min_minutes=30.0,
    )
    data = DashboardData(lake.root, settings, connections=1)
    try:
        sid = _tick(1)["slices"][0]["slice_id"]
        rows = data._processes(G, {sid}, datetime(2026, 10, 15, 23, tzinfo=UTC), admin=True)
    finally:
        data.close()
    assert [(r["pid"], r["samples"], r["sm_util_pct"], r["mem_used_mib"]) for r in rows] == [
        (1, 20, 10.5, 2000),
        (2, 20, 10.0, 50),
    ]
