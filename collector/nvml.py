"""The NVML backend: one ``gpuledger.sample/v1`` tick per call for the node this agent runs on.

Why it looks the way it does:

- NVML is called only through `collector.readings.NvmlQuery`: unknown -> None, absent functions
  remembered, a lost GPU's ``state`` says so while the others and the agent carry on.
- A tick covers the interval since the previous one (DESIGN §4): GPU busy % is the time-weighted
  average of the driver's sample buffer since the last sample seen (one gauge read only as a
  fallback), per-process SM util is integrated the same way, energy is the counter's delta.
- Per-tick cost matters on a node with hundreds of processes, so static facts (handles, names,
  UUIDs, memory totals, the MIG layout) are read once and re-read only on a cheap change check,
  ``NotSupported`` answers are remembered per GPU (re-probed every ``rescan_s``), processes are
  attributed once and re-verified round-robin, and on MIG GPUs one privileged call on the parent
  lists every instance's processes.

The module is the backend's state between ticks (handles, MIG layout, sample cursors,
attribution caches); NVML calls go through `collector.readings` (the query layer and the typed
readings), slices come from `collector.slicing` (a pure function) and the tick from
`collector.tick` (the one builder every backend uses).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from collector.readings import (
    GPM_METRICS,
    Clocks,
    GpuFault,
    GpuReading,
    Health,
    MigReading,
    NvmlQuery,
    ProcessListGrowing,
    ProcReading,
    Prof,
    Xids,
    integrate_process_util,
    integrate_samples,
    pct,
    sample_period_us,
)
from collector.slicing import Attribution, slice_gpu
from collector.tick import (
    LIMITS,
    TickSource,
    Workload,
    build_tick,
    check_interval,
    clamp_labels,
    format_ts,
    gpu_of,
    nullable_id,
)
from gpuledger.health import first_critical_xid
from gpuledger.schema import load_schema

if TYPE_CHECKING:  # helper modules of the same package; imported lazily at run time
    from gpuledger.config import CollectorConfig

log = logging.getLogger("gpuledger.collector.nvml")

_MIB = 1 << 20
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process outside MIG
_MAX_XIDS_PER_TICK = 256  # events drained per tick at most; the rest wait for the next tick
_PROFILE_RE = re.compile(r"([1-8])g\.([0-9]+)gb(\+me)?")


class _Mig:
    """One MIG device (a compute instance inside a GPU instance): static facts plus GPM samples."""

    __slots__ = (
        "ci",
        "compute",
        "gi",
        "gpm_prev",
        "gpm_spare",
        "handle",
        "mem_total_mib",
        "memory",
        "profile",
        "uuid",
    )

    def __init__(
        self, handle: Any, uuid: str, gi: int, ci: int, profile: str, compute: int, memory: int, mem: int
    ) -> None:
        self.handle, self.uuid, self.gi, self.ci = handle, uuid, gi, ci
        self.profile, self.compute, self.memory, self.mem_total_mib = profile, compute, memory, mem
        self.gpm_prev: Any = None
        self.gpm_spare: Any = None


class _Gpu:
    """What the agent remembers about one physical GPU between ticks."""

    __slots__ = (
        "energy_mj",
        "gpm",
        "gpm_prev",
        "gpm_spare",
        "gpu_compute_slices",
        "gpu_memory_slices",
        "handle",
        "index",
        "mem_total_mib",
        "mig",
        "mig_mode",
        "model",
        "proc_seen_us",
        "rescan_at",
        "state",
        "unsupported",
        "util_seen_us",
        "uuid",
        "xid_events",
    )

    def __init__(self, index: int, handle: Any, uuid: str, model: str, mem_total_mib: int | None) -> None:
        self.index, self.handle, self.uuid, self.model = index, handle, uuid, model
        self.mem_total_mib = mem_total_mib
        self.mig_mode = False
        self.mig: list[_Mig] = []
        self.gpm = False
        self.gpm_prev: Any = None  # the whole GPU's GPM sample at the previous tick
        self.gpm_spare: Any = None
        self.gpu_compute_slices = 7
        self.gpu_memory_slices = 8
        self.unsupported: set[str] = set()
        self.util_seen_us: int | None = None
        self.proc_seen_us: int | None = None
        self.energy_mj: int | None = None
        self.rescan_at = 0.0
        self.state = "ok"
        self.xid_events = False  # registered for Xid events (else the tick's xid fields are null)


_NAME_RE = re.compile(load_schema()["$defs"]["name"]["pattern"])


class NvmlBackend(TickSource):
    """Collector backend over NVML (or anything with pynvml's function names, such as the tests' fake).

    ``attributor`` maps host PIDs to container/pod/job/user (`collector.proc_identity.ProcAttributor`),
    ``resolver`` maps pod UIDs to namespace/pod/labels, ``hami_hook_dir`` is HAMi's hook directory
    (``<dir>/containers/<podUID>_<ctr>/<uuid>.cache``); each may be None. ``hami_scan`` replaces
    `collector.hami.scan_hook_dir` (tests). ``clock`` is wall-clock seconds (NVML timestamps are
    wall-clock microseconds).
    """

    def __init__(
        self,
        cluster: str,
        node: str,
        interval_s: float,
        *,
        nvml: Any = None,
        attributor: Any = None,
        resolver: Any = None,
        hami_hook_dir: str | None = None,
        timeslice_replicas: int = 0,
        clock: Callable[[], float] = time.time,
        hami_scan: Callable[[str], list[Any]] | None = None,
        rescan_s: float = 60.0,
        reverify_s: float = 60.0,
    ) -> None:
        for what, name in (("cluster", cluster), ("node", node)):
            if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > LIMITS.name_max:
                raise ValueError(f"{what}={name!r}: expected a name of letters, digits, '.', '_', '-'")
        check_interval(interval_s)
        if not isinstance(timeslice_replicas, int) or not 0 <= timeslice_replicas <= 1024:
            raise ValueError(f"timeslice_replicas={timeslice_replicas!r}: expected an integer from 0 to 1024")
        if nvml is None:
            import pynvml as nvml
        self.lib = nvml
        self.q = NvmlQuery(nvml)
        self.cluster, self.node = cluster, node
        self.interval_s = float(interval_s)
        self.attributor = attributor
        self.resolver = resolver
        self.hami_hook_dir = hami_hook_dir
        self._hami_scan = hami_scan
        self.timeslice_replicas = timeslice_replicas
        self.clock = clock
        self.rescan_s = rescan_s
        self._reverify_ticks = max(1, round(reverify_s / self.interval_s))
        self.boot_id = str(uuidlib.uuid4())
        self.seq = 0
        self.energy_resets = 0  # energy counters that went down (driver reload, GPU reset)
        self._prev_now: float | None = None
        self._idents: dict[int, Any] = {}  # pid -> ProcessIdentity | None, for pids seen last tick
        self._fields: dict[int, tuple[str | None, ...]] = {}  # pid -> its process fields, schema-safe
        self._warned: set[tuple[str, str]] = set()
        self._gpm_req: Any = None
        self._events: Any = None  # one NVML event set for every GPU's Xid events
        self._xids: dict[str, list[int]] = {}  # GPU UUID -> Xid codes drained this tick
        try:
            nvml.nvmlInit()
        except self.q.error as exc:
            raise RuntimeError(
                f"NVML could not start ({exc}): is the NVIDIA driver loaded and are /dev/nvidia* "
                f"and libnvidia-ml.so visible to the agent?"
            ) from exc
        self._inited = True
        self.gpus: list[_Gpu] = []
        self._pending: list[int] = []  # indexes whose static facts could not be read yet
        count = self.q.call("nvmlDeviceGetCount") or 0
        for i in range(count):
            self._open_gpu(i)
        now = clock()
        for g in self.gpus:  # energy baseline: the first tick's delta covers (start, first tick]
            self._prime(g, now)

    # -- setup ------------------------------------------------------------------------------

    def _open_gpu(self, index: int) -> _Gpu | None:
        q = self.q
        try:
            h = q.call("nvmlDeviceGetHandleByIndex", index)
            uuid = q.call("nvmlDeviceGetUUID", h) if h is not None else None
            if h is None or not uuid:
                raise GpuFault("unknown", "no handle or UUID")
            name = q.call("nvmlDeviceGetName", h) or "unknown"
            mem = q.call("nvmlDeviceGetMemoryInfo", h)
        except (GpuFault, q.error) as exc:
            self._warn("open", f"GPU index {index}", f"cannot be read yet ({exc}); retrying each tick")
            if index not in self._pending:
                self._pending.append(index)
            return None
        g = _Gpu(index, h, str(uuid), str(name)[:96], mem.total // _MIB if mem is not None else None)
        self.gpus.append(g)
        self.gpus.sort(key=lambda x: x.index)
        if index in self._pending:
            self._pending.remove(index)
        return g

    def _prime(self, g: _Gpu, now: float, energy: bool = True) -> None:
        """Read layout and energy baseline; a GPU that joins mid-run takes its baseline in its first tick."""
        self._register_xids(g)
        try:
            self._rescan(g, now)
            if not energy:
                return
            g.energy_mj = self.q.call(
                "nvmlDeviceGetTotalEnergyConsumption", g.handle, unsupported=g.unsupported
            )
        except (GpuFault, self.q.error) as exc:
            g.state = getattr(exc, "state", "unknown")

    # -- Xid events -----------------------------------------------------------------------------

    def _register_xids(self, g: _Gpu) -> None:
        """Ask NVML for this GPU's Xid events on the agent's one event set (None where unsupported)."""
        q = self.q
        if g.xid_events or not q.available("nvmlDeviceRegisterEvents"):
            return
        try:
            if self._events is None:
                self._events = q.call("nvmlEventSetCreate")
                if self._events is None:
                    return
            # Called directly: it returns nothing on success, so q.call could not tell success
            # from NotSupported / NoPermission (both: the tick's xid fields stay null).
            self.lib.nvmlDeviceRegisterEvents(g.handle, self.lib.nvmlEventTypeXidCriticalError, self._events)
            g.xid_events = True
        except (GpuFault, q.error) as exc:
            self._warn("xid", g.uuid, f"Xid events cannot be read ({exc}); xid fields stay null")

    def _drain_xids(self) -> dict[str, list[int]]:
        """Every Xid event queued since the last tick, never waiting (timeout 0), by GPU UUID."""
        out: dict[str, list[int]] = {}
        q, events = self.q, self._events
        if events is None or not q.available("nvmlEventSetWait_v2"):
            return out
        wait = self.lib.nvmlEventSetWait_v2
        timeout = self.lib.NVML_ERROR_TIMEOUT
        for _ in range(_MAX_XIDS_PER_TICK):
            try:
                ev = wait(events, 0)
                uuid = str(self.lib.nvmlDeviceGetUUID(ev.device))
            except q.error as exc:
                code = getattr(exc, "value", None)
                if code == q.function_not_found:
                    q._absent("nvmlEventSetWait_v2", "the driver lacks it")
                elif code != timeout:
                    self._warn("xid-wait", "Xid events", f"could not be read ({exc}); retrying each tick")
                break
            out.setdefault(uuid, []).append(int(ev.eventData))
        return out

    def _xid_reading(self, g: _Gpu) -> Xids:
        if not g.xid_events or "nvmlEventSetWait_v2" in self.q.absent:
            return Xids()  # no events can be read: unknown, not "none happened"
        codes = self._xids.get(g.uuid, ())
        return Xids(len(codes), codes[-1] if codes else None, first_critical_xid(codes))

    def _warn(self, kind: str, what: str, msg: str) -> None:
        if (kind, what) not in self._warned:
            self._warned.add((kind, what))
            log.warning("%s %s", what, msg)

    # -- MIG layout -------------------------------------------------------------------------

    def _rescan(self, g: _Gpu, now: float) -> None:
        """Re-read what rarely changes: MIG mode and layout, GPM support; forget NotSupported."""
        q = self.q
        g.unsupported.clear()
        g.rescan_at = now + self.rescan_s
        mode = q.call("nvmlDeviceGetMigMode", g.handle, unsupported=g.unsupported)
        mig_mode = bool(mode and mode[0] == self.lib.NVML_DEVICE_MIG_ENABLE)
        sup = q.call("nvmlGpmQueryDeviceSupport", g.handle, unsupported=g.unsupported)
        g.gpm = bool(sup is not None and sup.isSupportedDevice)
        if not g.gpm:
            self._drop_gpm(g)
        elif g.gpm_prev is None:  # the first tick's profiling covers (this sample, first tick]
            g.gpm_prev = self._gpm_sample(g, None)
        if not mig_mode:
            self._drop_mig(g)
            g.mig_mode = False
            return
        g.mig_mode = True
        info = self._try(q, "nvmlDeviceGetGpuInstanceProfileInfo", g.handle, self._profile(7))
        if info is None:
            info4 = self._try(q, "nvmlDeviceGetGpuInstanceProfileInfo", g.handle, self._profile(4))
            g.gpu_compute_slices = int(info4.sliceCount) if info4 is not None else 7
        else:
            g.gpu_compute_slices = int(info.sliceCount)
        g.gpu_memory_slices = 8 if g.gpu_compute_slices == 7 else g.gpu_compute_slices
        layout = self._read_layout(g)
        if [(m.uuid, m.gi, m.ci) for m in layout] != [(m.uuid, m.gi, m.ci) for m in g.mig]:
            self._drop_mig(g)
            g.mig = layout
            if g.gpm:
                for m in g.mig:
                    m.gpm_prev = self._gpm_sample(g, m)

    def _profile(self, slices: int) -> int:
        return getattr(self.lib, f"NVML_GPU_INSTANCE_PROFILE_{slices}_SLICE", 4 if slices == 7 else 3)

    def _try(self, q: NvmlQuery, name: str, *args: Any) -> Any:
        try:
            return q.call(name, *args)
        except q.error:
            return None

    def _read_layout(self, g: _Gpu) -> list[_Mig]:
        q = self.q
        n = q.call("nvmlDeviceGetMaxMigDeviceCount", g.handle) or 0
        out: list[_Mig] = []
        for i in range(n):
            try:
                mh = q.call("nvmlDeviceGetMigDeviceHandleByIndex", g.handle, i, not_found=None)
                if mh is None:
                    continue
                mig_uuid = q.call("nvmlDeviceGetUUID", mh)
                gi = q.call("nvmlDeviceGetGpuInstanceId", mh)
                ci = q.call("nvmlDeviceGetComputeInstanceId", mh)
                name = q.call("nvmlDeviceGetName", mh) or ""
                attrs = q.call("nvmlDeviceGetAttributes", mh)
                mem = q.call("nvmlDeviceGetMemoryInfo", mh)
            except q.error:
                continue  # instance destroyed while being read: the next rescan sees the new layout
            if not mig_uuid or gi is None or ci is None:
                continue
            mem_mib = mem.total // _MIB if mem is not None else (attrs.memorySizeMB if attrs else 0)
            m = _PROFILE_RE.search(str(name))
            compute = int(attrs.gpuInstanceSliceCount) if attrs is not None else None
            if m is not None:
                profile = m.group(0)
                compute = compute or int(m.group(1))
            else:
                compute = compute or 1
                profile = f"{compute}g.{max(1, round(mem_mib / 1024))}gb"
            total = g.mem_total_mib or 0
            memory = round(mem_mib * g.gpu_memory_slices / total) if total else 1
            memory = min(g.gpu_memory_slices, max(1, memory))
            compute = min(g.gpu_compute_slices, max(1, compute))
            out.append(_Mig(mh, str(mig_uuid), int(gi), int(ci), profile, compute, memory, mem_mib))
        return out

    def _drop_mig(self, g: _Gpu) -> None:
        for m in g.mig:
            for s in (m.gpm_prev, m.gpm_spare):
                if s is not None:
                    self._try(self.q, "nvmlGpmSampleFree", s)
        g.mig = []

    def _drop_gpm(self, g: _Gpu) -> None:
        for s in (g.gpm_prev, g.gpm_spare):
            if s is not None:
                self._try(self.q, "nvmlGpmSampleFree", s)
        g.gpm_prev = g.gpm_spare = None

    def _gpm_sample(self, g: _Gpu, m: _Mig | None, buf: Any = None) -> Any:
        """A GPM sample of the whole GPU (``m`` None: nvmlGpmSampleGet) or of one MIG instance."""
        q = self.q
        try:
            if buf is None:
                buf = q.call("nvmlGpmSampleAlloc")
                if buf is None:
                    return None
            if m is None:
                got = q.call("nvmlGpmSampleGet", g.handle, buf, unsupported=g.unsupported)
            else:
                got = q.call("nvmlGpmMigSampleGet", g.handle, m.gi, buf, unsupported=g.unsupported)
            return None if got is None else buf
        except q.error:
            return None

    def _gpm_activity(self, g: _Gpu, m: _Mig | None) -> tuple[float | None, Prof]:
        """Engine activity % and profiling activity between the previous GPM sample and now.

        Two samples per tick interval (the previous tick's and this one; the buffers swap),
        one nvmlGpmMetricsGet for every metric; a metric the GPU does not support is None.
        ``m`` None: the whole GPU; else one MIG instance.
        """
        holder: Any = g if m is None else m
        cur = self._gpm_sample(g, m, holder.gpm_spare)
        if cur is None:
            return None, Prof()
        prev, holder.gpm_prev, holder.gpm_spare = holder.gpm_prev, cur, holder.gpm_prev
        if prev is None:
            return None, Prof()
        lib = self.lib
        req = self._gpm_req
        if req is None:
            req = self._gpm_req = lib.c_nvmlGpmMetricsGet_t()
        ids = [getattr(lib, name) for name in GPM_METRICS]
        req.version = lib.NVML_GPM_METRICS_GET_VERSION
        req.numMetrics = len(ids)
        req.sample1 = prev
        req.sample2 = cur
        for i, metric_id in enumerate(ids):
            req.metrics[i].metricId = metric_id
        try:
            if self.q.call("nvmlGpmMetricsGet", req) is None:
                return None, Prof()
        except self.q.error:
            return None, Prof()
        vals = [
            pct(float(req.metrics[i].value)) if req.metrics[i].nvmlReturn == lib.NVML_SUCCESS else None
            for i in range(len(ids))
        ]
        return vals[0], Prof(*vals[1:])

    # -- per-tick reads ---------------------------------------------------------------------

    def _processes(self, g: _Gpu, handle: Any) -> list[Any] | None:
        """Running compute processes (the query layer picks the function version); None: cannot list."""
        memo = g.unsupported if handle is g.handle else None  # a MIG handle answers for itself
        try:
            return self.q.compute_processes(handle, memo)
        except ProcessListGrowing:
            self._warn("procs", g.uuid, "process list kept growing while read; skipped this tick")
            return None

    def _read_gpu(self, g: _Gpu, now: float, now_us: int, window_us: int) -> GpuReading:
        q, h, lib, uns = self.q, g.handle, self.lib, g.unsupported
        # A GPM baseline taken by this tick's rescan (back from lost, GPM newly supported) covers
        # no time yet: this tick's profiling is null, the next tick's is measured from it.
        measured = g.gpm_prev is not None
        if now >= g.rescan_at or g.state != "ok":
            self._rescan(g, now)
        mem = q.call("nvmlDeviceGetMemoryInfo", h, unsupported=uns)
        power = q.call("nvmlDeviceGetPowerUsage", h, unsupported=uns)
        temp = q.call("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU, unsupported=uns)
        energy_mj = q.call("nvmlDeviceGetTotalEnergyConsumption", h, unsupported=uns)
        energy_j: float | None = None
        if energy_mj is not None and g.energy_mj is not None:
            if energy_mj < g.energy_mj:
                self.energy_resets += 1
                log.info(
                    "GPU %s energy counter went down (%d -> %d mJ): reset, 0 J this tick",
                    g.uuid,
                    g.energy_mj,
                    energy_mj,
                )
                energy_j = 0.0
            else:
                delta = (energy_mj - g.energy_mj) / 1000.0
                energy_j = round(delta, 3) if delta <= LIMITS.energy_max_j else None
        g.energy_mj = energy_mj

        util: float | None = None
        gpu_period: int | None = None
        lower = g.util_seen_us if g.util_seen_us is not None else now_us - window_us
        r = q.call(
            "nvmlDeviceGetSamples",
            h,
            lib.NVML_GPU_UTILIZATION_SAMPLES,
            lower,
            unsupported=uns,
            not_found=False,
        )
        if r:
            vtype, samples = r
            util, g.util_seen_us = integrate_samples(samples, vtype, lower)
            gpu_period = sample_period_us(samples, lower)
        if util is None:
            rates = q.call("nvmlDeviceGetUtilizationRates", h, unsupported=uns)
            util = pct(float(rates.gpu)) if rates is not None else None

        procs: list[ProcReading] = []
        if g.mig_mode:
            procs = self._mig_processes(g, now)
        else:
            for p in self._processes(g, h) or ():
                self._add_proc(procs, g, p, _NO_INSTANCE, 0)
            if procs:
                plow = g.proc_seen_us if g.proc_seen_us is not None else now_us - window_us
                s = q.call("nvmlDeviceGetProcessUtilization", h, plow, unsupported=uns, not_found=())
                if s is not None:
                    # NotFound (empty tuple here) means no process was busy: 0 for all, not unknown.
                    busy, g.proc_seen_us = integrate_process_util(s, plow, window_us, gpu_period)
                    procs = [p._replace(sm=busy.get(p.pid, 0.0)) for p in procs]
            else:
                g.proc_seen_us = None  # nobody to sample: the next process's window starts afresh
        power_w = power / 1000.0 if power is not None and power <= LIMITS.power_max_w * 1000 else None
        prof = self._gpm_activity(g, None)[1] if g.gpm and measured else Prof()
        return GpuReading(
            uuid=g.uuid,
            index=g.index,
            model=g.model,
            mem_total_mib=g.mem_total_mib,
            mem_used_mib=mem.used // _MIB if mem is not None else None,
            util_pct=util,
            power_w=power_w,
            energy_j=energy_j,
            temp_c=temp if temp is not None and LIMITS.temp_min_c <= temp <= LIMITS.temp_max_c else None,
            mig_mode=g.mig_mode,
            state="ok",
            processes=tuple(procs),
            migs=self._mig_usage(g) if g.mig_mode else (),
            gpu_compute_slices=g.gpu_compute_slices,
            gpu_memory_slices=g.gpu_memory_slices,
            prof=prof,
            clocks=self._clocks(g),
            xids=self._xid_reading(g),
            health=self._health(g),
        )

    def _health(self, g: _Gpu) -> Health:
        """ECC counts and memory repair state at the end of the tick (each None where NVML cannot say).

        Five calls at most, fewer in practice: a GPU answers NotSupported for the repair scheme of
        the other generation (page retirement before Ampere, row remapping since) and for ECC when
        it is off; those answers are remembered per GPU like every other NotSupported.
        """
        q, h, lib, uns = self.q, g.handle, self.lib, g.unsupported
        vol = lib.NVML_VOLATILE_ECC
        ecc_c = q.call(
            "nvmlDeviceGetTotalEccErrors", h, lib.NVML_MEMORY_ERROR_TYPE_CORRECTED, vol, unsupported=uns
        )
        ecc_u = q.call(
            "nvmlDeviceGetTotalEccErrors", h, lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, vol, unsupported=uns
        )
        sbe = q.call(
            "nvmlDeviceGetRetiredPages",
            h,
            lib.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
            unsupported=uns,
        )
        dbe = q.call(
            "nvmlDeviceGetRetiredPages",
            h,
            lib.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
            unsupported=uns,
        )
        pending = q.call("nvmlDeviceGetRetiredPagesPendingStatus", h, unsupported=uns)
        rows = q.call("nvmlDeviceGetRemappedRows", h, unsupported=uns)
        corr, unc, row_pending, row_failed = rows if rows is not None else (None,) * 4
        ecc_max, repair_max = LIMITS.ecc_max, LIMITS.repair_max

        def count(v: Any, most: int) -> int | None:
            return int(v) if v is not None and 0 <= v <= most else None

        return Health(
            ecc_corrected=count(ecc_c, ecc_max),
            ecc_uncorrected=count(ecc_u, ecc_max),
            retired_pages_sbe=count(len(sbe), repair_max) if sbe is not None else None,
            retired_pages_dbe=count(len(dbe), repair_max) if dbe is not None else None,
            retired_pages_pending=pending == lib.NVML_FEATURE_ENABLED if pending is not None else None,
            remapped_rows_correctable=count(corr, repair_max),
            remapped_rows_uncorrectable=count(unc, repair_max),
            row_remap_pending=bool(row_pending) if row_pending is not None else None,
            row_remap_failed=bool(row_failed) if row_failed is not None else None,
        )

    def _clocks(self, g: _Gpu) -> Clocks:
        """SM and memory clocks and why they are held back (each None where NVML cannot say)."""
        q, h, lib, uns = self.q, g.handle, self.lib, g.unsupported
        sm = q.call("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_SM, unsupported=uns)
        mem = q.call("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_MEM, unsupported=uns)
        reasons = q.call("nvmlDeviceGetCurrentClocksEventReasons", h, unsupported=uns)
        mhz_max = LIMITS.clock_max_mhz
        return Clocks(
            int(sm) if sm is not None and 0 <= sm <= mhz_max else None,
            int(mem) if mem is not None and 0 <= mem <= mhz_max else None,
            int(reasons) if reasons is not None else None,
        )

    def _mig_processes(self, g: _Gpu, now: float) -> list[ProcReading]:
        """All MIG instances' processes: one privileged call on the parent, else one per instance.

        The parent's answer carries each process's GPU/compute instance ids; one on an instance
        the cached layout does not know means the layout changed, so it is read again at once.
        """
        procs: list[ProcReading] = []
        raw = self._processes(g, g.handle)
        if raw is not None and all(getattr(p, "gpuInstanceId", _NO_INSTANCE) != _NO_INSTANCE for p in raw):
            known = {(m.gi, m.ci) for m in g.mig}
            if any((p.gpuInstanceId, p.computeInstanceId) not in known for p in raw):
                self._rescan(g, now)
            for p in raw:
                self._add_proc(procs, g, p, p.gpuInstanceId, p.computeInstanceId)
            return procs
        for m in g.mig:  # no permission for the aggregate list: ask each instance
            try:
                sub = self._processes(g, m.handle)
            except self.q.error:
                g.rescan_at = 0.0
                continue
            for p in sub or ():
                self._add_proc(procs, g, p, m.gi, m.ci)
        return procs

    def _add_proc(self, procs: list[ProcReading], g: _Gpu, p: Any, gi: int, ci: int) -> None:
        pid = p.pid
        if not 0 < pid <= LIMITS.pid_max:  # e.g. 0 from a driver that cannot see the host PID
            self._warn("pid", g.uuid, f"lists a process with pid {pid}; such processes are left out")
            return
        used = p.usedGpuMemory
        procs.append(ProcReading(pid, used // _MIB if used is not None else None, gi, ci))

    def _lost_gpu(self, g: _Gpu, state: str) -> GpuReading:
        g.state = state
        g.energy_mj = None  # the next good reading is a new baseline, not a delta across the outage
        g.util_seen_us = g.proc_seen_us = None
        self._drop_gpm(g)  # profiling restarts after the outage, not averaged across it
        return GpuReading(
            g.uuid, g.index, g.model, g.mem_total_mib, None, None, None, None, None, g.mig_mode, state
        )

    # -- attribution --------------------------------------------------------------------------

    def _identities(self, pids: set[int]) -> dict[int, Any]:
        """PID -> identity. New PIDs are looked up; known ones re-verified round-robin (PID reuse)."""
        att = self.attributor
        if att is None:
            return {}
        old, old_fields = self._idents, self._fields
        k = self._reverify_ticks
        seq = self.seq
        out: dict[int, Any] = {}
        fields: dict[int, tuple[str | None, ...]] = {}
        for pid in pids:
            if pid in old and (pid + seq) % k:
                out[pid] = old[pid]
                if pid in old_fields:
                    fields[pid] = old_fields[pid]
                continue
            try:
                ident = att.identify(pid)
            except Exception as exc:  # attribution must never stop the agent
                self._warn("identify", f"pid {pid}", f"could not be attributed ({exc!r})")
                ident = None
            out[pid] = ident
            if ident is not None:
                fields[pid] = (
                    nullable_id(ident.container_id),
                    nullable_id(ident.pod_uid),
                    nullable_id(ident.job_id),
                    nullable_id(ident.user),
                )
        self._idents, self._fields = out, fields
        prune = getattr(att, "prune", None)
        if prune is not None:
            prune(pids)  # forget exited PIDs so the attributor's cache stays the size of the node
        return out

    def _resolve(self, pod_uid: str, container_id: str | None, memo: dict[str, Any]) -> Any:
        if self.resolver is None:
            return None
        if pod_uid in memo:
            return memo[pod_uid]
        try:
            w = self.resolver.resolve(pod_uid, container_id)
        except Exception as exc:  # an API outage must not stop the agent
            self._warn("resolve", type(exc).__name__, f"from the workload resolver: {exc}")
            w = None
        memo[pod_uid] = w
        return w

    def _workload(
        self, ident: Any, memo: dict[str, Any], container: str | None = None, pod_uid: str | None = None
    ) -> Any:
        pod_uid = pod_uid or (ident.pod_uid if ident is not None else None)
        if ident is None and pod_uid is None:
            return None
        w = self._resolve(pod_uid, ident.container_id if ident else None, memo) if pod_uid else None
        return Workload(
            namespace=nullable_id(w.namespace) if w else None,
            pod=nullable_id(w.pod) if w else None,
            container=nullable_id(container or (w.container if w else None)),
            pod_uid=nullable_id(pod_uid),
            labels=clamp_labels(w.labels) if w else None,
            job_id=nullable_id(ident.job_id) if ident else None,
            account=nullable_id(ident.account) if ident else None,
            user=nullable_id(ident.user) if ident else None,
        )

    def _grant(self, pod_uid: str, gpu_uuid: str, memo: dict[str, Any]) -> Any:
        """The pod's HAMi allocation on this GPU (`hami.io/vgpu-devices-allocated`), when unambiguous."""
        from collector.hami_annotation import VGPU_ALLOCATED_ANNOTATION, parse_vgpu_allocation

        w = self._resolve(pod_uid, None, memo)
        text = (w.annotations or {}).get(VGPU_ALLOCATED_ANNOTATION) if w is not None else None
        if not text:
            return None
        try:
            grants = {
                (x.mem_mib, x.cores): x
                for c in parse_vgpu_allocation(text)
                for x in c
                if x.gpu_uuid == gpu_uuid
            }
        except ValueError as exc:
            self._warn("grant", pod_uid, f"pod {pod_uid}: bad {VGPU_ALLOCATED_ANNOTATION}: {exc}")
            return None
        return next(iter(grants.values())) if len(grants) == 1 else None

    # -- HAMi ---------------------------------------------------------------------------------

    def _hami_regions(self) -> dict[str, list[tuple[Any, int]]]:
        """GPU UUID -> [(shared region, device index in it)] from HAMi's hook directory."""
        d = self.hami_hook_dir
        if not d or not os.path.isdir(os.path.join(d, "containers")):
            return {}
        scan = self._hami_scan
        if scan is None:
            from collector.hami import scan_hook_dir

            scan = self._hami_scan = scan_hook_dir
        try:
            regions = scan(d)
        except Exception as exc:  # an unreadable hook dir must not stop the agent: no vgpu slices
            self._warn("hami", d, f"cannot be scanned ({exc!r}); no vGPU slices until it can")
            return {}
        out: dict[str, list[tuple[Any, int]]] = {}
        for region in regions:
            for i, u in enumerate(region.uuids):
                out.setdefault(u, []).append((region, i))
        return out

    # -- the tick -----------------------------------------------------------------------------

    def sample(self) -> list[Any]:
        now = self.clock()
        now_us = int(now * 1_000_000)
        prev = self._prev_now
        window_us = (
            int((now - prev) * 1_000_000)
            if prev is not None and now > prev
            else int(self.interval_s * 1_000_000)
        )
        self._prev_now = now
        self._xids = self._drain_xids()
        for index in list(self._pending):
            g = self._open_gpu(index)
            if g is not None:
                self._prime(g, now, energy=False)
        readings: list[GpuReading] = []
        for g in self.gpus:
            try:
                r = self._read_gpu(g, now, now_us, window_us)
            except GpuFault as f:
                if g.state != f.state:
                    log.warning("GPU %s (index %d) is %s: %s", g.uuid, g.index, f.state, f.detail)
                readings.append(self._lost_gpu(g, f.state))
                continue
            except self.q.error as exc:  # an NVML answer nobody expected: this GPU is unknown this tick
                if g.state != "unknown":
                    log.warning("GPU %s (index %d) is unknown: %s", g.uuid, g.index, exc)
                readings.append(self._lost_gpu(g, "unknown"))
                continue
            if g.state != "ok":
                log.warning("GPU %s (index %d) is readable again", g.uuid, g.index)
                g.state = "ok"
            readings.append(r)

        ok = [r for r in readings if r.state == "ok"]
        idents = self._identities({p.pid for r in ok for p in r.processes})
        hami = self._hami_regions() if self.hami_hook_dir else {}
        memo: dict[str, Any] = {}
        att = Attribution(
            idents,
            self._fields,
            lambda ident, container=None, pod_uid=None: self._workload(ident, memo, container, pod_uid),
            lambda pod_uid, gpu_uuid: self._grant(pod_uid, gpu_uuid, memo),
        )
        slices: list[Any] = []
        processes: list[Any] = []
        for r in ok:
            sl, pr = slice_gpu(r, hami.get(r.uuid, ()), att, now, self.timeslice_replicas)
            slices += sl
            processes += pr
        ts = format_ts(datetime.fromtimestamp(now, UTC))
        gpus = [gpu_of(r) for r in readings]
        tick = build_tick(
            self.cluster, self.node, self.boot_id, self.seq, ts, self.interval_s, gpus, slices, processes
        )
        self.seq += 1
        return [tick]

    def _mig_usage(self, g: _Gpu) -> tuple[MigReading, ...]:
        """Every instance of the layout with its used MiB and activity %."""
        q = self.q
        out: list[MigReading] = []
        for m in g.mig:
            try:
                mem = q.call("nvmlDeviceGetMemoryInfo", m.handle)
            except q.error:  # instance gone: re-read the layout next tick
                g.rescan_at = 0.0
                used, act, prof = None, None, Prof()
            else:
                act, prof = self._gpm_activity(g, m) if g.gpm else (None, Prof())
                used = mem.used // _MIB if mem is not None else None
            out.append(
                MigReading(
                    m.uuid, m.gi, m.ci, m.profile, m.compute, m.memory, m.mem_total_mib, used, act, prof
                )
            )
        return tuple(out)

    def close(self) -> None:
        """Free GPM samples and release NVML (init is reference-counted, so this is ours only)."""
        if not self._inited:
            return
        for g in self.gpus:
            self._drop_mig(g)
            self._drop_gpm(g)
        if self._events is not None:
            self._try(self.q, "nvmlEventSetFree", self._events)
            self._events = None
        try:
            self.lib.nvmlShutdown()
        except self.q.error as exc:
            log.info("nvmlShutdown: %s", exc)
        self._inited = False


def build_nvml_backend(cfg: CollectorConfig, nvml: Any = None) -> NvmlBackend:
    """The NVML backend as `gpuledger collect --backend nvml` runs it, wired from the config."""
    from collector.pod_resolvers import make_resolver
    from collector.proc_identity import ProcAttributor

    attributor = ProcAttributor(cfg.proc_root, cfg.passwd_file)
    resolver = make_resolver(cfg.resolver, cfg.resolver_file, cfg.node)
    return NvmlBackend(
        cfg.cluster,
        cfg.node,
        cfg.interval_s,
        nvml=nvml,
        attributor=attributor,
        resolver=resolver,
        hami_hook_dir=cfg.hami_hook_dir or None,
        timeslice_replicas=cfg.timeslice_replicas,
    )
