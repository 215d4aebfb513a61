"""Decode cost per message: `decode_batch` (msgspec objects -> Arrow) vs `decode_batch_fast` (whole batch).

    python bench/decode_bench.py [--messages 2000] [--rounds 7]

Decodes the same batch of simulated-fleet ticks (seed 7, as the ingest bench produces) with
both paths, alternating them round by round so load on the machine hits both alike, and prints
median wall and CPU microseconds per message (CPU = this process's time, the steadier number on
a shared machine) plus the load average. The whole-batch path runs with the native reader
(gpuledger/native); the native read alone is shown as its floor. (The arrow-rs `arrow-json`
reader is compared with the native one in bench/reader_bench.py.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fleet_messages(n: int) -> list[bytes]:
    import orjson

    from collector.fleet import SimulatedFleet

    fleet = SimulatedFleet(seed=7)
    out: list[bytes] = []
    while len(out) < n:
        out.extend(orjson.dumps(m) for m in fleet.next_tick())
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    import gpuledger.batch_decode as bd
    from gpuledger.batch_decode import decode_batch_fast, fast_decode
    from gpuledger.decode import decode_batch

    native = bd.native_reader()
    assert native is not None, "the native reader is not built (pip install -e .)"

    raws = fleet_messages(args.messages)
    n = len(raws)
    kw: dict[str, Any] = {
        "batch": 1,
        "max_message_bytes": 1 << 20,
        "partitions": [0] * n,
        "offsets": list(range(n)),
    }
    assert fast_decode(raws, **kw) is not None, "the fleet batch must take the whole-batch path"
    ref, got = decode_batch(raws, **kw), decode_batch_fast(raws, **kw)
    assert all(ref.tables[k].equals(got.tables[k]) for k in ref.tables), "paths disagree"

    blob = b"\n".join(raws)
    ends = [e - 1 for e in accumulate(len(r) + 1 for r in raws)]

    cases: dict[str, Callable[[], Any]] = {
        "decode_batch": lambda: decode_batch(raws, **kw),
        "decode_batch_fast, native": lambda: decode_batch_fast(raws, **kw),
        "  (native read alone)": lambda: native.read(blob, ends),
    }
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in cases.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - w) / n * 1e6)
            cpu[name].append((time.process_time() - c) / n * 1e6)
    load1 = os.getloadavg()[0]
    size = sum(map(len, raws)) / n / 1024
    print(
        f"{n} fleet ticks ({size:.1f} KiB/msg), {args.rounds} rounds, load average {load0:.2f} -> {load1:.2f}"
    )
    print(f"{'path':28s} {'wall us/msg':>12s} {'CPU us/msg':>11s} {'CPU min':>8s} {'vs decode_batch':>16s}")
    base = statistics.median(cpu["decode_batch"])
    for name in cases:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:28s} {w:12.1f} {c:11.1f} {min(cpu[name]):8.1f} {c / base:16.2f}")


if __name__ == "__main__":
    main()
