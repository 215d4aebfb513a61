"""Month close on a big lake, beside DuckDB's bare scan-and-group-by of the same slice files.

    python bench/close_bench.py [--gpus 1000] [--slices 4000] [--days 30] [--interval 60]
                                [--lake /tmp/gpuledger-close-bench] [--threads N] [--memory-limit 3GB]

Generates the lake once (bench/lakegen.py: samples straight into Parquet, reused while the
parameters match), then in the same run, each in its own process so its peak memory is its own:
  1. bare:  SELECT slice_id, hour, sum(util), count(*) FROM <all slice files> GROUP BY ALL,
  2. close: `close_month` from nothing (rollups and ledger removed first): rollups of every date,
            charges, conservation, ledger + manifest.
Prints a table; record the numbers in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE = """
import duckdb, sys, time
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
if sys.argv[2]: con.execute(f"SET threads = {int(sys.argv[2])}")
if sys.argv[3]: con.execute(f"SET memory_limit = '{sys.argv[3]}'")
t = time.perf_counter()
n = con.sql(f'''SELECT count(*), sum(c) FROM (
    SELECT slice_id, date_trunc('hour', ts) AS h, sum(util_pct) AS u, count(*) AS c
    FROM read_parquet('{sys.argv[1]}/samples/slice/*/*.parquet') GROUP BY ALL)''').fetchall()[0]
print(time.perf_counter() - t, n[0], n[1])
"""

CLOSE = """
import sys, time
from datetime import UTC, datetime
sys.path.insert(0, sys.argv[4])
from warehouse.close import CloseSettings, close_month
sys.path.insert(0, sys.argv[4] + '/bench')
from lakegen import MODELS
prices = ["3.20", "1.95", "4.10", "0.80", "0.55"]
book = tuple({"model": m[0], "gpu_hour": p, "from": "2026-01-01"} for m, p in zip(MODELS, prices))
rules = tuple({"tenant": f"tenant-{i % 12}", "namespace": f"team-{i:02d}"} for i in range(30))
s = CloseSettings(rules, "unassigned", "USD", book, "0.12", "reserved", "platform", 0.05, 30.0)
t = time.perf_counter()
res = close_month(sys.argv[1], sys.argv[5], s, now=datetime(2030, 1, 1, tzinfo=UTC),
                  threads=int(sys.argv[2]) if sys.argv[2] else None, memory_limit=sys.argv[3] or None)
print(time.perf_counter() - t, len(res.lines), res.manifest["totals"]["cost"])
"""


def run(code: str, *args: str) -> tuple[float, str, float]:
    """Run `code` in a fresh Python; (seconds, its output, peak RSS in MB via /usr/bin/time -v)."""
    t = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", code, *args], capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    rss = next(
        int(line.split()[-1]) / 1024
        for line in out.stderr.splitlines()
        if "Maximum resident set size" in line
    )
    return wall, out.stdout.strip(), rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--slices", type=int, default=4000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--lake", default="/tmp/gpuledger-close-bench")
    ap.add_argument("--threads", default="")
    ap.add_argument("--memory-limit", default="3GB")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from lakegen import ensure_lake

    lake = ensure_lake(
        args.lake, gpus=args.gpus, slices=args.slices, days=args.days, interval_s=args.interval
    )
    for sub in ("rollups", "ledger"):
        shutil.rmtree(lake / sub, ignore_errors=True)
    size = sum(p.stat().st_size for p in (lake / "samples").rglob("*.parquet")) / 1e9
    month = "2026-10"

    _, bare_out, bare_rss = run(BARE, str(lake), args.threads, args.memory_limit)
    bare_s, groups, rows = bare_out.split()
    _, close_out, close_rss = run(CLOSE, str(lake), args.threads, args.memory_limit, str(REPO), month)
    close_s, lines, cost = close_out.split()
    again_wall, _, again_rss = run(CLOSE, str(lake), args.threads, args.memory_limit, str(REPO), month)

    print()
    print(
        f"lake: {args.gpus} GPUs, {args.slices} slices, {args.days} days at {args.interval:.0f} s: "
        f"{int(rows):,} slice rows, {size:.2f} GB of Parquet; threads={args.threads or 'all'}, "
        f"memory_limit={args.memory_limit}"
    )
    print(f"{'step':<44}{'seconds':>10}{'peak RSS MB':>14}{'x bare':>9}")
    print(
        f"{'bare DuckDB scan + group by (slice, hour)':<44}{float(bare_s):>10.1f}{bare_rss:>14.0f}{1:>9.2f}"
    )
    print(
        f"{'close from nothing (rollups + ledger)':<44}{float(close_s):>10.1f}{close_rss:>14.0f}"
        f"{float(close_s) / float(bare_s):>9.2f}"
    )
    print(
        f"{'close again (rollups current, same bytes)':<44}{again_wall:>10.1f}{again_rss:>14.0f}"
        f"{again_wall / float(bare_s):>9.2f}"
    )
    print(f"ledger: {lines} lines, total USD {cost}; {int(groups):,} (slice, hour) groups")


if __name__ == "__main__":
    main()
