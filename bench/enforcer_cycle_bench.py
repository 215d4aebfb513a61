"""One enforcer policy cycle over N vGPU slices with 8 days of 5-minute features, beside a bare DuckDB
scan of the same features (issue 10's benchmark; goal: 100,000 slices in < 10 s, < 1 GiB).

    PYTHONPATH=. .venv/bin/python bench/enforcer_cycle_bench.py --slices 1000 [--what scan]

Each run is its own process so the peak resident set (VmHWM) is the run's. The policy run builds
the slices' history (pipeline/enforcer_history.py) from 8 days of windows, as the job does at its
first cycle (the cold start, timed apart), then times one steady cycle as the job runs it every
5 minutes: one new window per slice folded in, every slice's summaries, the features and `decide`.
The windows are made here (deterministic), not read from a lake: this measures the policy; the
scan is the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuledger.config import EnforcerConfig
from gpuledger.memory import peak_rss_mb
from pipeline.enforcer_history import FleetHistory
from pipeline.enforcer_policy import PolicyState, SliceFeatures, decide

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def slice_id(i: int) -> str:
    return f"GPU-{i // 8:06d}:hami:pod-{i:06d}/main"


def window(i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Memory peak and highest busy % of window k of slices i (the old bench's series)."""
    base = 8000 + (i * 7919) % 16000
    return (base + (k * 31 + i) % 2000).astype(np.float64), ((k * 13 + i) % 40).astype(np.float64)


def features(n: int, days: float, h: FleetHistory, rows: np.ndarray) -> list[SliceFeatures]:
    out = []
    for i in range(n):
        out.append(
            SliceFeatures(
                slice_id=slice_id(i),
                cluster="c1",
                node=f"n{i // 64:05d}",
                model="NVIDIA H100 80GB HBM3",
                kind="vgpu",
                tenant=f"t{i % 50:02d}",
                gpu_uuid=f"GPU-{i // 8:06d}",
                first_seen=NOW - timedelta(days=days + 1),
                last_ts=NOW,
                interval_s=10.0,
                mem_cap_mib=40960,
                core_cap_pct=50.0,
                mem_used_mib=8000 + (i * 7919) % 16000,
                gpu_mem_total_mib=81920,
                pod_uid=f"pod-{i:06d}",
                container="main",
                history=h,
                row=int(rows[i]),
            )
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--days", type=float, default=8.0)
    ap.add_argument("--what", choices=("policy", "scan"), default="policy")
    a = ap.parse_args()
    w = int(a.days * 24 * 12)
    if a.what == "scan":
        import duckdb

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "features.parquet"
            duckdb.sql(
                f"COPY (SELECT 'slice-' || (i // {w}) AS slice_id, "
                f"TIMESTAMPTZ '2026-11-19 12:00:00+00' + to_minutes(5 * (i % {w})) AS w_start, "
                "(8000 + i % 16000)::BIGINT AS mem_peak_mib, (i % 40)::DOUBLE AS util_max, "
                "30::BIGINT AS ticks, "
                f"0::BIGINT AS pinned_ticks, FALSE AS oom_suspect FROM range({a.slices * w}) t(i)) "
                f"TO '{p}' (FORMAT parquet)"
            )
            t0 = time.perf_counter()
            n = duckdb.sql(
                "SELECT count(*), sum(m), sum(q), sum(u), sum(pin) FROM (SELECT slice_id, "
                "max(mem_peak_mib) AS m, quantile_disc(mem_peak_mib, 0.98) AS q, "
                f"quantile_disc(util_max, 0.95) AS u, sum(pinned_ticks) AS pin FROM '{p}' GROUP BY slice_id)"
            ).fetchall()[0][0]
            took = time.perf_counter() - t0
        print(f"scan    slices={n} windows={a.slices * w} {took:.2f} s peak {peak_rss_mb():.0f} MB")
        return 0
    cfg = EnforcerConfig(mode="enforce")
    n = a.slices
    i = np.arange(n, dtype=np.int64)
    ones, zeros, no = np.full(n, 30), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.bool_)
    first = NOW - timedelta(minutes=5 * w)
    t0 = time.perf_counter()
    h = FleetHistory(cfg, rows=n)
    rows = h.rows([slice_id(x) for x in range(n)])
    for k in range(w):  # 8 days up to the window before NOW, one window index at a time
        mem, util = window(i, k)
        start = np.full(n, int((first + timedelta(minutes=5 * k)).timestamp()))
        h.fold_rows(rows, start, mem, util, ones, zeros, no)
    cold = time.perf_counter() - t0
    cold_mb = peak_rss_mb()
    t0 = time.perf_counter()
    mem, util = window(i, w)  # the steady cycle: the window starting at NOW
    h.fold_rows(rows, np.full(n, int(NOW.timestamp())), mem, util, ones, zeros, no)
    t1 = time.perf_counter()
    h.summaries(NOW, cfg)
    t2 = time.perf_counter()
    feats = features(n, a.days, h, rows)
    t3 = time.perf_counter()
    decisions, _ = decide(PolicyState(), feats, NOW, cfg)
    t4 = time.perf_counter()
    print(
        f"policy  slices={n} windows={n * (w + 1)} decisions={len(decisions)} cycle {t4 - t0:.2f} s "
        f"(fold {t1 - t0:.2f}, summaries {t2 - t1:.2f}, features {t3 - t2:.2f}, decide {t4 - t3:.2f}; "
        f"{1e3 * (t4 - t0) / n:.3f} ms/slice) peak {peak_rss_mb():.0f} MB; "
        f"cold start {cold:.1f} s, peak {cold_mb:.0f} MB; history {h.nbytes() / 2**20:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
