"""Steady state at fleet scale: a simulated fleet of N GPUs producing at its real rate through the
real broker while `gpuledger ingest`, `gpuledger jobs` (rollups, alerts and idle detection) and
`gpuledger dashboard` run, for a fixed window of fleet time.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092 python bench/steady_state.py --gpus 5000,10000,20000 \\
        --window 240 --cycle 60

Each N: 8 GPUs a node (H100 80GB), 4 HAMi vGPU slices a GPU (a third of them idle), one process a
slice, one message a node every 10 s of fleet time, sent at wall-clock pace. The jobs runner runs
the rollups every `--cycle` seconds (5 minutes in production; shorter here so a short window holds
several cycles) and the alerts every 60 s. Reported per N: per-cycle rollup time (the update alone,
and the whole job with the idle-period stitching), slice rows and hours recomputed, the same-run
baseline (DuckDB's bare scan of the slice rows that arrived in the cycle), ingest lag (Kafka
messages not yet committed, sampled every second: max and at the end), CPU (cores) and peak RSS
per process (with its children: ingest's decoder workers). N is sustained when the ingest lag at
the end of the window is under two ticks of messages and every rollup cycle finished within its
interval. The producer (the fleet: in production, other machines) runs on the same two cores and
is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPUS_PER_NODE = 8
SLICES_PER_GPU = 4
TICK_S = 10.0
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Fleet:
    """N GPUs as message templates: per tick only the timestamps, sequence and readings move."""

    def __init__(self, n_gpus: int, seed: int = 16) -> None:
        rnd = random.Random(seed)
        self.nodes: list[dict[str, Any]] = []
        for n in range(-(-n_gpus // GPUS_PER_NODE)):
            gpus, slices, procs = [], [], []
            for g in range(min(GPUS_PER_NODE, n_gpus - n * GPUS_PER_NODE)):
                uuid_ = f"GPU-{n:06d}{g:02d}-0000-4000-8000-{rnd.getrandbits(48):012x}"
                gpus.append(
                    {
                        "uuid": uuid_,
                        "index": g,
                        "model": "NVIDIA H100 80GB HBM3",
                        "mem_total_mib": 81559,
                        "mem_used_mib": 0,
                        "util_pct": 0.0,
                        "power_w": 300.0,
                        "energy_j": 3000.0,
                        "temp_c": 50,
                        "mig_mode": False,
                        "state": "ok",
                    }
                )
                for s in range(SLICES_PER_GPU):
                    pod = f"p{n}-{g}-{s}"
                    sid = f"{uuid_}:hami:{pod}/main"
                    slices.append(
                        {
                            "slice_id": sid,
                            "gpu_uuid": uuid_,
                            "kind": "vgpu",
                            "mem_cap_mib": 20480,
                            "core_cap_pct": 25,
                            "mem_used_mib": 8000,
                            "util_pct": 0.0,
                            "last_kernel_age_s": 1,
                            "workload": {
                                "namespace": f"team-{(n + s) % 12}",
                                "pod": pod,
                                "container": "main",
                                "pod_uid": pod,
                                "labels": {"team": f"t{s}"},
                            },
                        }
                    )
                    procs.append(
                        {
                            "pid": 1000 + s,
                            "gpu_uuid": uuid_,
                            "slice_id": sid,
                            "mem_used_mib": 7900,
                            "sm_util_pct": 0.0,
                            "pod_uid": pod,
                        }
                    )
            self.nodes.append(
                {
                    "schema": "gpuledger.sample/v1",
                    "cluster": f"c{n % 4}",
                    "node": f"node-{n:05d}",
                    "boot_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                    "seq": 0,
                    "ts": "",
                    "interval_s": TICK_S,
                    "gpus": gpus,
                    "slices": slices,
                    "processes": procs,
                }
            )

    def messages(self, k: int) -> list[tuple[bytes, bytes]]:
        ts = (START + timedelta(seconds=TICK_S * (k + 1))).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = []
        for i, m in enumerate(self.nodes):
            m["seq"], m["ts"] = k, ts
            for j, (s, p) in enumerate(zip(m["slices"], m["processes"], strict=True)):
                busy = (i + j) % 3 != 0  # a third of the slices sit idle
                u = float((7 * k + 13 * j + i) % 20 + 5) if busy else 0.0
                s["util_pct"] = p["sm_util_pct"] = u
            for g_i, g in enumerate(m["gpus"]):
                g["util_pct"] = sum(s["util_pct"] for s in m["slices"][g_i * 4 : g_i * 4 + 4])
            out.append((m["node"].encode(), orjson.dumps(m)))
        return out


def produce(
    fleet: Fleet, bootstrap: str, topic: str, window_s: float, sent: list[int], cpu: list[float]
) -> None:
    """One tick of every node each 10 s of wall time, for `window_s`."""
    from kafka import KafkaProducer

    prod = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=50,
        batch_size=1 << 20,
        max_request_size=8 << 20,
        compression_type=None,
    )
    t0 = time.monotonic()
    c0 = time.thread_time()
    for k in range(int(window_s / TICK_S)):
        wait = t0 + k * TICK_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        for key, value in fleet.messages(k):
            prod.send(topic, key=key, value=value)
        prod.flush()
        sent[0] += len(fleet.nodes)
    prod.close()
    cpu[0] = time.thread_time() - c0


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a process and its children."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / ticks
            rss += int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo += [int(c) for c in kids]
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


def run_one(n_gpus: int, bootstrap: str, window_s: float, cycle_s: float, dashboard: bool) -> dict[str, Any]:
    from pipeline.kafka_lag import kafka_lag

    fleet = Fleet(n_gpus)
    base = f"bench-steady-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="steady-"))
    lake = work / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "GPULEDGER_KAFKA_TOPIC": base + ".samples",
            "GPULEDGER_KAFKA_DLQ_TOPIC": base + ".dlq",
            "GPULEDGER_KAFKA_CAPS_TOPIC": base + ".caps",
            "GPULEDGER_KAFKA_CAP_ACKS_TOPIC": base + ".acks",
            "GPULEDGER_KAFKA_GROUP_ID": base,
            "GPULEDGER_KAFKA_PARTITIONS": "4",
            "GPULEDGER_LAKE_PATH": str(lake),
            "GPULEDGER_LAKE_MAX_TICK_AGE_S": "0",
            "GPULEDGER_JOBS_ROLLUPS_MINUTES": str(cycle_s / 60),
            "GPULEDGER_JOBS_ALERTS_SECONDS": "60",
            "GPULEDGER_DASHBOARD_AUTH": "trusted-header",
            "GPULEDGER_COLLECTOR_SPOOL_DIR": str(work / "spool"),
            "GPULEDGER_PRICING_BOOK": json.dumps(
                [{"model": "NVIDIA H100 80GB HBM3", "gpu_hour": "3.00", "from": "2026-01-01"}]
            ),
        }
    )
    cli = [sys.executable, "-m", "gpuledger.cli"]

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(work / f"{name}.log", "wb") as log:
            return subprocess.Popen([*cli, *args], env=env, cwd=work, stdout=log, stderr=log)

    procs = {"ingest": start("ingest", "ingest")}
    time.sleep(3)  # topics created, consumer subscribed
    procs["jobs"] = start("jobs", "jobs", "--only", "rollups,alerts", "--for", str(window_s + cycle_s))
    port = 18000 + random.randrange(1000)
    sent, prod_cpu = [0], [0.0]
    producer = threading.Thread(
        target=produce, args=(fleet, bootstrap, base + ".samples", window_s, sent, prod_cpu)
    )
    cpu0 = {name: tree_usage(p.pid)[0] for name, p in procs.items()}
    peak = dict.fromkeys(procs, 0)
    lag_max, lag_end, page_ms = 0, 0, []
    t0 = time.monotonic()
    producer.start()
    while producer.is_alive() or time.monotonic() - t0 < window_s + 5:
        time.sleep(1.0)
        if dashboard and "dashboard" not in procs and (lake / "rollups").exists():  # it needs a lake
            procs["dashboard"] = start("dashboard", "dashboard", "--port", str(port))
            cpu0["dashboard"], peak["dashboard"] = tree_usage(procs["dashboard"].pid)[0], 0
        for name, p in procs.items():
            peak[name] = max(peak[name], tree_usage(p.pid)[1])
        try:
            lag_end = kafka_lag(bootstrap, base, base + ".samples", base + "-lag").total
            lag_max = max(lag_max, lag_end)
        except Exception:  # the group may not have committed yet
            pass
        if dashboard and int(time.monotonic() - t0) % 30 == 0:
            try:
                t = time.perf_counter()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/",
                    headers={"X-Forwarded-User": "bench", "X-Forwarded-Groups": "gpuledger-admins"},
                )
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                page_ms.append((time.perf_counter() - t) * 1000)
            except OSError:
                pass
    wall = time.monotonic() - t0
    cpu = {name: (tree_usage(p.pid)[0] - cpu0[name]) / wall for name, p in procs.items()}
    for name in ("dashboard", "ingest", "jobs"):
        if name in procs:
            procs[name].terminate()
    for p in procs.values():
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    cycles = job_log(lake)
    scan = bare_scans(lake, cycles)
    rollup_cycles = [c for c in cycles if c["job"] == "rollups"]
    sustained = lag_end < 2 * len(fleet.nodes) and all(c["duration_s"] < cycle_s for c in rollup_cycles)
    return {
        "gpus": n_gpus,
        "nodes": len(fleet.nodes),
        "sent": sent[0],
        "wall_s": wall,
        "lag_max": lag_max,
        "lag_end": lag_end,
        "cpu": cpu,
        "producer_cpu": prod_cpu[0] / wall,
        "rss_mb": {k: v / 2**20 for k, v in peak.items()},
        "cycles": rollup_cycles,
        "scan": scan,
        "alerts": [c for c in cycles if c["job"] == "alerts"],
        "page_ms": page_ms,
        "sustained": sustained,
        "lake_mb": sum(f.stat().st_size for f in (lake / "samples").rglob("*.parquet")) / 2**20,
        "work": str(work),
    }


def job_log(lake: Path) -> list[dict[str, Any]]:
    files = sorted((lake / "jobs").glob("date=*/*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    out = []
    for r in sorted(rows, key=lambda r: r["started_at"]):
        detail = json.loads(r["detail"] or "{}")
        out.append(
            {
                "job": r["job"],
                "started_at": r["started_at"],
                "finished_at": r["finished_at"],
                "duration_s": r["duration_s"],
                "result": r["result"],
                **detail,
            }
        )
    return out


def bare_scans(lake: Path, cycles: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Same-run baseline: DuckDB's bare scan of the slice rows that arrived before each rollup cycle
    (files by modification time), as (rows, seconds)."""
    files = sorted((lake / "samples" / "slice").glob("date=*/*.parquet"), key=lambda p: p.stat().st_mtime)
    out, seen = [], 0
    con = duckdb.connect()
    con.execute("SET threads = 2")
    for c in (c for c in cycles if c["job"] == "rollups"):
        cut = c["started_at"].timestamp()
        new = [f for f in files[seen:] if f.stat().st_mtime <= cut]
        seen += len(new)
        if not new:
            out.append((0, 0.0))
            continue
        lst = ", ".join(f"'{f}'" for f in new)
        t = time.perf_counter()
        rows = con.execute(
            f"SELECT count(*), sum(util_pct), sum(mem_used_mib) FROM read_parquet([{lst}])"
        ).fetchall()[0][0]
        out.append((rows, time.perf_counter() - t))
    return out


