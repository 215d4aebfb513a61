"""Server time per dashboard page callback on a big lake's rollups, beside bare DuckDB baselines.

    python bench/dashboard_bench.py [--gpus 1000] [--slices 4000] [--days 30] [--interval 60]
                                    [--lake /tmp/gpuledger-dash-bench] [--repeat 20] [--no-saved-idle]

Generates the lake once (bench/lakegen.py, reused while the parameters match) and brings its
rollups up to date (Accounting.update(); only changed dates are rebuilt) and, as `gpuledger
jobs` does after each rollup update, stitches and saves the idle periods. Then, in this process,
the app is served on a loopback port and every page's data callback is POSTed the way the
browser's renderer does, as an admin (whole fleet) and as a tenant-viewer (one tenant): the first
call (cold: month caches filled) and `--repeat` more (p50 / p95 / max). Baselines in the same run:
  - rollup scan: a bare DuckDB group-by of the gpu_hourly rollup files (the overview's series),
  - raw scan: the same series computed from the raw GPU samples of the window (what a page would
    cost without rollups).
Goal: p95 < 300 ms per callback.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the test client of the dashboards (tests/dashboard_client.py)

PRICES = ["3.20", "1.95", "4.10", "0.80", "0.55"]
PAGES = [
    ("overview-cards", "/", ""),
    ("tenants-table", "/tenants", ""),
    ("tenant-detail", "/tenants/tenant-3", ""),
    ("chargeback-body", "/chargeback", ""),
    ("gpu-heatmap", "/gpus", ""),
    ("gpu-detail", "/gpus", "?gpu={gpu}"),
    ("idle-table", "/idle", ""),
    ("page", "/", ""),
]


def ms(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return statistics.median(xs) * 1000, p95 * 1000, xs[-1] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--slices", type=int, default=4000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--lake", default="/tmp/gpuledger-dash-bench")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-saved-idle", dest="saved_idle", action="store_false")
    args = ap.parse_args()

    import duckdb
    from dashboard_client import Client, app_config, call, serve, write_users
    from lakegen import MODELS, ensure_lake

    from dashboards.app import create_app
    from warehouse.accounting import Accounting

    lake = ensure_lake(
        args.lake, gpus=args.gpus, slices=args.slices, days=args.days, interval_s=args.interval
    )
    t = time.perf_counter()
    acct = Accounting(lake)
    stats = acct.update()
    acct.close()
    print(
        f"rollups: {stats.rebuilt} of {stats.dates} dates rebuilt in {time.perf_counter() - t:.1f} s",
        flush=True,
    )

    rules = [{"tenant": f"tenant-{i % 12}", "namespace": f"team-{i:02d}"} for i in range(30)]
    book = [{"model": m[0], "gpu_hour": p, "from": "2026-01-01"} for m, p in zip(MODELS, PRICES, strict=True)]
    users = lake / "bench-users.toml"
    write_users(users, "bench", {"admin": None, "viewer": ["tenant-3"]})
    cfg = app_config(lake, users, rules, book)
    # What `gpuledger jobs` does after each rollup update: stitch the idle periods once and save
    # them beside the rollups (`--no-saved-idle`: the dashboard stitches them on its first request).
    stitch_s = 0.0
    for old in (lake / "rollups" / "_derived").glob("idle-*.parquet"):
        old.unlink()  # stitched for this run (or not at all), not left over from another
    if args.saved_idle:
        from warehouse.close import CloseSettings

        t = time.perf_counter()
        keeper = CloseSettings.from_config(cfg).accounting(lake)
        keeper.save_idle()
        keeper.close()
        stitch_s = time.perf_counter() - t
        print(f"idle periods stitched and saved (jobs runner) in {stitch_s:.1f} s", flush=True)
    app = create_app(cfg)
    results: list[tuple[str, str, float, float, float, float]] = []
    with serve(app) as port:
        for user in ("admin", "viewer"):
            c = Client(port)
            c.login(user, "bench")
            deps = json.loads(c.get("/_dash-dependencies")[2])
            # a GPU this user can see, for the drill-down; for the admin, the process's first
            # request (idle periods loaded from the saved file, or stitched with --no-saved-idle)
            t0 = time.perf_counter()
            st, heat = call(c, deps, "gpu-heatmap", {"url.pathname": "/gpus", "url.search": ""})
            if user == "admin":
                first = (time.perf_counter() - t0) * 1000
                how = "saved idle periods" if args.saved_idle else "idle periods stitched"
                results.append((user, f"first request of the process ({how})", first, first, first, first))
            z = heat["response"]["gpu-heatmap"]["figure"]["data"][0]["customdata"]
            gpu = next(g for row in z for g in row if g)
            for out, path, search in PAGES:
                search = search.format(gpu=gpu)
                values = {"url.pathname": path, "url.search": search, "tick.n_intervals": 1}
                t0 = time.perf_counter()
                st, resp = call(c, deps, out, values, {"url.search": search})
                cold = time.perf_counter() - t0
                if st != 200:
                    raise SystemExit(f"{user} {out}: HTTP {st}: {str(resp)[:500]}")
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    st, _ = call(c, deps, out, values, {"url.search": search})
                    times.append(time.perf_counter() - t0)
                    assert st == 200
                results.append((user, f"{out} {path}", cold * 1000, *ms(times)))
            c.close()
        data = app.server.extensions["gpuledger"]["data"]
        end = data.latest()
    start = end - timedelta(days=7)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    roll = str(lake / "rollups" / "gpu_hourly" / "date=*" / "*.parquet")
    q_roll = f"""SELECT cluster, hour, sum(used_s) / sum(capacity_s) FROM read_parquet('{roll}')
                 WHERE hour >= TIMESTAMPTZ '{start.isoformat()}' AND hour < TIMESTAMPTZ '{end.isoformat()}'
                 GROUP BY ALL"""
    days = [(start + timedelta(days=i)).date().isoformat() for i in range(8)]
    raw_files = [str(p) for d in days for p in (lake / "samples" / "gpu" / f"date={d}").glob("*.parquet")]
    src = "read_parquet([" + ", ".join(f"'{p}'" for p in raw_files) + "])"
    q_raw = f"""SELECT cluster, date_trunc('hour', ts) AS hour, avg(util_pct) FROM {src}
                WHERE ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'
                GROUP BY ALL"""
    for name, q, n in (
        ("bare DuckDB: rollup scan (7 d series)", q_roll, args.repeat),
        ("bare DuckDB: raw-sample scan (7 d series)", q_raw, max(3, args.repeat // 4)),
    ):
        t0 = time.perf_counter()
        con.sql(q).fetchall()
        cold = time.perf_counter() - t0
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            con.sql(q).fetchall()
            times.append(time.perf_counter() - t0)
        results.append(("baseline", name, cold * 1000, *ms(times)))

    print()
    print(
        f"lake: {args.gpus} GPUs, {args.slices} slices, {args.days} days at {args.interval:.0f} s; "
        f"{args.repeat} timed calls per callback after a first (cold) one; loopback HTTP, one client"
    )
    print(f"{'who':<10}{'callback':<44}{'cold ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for who, name, cold, p50, p95, mx in results:
        flag = "" if who == "baseline" or p95 < 300 else "  > 300 ms"
        print(f"{who:<10}{name:<44}{cold:>10.0f}{p50:>10.0f}{p95:>10.0f}{mx:>10.0f}{flag}")


if __name__ == "__main__":
    main()
