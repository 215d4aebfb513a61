"""Generate a large lake straight into Parquet (no Kafka, no JSON) for the close and dashboard benches.

The shape follows what ingest writes (one batch per node-day here: one file per table and day),
so the close reads exactly the files it would read in production. Values are vectorised with
numpy: 1,000 GPUs x 4,000 slices x 30 days at 60 s is 173 million slice rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from warehouse.lake import Lake, schema_of

MODELS = [
    # name, memory MiB, MIG compute/memory slices (0: no MIG)
    ("NVIDIA H100 80GB HBM3", 81559, 7, 8),
    ("NVIDIA A100-SXM4-80GB", 81920, 7, 8),
    ("NVIDIA H200", 143771, 7, 8),
    ("Tesla V100-SXM2-32GB", 32768, 0, 0),
    ("NVIDIA GeForce RTX 4090", 24564, 0, 0),
]
NAMESPACES = [f"team-{i:02d}" for i in range(30)]


@dataclass
class Layout:
    """Static fleet: per slice row template (which node/GPU, kind, caps, identity)."""

    nodes: list[str]
    clusters: list[str]
    gpu_node: np.ndarray  # node index per GPU
    gpu_model: np.ndarray  # model index per GPU
    gpu_uuid: list[str]
    slices: dict[str, np.ndarray | list]


def build_layout(gpus: int, slices: int, seed: int = 1) -> Layout:
    rng = np.random.default_rng(seed)
    n_nodes = gpus // 8
    nodes = [f"node-{i:04d}" for i in range(n_nodes)]
    clusters = ["east" if i % 2 == 0 else "west" for i in range(n_nodes)]
    gpu_node = np.repeat(np.arange(n_nodes), 8)[:gpus]
    node_model = rng.integers(0, len(MODELS), n_nodes)
    gpu_model = node_model[gpu_node]
    gpu_uuid = [f"GPU-{uuid.UUID(int=int(rng.integers(1 << 62)) * 7 + i)}" for i in range(gpus)]
    rows: dict[str, list] = {
        k: []
        for k in (
            "gpu",
            "kind",
            "mem_cap_mib",
            "core_cap_pct",
            "compute_slices",
            "memory_slices",
            "replicas",
            "namespace",
            "mig_profile",
        )
    }
    # Kinds per GPU until the slice budget is spent: MIG 7x1g on MIG-able GPUs, vGPU 4 ways,
    # time-slice 4 ways, whole otherwise; the budget averages 4 slices per GPU.
    for g in range(gpus):
        remaining = slices - len(rows["gpu"])
        left_gpus = gpus - g
        m = MODELS[gpu_model[g]]
        per = max(1, round(remaining / left_gpus))
        if m[2] and per >= 6:
            kind, n = "mig", 7
        elif per >= 4:
            kind, n = ("vgpu", 4) if g % 2 else ("timeslice", 4)
        else:
            kind, n = "whole", 1
        n = min(n, max(1, remaining - (left_gpus - 1)))
        for _ in range(n):
            ns = NAMESPACES[int(rng.integers(len(NAMESPACES)))]
            rows["gpu"].append(g)
            rows["kind"].append(kind)
            rows["namespace"].append(ns)
            rows["mem_cap_mib"].append(m[1] // 3 if kind == "vgpu" else None)
            rows["core_cap_pct"].append(30.0 if kind == "vgpu" else None)
            rows["compute_slices"].append(1 if kind == "mig" else None)
            rows["memory_slices"].append(1 if kind == "mig" else None)
            rows["mig_profile"].append("1g.10gb" if kind == "mig" else None)
            rows["replicas"].append(4 if kind == "timeslice" else None)
    sl = {k: np.array(v, dtype=object) if k != "gpu" else np.array(v) for k, v in rows.items()}
    return Layout(nodes, clusters, gpu_node, gpu_model, gpu_uuid, sl)


def generate_lake(
    root: str | Path,
    *,
    gpus: int = 1000,
    slices: int = 4000,
    days: int = 30,
    interval_s: float = 60.0,
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC),
    seed: int = 1,
) -> dict[str, int]:
    """Write `days` days of samples; returns row counts per table."""
    lake = Lake(root)
    lay = build_layout(gpus, slices, seed)
    rng = np.random.default_rng(seed + 1)
    n_nodes = len(lay.nodes)
    per_day = int(86400 // interval_s)
    boot = {n: str(uuid.UUID(int=int(rng.integers(1 << 62)))) for n in lay.nodes}
    sg = lay.slices["gpu"]
    s_node = lay.gpu_node[sg]
    s_model = lay.gpu_model[sg]
    n_sl = len(sg)
    slice_ids = np.array(
        [f"{lay.gpu_uuid[g]}:{k}:{i}" for i, (g, k) in enumerate(zip(sg, lay.slices["kind"], strict=True))]
    )
    # A per-slice busy level: a third idle, the rest mixed.
    level = rng.choice([0.0, 0.02, 0.15, 0.4, 0.8], size=n_sl, p=[0.3, 0.1, 0.25, 0.2, 0.15])
    counts = {"tick": 0, "gpu": 0, "slice": 0}
    for day in range(days):
        d0 = start + timedelta(days=day)
        batch = 1_000_000 + day
        seq0 = day * per_day
        k = np.arange(per_day)
        ts = np.datetime64(d0.replace(tzinfo=None), "us") + (k + 1) * np.timedelta64(
            int(interval_s * 1e6), "us"
        )
        ts = ts - np.timedelta64(int(interval_s * 1e6), "us") // 2  # inside the day (no tick on midnight)
        # ticks: node-major
        t_node = np.repeat(np.arange(n_nodes), per_day)
        t_k = np.tile(k, n_nodes)
        tick = {
            "batch": np.full(len(t_node), batch, dtype=np.int64),
            "cluster": np.array(lay.clusters, dtype=object)[t_node],
            "node": np.array(lay.nodes, dtype=object)[t_node],
            "boot_id": np.array([boot[n] for n in lay.nodes], dtype=object)[t_node],
            "seq": seq0 + t_k,
            "ts": ts[t_k],
            "interval_s": np.full(len(t_node), interval_s),
            "n_gpus": np.full(len(t_node), 8, dtype=np.int32),
            "n_slices": np.zeros(len(t_node), dtype=np.int32),
            "n_processes": np.zeros(len(t_node), dtype=np.int32),
            "src_partition": np.zeros(len(t_node), dtype=np.int32),
            "src_offset": np.arange(len(t_node), dtype=np.int64),
        }
        # gpu rows: gpu-major x tick
        n_g = len(lay.gpu_node)
        g_idx = np.repeat(np.arange(n_g), per_day)
        g_k = np.tile(k, n_g)
        g_node = lay.gpu_node[g_idx]
        models = np.array([m[0] for m in MODELS], dtype=object)
        mem_tot = np.array([m[1] for m in MODELS])
        gpu = {
            "batch": np.full(len(g_idx), batch, dtype=np.int64),
            "cluster": np.array(lay.clusters, dtype=object)[g_node],
            "node": np.array(lay.nodes, dtype=object)[g_node],
            "boot_id": np.array([boot[n] for n in lay.nodes], dtype=object)[g_node],
            "seq": seq0 + g_k,
            "ts": ts[g_k],
            "interval_s": np.full(len(g_idx), interval_s),
            "uuid": np.array(lay.gpu_uuid, dtype=object)[g_idx],
            "index": (g_idx % 8).astype(np.int64),
            "model": models[lay.gpu_model[g_idx]],
            "mem_total_mib": mem_tot[lay.gpu_model[g_idx]],
            "mem_used_mib": rng.integers(0, 20000, len(g_idx)),
            "util_pct": rng.random(len(g_idx)) * 50,
            "power_w": 100 + rng.random(len(g_idx)) * 300,
            "energy_j": (100 + rng.random(len(g_idx)) * 300) * interval_s,
            "temp_c": np.full(len(g_idx), 50.0),
            "mig_mode": np.array([MODELS[m][2] > 0 for m in lay.gpu_model[g_idx]]),
            "state": np.full(len(g_idx), "ok", dtype=object),
        }
        # slice rows: slice-major x tick
        s_idx = np.repeat(np.arange(n_sl), per_day)
        s_k = np.tile(k, n_sl)
        sn = s_node[s_idx]
        busy = np.clip(level[s_idx] * (0.5 + rng.random(len(s_idx))), 0, 1) * 100
        kinds = lay.slices["kind"][s_idx]

        def col(name: str, idx: np.ndarray = s_idx) -> np.ndarray:
            return lay.slices[name][idx]

        sl = {
            "batch": np.full(len(s_idx), batch, dtype=np.int64),
            "cluster": np.array(lay.clusters, dtype=object)[sn],
            "node": np.array(lay.nodes, dtype=object)[sn],
            "boot_id": np.array([boot[n] for n in lay.nodes], dtype=object)[sn],
            "seq": seq0 + s_k,
            "ts": ts[s_k],
            "interval_s": np.full(len(s_idx), interval_s),
            "model": models[s_model[s_idx]],
            "gpu_mem_total_mib": mem_tot[s_model[s_idx]],
            "slice_id": slice_ids[s_idx],
            "gpu_uuid": np.array(lay.gpu_uuid, dtype=object)[sg[s_idx]],
            "kind": kinds,
            "mem_cap_mib": col("mem_cap_mib"),
            "core_cap_pct": col("core_cap_pct"),
            "mem_used_mib": rng.integers(0, 10000, len(s_idx)),
            "util_pct": busy,
            "last_kernel_age_s": None,
            "mig_profile": col("mig_profile"),
            "gi_id": None,
            "ci_id": None,
            "mig_uuid": None,
            "compute_slices": col("compute_slices"),
            "memory_slices": col("memory_slices"),
            "gpu_compute_slices": np.where(kinds == "mig", 7, None),
            "gpu_memory_slices": np.where(kinds == "mig", 8, None),
            "replicas": col("replicas"),
            "namespace": col("namespace"),
            "pod": None,
            "container": None,
            "pod_uid": None,
            "labels": None,
            "job_id": None,
            "account": None,
            "user": None,
        }
        date = d0.date().isoformat()
        name = f"part-{batch:020d}.parquet"
        for kind, data in (("slice", sl), ("gpu", gpu), ("tick", tick)):
            schema = schema_of(kind)
            n = len(data["batch"])
            arrays = []
            for f in schema:
                v = data.get(f.name)
                if v is None:
                    arrays.append(pa.nulls(n, f.type))
                elif f.type == pa.timestamp("us", tz="UTC"):
                    arrays.append(pa.array(v.astype("datetime64[us]")).cast(f.type))
                else:
                    arrays.append(pa.array(v, type=f.type, from_pandas=True))
            table = pa.Table.from_arrays(arrays, schema=schema)
            lake.write_file(table, lake.table_dir(kind) / f"date={date}" / name)
            counts[kind] += n
    return counts


def ensure_lake(
    root: str | Path, *, gpus: int = 1000, slices: int = 4000, days: int = 30, interval_s: float = 60.0
) -> Path:
    """The lake at `root`, generated unless one with the same parameters is already there."""
    import json
    import shutil
    import time

    lake = Path(root)
    params = {"gpus": gpus, "slices": slices, "days": days, "interval": interval_s}
    marker = lake / "bench-params.json"
    if not marker.exists() or json.loads(marker.read_text()) != params:
        shutil.rmtree(lake, ignore_errors=True)
        t = time.perf_counter()
        counts = generate_lake(lake, gpus=gpus, slices=slices, days=days, interval_s=interval_s)
        print(f"generated {counts} in {time.perf_counter() - t:.0f} s", flush=True)
        marker.write_text(json.dumps(params))
    return lake
