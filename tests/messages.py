"""Hand-built v1 messages for tests: one of each slice kind on a two-GPU node."""

from __future__ import annotations

import copy
from typing import Any

G0 = "GPU-11111111-2222-3333-4444-555555555555"
G1 = "GPU-66666666-7777-8888-9999-000000000000"
BOOT = "0f0e0d0c-0b0a-4908-8706-050403020100"


def valid_message(seq: int = 0, node: str = "n1", ts: str = "2026-11-27T10:00:10Z") -> dict[str, Any]:
    return copy.deepcopy(
        {
            "schema": "gpuledger.sample/v1",
            "cluster": "c1",
            "node": node,
            "boot_id": BOOT,
            "seq": seq,
            "ts": ts,
            "interval_s": 10.0,
            "gpus": [
                {
                    "uuid": G0,
                    "index": 0,
                    "model": "NVIDIA A100-SXM4-80GB",
                    "mem_total_mib": 81920,
                    "mem_used_mib": 30000,
                    "util_pct": None,
                    "power_w": 210.5,
                    "energy_j": 2105.0,
                    "temp_c": 51,
                    "mig_mode": True,
                    "state": "ok",
                },
                {
                    "uuid": G1,
                    "index": 1,
                    "model": "NVIDIA H100 80GB HBM3",
                    "mem_total_mib": 81559,
                    "mem_used_mib": 40960,
                    "util_pct": 37.5,
                    "power_w": 310.2,
                    "energy_j": 3102.0,
                    "temp_c": 55,
                    "mig_mode": False,
                    "state": "ok",
                },
            ],
            "slices": [
                {
                    "slice_id": f"{G0}:mig:1:0",
                    "gpu_uuid": G0,
                    "kind": "mig",
                    "mem_cap_mib": 40192,
                    "mem_used_mib": 20000,
                    "util_pct": 40.0,
                    "mig_profile": "3g.40gb",
                    "gi_id": 1,
                    "ci_id": 0,
                    "mig_uuid": "MIG-abc",
                    "compute_slices": 3,
                    "memory_slices": 4,
                    "gpu_compute_slices": 7,
                    "gpu_memory_slices": 8,
                    "workload": {
                        "namespace": "ml-vision",
                        "pod": "train-0",
                        "container": "main",
                        "pod_uid": "u1",
                        "labels": {"team": "vision"},
                        "job_id": None,
                        "user": None,
                    },
                },
                {
                    "slice_id": f"{G1}:hami:u2/main",
                    "gpu_uuid": G1,
                    "kind": "vgpu",
                    "mem_cap_mib": 20480,
                    "core_cap_pct": 30,
                    "mem_used_mib": 9000,
                    "util_pct": 12.0,
                    "last_kernel_age_s": 3,
                    "workload": {
                        "namespace": "shared",
                        "pod": "infer-1",
                        "container": "main",
                        "pod_uid": "u2",
                        "labels": {"team": "nlp"},
                    },
                },
                {
                    "slice_id": f"{G1}:ts:0",
                    "gpu_uuid": G1,
                    "kind": "timeslice",
                    "replicas": 4,
                    "util_pct": 20.0,
                    "workload": {"job_id": "4242", "account": "physics", "user": "bob"},
                },
            ],
            "processes": [
                {
                    "pid": 4242,
                    "gpu_uuid": G1,
                    "slice_id": f"{G1}:hami:u2/main",
                    "mem_used_mib": 8900,
                    "sm_util_pct": 12.0,
                    "container_id": "c" * 64,
                    "pod_uid": "u2",
                    "user": "alice",
                },
                {
                    "pid": 5151,
                    "gpu_uuid": G0,
                    "slice_id": f"{G0}:mig:1:0",
                    "mem_used_mib": 20000,
                    "sm_util_pct": None,
                },
            ],
        }
    )


def whole_slice(gpu: str = G1) -> dict[str, Any]:
    return {
        "slice_id": f"{gpu}:whole",
        "gpu_uuid": gpu,
        "kind": "whole",
        "util_pct": 37.5,
        "workload": {"user": "carol"},
    }


def mutated(doc: dict[str, Any], mutations: list[tuple[tuple, Any, bool]]) -> dict[str, Any]:
    """A copy of `doc` with each (path, value, delete) applied where its path still exists.

    Property tests draw these: a mutation may have turned a list into an object (or a value
    into anything), so a later path that no longer fits is skipped, never forced (an int key in
    an object would not even be JSON).
    """
    out = copy.deepcopy(doc)
    for path, value, delete in mutations:
        node: Any = out
        try:
            for p in path[:-1]:
                node = node[p]
        except (KeyError, IndexError, TypeError):
            continue
        key = path[-1]
        if isinstance(node, dict) and isinstance(key, str):
            if delete:
                node.pop(key, None)
            else:
                node[key] = copy.deepcopy(value)
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node[key] = copy.deepcopy(value)
    return out


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in `doc` (object keys and list positions), for mutation tests to aim at."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(paths(v, (*prefix, i)))
    return out
