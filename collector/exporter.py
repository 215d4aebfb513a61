"""The node agent's Prometheus endpoint: the same readings as the tick messages, for live dashboards.

Why three families of names: existing Grafana dashboards query dcgm-exporter (``DCGM_FI_DEV_*``)
and HAMi's vGPU monitor (``hami_*``); exporting their names lets a platform team point those
dashboards at gpuledger instead of running three agents. What neither has (reserved share, slice
caps, per-process attribution, the agent's own health) is under ``gpuledger_``.

Everything is derived from one typed v1 tick (``update``; `collector.tick`, the Structs of
`gpuledger.typed`), the same object the agent encodes onto the topic, so every backend (NVML,
simulated, replay) exports the same way. Each update replaces that node's whole set of series at
once: a series of a process, slice or GPU that is gone, or whose value is null this tick, is
simply not in the new set, and a scrape never mixes two ticks. Null means absent, never 0.

Label conventions (kept the same on every metric of a family):

- DCGM series (``DCGM_FI_DEV_*``, ``DCGM_FI_PROF_*``): ``gpu`` (index), ``UUID``, ``device``
  (``nvidia<index>``), ``modelName``, ``hostname`` (the tick's node; dcgm-exporter renamed its
  ``Hostname`` label to ``hostname`` in May 2026; ``Hostname`` is still exported beside it for one
  release and then removed), and ``namespace``/``pod``/``container``: the
  workload of the GPU's ``whole`` slice when the GPU is handed out whole, else empty strings (a
  shared GPU has no single owner; its users are on the ``hami_*`` and ``gpuledger_slice_*``
  series). ``DCGM_FI_DEV_FB_USED``/``FB_FREE`` are MiB, ``POWER_USAGE`` W, ``GPU_TEMP`` °C,
  ``TOTAL_ENERGY_CONSUMPTION`` mJ accumulated from the ticks' ``energy_j`` deltas since the agent
  started (a counter in meaning; typed gauge because prometheus_client would rename a counter to
  ``..._total`` and break the dcgm-exporter name dashboards query with ``rate()``).
  ``SM_CLOCK``/``MEM_CLOCK`` are MHz; ``CLOCKS_EVENT_REASONS`` is NVML's bitmask
  (``nvmlClocksEventReason*``). ``DCGM_FI_PROF_SM_ACTIVE``, ``SM_OCCUPANCY``,
  ``PIPE_TENSOR_ACTIVE`` and ``DRAM_ACTIVE`` are ratios 0-1 as dcgm-exporter exports them (the
  tick carries %, from NVML's GPM metrics); a MIG instance's series add dcgm-exporter's
  ``GPU_I_PROFILE`` and ``GPU_I_ID`` labels. ``DCGM_FI_DEV_XID_ERRORS`` is dcgm-exporter's: the
  code of the last Xid error seen since the agent started, 0 while none was (absent where the
  GPU's Xid events cannot be read); ``gpuledger_gpu_xid_events_total`` counts them. Memory
  health in dcgm-exporter's names and units: ``DCGM_FI_DEV_ECC_SBE_VOL_TOTAL``/``DBE_VOL_TOTAL``
  (volatile corrected / uncorrected ECC error counts), ``RETIRED_SBE``/``RETIRED_DBE`` (pages),
  ``RETIRED_PENDING``, ``CORRECTABLE_REMAPPED_ROWS``/``UNCORRECTABLE_REMAPPED_ROWS``,
  ``ROW_REMAP_FAILURE``/``ROW_REMAP_PENDING`` (0/1); each only where the GPU reports it (page
  retirement before Ampere, row remapping since, ECC where it is on).
- HAMi series (vGPU slices whose pod is known): labels of HAMi ≥ 2.10's vGPU monitor:
  ``namespace``, ``pod``, ``container``, ``vdevice_index`` (the slice's position among that
  container's vGPU slices in the tick), ``device_uuid``. ``hami_vgpu_memory_*_bytes`` are bytes;
  ``hami_container_device_utilization_ratio`` is SM busy % (0-100), as HAMi exports it.
- ``gpuledger_slice_*``: ``slice_id``, ``kind``, ``UUID`` (physical GPU), ``hostname``,
  ``mig_profile``, ``namespace``, ``pod``, ``container``, ``job_id``, ``account``, ``user``.
- ``gpuledger_process_*``: ``pid``, ``UUID``, ``slice_id``, ``hostname``, ``namespace``/``pod``/
  ``container`` (from the process's slice), ``container_id``, ``pod_uid``, ``job_id``, ``user``.
Every series with ``hostname`` also carries the deprecated ``Hostname`` (same value) for one
release, so rules and dashboards written for the old label keep working while they move.
Unknown label values are empty strings (Prometheus treats them as absent).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from gpuledger.schema import parse_ts
from gpuledger.shares import share
from gpuledger.typed import from_builtins, tick_types

if TYPE_CHECKING:
    from collector.spool import SpoolStats

MIB = 1024 * 1024

GPU_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "hostname", "namespace", "pod", "container")
MIG_LABELS = (*GPU_LABELS, "GPU_I_PROFILE", "GPU_I_ID")
HAMI_LABELS = ("namespace", "pod", "container", "vdevice_index", "device_uuid")
SLICE_LABELS = (
    "slice_id",
    "kind",
    "UUID",
    "Hostname",
    "hostname",
    "mig_profile",
    "namespace",
    "pod",
    "container",
    "job_id",
    "account",
    "user",
)
PROC_LABELS = (
    "pid",
    "UUID",
    "slice_id",
    "Hostname",
    "hostname",
    "namespace",
    "pod",
    "container",
    "container_id",
    "pod_uid",
    "job_id",
    "user",
)

# name -> (type, help). Order is exposition order.
_SPECS: dict[str, tuple[str, str]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %), busy-time average over the tick."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": (
        "gauge",
        "Total energy consumption since the agent started (in mJ); monotonic, use rate()/increase().",
    ),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", "SM clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEM_CLOCK": ("gauge", "Memory clock frequency (in MHz)."),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": (
        "gauge",
        "Current clock event reasons (bitmask of nvmlClocksEventReason*; 0: none).",
    ),
    "DCGM_FI_DEV_XID_ERRORS": (
        "gauge",
        "Value of the last XID error encountered (0: none since agent start).",
    ),
    # memory health: dcgm-exporter's counters, typed gauge to keep the names (a prometheus_client
    # counter would gain "_total"), as TOTAL_ENERGY_CONSUMPTION
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("gauge", "Total number of single-bit volatile ECC errors."),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("gauge", "Total number of double-bit volatile ECC errors."),
    "DCGM_FI_DEV_RETIRED_SBE": ("gauge", "Total number of retired pages due to single-bit errors."),
    "DCGM_FI_DEV_RETIRED_DBE": ("gauge", "Total number of retired pages due to double-bit errors."),
    "DCGM_FI_DEV_RETIRED_PENDING": ("gauge", "Whether a page retirement is pending (1) until a reset."),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("gauge", "Number of remapped rows for correctable errors."),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("gauge", "Number of remapped rows for uncorrectable errors."),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", "Whether remapping of rows has failed (1)."),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": ("gauge", "Whether remapping of rows is pending (1) until a reset."),
    "DCGM_FI_PROF_SM_ACTIVE": ("gauge", "The ratio of cycles an SM has at least 1 warp assigned (0-1)."),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("gauge", "The ratio of number of warps resident on an SM (0-1)."),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("gauge", "Ratio of cycles the tensor (HMMA) pipe is active (0-1)."),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("gauge", "Ratio of cycles the device memory interface is active (0-1)."),
    "hami_vgpu_memory_used_bytes": ("gauge", "vGPU device memory usage in bytes"),
    "hami_vgpu_memory_limit_bytes": ("gauge", "vGPU device memory limit in bytes"),
    "hami_container_device_utilization_ratio": ("gauge", "Container device SM utilization ratio (0-100)"),
    "hami_container_last_kernel_elapsed_seconds": (
        "gauge",
        "Seconds since last kernel execution in container",
    ),
    "gpuledger_gpu_state": ("gauge", "1 for the GPU's current state (ok, lost, unknown)."),
    "gpuledger_gpu_energy_counter_resets": (
        "counter",
        "Energy counter resets seen (a tick with energy_j = 0 while drawing power), since agent start.",
    ),
    "gpuledger_gpu_xid_events": ("counter", "Xid error events reported by the driver, since agent start."),
    "gpuledger_slice_reserved_share": (
        "gauge",
        "Fraction of the physical GPU the slice's allocation takes (DESIGN §6 share, before normalisation).",
    ),
    "gpuledger_slice_util_percent": ("gauge", "Busy % attributable to the slice (whole-GPU %, MIG: own %)."),
    "gpuledger_slice_memory_used_bytes": ("gauge", "GPU memory used by the slice in bytes."),
    "gpuledger_slice_memory_cap_bytes": ("gauge", "GPU memory cap of the slice in bytes."),
    "gpuledger_slice_core_cap_percent": ("gauge", "Core cap of a vGPU slice in % (0: no reservation)."),
    "gpuledger_slice_last_kernel_age_seconds": ("gauge", "Seconds since the slice last ran a kernel."),
    "gpuledger_process_memory_used_bytes": ("gauge", "GPU memory used by the process in bytes."),
    "gpuledger_process_sm_util_percent": ("gauge", "SM utilization of the process in % of the GPU."),
    "gpuledger_collector_last_tick_timestamp_seconds": ("gauge", "End of the last tick (unix seconds)."),
}

_Series = dict[str, dict[tuple[str, ...], tuple[dict[str, str], float]]]


# tick field (%) -> dcgm-exporter profiling metric (ratio 0-1)
# The tick's memory-health fields and their dcgm-exporter names; booleans export as 1/0.
HEALTH_METRICS = (
    ("ecc_corrected", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"),
    ("ecc_uncorrected", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ("retired_pages_sbe", "DCGM_FI_DEV_RETIRED_SBE"),
    ("retired_pages_dbe", "DCGM_FI_DEV_RETIRED_DBE"),
    ("retired_pages_pending", "DCGM_FI_DEV_RETIRED_PENDING"),
    ("remapped_rows_correctable", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"),
    ("remapped_rows_uncorrectable", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"),
    ("row_remap_failed", "DCGM_FI_DEV_ROW_REMAP_FAILURE"),
    ("row_remap_pending", "DCGM_FI_DEV_ROW_REMAP_PENDING"),
)
PROF_METRICS = (
    ("sm_active_pct", "DCGM_FI_PROF_SM_ACTIVE"),
    ("sm_occupancy_pct", "DCGM_FI_PROF_SM_OCCUPANCY"),
    ("tensor_active_pct", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"),
    ("dram_active_pct", "DCGM_FI_PROF_DRAM_ACTIVE"),
)


def _ratio(v: float | None) -> float | None:
    return None if v is None else v / 100.0


def _s(v: Any) -> str:
    return "" if v is None else str(v)


Tick, _, _, _, Workload = tick_types()
_NO_WORKLOAD = Workload()


def _typed(message: Any) -> Any:
    """A typed tick as is; a dict (tests, tools) checked against the schema's types first."""
    if isinstance(message, Tick):
        return message
    try:
        return from_builtins(message)
    except (msgspec.ValidationError, TypeError) as exc:
        where = message.get("node") if isinstance(message, dict) else type(message).__name__
        raise ValueError(f"exporter: tick message of node {where!r} is not schema v1: {exc}") from exc


