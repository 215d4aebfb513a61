"""The lake's four sample tables (tick, gpu, slice, process) as Arrow schemas: the one definition
that the decoders write and the warehouse reads.

Column types come from the message schema (`sample.schema.json` through `gpuledger.schema.rules`),
so a field added to the message is a column here without a second list of types.
"""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from gpuledger.schema import rules

# -- the lake's columns -------------------------------------------------------------------------
# Row tables repeat the tick identity so each file can be read on its own; Parquet's
# run-length encoding makes the repetition nearly free.

TABLES = ("tick", "gpu", "slice", "process")
TS_TYPE = pa.timestamp("us", tz="UTC")
LABELS_TYPE = pa.map_(pa.string(), pa.string())

# GPM profiling activity (issue 17), on GPUs and on MIG slices; appended after the original
# columns so that a reader of the first columns sees the same table.
PROF_FIELDS = ("sm_active_pct", "sm_occupancy_pct", "tensor_active_pct", "dram_active_pct")
# Memory health (issue 17): the tick's first critical Xid, ECC counts and memory repair (page
# retirement before Ampere, row remapping since), appended after the Xid columns.
HEALTH_FIELDS = (
    "xid_critical",
    "ecc_corrected",
    "ecc_uncorrected",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "retired_pages_pending",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "row_remap_pending",
    "row_remap_failed",
)
GPU_FIELDS = (
    "uuid",
    "index",
    "model",
    "mem_total_mib",
    "mem_used_mib",
    "util_pct",
    "power_w",
    "energy_j",
    "temp_c",
    "mig_mode",
    "state",
    *PROF_FIELDS,
    "sm_clock_mhz",
    "mem_clock_mhz",
    "clocks_event_reasons",
    "xid_count",
    "xid_last",
    *HEALTH_FIELDS,
)
SLICE_FIELDS = (
    "slice_id",
    "gpu_uuid",
    "kind",
    "mem_cap_mib",
    "core_cap_pct",
    "mem_used_mib",
    "util_pct",
    "last_kernel_age_s",
    "mig_profile",
    "gi_id",
    "ci_id",
    "mig_uuid",
    "compute_slices",
    "memory_slices",
    "gpu_compute_slices",
    "gpu_memory_slices",
    "replicas",
    *PROF_FIELDS,
)
WORKLOAD_FIELDS = ("namespace", "pod", "container", "pod_uid", "labels", "job_id", "account", "user")
PROCESS_FIELDS = (
    "pid",
    "gpu_uuid",
    "slice_id",
    "mem_used_mib",
    "sm_util_pct",
    "container_id",
    "pod_uid",
    "job_id",
    "user",
)


@cache
def table_schema(kind: str) -> pa.Schema:
    """Arrow schema of one lake table: tick, gpu, slice or process."""
    r = rules()
    base = [
        ("batch", pa.int64()),
        ("cluster", pa.string()),
        ("node", pa.string()),
        ("boot_id", pa.string()),
        ("seq", pa.int64()),
        ("ts", TS_TYPE),
        ("interval_s", pa.float64()),
    ]
    if kind == "tick":
        return pa.schema(
            [
                *base,
                ("n_gpus", pa.int32()),
                ("n_slices", pa.int32()),
                ("n_processes", pa.int32()),
                ("src_partition", pa.int32()),
                ("src_offset", pa.int64()),
            ]
        )
    if kind == "gpu":
        return pa.schema(base + [(f, r["gpu"].fields[f].arrow) for f in GPU_FIELDS])
    if kind == "slice":
        extra = [("model", pa.string()), ("gpu_mem_total_mib", pa.int64())]
        cols = [(f, r["slice"].fields[f].arrow) for f in SLICE_FIELDS]
        wl = [(f, LABELS_TYPE if f == "labels" else r["workload"].fields[f].arrow) for f in WORKLOAD_FIELDS]
        return pa.schema(base + extra + cols + wl)
    if kind == "process":
        return pa.schema(base + [(f, r["process"].fields[f].arrow) for f in PROCESS_FIELDS])
    raise KeyError(kind)
