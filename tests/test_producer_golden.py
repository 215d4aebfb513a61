"""The three producers (simulated fleet, trace replay, NVML over the fake) pinned end to end.

Why: the producers' message building was rewritten (typed ticks, one builder); the lake written
from the same ticks must not change. Each source's ticks go through the ingest decoder into the
lake's sample tables, and each table's rows, sorted, are hashed. The digests were taken from the
code before the rewrite (commit 26d0ac4), so a change in any value, null or row fails here. The
bytes themselves did change, on purpose: optional fields that are null are left out (msgspec,
`omit_defaults`), GPU keys follow the Struct order (required first), and NVML's `ts` drops
`.000000` (one `format_ts` for every backend); decoded with absent = null, every message is equal.

Issue 17 appended columns (GPM profiling, clocks, Xid events, memory health; `ISSUE17_COLUMNS`).
`GOLDEN` is still hashed over the columns that existed before, and is unchanged: the old columns'
rows are exactly what they were. `GOLDEN_ALL` pins every column, the new ones included.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from test_nvml import mixed_node
from test_replay import START as REPLAY_START

from collector.agent import run_collector
from collector.fleet import SimulatedFleet
from collector.replay import TraceReplay
from collector.traces import DATA_DIR
from collector.transport import MemoryTransport
from gpuledger.bus import MemoryBus
from gpuledger.decode import decode_batch
from gpuledger.lake_tables import HEALTH_FIELDS

TOPIC = "t"


def _sent(backend: Any, ticks: int, interval_s: float) -> list[bytes]:
    """What the agent loop sends for `ticks` intervals (the bytes on the topic)."""
    bus = MemoryBus()
    run_collector(backend, MemoryTransport(bus, TOPIC), interval_s, ticks=ticks, realtime=False)
    return [v for _, _, v in bus.read_from(TOPIC, 0, 1 << 30)]


ISSUE17_COLUMNS = (
    "sm_active_pct",
    "sm_occupancy_pct",
    "tensor_active_pct",
    "dram_active_pct",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "clocks_event_reasons",
    "xid_count",
    "xid_last",
    *HEALTH_FIELDS,  # xid_critical, ECC counts, page retirement, row remapping
)


def _digest(raws: list[bytes], drop: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of each lake sample table's rows (every column but `drop`, rows sorted) after the decoder."""
    decoded = decode_batch(raws, batch=1, max_message_bytes=1 << 22)
    assert decoded.rejects == [] and decoded.ticks == len(raws)
    out = {}
    for name, table in sorted(decoded.tables.items()):
        assert isinstance(table, pa.Table)
        table = table.drop_columns([c for c in drop if c in table.column_names])
        rows = sorted(repr(sorted(r.items())) for r in table.to_pylist())
        out[name] = hashlib.sha256("\n".join([repr(table.schema), *rows]).encode()).hexdigest()[:16]
    return out


def fleet_bytes() -> list[bytes]:
    return _sent(SimulatedFleet(seed=7), 12, 10.0)


def replay_bytes() -> list[bytes]:
    return _sent(TraceReplay(DATA_DIR, start=REPLAY_START, interval_s=60.0, gpus_per_node=4), 6, 60.0)


def nvml_bytes(tmp_path: Path) -> list[bytes]:
    """A mixed node (MIG with GPM, two HAMi regions, time-sliced GPU) with churn and a lost GPU."""
    fake, b, hami, ts = mixed_node(tmp_path)
    b.boot_id = "00000000-0000-4000-8000-000000000000"
    out: list[bytes] = []
    for k in range(8):
        if k == 3:
            ts.procs = ts.procs[:2]
        if k == 5:
            import pynvml

            hami.fault = pynvml.NVML_ERROR_GPU_IS_LOST
        fake.advance(10.0)
        out += _sent(b, 1, 10.0)
    return out


GOLDEN: dict[str, dict[str, str]] = {
    "fleet": {
        "gpu": "d1362a4dd5e54052",
        "process": "83578b28976b376a",
        "slice": "181dea89394d7a39",
        "tick": "5550eb241c8d135b",
    },
    "replay": {
        "gpu": "15185addc38f82a2",
        "process": "2f81fcc20ef65569",
        "slice": "1d5c8e3b0231ce19",
        "tick": "b10bcc324c227bca",
    },
    "nvml": {
        "gpu": "3bdd2d910635da47",
        "process": "0a3b22e254cacd16",
        "slice": "4d003df8813e8346",
        "tick": "7fbce78c58edeb12",
    },
}


GOLDEN_ALL: dict[str, dict[str, str]] = {  # issue 17: tick and process tables have no new column
    "fleet": {
        "gpu": "6318e771556d3fdd",
        "process": "83578b28976b376a",
        "slice": "990b7b027f6cc4e5",  # whole-GPU slices carry their GPU's SM activity
        "tick": "5550eb241c8d135b",
    },
    "replay": {
        "gpu": "9d334d098725b57f",
        "process": "2f81fcc20ef65569",
        "slice": "d65da0493aa11db3",
        "tick": "b10bcc324c227bca",
    },
    "nvml": {
        "gpu": "de1666833b6930a8",
        "process": "0a3b22e254cacd16",
        "slice": "48e7173107046bbb",  # whole-GPU slices carry their GPU's SM activity
        "tick": "7fbce78c58edeb12",
    },
}


@pytest.mark.parametrize("source", ["fleet", "replay", "nvml"])
def test_lake_rows_are_what_they_were_before_the_typed_producers(source: str, tmp_path: Path) -> None:
    raws = {"fleet": fleet_bytes, "replay": replay_bytes, "nvml": lambda: nvml_bytes(tmp_path)}[source]()
    assert _digest(raws, drop=ISSUE17_COLUMNS) == GOLDEN[source]
    assert _digest(raws) == GOLDEN_ALL[source]
