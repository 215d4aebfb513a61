"""A hand-worked two-node fleet for the accounting golden tests (numbers in test_accounting_golden.py).

Two hours around the midnight of 2026-10-15/16, one tick a minute:

- node-a (cluster east, A100 at $2.00/GPU-h until the 15th, $2.40 from the 16th):
  GPU A0 in MIG mode holds one 3g.40gb instance (share max(3/7, 4/8) = 0.5, activity 70 % ->
  used 0.7 x 3/7 = 0.3 of the GPU), tenant vision; GPU A1 is held whole by tenant research (label
  team=research), busy 50 % except 23:31-00:30 when it sits idle (an idle period across midnight
  and across the price change).
- node-b (cluster west, H100 at $3.60/GPU-h): GPU B0 carries two HAMi slices that over-commit it
  (shares 0.75 and 0.5 -> reserved 0.6 and 0.4), tenants nlp (namespace) and hpc-chem (Slurm
  account); GPU B1 is time-sliced 4 ways with 3 replicas held: alice-lab (unix user, busy 40 %:
  bursts above its 0.25), vision and nlp (10 % each). node-b misses the ticks 00:21-00:30 (agent
  down ten minutes): a gap that is unobserved, not billed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gpuledger.decode import decode_batch
from warehouse.lake import Lake, new_batch_id

A0 = "GPU-a0000000-0000-4000-8000-000000000000"
A1 = "GPU-a1000000-0000-4000-8000-000000000000"
B0 = "GPU-b0000000-0000-4000-8000-000000000000"
B1 = "GPU-b1000000-0000-4000-8000-000000000000"
BOOT_A = "aaaaaaaa-0000-4000-8000-000000000000"
BOOT_B = "bbbbbbbb-0000-4000-8000-000000000000"
A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
START = datetime(2026, 10, 15, 23, 0, tzinfo=UTC)
TICKS = 120
GAP = range(81, 91)  # node-b ticks 00:21 .. 00:30 (k = minutes after 23:00) are missing
ENERGY_J = 18000.0  # 300 W for 60 s per GPU tick

RULES = [
    {"tenant": "vision", "namespace": "vision"},
    {"tenant": "research", "label": "team=research"},
    {"tenant": "nlp", "namespace": "nlp"},
    {"tenant": "hpc-chem", "account": "chem"},
    {"tenant": "alice-lab", "user": "alice"},
]
BOOK = [
    {"model": A100, "gpu_hour": "2.00", "from": "2026-01-01"},
    {"model": A100, "gpu_hour": "2.40", "from": "2026-10-16"},
    {"model": H100, "gpu_hour": "3.60", "from": "2026-01-01"},
]


def _ts(k: int) -> str:
    return (START + timedelta(minutes=k)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gpu(uuid: str, index: int, model: str, mig: bool = False) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "index": index,
        "model": model,
        "mem_total_mib": 81920,
        "mem_used_mib": 1000,
        "util_pct": None if mig else 10.0,
        "power_w": 300.0,
        "energy_j": ENERGY_J,
        "temp_c": 50,
        "mig_mode": mig,
        "state": "ok",
    }


def node_a(k: int) -> dict[str, Any]:
    """Tick k (1..120) of node-a: ts = 23:00 + k minutes."""
    a1_busy = 0.0 if 31 <= k <= 90 else 50.0
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": "east",
        "node": "node-a",
        "boot_id": BOOT_A,
        "seq": k,
        "ts": _ts(k),
        "interval_s": 60.0,
        "gpus": [_gpu(A0, 0, A100, mig=True), _gpu(A1, 1, A100)],
        "slices": [
            {
                "slice_id": f"{A0}:mig:2:0",
                "gpu_uuid": A0,
                "kind": "mig",
                "mem_cap_mib": 40192,
                "mem_used_mib": 10000,
                "util_pct": 70.0,
                "mig_profile": "3g.40gb",
                "gi_id": 2,
                "ci_id": 0,
                "mig_uuid": "MIG-a0-2",
                "compute_slices": 3,
                "memory_slices": 4,
                "gpu_compute_slices": 7,
                "gpu_memory_slices": 8,
                "workload": {"namespace": "vision", "pod": "seg-0", "container": "main", "pod_uid": "p-seg"},
            },
            {
                "slice_id": f"{A1}:whole:p-sweep",
                "gpu_uuid": A1,
                "kind": "whole",
                "util_pct": a1_busy,
                "workload": {
                    "namespace": "lab",
                    "pod": "sweep-0",
                    "container": "main",
                    "pod_uid": "p-sweep",
                    "labels": {"team": "research"},
                },
            },
        ],
        "processes": [],
    }


def node_b(k: int) -> dict[str, Any]:
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": "west",
        "node": "node-b",
        "boot_id": BOOT_B,
        "seq": k,
        "ts": _ts(k),
        "interval_s": 60.0,
        "gpus": [_gpu(B0, 0, H100), _gpu(B1, 1, H100)],
        "slices": [
            {
                "slice_id": f"{B0}:hami:p-llm/main",
                "gpu_uuid": B0,
                "kind": "vgpu",
                "mem_cap_mib": 61440,  # 0.75 of 81920
                "core_cap_pct": 50,
                "mem_used_mib": 30000,
                "util_pct": 30.0,
                "last_kernel_age_s": 1,
                "workload": {"namespace": "nlp", "pod": "llm-0", "container": "main", "pod_uid": "p-llm"},
            },
            {
                "slice_id": f"{B0}:hami:job-4242",
                "gpu_uuid": B0,
                "kind": "vgpu",
                "mem_cap_mib": 20480,  # 0.25; the core term 0.5 wins
                "core_cap_pct": 50,
                "mem_used_mib": 8000,
                "util_pct": 20.0,
                "last_kernel_age_s": 1,
                "workload": {"job_id": "4242", "account": "chem", "user": "bob"},
            },
            {
                "slice_id": f"{B1}:ts:alice",
                "gpu_uuid": B1,
                "kind": "timeslice",
                "replicas": 4,
                "util_pct": 40.0,
                "workload": {"user": "alice", "job_id": "77"},
            },
            {
                "slice_id": f"{B1}:ts:p-infer",
                "gpu_uuid": B1,
                "kind": "timeslice",
                "replicas": 4,
                "util_pct": 10.0,
                "workload": {
                    "namespace": "vision",
                    "pod": "infer-1",
                    "container": "main",
                    "pod_uid": "p-infer",
                },
            },
            {
                "slice_id": f"{B1}:ts:p-embed",
                "gpu_uuid": B1,
                "kind": "timeslice",
                "replicas": 4,
                "util_pct": 10.0,
                "workload": {"namespace": "nlp", "pod": "embed-2", "container": "main", "pod_uid": "p-embed"},
            },
        ],
        "processes": [],
    }


def one_gpu_tick(
    ts: datetime,
    boot: str,
    seq: int,
    slices: list[dict[str, Any]],
    *,
    gpu: str,
    model: str = H100,
    node: str = "n1",
    cluster: str = "c",
) -> dict[str, Any]:
    """A tick of a node with one GPU and no processes (Δ = 60 s), for small hand-made lakes."""
    g = _gpu(gpu, 0, model)
    g.update(mem_used_mib=0, util_pct=None, power_w=None, energy_j=None, temp_c=None)
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": cluster,
        "node": node,
        "boot_id": boot,
        "seq": seq,
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "interval_s": 60.0,
        "gpus": [g],
        "slices": slices,
        "processes": [],
    }


def quarter_replica(gpu: str, util: float | None, slice_id: str, workload: dict[str, Any]) -> dict[str, Any]:
    """A replica of a GPU time-sliced 4 ways."""
    return {
        "slice_id": slice_id,
        "gpu_uuid": gpu,
        "kind": "timeslice",
        "replicas": 4,
        "util_pct": util,
        "workload": workload,
    }


def messages(late: bool = False) -> list[dict[str, Any]]:
    """The scenario's ticks; `late=True` gives only node-b's missing ticks (they arrive late)."""
    if late:
        return [node_b(k) for k in GAP]
    return [node_a(k) for k in range(1, TICKS + 1)] + [node_b(k) for k in range(1, TICKS + 1) if k not in GAP]


def write(lake: Lake, msgs: list[dict[str, Any]]) -> None:
    """Through the ingest decoder into the lake, as `gpuledger ingest` would write them."""
    batch = new_batch_id()
    decoded = decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20)
    assert not decoded.rejects, decoded.rejects[:3]
    lake.write_batch(decoded, batch)


def built_lake(root: Path) -> Path:
    """The scenario written to `root/lake` with its rollups built (what the dashboard tests serve)."""
    from warehouse.accounting import Accounting
    from warehouse.pricing import PriceBook

    lake = root / "lake"
    write(Lake(lake), messages())
    acct = Accounting(lake, tenant_rules=RULES, price_book=PriceBook(BOOK))
    acct.update()
    acct.close()
    return lake
