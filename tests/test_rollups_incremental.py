"""Rollups kept current by the hour (warehouse/rollups.py) write the bytes a rebuild from nothing
writes: on the golden scenario and on a simulated fleet like the demo's, with rollups updated after
every batch, batches that span hours and dates, a batch delivered twice, and late data."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import scenario

from warehouse.lake import Lake
from warehouse.rollups import NODE_HOURS, STATE, TABLES, Rollups


def rollup_bytes(root: Path) -> dict[str, bytes]:
    """Every rollup output file (and node_ticks' hour pieces) of a lake, by path."""
    out = {}
    for table in TABLES:
        for p in sorted((root / "rollups" / table).glob("date=*/part.parquet")):
            out[str(p.relative_to(root))] = p.read_bytes()
    for p in sorted((root / "rollups" / STATE / NODE_HOURS).glob("date=*.parquet")):
        out[str(p.relative_to(root))] = p.read_bytes()
    return out


def rebuilt_from_nothing(root: Path, into: Path) -> dict[str, bytes]:
    shutil.copytree(root / "samples", into / "samples")
    Rollups(Lake(into)).update()
    return rollup_bytes(into)


def incremental(root: Path, batches: list[list[dict[str, Any]]]) -> list[int]:
    """Write each batch and bring the rollups up to date after it; the hours each update recomputed."""
    lake = Lake(root)
    hours = []
    for msgs in batches:
        scenario.write(lake, msgs)
        hours.append(Rollups(lake).update().hours)
    return hours


def chunks(msgs: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    return [msgs[i : i + n] for i in range(0, len(msgs), n)]


def test_golden_scenario_incremental_after_every_batch_equals_a_rebuild(tmp_path: Path) -> None:
    msgs = scenario.messages()
    # 13 ticks a batch: batches cross hours (and midnight); one is delivered twice, late; node-b's
    # missing ticks arrive at the end, into hours already built.
    batches = chunks(msgs, 13)
    batches.insert(5, batches[2])
    batches.append(scenario.messages(late=True))
    hours = incremental(tmp_path / "inc", batches)
    assert all(0 < h <= 3 for h in hours), hours  # never the whole date again
    inc = rollup_bytes(tmp_path / "inc")
    full = rebuilt_from_nothing(tmp_path / "inc", tmp_path / "full")
    assert sorted(inc) == sorted(full)
    assert len(inc) == 4 * 2 + 2  # four tables and the node pieces, over two dates
    for path in inc:
        assert inc[path] == full[path], path


def test_a_batch_recomputes_only_the_hours_it_touches(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    msgs = scenario.messages()
    scenario.write(lake, msgs[:100])  # node-a 23:01 .. 00:40
    first = Rollups(lake).update()
    assert (first.rebuilt, first.hours) == (2, 3)
    # node-a 00:41 .. 00:50: one hour, of one date; two slice rows a tick (MIG instance, whole GPU)
    scenario.write(lake, msgs[100:110])
    st = Rollups(lake).update()
    assert (st.dates, st.rebuilt, st.hours) == (2, 1, 1)
    assert st.slice_rows == 2 * 50  # the hour from 00:00 holds node-a's ticks 00:01 .. 00:50, read again
    again = Rollups(lake).update()
    assert (again.rebuilt, again.hours, again.slice_rows) == (0, 0, 0)
    # a redelivered batch adds no row: the hour is recomputed, the bytes stay
    before = rollup_bytes(tmp_path)
    scenario.write(lake, msgs[100:110])
    assert Rollups(lake).update().hours == 1
    assert rollup_bytes(tmp_path) == before


def test_a_changed_idle_ratio_rebuilds_every_hour(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    scenario.write(lake, scenario.messages())
    assert Rollups(lake).update().hours == 3
    st = Rollups(lake, idle_util_ratio=0.2).update()
    assert (st.rebuilt, st.hours) == (2, 3)
    assert Rollups(lake, idle_util_ratio=0.2).update().hours == 0


@pytest.mark.parametrize("batch_ticks", [7])
def test_simulated_fleet_incremental_equals_a_rebuild(tmp_path: Path, batch_ticks: int) -> None:
    """The demo's simulated fleet (idle slices, bursts, MIG, vGPU, time-slicing) across midnight,
    one minute a tick: idle runs stitched across hours come out the same either way."""
    from collector.fleet import SimulatedFleet

    fleet = SimulatedFleet(seed=11, start=datetime(2026, 11, 3, 22, 50, tzinfo=UTC), interval_s=60)
    ticks = [fleet.next_tick() for _ in range(100)]
    batches = [[m for t in ticks[i : i + batch_ticks] for m in t] for i in range(0, 80, batch_ticks)]
    batches.insert(3, batches[1])  # delivered twice
    batches.append([m for t in ticks[80:] for m in t][::-1])  # the last 20 minutes, out of order
    incremental(tmp_path / "inc", batches)
    inc = rollup_bytes(tmp_path / "inc")
    full = rebuilt_from_nothing(tmp_path / "inc", tmp_path / "full")
    assert sorted(inc) == sorted(full)
    for path in inc:
        assert inc[path] == full[path], path
    runs = pq.read_table(tmp_path / "inc" / "rollups" / "idle_runs" / "date=2026-11-04" / "part.parquet")
    assert runs.num_rows > 0  # the comparison covered idle runs


def test_a_lake_from_before_the_memory_health_columns_rolls_up(tmp_path: Path) -> None:
    """Gpu files written before a column was added, and the empty gpu file an older version left in
    _state (read first, by name, to give old files the new columns), must not hide the column the
    unhealthy rule reads: the empty file is named by the schema it holds."""
    from gpuledger.lake_tables import HEALTH_FIELDS, table_schema

    lake = Lake(tmp_path)
    scenario.write(lake, scenario.messages())
    for f in tmp_path.rglob("*.parquet"):
        if f.parent.parent.name == "gpu":
            t = pq.read_table(f)
            pq.write_table(t.drop_columns([c for c in HEALTH_FIELDS if c in t.column_names]), f)
    old = table_schema("gpu")
    old = old.remove(old.get_field_index("row_remap_failed"))
    (tmp_path / "rollups" / STATE).mkdir(parents=True, exist_ok=True)
    pq.write_table(old.empty_table(), tmp_path / "rollups" / STATE / "empty-gpu.parquet")  # old name
    assert Rollups(lake).update().hours == 3
    full = rebuilt_from_nothing(tmp_path, tmp_path / "full")
    assert rollup_bytes(tmp_path) == full