def report(r: dict[str, Any], cycle_s: float) -> None:
    print(
        f"\n## {r['gpus']:,} GPUs ({r['nodes']:,} nodes, {r['gpus'] * SLICES_PER_GPU:,} slices), "
        f"{r['wall_s']:.0f} s, {r['sent']:,} messages, lake {r['lake_mb']:.1f} MiB ({r['work']})"
    )
    print("\n| rollup cycle | update s | job s | hours | slice rows | bare scan s (rows) |")
    print("|---|---|---|---|---|---|")
    for i, c in enumerate(r["cycles"]):
        rows, s = r["scan"][i] if i < len(r["scan"]) else (0, 0.0)
        print(
            f"| {i + 1} | {c.get('update_s', 0):.2f} | {c['duration_s']:.2f} | {c.get('hours', '')} | "
            f"{c.get('slice_rows', 0):,} | {s:.2f} ({rows:,}) |"
        )
    al = r["alerts"]
    print(f"\nalerts: {len(al)} runs, mean {sum(a['duration_s'] for a in al) / max(1, len(al)):.2f} s")
    print(
        f"ingest lag (messages): max {r['lag_max']:,}, at the end {r['lag_end']:,} "
        f"(one tick = {r['nodes']:,})"
    )
    print("\n| process | CPU (cores) | peak RSS MiB |\n|---|---|---|")
    for k in r["cpu"]:
        print(f"| {k} | {r['cpu'][k]:.2f} | {r['rss_mb'][k]:.0f} |")
    print(f"| producer (the fleet) | {r['producer_cpu']:.2f} | - |")
    if r["page_ms"]:
        print(f"\ndashboard /: {len(r['page_ms'])} requests, max {max(r['page_ms']):.0f} ms")
    print(f"\nsustained (lag < 2 ticks, every rollup cycle < {cycle_s:.0f} s): {r['sustained']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", default="5000,10000,20000", help="comma list of fleet sizes, run in order")
    ap.add_argument("--window", type=float, default=240.0, help="fleet (= wall) seconds per size")
    ap.add_argument("--cycle", type=float, default=60.0, help="seconds between rollup runs")
    ap.add_argument("--no-dashboard", action="store_true")
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    best = 0
    for n in (int(x) for x in args.gpus.split(",")):
        r = run_one(n, bootstrap, args.window, args.cycle, not args.no_dashboard)
        report(r, args.cycle)
        sys.stdout.flush()
        if r["sustained"]:
            best = max(best, n)
    print(f"\nlargest N sustained on this machine: {best:,} GPUs")


if __name__ == "__main__":
    main()
