"""The same work timed on two source trees in one run: month close, alert cycle, dashboard callbacks.

    python bench/before_after.py --before /tmp/old --after . [--gpus 200] [--slices 800] [--days 7]
                                 [--repeat 3] [--skip-dashboard]

For a refactor that must not make anything slower (issue 11: no step more than 10 % slower). Each
step runs in a fresh Python per tree, the trees alternating, `--repeat` times; the table gives the
median seconds per tree and after/before. The lake is generated once (bench/lakegen.py of the
`--after` tree) and shared: the close step removes rollups and ledger first, so each close is from
nothing; the alert step evaluates the lake's last `--alert-minutes` with a fresh state. The
dashboard step runs each tree's own bench/dashboard_bench.py on its own copy of the lake (rollup
versions differ between trees) and sums the p50 of every callback.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLOSE = """
import shutil, sys, time
from datetime import UTC, datetime
from pathlib import Path
sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[2] + '/bench')
from warehouse.close import CloseSettings, close_month
from lakegen import MODELS
lake = Path(sys.argv[1])
for d in ("rollups", "ledger"):
    shutil.rmtree(lake / d, ignore_errors=True)
prices = ["3.20", "1.95", "4.10", "0.80", "0.55"]
book = tuple({"model": m[0], "gpu_hour": p, "from": "2026-01-01"} for m, p in zip(MODELS, prices))
rules = tuple({"tenant": f"tenant-{i % 12}", "namespace": f"team-{i:02d}"} for i in range(30))
s = CloseSettings(rules, "unassigned", "USD", book, "0.12", "reserved", "platform", 0.05, 30.0)
t = time.perf_counter()
res = close_month(lake, sys.argv[3], s, now=datetime(2030, 1, 1, tzinfo=UTC))
print(time.perf_counter() - t, res.manifest["totals"]["cost"])
"""

ALERTS = """
import shutil, sys, time
from datetime import timedelta
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import duckdb
from gpuledger.config import Config
from pipeline.alerts import AlertEngine
try:
    from pipeline.alert_rules import AlertRules
except ImportError:  # before the alerts were cut into modules
    from pipeline.alerts import AlertRules
lake = Path(sys.argv[1])
shutil.rmtree(lake / "alerts", ignore_errors=True)
(end,) = duckdb.sql(f"SELECT max(ts) FROM read_parquet('{lake}/samples/tick/*/*.parquet')").fetchall()[0]
cfg = Config()
cfg.alerts.lookback_minutes = float(sys.argv[3])
cfg.alerts.rules = ["idle_slice", "idle_gpu", "pool_unallocated", "collector_silent"]
eng = AlertEngine(lake, AlertRules.from_config(cfg))
t = time.perf_counter()
ev = eng.evaluate(now=end)
print(time.perf_counter() - t, ev.ticks_read)
"""


def run(code: str, *args: str) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    first, *rest = out.stdout.split()
    return float(first), " ".join(rest)


def dashboard(tree: Path, lake: Path, a: argparse.Namespace) -> tuple[float, str]:
    """Sum of the p50 ms of every callback in the tree's own dashboard bench, and its cold first request."""
    cmd = [sys.executable, str(tree / "bench" / "dashboard_bench.py"), "--gpus", str(a.gpus), "--slices",
           str(a.slices), "--days", str(a.days), "--lake", str(lake), "--repeat", "5"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
    if out.returncode != 0:
        raise SystemExit(f"dashboard bench failed in {tree}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    p50 = 0.0
    row = re.compile(
        r"^(admin|viewer)\s+(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)"
    )  # who, callback, cold, p50, ...
    for line in out.stdout.splitlines():
        m = row.match(line)
        if m:
            p50 += float(m.group(4))
    return p50 / 1000.0, "sum of callback p50s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--gpus", type=int, default=200)
    ap.add_argument("--slices", type=int, default=800)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--alert-minutes", type=float, default=60.0)
    ap.add_argument("--lake", type=Path, default=Path("/tmp/gpuledger-before-after"))
    ap.add_argument("--skip-dashboard", action="store_true")
    a = ap.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    sys.path.insert(0, str(trees["after"]))
    sys.path.insert(0, str(trees["after"] / "bench"))
    from lakegen import ensure_lake

    t = time.perf_counter()
    info = ensure_lake(a.lake, gpus=a.gpus, slices=a.slices, days=a.days, interval_s=60.0)
    print(f"lake {a.lake}: {info} ({time.perf_counter() - t:.0f} s)", flush=True)
    month = sorted(p.name[5:12] for p in (a.lake / "samples" / "tick").glob("date=*"))[0]
    times: dict[tuple[str, str], list[float]] = {}
    notes: dict[tuple[str, str], str] = {}
    for i in range(a.repeat):
        for name, tree in trees.items():
            for step, fn in (
                ("close from nothing", lambda tr=tree: run(CLOSE, str(a.lake), str(tr), month)),
                ("alert cycle", lambda tr=tree: run(ALERTS, str(a.lake), str(tr), str(a.alert_minutes))),
            ):
                s, note = fn()
                times.setdefault((step, name), []).append(s)
                notes[(step, name)] = note
                print(f"run {i + 1} {name:6} {step:20} {s:8.2f} s  {note}", flush=True)
    if not a.skip_dashboard:
        for name, tree in trees.items():
            lake = a.lake.with_name(a.lake.name + f"-dash-{name}")
            if not lake.exists():
                shutil.copytree(a.lake / "samples", lake / "samples")
            s, note = dashboard(tree, lake, a)
            times.setdefault(("dashboard callbacks", name), []).append(s)
            print(f"{name:6} dashboard callbacks {s:8.3f} s  {note}", flush=True)
    print("\n| step | before s | after s | after / before |\n|---|---:|---:|---:|")
    for step in dict.fromkeys(k[0] for k in times):
        b, f = statistics.median(times[(step, "before")]), statistics.median(times[(step, "after")])
        ratio = f"{f / b:.2f}" if b else "n/a"
        print(f"| {step} | {b:.2f} | {f:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
