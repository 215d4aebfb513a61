"""A flood of malformed messages must not starve ingest (issue 12): the explaining path's rejects/s.

    python bench/reject_bench.py [--bad 10000] [--batch 2000] [--rounds 3]

Interleaves `--bad` malformed fleet ticks one to one with good ones (seed 7, 11.5 KiB each),
in batches of `--batch` messages as ingest cuts them, and decodes them as the ingest worker
does (`decode_batch_fast`: every such batch falls back to the explaining path). The kinds of
bad message cycle: invalid JSON, a duplicate key, unknown fields, missing fields, wrong types
and out-of-range values at each level, a slice on no GPU of the tick, a duplicate slice id,
an impossible date. Same run baseline: the same number of good messages alone (whole-batch
path). Prints rejects/s beside accepted/s; the goal is > 2,000 rejects/s on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _set(*path: Any, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        node: Any = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return mutate


def _del(*path: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        node: Any = doc
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]

    return mutate


MUTATIONS: list[tuple[str, Callable[[dict], None]]] = [
    ("seq negative", _set("seq", value=-1)),
    ("unknown top-level field", _set("extra", value=1)),
    ("missing cluster", _del("cluster")),
    ("gpu util above 100", _set("gpus", 0, "util_pct", value=250)),
    ("gpu unknown field", _set("gpus", 0, "fan", value=3)),
    ("slice util a string", _set("slices", -1, "util_pct", value="12")),
    ("slice kind unknown", _set("slices", 0, "kind", value="vgpux")),
    ("slice on no GPU of the tick", _set("slices", -1, "gpu_uuid", value="GPU-nope")),
    ("duplicate slice id", lambda d: d["slices"].append(dict(d["slices"][0]))),
    ("workload namespace empty", _set("slices", 0, "workload", value={"namespace": ""})),
    ("process pid zero", _set("processes", 0, "pid", value=0)),
    ("ts impossible date", _set("ts", value="2026-02-30T00:00:00Z")),
]


def bad_messages(good: list[bytes], n: int) -> list[bytes]:
    import orjson

    out: list[bytes] = []
    for i in range(n):
        doc = orjson.loads(good[i % len(good)])
        kind = i % (len(MUTATIONS) + 3)
        if kind == len(MUTATIONS):
            out.append(orjson.dumps(doc)[:-40])  # truncated: invalid JSON
        elif kind == len(MUTATIONS) + 1:
            out.append(orjson.dumps(doc).replace(b'"seq":', b'"seq":-1,"seq":', 1))  # duplicate key
        elif kind == len(MUTATIONS) + 2:
            out.append(b"\xff" + orjson.dumps(doc))  # not UTF-8
        else:
            name, mutate = MUTATIONS[kind]
            if name != "duplicate slice id" or doc["slices"]:
                mutate(doc)
            else:
                doc["seq"] = -1
            out.append(orjson.dumps(doc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bad", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from bench.decode_bench import fleet_messages
    from gpuledger.batch_decode import decode_batch_fast

    good = fleet_messages(args.bad)
    bad = bad_messages(good, args.bad)
    flood = [m for pair in zip(good, bad, strict=True) for m in pair]

    def run(msgs: list[bytes]) -> tuple[int, int]:
        accepted = rejected = 0
        for start in range(0, len(msgs), args.batch):
            out = decode_batch_fast(msgs[start : start + args.batch], batch=1, max_message_bytes=1 << 20)
            accepted += len(out.accepted)
            rejected += len(out.rejects)
        return accepted, rejected

    cases = {"good only (baseline)": good, "flood: good + bad, 1:1": flood}
    times: dict[str, list[float]] = {k: [] for k in cases}
    counts: dict[str, tuple[int, int]] = {}
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, msgs in cases.items():
            c = time.process_time()
            counts[name] = run(msgs)
            times[name].append(time.process_time() - c)
    load1 = os.getloadavg()[0]
    assert counts["flood: good + bad, 1:1"] == (args.bad, args.bad), counts
    print(
        f"{args.bad} bad + {args.bad} good fleet ticks, batches of {args.batch}, {args.rounds} rounds (median"
        f" CPU s), load {load0:.2f} -> {load1:.2f}"
    )
    print(
        f"{'case':26s} {'CPU s':>7s} {'accepted':>9s} {'rejected':>9s} {'accepted/s':>11s} {'rejects/s':>10s}"
    )
    for name in cases:
        t = statistics.median(times[name])
        a, r = counts[name]
        print(f"{name:26s} {t:7.2f} {a:9d} {r:9d} {a / t:11.0f} {r / t:10.0f}")


if __name__ == "__main__":
    main()