def _share(sl: Any, mem_total: Any) -> float | None:
    """DESIGN §6 share of one slice (the one definition, gpuledger.shares), or None when unknown."""
    sh = share(msgspec.structs.asdict(sl), mem_total)
    return None if sh is None else float(sh)


class _TickCollector(Collector):
    """Serves the series built from the latest tick of each node."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[str, _Series] = {}

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            parts = list(self.nodes.values())
        for name, (typ, doc) in _SPECS.items():
            metric = Metric(name, doc, typ)
            sample_name = name + "_total" if typ == "counter" else name
            for part in parts:
                for labels, value in part.get(name, {}).values():
                    metric.add_sample(sample_name, labels, value)
            if metric.samples:
                yield metric


class _SpoolCollector(Collector):
    def __init__(self, source: Callable[[], SpoolStats]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        st = self.source()
        for name, doc, value in (
            ("gpuledger_spool_spooled_ticks", "Ticks written to the local spool.", st.spooled),
            ("gpuledger_spool_replayed_ticks", "Spooled ticks later acknowledged by Kafka.", st.replayed),
            (
                "gpuledger_spool_dropped_ticks",
                "Ticks dropped unsent (spool full, corrupt record, failed write).",
                st.dropped,
            ),
            (
                "gpuledger_spool_unreadable_segments",
                "Spool segments left by an earlier run that could not be read (skipped, kept).",
                st.unreadable,
            ),
            ("gpuledger_spool_torn_records", "Torn record tails cut off at start-up.", st.torn),
            ("gpuledger_spool_direct_ticks", "Ticks acknowledged by Kafka without spooling.", st.sent_direct),
        ):
            m = Metric(name, doc, "counter")
            m.add_sample(name + "_total", {}, float(value))
            yield m
        for name, doc, value in (
            ("gpuledger_spool_pending_ticks", "Ticks in the spool now.", st.pending_records),
            ("gpuledger_spool_bytes", "Spool size on disk now.", st.pending_bytes),
            ("gpuledger_spool_inflight_ticks", "Ticks sent, not yet acknowledged.", st.inflight),
            ("gpuledger_kafka_up", "1 while ticks go straight to Kafka, 0 while spooling.", int(st.kafka_up)),
        ):
            m = Metric(name, doc, "gauge")
            m.add_sample(name, {}, float(value))
            yield m


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
        pass


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class AgentExporter:
    """Prometheus metrics of one node agent on its own registry and HTTP server."""

    def __init__(self, port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> None:
        self.addr = addr
        self.port = port
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self._ticks = _TickCollector()
        self.registry.register(self._ticks)
        self._tick_count = Counter(
            "gpuledger_collector_ticks_total", "Tick messages exported.", registry=self.registry
        )
        self._tick_seconds = Histogram(
            "gpuledger_collector_tick_duration_seconds",
            "Wall time to sample one tick.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self._energy_mj: dict[tuple[str, str], float] = {}
        self._energy_resets: dict[tuple[str, str], int] = {}
        self._xid_last: dict[tuple[str, str], int] = {}
        self._xid_events: dict[tuple[str, str], int] = {}
        self._spool: _SpoolCollector | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- serving -----------------------------------------------------------------------------

    def start(self) -> int:
        """Serve /metrics; returns the bound port (pass port 0 for any free one)."""
        if self._server is None:
            server_cls = _Server6 if ":" in self.addr else ThreadingWSGIServer
            self._server = make_server(
                self.addr, self.port, make_wsgi_app(self.registry), server_cls, handler_class=_QuietHandler
            )
            self.port = self._server.server_address[1]
            # A short poll interval so close() returns at once (tests start and stop many).
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"gpuledger-exporter:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self.port

    def close(self) -> None:
        """Stop serving and free the port."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def watch_spool(self, source: Callable[[], SpoolStats]) -> None:
        """Export the spool's counters, read at scrape time (e.g. ``watch_spool(spool.stats)``)."""
        if self._spool is not None:
            self.registry.unregister(self._spool)
        self._spool = _SpoolCollector(source)
        self.registry.register(self._spool)

    # -- updates -----------------------------------------------------------------------------

    def update(self, message: Any, tick_seconds: float | None = None) -> None:
        """Replace this node's series with those of ``message`` (one typed v1 tick, or its dict)."""
        tick = _typed(message)
        built = self._build(tick)
        with self._ticks.lock:
            self._ticks.nodes[tick.node] = built
        self._count(1, tick_seconds)

    def update_all(self, messages: Iterable[Any], tick_seconds: float | None = None) -> None:
        """Replace every node's series with this tick's messages; nodes not in it disappear."""
        ticks = [_typed(m) for m in messages]
        built = {t.node: self._build(t) for t in ticks}
        with self._ticks.lock:
            self._ticks.nodes = built
        self._count(len(built), tick_seconds)

    def _count(self, n: int, tick_seconds: float | None) -> None:
        self._tick_count.inc(n)
        if tick_seconds is not None:
            self._tick_seconds.observe(tick_seconds)

    def _build(self, tick: Any) -> _Series:
        node = tick.node
        out: _Series = {}

        def put(name: str, labels: dict[str, str], value: Any) -> None:
            if value is None or isinstance(value, bool):
                return
            out.setdefault(name, {})[tuple(labels.items())] = (labels, float(value))

        slices = tick.slices
        whole_owner: dict[str, Any] = {}
        for sl in slices:
            if sl.kind == "whole":
                whole_owner[sl.gpu_uuid] = sl.workload or _NO_WORKLOAD

        mem_total: dict[str, Any] = {}
        gpu_labels: dict[str, dict[str, str]] = {}
        for g in tick.gpus:
            uuid = g.uuid
            mem_total[uuid] = g.mem_total_mib
            wl = whole_owner.get(uuid, _NO_WORKLOAD)
            gl = {
                "gpu": str(g.index),
                "UUID": uuid,
                "device": f"nvidia{g.index}",
                "modelName": _s(g.model),
                "Hostname": node,
                "hostname": node,
                "namespace": _s(wl.namespace),
                "pod": _s(wl.pod),
                "container": _s(wl.container),
            }
            gpu_labels[uuid] = gl
            put("DCGM_FI_DEV_GPU_UTIL", gl, g.util_pct)
            put("DCGM_FI_DEV_SM_CLOCK", gl, g.sm_clock_mhz)
            put("DCGM_FI_DEV_MEM_CLOCK", gl, g.mem_clock_mhz)
            put("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gl, g.clocks_event_reasons)
            for field, metric in PROF_METRICS:
                put(metric, gl, _ratio(getattr(g, field)))
            for field, metric in HEALTH_METRICS:
                v = getattr(g, field)
                put(metric, gl, int(v) if isinstance(v, bool) else v)  # put() drops bools: 1/0 here
            used, total = g.mem_used_mib, g.mem_total_mib
            put("DCGM_FI_DEV_FB_USED", gl, used)
            if used is not None and total is not None:
                put("DCGM_FI_DEV_FB_FREE", gl, max(0, total - used))
            power = g.power_w
            put("DCGM_FI_DEV_POWER_USAGE", gl, power)
            put("DCGM_FI_DEV_GPU_TEMP", gl, g.temp_c)
            key = (node, uuid)
            energy = g.energy_j
            if energy is not None:
                self._energy_mj[key] = self._energy_mj.get(key, 0.0) + energy * 1000.0
                if energy == 0 and power:
                    self._energy_resets[key] = self._energy_resets.get(key, 0) + 1
                put("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gl, self._energy_mj[key])
            ident = {"gpu": gl["gpu"], "UUID": uuid, "Hostname": node, "hostname": node}
            put("gpuledger_gpu_state", {**ident, "state": _s(g.state)}, 1)
            put("gpuledger_gpu_energy_counter_resets", ident, self._energy_resets.get(key, 0))
            if g.xid_count is not None:  # Xid events readable on this GPU
                self._xid_events[key] = self._xid_events.get(key, 0) + g.xid_count
                if g.xid_last is not None:
                    self._xid_last[key] = g.xid_last
                put("DCGM_FI_DEV_XID_ERRORS", gl, self._xid_last.get(key, 0))
                put("gpuledger_gpu_xid_events", ident, self._xid_events[key])

        slice_wl: dict[str, Any] = {}
        vdev: dict[tuple[str, str, str], int] = {}
        for sl in slices:
            wl = sl.workload or _NO_WORKLOAD
            slice_wl[sl.slice_id] = wl
            sll = {
                "slice_id": sl.slice_id,
                "kind": _s(sl.kind),
                "UUID": sl.gpu_uuid,
                "Hostname": node,
                "hostname": node,
                "mig_profile": _s(sl.mig_profile),
                "namespace": _s(wl.namespace),
                "pod": _s(wl.pod),
                "container": _s(wl.container),
                "job_id": _s(wl.job_id),
                "account": _s(wl.account),
                "user": _s(wl.user),
            }
            cap, mem = sl.mem_cap_mib, sl.mem_used_mib
            put("gpuledger_slice_reserved_share", sll, _share(sl, mem_total.get(sl.gpu_uuid)))
            put("gpuledger_slice_util_percent", sll, sl.util_pct)
            put("gpuledger_slice_memory_used_bytes", sll, None if mem is None else mem * MIB)
            put("gpuledger_slice_memory_cap_bytes", sll, None if cap is None else cap * MIB)
            put("gpuledger_slice_core_cap_percent", sll, sl.core_cap_pct)
            put("gpuledger_slice_last_kernel_age_seconds", sll, sl.last_kernel_age_s)
            parent = gpu_labels.get(sl.gpu_uuid)
            if sl.kind == "mig" and parent is not None:  # dcgm-exporter's MIG instance series
                ml = {
                    **parent,
                    "namespace": _s(wl.namespace),
                    "pod": _s(wl.pod),
                    "container": _s(wl.container),
                    "GPU_I_PROFILE": _s(sl.mig_profile),
                    "GPU_I_ID": _s(sl.gi_id),
                }
                for field, metric in PROF_METRICS:
                    put(metric, ml, _ratio(getattr(sl, field)))
            if sl.kind == "vgpu" and wl.namespace and wl.pod:
                ctr = (wl.namespace, wl.pod, _s(wl.container))
                idx = vdev.get(ctr, 0)
                vdev[ctr] = idx + 1
                hl = {
                    "namespace": ctr[0],
                    "pod": ctr[1],
                    "container": ctr[2],
                    "vdevice_index": str(idx),
                    "device_uuid": sl.gpu_uuid,
                }
                put("hami_vgpu_memory_used_bytes", hl, None if mem is None else mem * MIB)
                put("hami_vgpu_memory_limit_bytes", hl, None if cap is None else cap * MIB)
                put("hami_container_device_utilization_ratio", hl, sl.util_pct)
                put("hami_container_last_kernel_elapsed_seconds", hl, sl.last_kernel_age_s)

        for p in tick.processes:
            wl = slice_wl.get(p.slice_id or "", _NO_WORKLOAD)
            pl = {
                "pid": str(p.pid),
                "UUID": p.gpu_uuid,
                "slice_id": _s(p.slice_id),
                "Hostname": node,
                "hostname": node,
                "namespace": _s(wl.namespace),
                "pod": _s(wl.pod),
                "container": _s(wl.container),
                "container_id": _s(p.container_id),
                "pod_uid": _s(p.pod_uid),
                "job_id": _s(p.job_id),
                "user": _s(p.user),
            }
            mem = p.mem_used_mib
            put("gpuledger_process_memory_used_bytes", pl, None if mem is None else mem * MIB)
            put("gpuledger_process_sm_util_percent", pl, p.sm_util_pct)

        put(
            "gpuledger_collector_last_tick_timestamp_seconds",
            {"Hostname": node, "hostname": node},
            parse_ts(tick.ts).timestamp(),
        )
        return out
