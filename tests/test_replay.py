"""`collect --backend replay TRACE`: a GenTD26-format trace replayed as v1 ticks, value by value."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from collector.replay import TraceReplay
from collector.traces import DUTY_FILE, MEM_FILE
from gpuledger.decode import decode_batch

START = datetime(2026, 11, 1, tzinfo=UTC)
T0 = 1662858720.0
GIB = 1 << 30


def write_trace(d: Path, duty: list[tuple[int, str, float]], mem: list[tuple[int, str, float]]) -> Path:
    """(step, pod, value) rows in the GenTD26 files' own column orders, 57 s steps."""
    d.mkdir(parents=True, exist_ok=True)
    rows = ["value,timestamp_anon,container_ip"] + [f"{v},{T0 + 57 * s},{p}" for s, p, v in duty]
    (d / DUTY_FILE).write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    rows = ["timestamp_anon,value,container_ip"] + [f"{T0 + 57 * s},{v},{p}" for s, p, v in mem]
    (d / MEM_FILE).write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return d


@pytest.fixture
def small(tmp_path: Path) -> Path:
    # pod "a" runs the whole trace (steps 0-3); pod "b" only steps 1-2; pod "c" only step 0.
    duty = [(0, "a", 0.0), (1, "a", 50.0), (2, "a", 100.0), (3, "a", 20.0), (1, "b", 10.0), (2, "b", 30.0)]
    duty += [(0, "c", 80.0)]
    mem = [(s, "a", 2.0 * GIB) for s in range(4)] + [(1, "b", 1.5 * GIB), (2, "b", 0.5 * GIB), (0, "c", GIB)]
    return write_trace(tmp_path / "trace", duty, mem)


def test_values_lifetimes_and_end(small: Path) -> None:
    r = TraceReplay(small, start=START, interval_s=57.0, gpus_per_node=2)
    assert r.nodes == ["replay-node-000", "replay-node-001"] and r.ticks_total == 4
    ticks = [r.next_tick() for _ in range(4)]
    assert r.next_tick() == []  # the trace is over
    assert [m["ts"] for m in ticks[0]] == ["2026-11-01T00:00:57Z"] * 2
    assert [m["seq"] for t in ticks for m in t] == [0, 0, 1, 1, 2, 2, 3, 3]

    def slices(k: int) -> dict[str, tuple[float, int]]:
        return {
            s["workload"]["labels"]["trace-pod"]: (s["util_pct"], s["mem_used_mib"])
            for m in ticks[k]
            for s in m["slices"]
        }

    # pods in name order: a and b on node 0, c on node 1 (whose second GPU holds no pod)
    assert slices(0) == {"a": (0.0, 2048), "c": (80.0, 1024)}
    assert slices(1) == {"a": (50.0, 2048), "b": (10.0, 1536)}  # c is gone, b has started
    assert slices(2) == {"a": (100.0, 2048), "b": (30.0, 512)}
    assert slices(3) == {"a": (20.0, 2048)}
    gpus = [g for m in ticks[3] for g in m["gpus"]]
    assert [g["index"] for g in gpus] == [0, 1, 0, 1]
    assert [g["util_pct"] for g in gpus] == [20.0, 0.0, 0.0, 0.0]  # a GPU without its pod: idle, unallocated
    procs = [p for m in ticks[1] for p in m["processes"]]
    assert sorted(p["mem_used_mib"] for p in procs) == [1536, 2048]

    raws = [orjson.dumps(m) for t in ticks for m in t]
    decoded = decode_batch(raws, batch=1, max_message_bytes=1 << 20)
    assert decoded.rejects == [] and decoded.tables["slice"].num_rows == 7


def test_busy_is_averaged_over_the_tick(small: Path) -> None:
    r = TraceReplay(small, start=START, interval_s=114.0, gpus_per_node=4)  # two trace steps a tick
    first, second = r.next_tick()[0], r.next_tick()[0]
    util = {s["workload"]["labels"]["trace-pod"]: s["util_pct"] for s in first["slices"]}
    assert util == {"a": 25.0, "b": 5.0, "c": 40.0}  # b's step 1 is half the tick; c's step 0 half
    util = {s["workload"]["labels"]["trace-pod"]: s["util_pct"] for s in second["slices"]}
    assert util == {"a": 60.0, "b": 15.0}


def test_same_trace_same_ticks_and_bad_input_named(small: Path, tmp_path: Path) -> None:
    a = TraceReplay(small, start=START, interval_s=30.0)
    b = TraceReplay(small, start=START, interval_s=30.0)
    assert [a.next_tick() for _ in range(a.ticks_total)] == [b.next_tick() for _ in range(b.ticks_total)]
    with pytest.raises(ValueError, match=r"missing pod_gpu_duty_cycle.csv.gz, pod_gpu_memory_used_bytes"):
        TraceReplay(tmp_path / "nothing", start=START)
    with pytest.raises(ValueError, match=r"interval_s=0"):
        TraceReplay(small, start=START, interval_s=0)
