"""`gpuledger ingest` of several source trees on one topic, rounds alternating the trees.

Why: wall-clock ingest rates on a shared 2-core machine swing by 2x between runs, so a change is
judged against the tree before it in the same rounds, on the same messages, with the bare
kafka-python consumer of each round as the baseline. The topic is produced by the FIRST tree's
simulated fleet, so every tree can decode it (old producers stay valid under the v1 schema).

usage: python bench/ingest_ab.py --tree before=/path/to/worktree --tree after=. [--messages N]
       [--rounds R] [--bootstrap HOST:PORT]
Each tree needs its native reader (.so) built or copied into its gpuledger/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path


def produce(tree: str, bootstrap: str, topic: str, n: int) -> tuple[int, int, int]:
    code = (
        "import sys; sys.path.insert(0, 'bench'); import ingest_bench as b; "
        f"print(b.produce({bootstrap!r}, {topic!r}, {n}))"
    )
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    msgs, slices, size = out.stdout.strip().splitlines()[-1].strip("()").split(",")
    return int(msgs), int(slices), int(size)


def ingest(tree: str, bootstrap: str, topic: str, n: int, workers: int) -> dict:
    """One run of the tree's ingest (workers >= 0) or of the bare consumer (workers < 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    env.update(
        PYTHONPATH=tree,
        GPULEDGER_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        GPULEDGER_KAFKA_TOPIC=topic,
        GPULEDGER_KAFKA_GROUP_ID=f"ab-{uuid.uuid4().hex[:6]}",
        GPULEDGER_LAKE_PATH=tempfile.mkdtemp(prefix="ab-lake-"),
        GPULEDGER_LAKE_DECODE_WORKERS=str(max(0, workers)),
    )
    args = [sys.executable, f"{tree}/bench/ingest_bench.py", "--child", str(n)]
    out = subprocess.run(
        args + (["--bare"] if workers < 0 else []),
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree (repeat)")
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    a = ap.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree)
    trees = {k: str(Path(v).resolve()) for k, v in trees.items()}
    first = next(iter(trees.values()))
    topic = f"bench-ab-{uuid.uuid4().hex[:6]}"
    n, slices, size = produce(first, a.bootstrap, topic, a.messages)
    print(f"topic {topic}: {n} msgs, {slices} slice rows, {size / n / 1024:.1f} KiB/msg", flush=True)
    res: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in range(a.rounds):
        b = ingest(first, a.bootstrap, topic, n, -1)
        bare = slices / b["seconds"]
        res.setdefault("bare", []).append((bare, 1.0, b["max_rss_mb"], b["main_cpu_s"] / n * 1e6))
        for name, tree in trees.items():
            x = ingest(tree, a.bootstrap, topic, n, a.workers)
            assert x["slice_rows"] == slices, x
            rate = slices / x["seconds"]
            cpu = (x["main_cpu_s"] + x["worker_cpu_s"]) / n * 1e6
            res.setdefault(name, []).append((rate, rate / bare, x["max_rss_mb"], cpu))
        print(
            f"round {r + 1}: " + "; ".join(f"{k} {v[-1][0]:,.0f} rows/s" for k, v in res.items()), flush=True
        )
    print(
        f"| tree ({a.workers} decoder worker(s)) | slice rows/s median (runs) | vs bare, same round: median "
        "| peak MB max (runs) | CPU µs/msg median |"
    )
    print("|---|---|---|---|---|")
    for k, v in res.items():
        rates = ", ".join(f"{x[0] / 1000:.0f}k" for x in v)
        mbs = ", ".join(f"{x[2]:.0f}" for x in v)
        rate, ratio, cpu = (statistics.median(x[i] for x in v) for i in (0, 1, 3))
        print(
            f"| {k} | {rate:,.0f} ({rates}) | {ratio:.2f} | {max(x[2] for x in v):.0f} ({mbs}) | {cpu:.0f} |"
        )


if __name__ == "__main__":
    main()
