"""Issue 17's profiling fields in the v1 contract: optional, bounded, read alike by both decode paths.

The new gpu fields (GPM profiling %, clocks, clocks-event reasons) and the MIG slice profiling
fields are optional, so a message from an old producer stays valid; the native whole-batch reader
(field layout from `schema.rules()`) must read them into the same lake columns as the explaining
path, and refuse out-of-range values at the same field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from messages import valid_message
from test_batch_decode import check, mixed, reader  # noqa: F401 - reader: the native-reader fixture

from gpuledger.schema import reference_errors
from warehouse.lake import Lake
from warehouse.staging import samples_sql

PROFILING = {
    "sm_active_pct": 21.5,
    "sm_occupancy_pct": 9.25,
    "tensor_active_pct": 12.0,
    "dram_active_pct": 33.0,
}
GPU_EXTRA = {
    "sm_clock_mhz": 1755,
    "mem_clock_mhz": 2619,
    "clocks_event_reasons": 4,
    "xid_count": 2,
    "xid_last": 79,
    # memory health: booleans and large counters through the native reader as through msgspec
    "xid_critical": 79,
    "ecc_corrected": 9007199254740991,
    "ecc_uncorrected": 3,
    "retired_pages_sbe": 0,
    "retired_pages_dbe": 4294967295,
    "retired_pages_pending": True,
    "remapped_rows_correctable": 2,
    "remapped_rows_uncorrectable": 1,
    "row_remap_pending": False,
    "row_remap_failed": True,
}


def test_an_old_producers_message_is_valid_and_its_new_columns_null() -> None:
    doc = valid_message()
    assert not reference_errors(doc)
    out = check(mixed(orjson.dumps(doc)), clean=True)
    gpu = [g for g in out.tables["gpu"].to_pylist() if g["node"] == "n1" and g["seq"] == doc["seq"]]
    assert len(gpu) == len(doc["gpus"])
    new = (*PROFILING, *GPU_EXTRA)
    assert [[g[k] for k in new] for g in gpu] == [[None] * len(new)] * len(doc["gpus"])


def test_profiling_fields_reach_the_lake_through_the_native_reader() -> None:
    doc = valid_message()
    doc["gpus"][1].update(PROFILING, **GPU_EXTRA)
    doc["slices"][0].update(PROFILING)
    out = check(mixed(orjson.dumps(doc)), clean=True)  # decided by the native reader, same as msgspec
    gpus = {
        g["uuid"]: g for g in out.tables["gpu"].to_pylist() if g["seq"] == doc["seq"] and g["node"] == "n1"
    }
    g1 = gpus[doc["gpus"][1]["uuid"]]
    assert {k: g1[k] for k in (*PROFILING, *GPU_EXTRA)} == {**PROFILING, **GPU_EXTRA}
    sl = next(s for s in out.tables["slice"].to_pylist() if s["slice_id"] == doc["slices"][0]["slice_id"])
    assert {k: sl[k] for k in PROFILING} == PROFILING


@pytest.mark.parametrize(
    "where,field,value",
    [
        ("gpus", "sm_active_pct", 100.5),
        ("gpus", "dram_active_pct", -1),
        ("gpus", "sm_clock_mhz", -5),
        ("gpus", "mem_clock_mhz", 1755.5),
        ("gpus", "clocks_event_reasons", "4"),
        ("gpus", "xid_last", 65536),
        ("gpus", "xid_count", -1),
        ("gpus", "xid_critical", 65536),
        ("gpus", "ecc_corrected", 9007199254740992),
        ("gpus", "ecc_uncorrected", -1),
        ("gpus", "retired_pages_dbe", 4294967296),
        ("gpus", "remapped_rows_uncorrectable", 1.5),
        ("gpus", "row_remap_pending", 1),
        ("gpus", "row_remap_failed", "true"),
        ("gpus", "retired_pages_pending", 0),
        ("slices", "tensor_active_pct", 101),
    ],
)
def test_out_of_range_profiling_is_refused_at_its_field(where: str, field: str, value: Any) -> None:
    doc = valid_message()
    doc[where][0][field] = value
    assert reference_errors(doc)
    out = check(mixed(orjson.dumps(doc)), clean=False)
    assert [r.index for r in out.rejects] == [20]
    assert f"{where}[0].{field}" in out.rejects[0].reason or f"{where}/0/{field}" in out.rejects[0].reason


def test_a_lake_of_files_from_before_issue_17_and_after_reads_as_one_table(tmp_path: Path) -> None:
    """Files written before the new columns existed still read through staging, their new columns null."""
    from test_producer_golden import ISSUE17_COLUMNS
    from test_staging import _tick, _write

    lake = Lake(tmp_path / "lake")
    _write(lake, [_tick(k) for k in range(1, 4)])
    for f in (tmp_path / "lake").rglob("*.parquet"):
        if f.parent.parent.name == "gpu":  # rewritten as a pre-issue-17 file: without the new columns
            t = pq.read_table(f)
            pq.write_table(t.drop_columns([c for c in ISSUE17_COLUMNS if c in t.column_names]), f)
    new = [_tick(k) for k in range(4, 6)]
    for m in new:
        m["gpus"][0].update(PROFILING, **GPU_EXTRA)
    _write(lake, new)
    sql = samples_sql(lake, "gpu", ["2026-10-15"])
    assert sql is not None
    uuid = new[0]["gpus"][0]["uuid"]
    q = f"SELECT seq, sm_active_pct, xid_last FROM {sql} WHERE uuid = ? ORDER BY seq"
    rows = duckdb.execute(q, [uuid]).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert [r[1:] for r in rows] == [(None, None)] * 3 + [(21.5, 79)] * 2
