"""Per-tick cost of the spool's write-ahead (one append + fsync before the producer) beside today's path.

    python bench/spool_bench.py [--ticks 2000] [--dir /tmp/gpuledger-spool-bench]

Each tick is a real 12 KB simulated-fleet message sent through SpoolingTransport to an inner
transport that acknowledges at once (so only the spool's own work is timed), with
write_ahead on and off, alternating rounds so both see the same disk. Prints a table; record
it in bench/RESULTS.md. The directory should be on the disk the agent's spool will use: the
fsync is the cost.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from collector.fleet import SimulatedFleet
from collector.spool import SpoolingTransport


class _Done:
    is_done = True

    def failed(self) -> bool:
        return False

    def get(self, timeout: float | None = None) -> bool:
        return True


class _Acking:
    """An inner transport acknowledging every record at once."""

    def send(self, key: str, value: bytes) -> Any:
        return _Done()

    def flush(self) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def run(dirname: Path, msgs: list[bytes], write_ahead: bool) -> list[float]:
    shutil.rmtree(dirname, ignore_errors=True)
    sp = SpoolingTransport(_Acking, dirname, 256 << 20, write_ahead=write_ahead)
    out = []
    try:
        for m in msgs:
            t0 = time.perf_counter()
            sp.send("n1", m)
            out.append(time.perf_counter() - t0)
    finally:
        sp.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gpuledger-spool-bench"))
    args = ap.parse_args()
    fleet = SimulatedFleet(seed=7)
    msgs: list[bytes] = []
    while len(msgs) < args.ticks:
        msgs.extend(orjson.dumps(m) for m in fleet.next_tick())
    msgs = msgs[: args.ticks]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for wa in (False, True):
            times[wa].extend(run(args.dir, msgs, wa))
    shutil.rmtree(args.dir, ignore_errors=True)
    size = statistics.mean(len(m) for m in msgs)
    print(f"{args.ticks} ticks x {args.rounds} rounds, {size / 1024:.1f} KiB/tick, spool dir {args.dir}")
    print("| path | mean us/tick | p50 us | p95 us | p99 us |")
    print("|---|---:|---:|---:|---:|")
    for wa, name in (
        (False, "direct (today: ticks in memory until acked)"),
        (True, "write-ahead (fsync'd first)"),
    ):
        t = sorted(times[wa])
        p50, p95, p99 = (t[min(len(t) - 1, int(p * len(t)))] * 1e6 for p in (0.5, 0.95, 0.99))
        print(f"| {name} | {statistics.mean(t) * 1e6:.0f} | {p50:.0f} | {p95:.0f} | {p99:.0f} |")


if __name__ == "__main__":
    main()
