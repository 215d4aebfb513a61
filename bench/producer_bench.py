"""The producers' cost per tick, two source trees in one run: sample + encode, as the agent sends.

    python bench/producer_bench.py --before /tmp/old --after . [--repeat 3] [--ticks 30]

For issue 12 (typed ticks built in one place, encoded with msgspec): each tree's own agent loop
(`collector.agent.run_collector` into a memory transport) drives three backends: the simulated
fleet (seed 7, scale 1, every node each tick), the GenTD26 trace replay (8 GPUs a node) and the
NVML backend over bench/collector_bench.py's 8-GPU node (56 slices, 400 processes, through the
fake NVML). Each (tree, backend) runs in a fresh Python, the trees alternating, `--repeat` times,
after two warm-up ticks; the table gives the median ms per tick, after/before, and the bytes sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, statistics, sys, tempfile, time
from datetime import UTC, datetime
from pathlib import Path
tree, which, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [tree, tree + "/bench", tree + "/tests"]
from collector.agent import run_collector
from collector.transport import MemoryTransport
from gpuledger.bus import MemoryBus
fake = None
if which == "fleet":
    from collector.fleet import SimulatedFleet
    backend = SimulatedFleet(seed=7)
elif which == "replay":
    from collector.replay import TraceReplay
    from collector.traces import DATA_DIR
    backend = TraceReplay(DATA_DIR, start=datetime(2026, 11, 1, tzinfo=UTC), interval_s=60.0)
else:
    import collector_bench as cb
    from collector.nvml import NvmlBackend
    from collector.pod_resolvers import StaticFileResolver
    from collector.proc_identity import ProcAttributor
    work = Path(tempfile.mkdtemp())
    spec = cb.node_spec()
    cb.write_fixtures(spec, work)
    fake = cb.build_fake(spec)
    backend = NvmlBackend("bench", "node-1", 10.0, nvml=fake, clock=fake.clock,
        attributor=ProcAttributor(str(work / "proc"), str(work / "passwd")),
        resolver=StaticFileResolver(str(work / "pods.json")), hami_hook_dir=str(work / "vgpu"))
bus = MemoryBus()
tr = MemoryTransport(bus, "t")
def one():
    if fake is not None:
        fake.advance(10.0)
    t = time.perf_counter()
    run_collector(backend, tr, 10.0, ticks=1, realtime=False)
    return (time.perf_counter() - t) * 1000
one(); one()
n0 = bus.end("t")
times = [one() for _ in range(ticks)]
sent = bus.read_from("t", n0, 1 << 30)
print(json.dumps({"ms": statistics.median(times), "bytes": sum(len(v) for _, _, v in sent) / ticks}))
"""


def run(tree: str, which: str, ticks: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, tree, which, str(ticks)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=".")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ticks", type=int, default=30)
    args = ap.parse_args()
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    print("| backend | before ms/tick | after ms/tick | after/before | before B/tick | after B/tick |")
    print("|---|---:|---:|---:|---:|---:|")
    for which in ("fleet", "replay", "nvml"):
        res: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                res[name].append(run(tree, which, args.ticks))
        b = statistics.median(r["ms"] for r in res["before"])
        a = statistics.median(r["ms"] for r in res["after"])
        bb, ab = res["before"][0]["bytes"], res["after"][0]["bytes"]
        print(f"| {which} | {b:.2f} | {a:.2f} | {a / b:.2f} | {bb:,.0f} | {ab:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
