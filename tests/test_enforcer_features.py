"""Enforcer features from a small lake: 5-minute peaks, pinned ticks, suspected OOMs, the last sample,
each tick once even when a batch was delivered twice, and the closed-day rollup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gpuledger.decode import decode_batch
from warehouse.enforcer_features import latest_slices, windows
from warehouse.lake import Lake, new_batch_id

GPU = "GPU-e0000000-0000-4000-8000-000000000000"
SID = f"{GPU}:hami:p-llm/main"
START = datetime(2026, 11, 26, 23, 50, tzinfo=UTC)  # ten minutes before midnight


def tick(k: int, used: int, util: float, procs: int = 1, cap: int = 10_240) -> dict[str, Any]:
    """Tick k of one node: one vGPU slice (cap 10 GiB, core 50 %), one tick a minute."""
    ts = START + timedelta(minutes=k)
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": "c1",
        "node": "n1",
        "boot_id": "b0000000-0000-4000-8000-000000000000",
        "seq": k,
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "interval_s": 60.0,
        "gpus": [
            {
                "uuid": GPU,
                "index": 0,
                "model": "NVIDIA H100 80GB HBM3",
                "mem_total_mib": 81920,
                "mem_used_mib": used,
                "util_pct": util,
                "power_w": 100.0,
                "energy_j": 6000.0,
                "temp_c": 40,
                "mig_mode": False,
                "state": "ok",
            }
        ],
        "slices": [
            {
                "slice_id": SID,
                "gpu_uuid": GPU,
                "kind": "vgpu",
                "mem_cap_mib": cap,
                "core_cap_pct": 50,
                "mem_used_mib": used,
                "util_pct": util,
                "last_kernel_age_s": 1,
                "workload": {"namespace": "nlp", "pod": "llm-0", "container": "main", "pod_uid": "p-llm"},
            }
        ],
        "processes": [
            {
                "pid": 100 + i,
                "gpu_uuid": GPU,
                "slice_id": SID,
                "mem_used_mib": used // procs,
                "sm_util_pct": util,
            }
            for i in range(procs)
        ],
    }


def write(lake: Lake, msgs: list[dict[str, Any]]) -> None:
    batch = new_batch_id()
    decoded = decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20)
    assert not decoded.rejects
    lake.write_batch(decoded, batch)


def series() -> list[dict[str, Any]]:
    """20 ticks 23:51..00:10; a window holds the ticks stamped in it. Window 23:50: use 1000..4000,
    util 10 except 48 % at 23:53 (pinned: >= 50 - 5). Window 23:55: 9,800 MiB (>= 0.95 x 10,240) at
    23:57 with 2 processes, then 23:58 with one: a process gone at the cap -> suspected OOM. Window
    00:00: steady 3,000. Window 00:05: 9,900 at 00:07, then 9,000 at 00:08 with the same process
    count: near the cap but nothing gone -> no OOM. Window 00:10: one tick."""
    out = []
    for k in range(1, 21):
        used, util, procs = 3000, 10.0, 1
        if k <= 5:
            used = 1000 * k
        if k == 3:
            util = 48.0
        if k == 7:
            used, procs = 9800, 2
        if k == 17:
            used = 9900
        if k == 18:
            used = 9000
        out.append(tick(k, used, util, procs))
    return out


def test_windows_peaks_pinned_and_oom(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    msgs = series()
    write(lake, msgs)
    write(lake, msgs[5:9])  # a redelivered batch: each tick once
    now = START + timedelta(minutes=20)
    rows = windows(lake, now).to_pylist()
    got = [
        (
            r["w_start"].strftime("%H:%M"),
            r["mem_peak_mib"],
            r["util_max"],
            r["ticks"],
            r["pinned_ticks"],
            r["oom_suspect"],
        )
        for r in rows
    ]
    assert got == [
        ("23:50", 4000, 48.0, 4, 1, False),
        ("23:55", 9800, 10.0, 5, 0, True),
        ("00:00", 3000, 10.0, 5, 0, False),
        ("00:05", 9900, 10.0, 5, 0, False),
        ("00:10", 3000, 10.0, 1, 0, False),
    ]
    assert {r["slice_id"] for r in rows} == {SID}
    # the closed day's windows were written as a rollup and are read back from it
    (roll,) = (tmp_path / "rollups" / "enforcer_windows" / "date=2026-11-26").glob("w-*.parquet")
    assert windows(lake, now).to_pylist() == rows
    # late data for the closed day changes its committed files: the rollup is rebuilt
    late = tick(-9, 7000, 10.0)  # 23:41: arrives after the day's rollup was written
    late["seq"] = 1000
    write(lake, [late])
    rows2 = windows(lake, now).to_pylist()
    assert rows2[0]["w_start"].strftime("%H:%M") == "23:40" and rows2[0]["mem_peak_mib"] == 7000
    (roll2,) = (tmp_path / "rollups" / "enforcer_windows" / "date=2026-11-26").glob("w-*.parquet")
    assert roll2 != roll


def test_latest_slices_last_sample_and_tenant(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    write(lake, series())
    now = START + timedelta(minutes=20)
    (s,) = latest_slices(lake, now, [{"tenant": "lang", "namespace": "nlp"}])
    assert (s["slice_id"], s["tenant"], s["mem_cap_mib"], s["mem_used_mib"], s["core_cap_pct"]) == (
        SID,
        "lang",
        10_240,
        3000,
        50.0,
    )
    assert s["first_seen"] == START + timedelta(minutes=1) and s["last_ts"] == now
    assert (s["node"], s["pod_uid"], s["container"], s["kind"]) == ("n1", "p-llm", "main", "vgpu")
    assert latest_slices(lake, now, slice_ids=[]) == []
    assert latest_slices(lake, now - timedelta(minutes=15), hours=0.05)[0]["last_ts"] == START + timedelta(
        minutes=5
    )


def test_enforcer_history_kept_between_cycles_equals_a_cold_start(tmp_path: Path) -> None:
    """The job folds only the windows since the previous cycle's day into the history it keeps;
    across midnight and with a late tick of the day, its summaries equal a fresh build's."""
    import numpy as np

    from gpuledger.config import Config
    from pipeline.enforcer import Enforcer

    lake = Lake(tmp_path)
    msgs = series()
    write(lake, msgs[:5])  # 23:51..23:55
    cfg = Config()
    cfg.lake.path = str(tmp_path)
    kept = Enforcer(cfg)
    t1 = START + timedelta(minutes=6)
    kept.features(t1)
    write(lake, msgs[5:])  # the rest, over midnight
    late = tick(-9, 7000, 49.0)  # 23:41, a late tick of yesterday
    late["seq"] = 1000
    write(lake, [late])
    t2 = START + timedelta(minutes=20)
    (f,) = kept.features(t2)
    (g,) = Enforcer(cfg).features(t2)
    a, b = f.summary(t2, cfg.enforcer), g.summary(t2, cfg.enforcer)
    assert a == b
    assert (a.max24, a.core_p95, a.last_oom) == (9900.0, 49.0, START + timedelta(minutes=5))
    assert f.first_seen == g.first_seen == START - timedelta(minutes=10)
    assert kept.history is not None and g.history is not None
    assert np.allclose(kept.history.w[:1] / kept.history.w[:1].sum(), g.history.w[:1] / g.history.w[:1].sum())
