"""One enforcer policy cycle (`decide`) over N vGPU slices with 8 days of 5-minute features, beside a
bare DuckDB scan of the same features (issue 10's benchmark; goal: 100,000 slices in < 10 s, < 1 GiB).

    PYTHONPATH=. .venv/bin/python bench/enforcer_cycle_bench.py --slices 1000

Each run is its own process so the peak resident set (VmHWM) is the cycle's. The features are made
here (deterministic), not read from a lake: this measures the policy, the scan is the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuledger.config import EnforcerConfig
from gpuledger.memory import peak_rss_mb
from pipeline.enforcer_policy import PolicyState, SliceFeatures, Window, decide

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def features(n: int, days: float) -> list[SliceFeatures]:
    w = int(days * 24 * 12)
    starts = [NOW - timedelta(minutes=5 * (w - k)) for k in range(w)]
    out = []
    for i in range(n):
        base = 8000 + (i * 7919) % 16000
        wins = tuple(
            Window(s, base + (k * 31 + i) % 2000, float((k * 13 + i) % 40), 30, 0, False)
            for k, s in enumerate(starts)
        )
        out.append(
            SliceFeatures(
                slice_id=f"GPU-{i // 8:06d}:hami:pod-{i:06d}/main",
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
                mem_used_mib=base,
                gpu_mem_total_mib=81920,
                pod_uid=f"pod-{i:06d}",
                container="main",
                windows=wins,
            )
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--days", type=float, default=8.0)
    ap.add_argument("--what", choices=("policy", "scan"), default="policy")
    a = ap.parse_args()
    if a.what == "scan":
        import duckdb

        w = int(a.days * 24 * 12)
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
    t0 = time.perf_counter()
    feats = features(a.slices, a.days)
    built = time.perf_counter() - t0
    cfg = EnforcerConfig(mode="enforce")
    t0 = time.perf_counter()
    decisions, _ = decide(PolicyState(), feats, NOW, cfg)
    took = time.perf_counter() - t0
    print(
        f"policy  slices={a.slices} windows={a.slices * len(feats[0].windows)} decisions={len(decisions)} "
        f"{took:.2f} s ({1e3 * took / a.slices:.2f} ms/slice; features built in {built:.1f} s) "
        f"peak {peak_rss_mb():.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
