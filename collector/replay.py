"""`gpuledger collect --backend replay TRACE`: a real per-pod GPU trace replayed as v1 ticks.

TRACE is a directory in the GenTD26 layout (`pod_gpu_duty_cycle.csv.gz` and
`pod_gpu_memory_used_bytes.csv.gz`, DESIGN §10). Every pod of that trace served from a GPU of
its own, so here each pod holds one whole GPU; pods are placed in name order on nodes of
`gpus_per_node` GPUs. A tick reports a pod's busy % averaged over the tick (the trace samples
it overlaps, `Trace.busy_mean`) and the memory in effect at the tick's last instant. A pod
outside its own lifetime is absent: its GPU is reported with no slice (unallocated capacity),
which is how an autoscaled service looks to the ledger. The replay starts at `start` with the
trace's first sample and ends with its last (`ticks_total`).

Unlike the simulated fleet, nothing here is invented except placement and identities (node
names, GPU UUIDs, boot ids, PIDs), which are derived from the trace directory's name so that a
replay is the same every time.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from collector.tick import Gpu, Process, Slice, TickSource, Workload, build_tick, check_interval, format_ts
from collector.traces import DUTY_FILE, MEM_FILE, load_gentd26_from

MIB = 1 << 20


class TraceReplay(TickSource):
    """A GenTD26-format trace as a collector backend (`sample()` -> one typed tick per node)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        start: datetime,
        interval_s: float = 10.0,
        cluster: str = "replay",
        gpus_per_node: int = 8,
        model: str = "NVIDIA H100 80GB HBM3",
        mem_total_mib: int = 81559,
        namespace: str = "genai-serving",
    ) -> None:
        d = Path(directory)
        missing = [f for f in (DUTY_FILE, MEM_FILE) if not (d / f).is_file()]
        if missing:
            raise ValueError(f"replay trace {d}: missing {', '.join(missing)} (GenTD26 layout, DESIGN §10)")
        if start.tzinfo is None:
            raise ValueError(f"start={start!r}: expected a timezone-aware datetime (UTC)")
        check_interval(interval_s)
        if gpus_per_node < 1:
            raise ValueError(f"gpus_per_node={gpus_per_node!r}: expected an integer >= 1")
        self.trace = load_gentd26_from(d)
        self.start = start.astimezone(UTC)
        self.interval_s = float(interval_s)
        self.cluster, self.model, self.mem_total_mib, self.namespace = (
            cluster,
            model,
            mem_total_mib,
            namespace,
        )
        self.ticks_total = math.ceil(self.trace.period_s / self.interval_s)
        ns = uuid.uuid5(uuid.NAMESPACE_URL, f"gpuledger-replay:{d.resolve().name}:{cluster}")
        n_pods = len(self.trace.pods)
        self.nodes = [f"{cluster}-node-{i:03d}" for i in range(math.ceil(n_pods / gpus_per_node))]
        self._boot = {n: str(uuid.uuid5(ns, f"boot:{n}")) for n in self.nodes}
        # (node, index, gpu uuid, pod position or None)
        self._gpus: list[list[tuple[int, str, int | None]]] = []
        for k, node in enumerate(self.nodes):
            row = []
            for idx in range(gpus_per_node):
                pod = k * gpus_per_node + idx
                row.append((idx, f"GPU-{uuid.uuid5(ns, f'gpu:{node}:{idx}')}", pod if pod < n_pods else None))
            self._gpus.append(row)
        self._k = 0

    def sample(self) -> list[Any]:
        """The next interval of the trace; [] once the trace is over."""
        if self._k >= self.ticks_total:
            return []
        self._k += 1
        t1 = self._k * self.interval_s
        t0 = t1 - self.interval_s
        ts = format_ts(self.start + timedelta(seconds=t1))
        return [self._message(k, node, ts, t0, t1) for k, node in enumerate(self.nodes)]

    def _message(self, k: int, node: str, ts: str, t0: float, t1: float) -> Any:
        tr = self.trace
        gpus: list[Any] = []
        slices: list[Any] = []
        procs: list[Any] = []
        for idx, gpu_uuid, pod in self._gpus[k]:
            used_mib = 0
            util = 0.0
            if pod is not None:
                born, gone = tr.lifetime_s(pod)
                if born < t1 and t0 < gone:
                    name = tr.pods[pod]
                    util = round(tr.busy_mean(pod, t0, t1), 2)
                    # memory in effect at the tick's last instant (a sample starting at t1 is the next tick's)
                    used_mib = min(self.mem_total_mib, int(tr.mem_bytes(pod, min(t1, gone) - 1e-6) // MIB))
                    pod_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpuledger-replay-pod:{name}"))
                    slice_id = f"{gpu_uuid}:whole:{pod_uid}"
                    slices.append(
                        Slice(
                            slice_id=slice_id,
                            gpu_uuid=gpu_uuid,
                            kind="whole",
                            mem_cap_mib=None,
                            mem_used_mib=used_mib,
                            util_pct=util,
                            workload=Workload(
                                namespace=self.namespace,
                                pod=f"pod-{pod:03d}",
                                container="server",
                                pod_uid=pod_uid,
                                labels={"trace": "gentd26", "trace-pod": name},
                            ),
                        )
                    )
                    procs.append(
                        Process(
                            pid=1000 + pod,
                            gpu_uuid=gpu_uuid,
                            slice_id=slice_id,
                            mem_used_mib=used_mib,
                            sm_util_pct=util,
                            pod_uid=pod_uid,
                        )
                    )
            gpus.append(
                Gpu(
                    uuid=gpu_uuid,
                    index=idx,
                    model=self.model,
                    mem_total_mib=self.mem_total_mib,
                    mem_used_mib=used_mib,
                    util_pct=util,
                    mig_mode=False,
                    state="ok",
                )
            )
        return build_tick(
            self.cluster, node, self._boot[node], self._k - 1, ts, self.interval_s, gpus, slices, procs
        )
