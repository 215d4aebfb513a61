"""The NVML backend: one ``gpuledger.sample/v1`` tick per call for the node this agent runs on.

Why it looks the way it does:

- NVML differs across drivers, GPU generations and privileges, so every call goes through one
  tolerant query layer (`NvmlQuery`, in the style of nvitop's libnvml): ``NotSupported`` and
  ``NoPermission`` give ``None`` (the schema's "unknown", never 0); a function the driver or the
  binding lacks (``FunctionNotFound``, or no such attribute) is remembered as absent and never
  called again; ``GpuIsLost`` / ``Unknown`` become the GPU's ``state`` for this tick while the
  other GPUs, and the agent, carry on. ``NotFound`` means different things per call, so each
  call site says what it means (no new samples; nobody busy; empty MIG slot).
- A tick covers the interval since the previous one (DESIGN §4): GPU busy % is the time-weighted
  average of the driver's sample buffer since the last sample seen (one gauge read only as a
  fallback), per-process SM util is integrated the same way, energy is the counter's delta.
- Per-tick cost matters on a node with hundreds of processes, so static facts (handles, names,
  UUIDs, memory totals, the MIG layout) are read once and re-read only on a cheap change check,
  ``NotSupported`` answers are remembered per GPU (re-probed every ``rescan_s``), processes are
  attributed once and re-verified round-robin, and on MIG GPUs one privileged call on the parent
  lists every instance's processes.

Slices (DESIGN §4/§6): each MIG instance in use is a ``mig`` slice; each HAMi shared region on
the GPU is a ``vgpu`` slice; the remaining processes of a non-MIG GPU are grouped by workload
(pod UID, else Slurm job, else unix user): one workload -> ``whole``, several (or a GPU the
time-slicing plugin advertises as ``timeslice_replicas`` > 0) -> ``timeslice``. A process on
a HAMi-shared GPU outside every region, or on a MIG instance not (yet) in the layout, is listed
with ``slice_id`` null: visible, but billed to nobody's slice. Slice ids stay
the same for as long as the same workload holds the same place, so idle runs are not broken
by a neighbour arriving:

- ``whole`` / ``timeslice``: ``<gpu-uuid>:<owner>``
- ``mig``: ``<mig-uuid>:<owner>``
- ``vgpu``: ``<gpu-uuid>:hami:<pod-uid>/<container>``

where owner is the pod UID, ``slurm:<job>``, ``user:<name>`` or ``unknown``.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # helper modules of the same package; imported lazily at run time
    from gpuledger.config import CollectorConfig

log = logging.getLogger("gpuledger.collector.nvml")

SCHEMA = "gpuledger.sample/v1"
_MIB = 1 << 20
_RAISE = object()  # call(..., not_found=_RAISE): NotFound is the caller's to handle
_PROC_FNS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
_NO_FIELDS: tuple[None, ...] = (None, None, None, None)
_MAX_GAPS = 64  # consecutive-sample gaps enough to tell the driver's sampling period
_PROC_RETRIES = 3  # InsufficientSize: the process list grew between NVML's count and read
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process outside MIG
_PID_MAX = 4_194_304
_MAX_ENERGY_J = 36_000_000.0
_MAX_AGE_S = 31_622_400.0
_PROFILE_RE = re.compile(r"([1-8])g\.([0-9]+)gb(\+me)?")
# NVML value types of nvmlDeviceGetSamples -> the union member that holds the value.
_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


class GpuFault(Exception):
    """The GPU cannot be read this tick; ``state`` is what the tick says about it (lost/unknown)."""

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(f"{state}: {detail}")
        self.state = state
        self.detail = detail


class NvmlQuery:
    """The one place NVML is called; turns NVML's error codes into what a tick can say.

    ``call`` returns the value, or ``None`` when NVML cannot give it (not supported, no
    permission, function absent), raises `GpuFault` for a lost or broken GPU, and leaves
    ``NotFound`` / ``InsufficientSize`` to the caller unless ``not_found`` says what NotFound
    means there. ``unsupported`` (a per-GPU set) remembers NotSupported answers so they are
    not asked again every tick.
    """

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.error: type[Exception] = lib.NVMLError
        self.absent: set[str] = set()
        self.calls = 0  # NVML calls made (the benchmark reports it)
        self._fns: dict[str, Callable[..., Any]] = {}
        self.not_supported = lib.NVML_ERROR_NOT_SUPPORTED
        self.no_permission = lib.NVML_ERROR_NO_PERMISSION
        self.not_found = lib.NVML_ERROR_NOT_FOUND
        self.insufficient_size = lib.NVML_ERROR_INSUFFICIENT_SIZE
        self.function_not_found = lib.NVML_ERROR_FUNCTION_NOT_FOUND
        self.gpu_is_lost = lib.NVML_ERROR_GPU_IS_LOST

    def available(self, name: str) -> bool:
        """Whether ``name`` may be called: present in the binding and not found absent before."""
        if name in self._fns:
            return True
        if name in self.absent:
            return False
        fn = getattr(self.lib, name, None)
        if fn is None:
            self._absent(name, "not in this nvidia-ml-py")
            return False
        self._fns[name] = fn
        return True

    def _absent(self, name: str, why: str) -> None:
        self.absent.add(name)
        self._fns.pop(name, None)
        log.info("NVML function %s is absent (%s); not calling it again", name, why)

    def call(
        self, name: str, *args: Any, unsupported: set[str] | None = None, not_found: Any = _RAISE
    ) -> Any:
        fn = self._fns.get(name)
        if fn is None:
            if not self.available(name):
                return None
            fn = self._fns[name]
        if unsupported is not None and name in unsupported:
            return None
        self.calls += 1
        try:
            return fn(*args)
        except self.error as exc:
            code = getattr(exc, "value", None)
            if code == self.not_supported:
                if unsupported is not None:
                    unsupported.add(name)
                return None
            if code == self.no_permission:
                return None
            if code == self.function_not_found:
                self._absent(name, "the driver lacks it")
                return None
            if code == self.not_found and not_found is not _RAISE:
                return not_found
            if code in (self.not_found, self.insufficient_size):
                raise
            if code == self.gpu_is_lost:
                raise GpuFault("lost", f"{name}: {exc}") from exc
            raise GpuFault("unknown", f"{name}: {exc}") from exc


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
    )

    def __init__(self, index: int, handle: Any, uuid: str, model: str, mem_total_mib: int | None) -> None:
        self.index, self.handle, self.uuid, self.model = index, handle, uuid, model
        self.mem_total_mib = mem_total_mib
        self.mig_mode = False
        self.mig: list[_Mig] = []
        self.gpm = False
        self.gpu_compute_slices = 7
        self.gpu_memory_slices = 8
        self.unsupported: set[str] = set()
        self.util_seen_us: int | None = None
        self.proc_seen_us: int | None = None
        self.energy_mj: int | None = None
        self.rescan_at = 0.0
        self.state = "ok"


class _Proc:
    """One process on one GPU as NVML lists it, plus what the tick adds to it."""

    __slots__ = ("ci", "gi", "mem_mib", "pid", "sm")

    def __init__(self, pid: int, mem_mib: int | None, gi: int, ci: int) -> None:
        self.pid, self.mem_mib, self.gi, self.ci = pid, mem_mib, gi, ci
        self.sm: float | None = None


def integrate_samples(samples: Iterable[Any], value_type: int, last_seen_us: int) -> tuple[float | None, int]:
    """Time-weighted mean of the samples newer than ``last_seen_us``, and the newest timestamp.

    Each sample is the busy % of the driver's sampling period that ends at its timestamp, so it
    weighs the time since the previous sample (the first one: since ``last_seen_us``). A buffer
    that ran over, or a sampling rate that changed, is still averaged by the time it covers.
    """
    field = _VALUE_FIELDS[value_type] if 0 <= value_type < len(_VALUE_FIELDS) else "uiVal"
    pts = sorted((s.timeStamp, getattr(s.sampleValue, field)) for s in samples if s.timeStamp > last_seen_us)
    if not pts:
        return None, last_seen_us
    prev = last_seen_us
    acc = 0.0
    for ts, value in pts:
        acc += value * (ts - prev)
        prev = ts
    span = prev - last_seen_us
    return _pct(acc / span), prev


def sample_period_us(samples: Iterable[Any], last_seen_us: int) -> int | None:
    """The driver's sampling period: the median gap between consecutive samples (None if < 2)."""
    ts = sorted(s.timeStamp for s in samples if s.timeStamp > last_seen_us)
    gaps = [b - a for a, b in pairwise(ts) if b > a]
    return int(statistics.median(gaps)) if gaps else None


def integrate_process_util(
    samples: Iterable[Any], last_seen_us: int, window_us: int, gpu_period_us: int | None
) -> tuple[dict[int, float], int]:
    """Per-PID SM busy % over the window from NVML's per-process samples, and the newest timestamp.

    The driver stores a sample per process only for sampling periods in which the process was
    busy, so a process's busy time is Σ smUtil × period and its share of the window is that over
    the window. The period is the median gap between a process's consecutive samples, else (no
    process has two) the GPU's own sampling period, else the lone sample itself is the best
    estimate there is.
    """
    total: dict[int, int] = {}
    count: dict[int, int] = {}
    last: dict[int, int] = {}
    gaps: list[int] = []
    newest = last_seen_us
    for s in samples:  # one pass: this runs over every sample of every busy process each tick
        ts = s.timeStamp
        if ts <= last_seen_us:
            continue
        pid = s.pid
        prev = last.get(pid)
        if prev is None:
            total[pid] = s.smUtil
            count[pid] = 1
        else:
            total[pid] += s.smUtil
            count[pid] += 1
            if ts > prev and len(gaps) < _MAX_GAPS:
                gaps.append(ts - prev)
        last[pid] = ts
        if ts > newest:
            newest = ts
    period = int(statistics.median(gaps)) if gaps else gpu_period_us
    out: dict[int, float] = {}
    if period and window_us > 0:
        f = period / window_us
        for pid, busy in total.items():
            out[pid] = _pct(busy * f)
    else:
        for pid, busy in total.items():
            out[pid] = _pct(busy / count[pid])
    return out, newest


def _pct(v: float) -> float:
    return 0.0 if v < 0.0 else 100.0 if v > 100.0 else v


def _nid(v: Any) -> str | None:
    """A schema nullable id: non-empty, at most 256 characters (longer ids are cut, not dropped)."""
    if v is None:
        return None
    s = str(v)
    return s[:256] if s else None


def _labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    if not labels:
        return None
    items = sorted(labels.items())[:64]
    return {str(k): str(v)[:1024] for k, v in items}


def _fmt_ts(now: float) -> str:
    dt = datetime.fromtimestamp(now, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}Z"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class NvmlBackend:
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
            if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 253:
                raise ValueError(f"{what}={name!r}: expected a name of letters, digits, '.', '_', '-'")
        if not isinstance(interval_s, int | float) or not 0 < interval_s <= 3600:
            raise ValueError(f"interval_s={interval_s!r}: expected seconds in (0, 3600]")
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
        try:
            self._rescan(g, now)
            if not energy:
                return
            g.energy_mj = self.q.call(
                "nvmlDeviceGetTotalEnergyConsumption", g.handle, unsupported=g.unsupported
            )
        except (GpuFault, self.q.error) as exc:
            g.state = getattr(exc, "state", "unknown")

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
        if not mig_mode:
            self._drop_mig(g)
            g.mig_mode = False
            return
        g.mig_mode = True
        sup = q.call("nvmlGpmQueryDeviceSupport", g.handle, unsupported=g.unsupported)
        g.gpm = bool(sup is not None and sup.isSupportedDevice)
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

    def _gpm_sample(self, g: _Gpu, m: _Mig, buf: Any = None) -> Any:
        q = self.q
        try:
            if buf is None:
                buf = q.call("nvmlGpmSampleAlloc")
                if buf is None:
                    return None
            if q.call("nvmlGpmMigSampleGet", g.handle, m.gi, buf, unsupported=g.unsupported) is None:
                return None
            return buf
        except q.error:
            return None

    def _gpm_activity(self, g: _Gpu, m: _Mig) -> float | None:
        """The instance's engine activity % between the previous GPM sample and now."""
        cur = self._gpm_sample(g, m, m.gpm_spare)
        if cur is None:
            return None
        prev, m.gpm_prev, m.gpm_spare = m.gpm_prev, cur, m.gpm_prev
        if prev is None:
            return None
        lib = self.lib
        req = self._gpm_req
        if req is None:
            req = self._gpm_req = lib.c_nvmlGpmMetricsGet_t()
        req.version = lib.NVML_GPM_METRICS_GET_VERSION
        req.numMetrics = 1
        req.sample1 = prev
        req.sample2 = cur
        # GRAPHICS_UTIL is the % of time any compute/graphics engine was active: the MIG
        # counterpart of the busy % reported for whole GPUs (DCGM's GR_ENGINE_ACTIVE).
        req.metrics[0].metricId = lib.NVML_GPM_METRIC_GRAPHICS_UTIL
        try:
            if self.q.call("nvmlGpmMetricsGet", req) is None:
                return None
        except self.q.error:
            return None
        metric = req.metrics[0]
        if metric.nvmlReturn != lib.NVML_SUCCESS:
            return None
        return _pct(float(metric.value))

    # -- per-tick reads ---------------------------------------------------------------------

    def _processes(self, g: _Gpu, handle: Any) -> list[Any] | None:
        """Running compute processes, newest binding first; None when NVML cannot list them."""
        q = self.q
        for name in _PROC_FNS:
            if not q.available(name):
                continue
            memo = g.unsupported if handle is g.handle else None  # a MIG handle answers for itself
            for _ in range(_PROC_RETRIES):
                try:
                    procs = q.call(name, handle, unsupported=memo)
                except q.error as exc:
                    if getattr(exc, "value", None) == q.insufficient_size:
                        continue  # more processes appeared between the count and the read: ask again
                    raise
                if procs is None and name in q.absent:
                    break  # this binding's function is missing in the driver: try the older one
                return procs
            else:
                self._warn("procs", g.uuid, "process list kept growing while read; skipped this tick")
                return None
        return None

    def _read_gpu(
        self, g: _Gpu, now: float, now_us: int, window_us: int
    ) -> tuple[dict[str, Any], list[_Proc]]:
        q, h, lib, uns = self.q, g.handle, self.lib, g.unsupported
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
                energy_j = round(delta, 3) if delta <= _MAX_ENERGY_J else None
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
            util = _pct(float(rates.gpu)) if rates is not None else None

        procs: list[_Proc] = []
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
                    for p in procs:
                        p.sm = busy.get(p.pid, 0.0)
            else:
                g.proc_seen_us = None  # nobody to sample: the next process's window starts afresh
        power_w = power / 1000.0 if power is not None and power <= 10_000_000 else None
        gpu = {
            "uuid": g.uuid,
            "index": g.index,
            "model": g.model,
            "mem_total_mib": g.mem_total_mib,
            "mem_used_mib": mem.used // _MIB if mem is not None else None,
            "util_pct": util,
            "power_w": power_w,
            "energy_j": energy_j,
            "temp_c": temp if temp is not None and -60 <= temp <= 200 else None,
            "mig_mode": g.mig_mode,
            "state": "ok",
        }
        return gpu, procs

    def _mig_processes(self, g: _Gpu, now: float) -> list[_Proc]:
        """All MIG instances' processes: one privileged call on the parent, else one per instance.

        The parent's answer carries each process's GPU/compute instance ids; one on an instance
        the cached layout does not know means the layout changed, so it is read again at once.
        """
        procs: list[_Proc] = []
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

    def _add_proc(self, procs: list[_Proc], g: _Gpu, p: Any, gi: int, ci: int) -> None:
        pid = p.pid
        if not 0 < pid <= _PID_MAX:  # e.g. 0 from a driver that cannot see the host PID
            self._warn("pid", g.uuid, f"lists a process with pid {pid}; such processes are left out")
            return
        used = p.usedGpuMemory
        procs.append(_Proc(pid, used // _MIB if used is not None else None, gi, ci))

    def _lost_gpu(self, g: _Gpu, state: str) -> dict[str, Any]:
        g.state = state
        g.energy_mj = None  # the next good reading is a new baseline, not a delta across the outage
        g.util_seen_us = g.proc_seen_us = None
        return {
            "uuid": g.uuid,
            "index": g.index,
            "model": g.model,
            "mem_total_mib": g.mem_total_mib,
            "mem_used_mib": None,
            "util_pct": None,
            "power_w": None,
            "energy_j": None,
            "temp_c": None,
            "mig_mode": g.mig_mode,
            "state": state,
        }

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
                    _nid(ident.container_id),
                    _nid(ident.pod_uid),
                    _nid(ident.job_id),
                    _nid(ident.user),
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
    ) -> dict[str, Any] | None:
        pod_uid = pod_uid or (ident.pod_uid if ident is not None else None)
        if ident is None and pod_uid is None:
            return None
        w = self._resolve(pod_uid, ident.container_id if ident else None, memo) if pod_uid else None
        return {
            "namespace": _nid(w.namespace) if w else None,
            "pod": _nid(w.pod) if w else None,
            "container": _nid(container or (w.container if w else None)),
            "pod_uid": _nid(pod_uid),
            "labels": _labels(w.labels) if w else None,
            "job_id": _nid(ident.job_id) if ident else None,
            "account": _nid(ident.account) if ident else None,
            "user": _nid(ident.user) if ident else None,
        }

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

    @staticmethod
    def _owner(ident: Any) -> str:
        if ident is None:
            return "unknown"
        if ident.pod_uid:
            return ident.pod_uid
        if ident.job_id:
            return f"slurm:{ident.job_id}"
        if ident.user:
            return f"user:{ident.user}"
        return "unknown"

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

    def next_tick(self) -> list[dict[str, Any]]:
        now = self.clock()
        now_us = int(now * 1_000_000)
        prev = self._prev_now
        window_us = (
            int((now - prev) * 1_000_000)
            if prev is not None and now > prev
            else int(self.interval_s * 1_000_000)
        )
        self._prev_now = now
        for index in list(self._pending):
            g = self._open_gpu(index)
            if g is not None:
                self._prime(g, now, energy=False)
        gpus_out: list[dict[str, Any]] = []
        per_gpu: list[tuple[_Gpu, list[_Proc], dict[str, Any], float | None]] = []
        for g in self.gpus:
            try:
                gpu, procs = self._read_gpu(g, now, now_us, window_us)
                mig_util: dict[str, Any] = {}
                if g.mig_mode:
                    mig_util = self._mig_usage(g)
            except GpuFault as f:
                if g.state != f.state:
                    log.warning("GPU %s (index %d) is %s: %s", g.uuid, g.index, f.state, f.detail)
                gpus_out.append(self._lost_gpu(g, f.state))
                continue
            except self.q.error as exc:  # an NVML answer nobody expected: this GPU is unknown this tick
                if g.state != "unknown":
                    log.warning("GPU %s (index %d) is unknown: %s", g.uuid, g.index, exc)
                gpus_out.append(self._lost_gpu(g, "unknown"))
                continue
            if g.state != "ok":
                log.warning("GPU %s (index %d) is readable again", g.uuid, g.index)
                g.state = "ok"
            gpus_out.append(gpu)
            per_gpu.append((g, procs, mig_util, gpu["util_pct"]))

        pids = {p.pid for _, procs, _, _ in per_gpu for p in procs}
        idents = self._identities(pids)
        hami = self._hami_regions() if self.hami_hook_dir else {}
        memo: dict[str, Any] = {}
        slices: list[dict[str, Any]] = []
        processes: list[dict[str, Any]] = []
        for g, procs, mig_util, gpu_util in per_gpu:
            if g.mig_mode:
                self._mig_slices(g, procs, mig_util, idents, memo, slices, processes)
            else:
                self._gpu_slices(
                    g, procs, gpu_util, hami.get(g.uuid, ()), idents, memo, now, slices, processes
                )
        msg = {
            "schema": SCHEMA,
            "cluster": self.cluster,
            "node": self.node,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts": _fmt_ts(now),
            "interval_s": self.interval_s,
            "gpus": gpus_out,
            "slices": slices,
            "processes": processes,
        }
        self.seq += 1
        return [msg]

    def _mig_usage(self, g: _Gpu) -> dict[str, Any]:
        """MIG uuid -> (used MiB, activity %) for every instance of the layout."""
        q = self.q
        out: dict[str, Any] = {}
        for m in g.mig:
            try:
                mem = q.call("nvmlDeviceGetMemoryInfo", m.handle)
            except q.error:  # instance gone: re-read the layout next tick
                g.rescan_at = 0.0
                continue
            act = self._gpm_activity(g, m) if g.gpm else None
            out[m.uuid] = (mem.used // _MIB if mem is not None else None, act)
        return out

    def _proc_out(self, g: _Gpu, p: _Proc, slice_id: str | None) -> dict[str, Any]:
        pid = p.pid
        cid, pod, job, user = self._fields.get(pid, _NO_FIELDS)
        return {
            "pid": pid,
            "gpu_uuid": g.uuid,
            "slice_id": slice_id,
            "mem_used_mib": p.mem_mib,
            "sm_util_pct": p.sm,
            "container_id": cid,
            "pod_uid": pod,
            "job_id": job,
            "user": user,
        }

    def _mig_slices(
        self,
        g: _Gpu,
        procs: list[_Proc],
        usage: dict[str, Any],
        idents: dict[int, Any],
        memo: dict[str, Any],
        slices: list[dict[str, Any]],
        processes: list[dict[str, Any]],
    ) -> None:
        by_inst: dict[tuple[int, int], list[_Proc]] = {}
        for p in procs:
            by_inst.setdefault((p.gi, p.ci), []).append(p)
        for m in g.mig:
            members = by_inst.pop((m.gi, m.ci), None)
            if not members:
                continue  # an instance nobody uses is capacity, not a slice
            members.sort(key=lambda p: p.pid)
            ident = next((idents.get(p.pid) for p in members if idents.get(p.pid) is not None), None)
            sid = f"{m.uuid}:{self._owner(ident)}"[:256]
            used, act = usage.get(m.uuid, (None, None))
            slices.append(
                {
                    "slice_id": sid,
                    "gpu_uuid": g.uuid,
                    "kind": "mig",
                    "mem_cap_mib": m.mem_total_mib,
                    "mem_used_mib": used,
                    "util_pct": act,
                    "mig_profile": m.profile,
                    "gi_id": m.gi,
                    "ci_id": m.ci,
                    "mig_uuid": m.uuid,
                    "compute_slices": m.compute,
                    "memory_slices": m.memory,
                    "gpu_compute_slices": g.gpu_compute_slices,
                    "gpu_memory_slices": g.gpu_memory_slices,
                    "workload": self._workload(ident, memo),
                }
            )
            for p in members:
                processes.append(self._proc_out(g, p, sid))
        for rest in by_inst.values():  # on an instance not (yet) in the layout: shown, not billed
            for p in rest:
                processes.append(self._proc_out(g, p, None))

    def _gpu_slices(
        self,
        g: _Gpu,
        procs: list[_Proc],
        gpu_util: float | None,
        regions: Iterable[tuple[Any, int]],
        idents: dict[int, Any],
        memo: dict[str, Any],
        now: float,
        slices: list[dict[str, Any]],
        processes: list[dict[str, Any]],
    ) -> None:
        procs.sort(key=lambda p: p.pid)
        rest = procs
        if regions:
            rest = self._vgpu_slices(g, procs, regions, idents, memo, now, slices, processes)
            for p in rest:  # outside every HAMi region on a HAMi-shared GPU: shown, not billed
                processes.append(self._proc_out(g, p, None))
            return
        if not rest:
            return  # a GPU nobody uses has no slice
        groups: dict[str, list[_Proc]] = {}
        for p in rest:
            groups.setdefault(self._owner(idents.get(p.pid)), []).append(p)
        n = len(groups)
        shared = n > 1 or self.timeslice_replicas > 0
        for owner, members in groups.items():
            ident = next((idents.get(p.pid) for p in members if idents.get(p.pid) is not None), None)
            sid = f"{g.uuid}:{owner}"[:256]
            mems = [p.mem_mib for p in members if p.mem_mib is not None]
            sms = [p.sm for p in members if p.sm is not None]
            sl: dict[str, Any] = {
                "slice_id": sid,
                "gpu_uuid": g.uuid,
                "kind": "timeslice" if shared else "whole",
                "mem_cap_mib": None if shared else g.mem_total_mib,
                "mem_used_mib": sum(mems) if mems else None,
                "util_pct": (_pct(sum(sms)) if sms else None) if shared else gpu_util,
            }
            if shared:
                sl["replicas"] = self.timeslice_replicas or n
            sl["workload"] = self._workload(ident, memo)
            slices.append(sl)
            for p in members:
                processes.append(self._proc_out(g, p, sid))

    def _vgpu_slices(
        self,
        g: _Gpu,
        procs: list[_Proc],
        regions: Iterable[tuple[Any, int]],
        idents: dict[int, Any],
        memo: dict[str, Any],
        now: float,
        slices: list[dict[str, Any]],
        processes: list[dict[str, Any]],
    ) -> list[_Proc]:
        """One vgpu slice per HAMi region on this GPU; returns the processes in none of them."""
        by_pid: dict[int, int] = {}
        by_pod: dict[str, list[int]] = {}
        regs = list(regions)
        for k, (region, _i) in enumerate(regs):
            for hp in region.procs:
                if hp.hostpid > 0:
                    by_pid[hp.hostpid] = k
            by_pod.setdefault(region.pod_uid, []).append(k)
        members: list[list[_Proc]] = [[] for _ in regs]
        rest: list[_Proc] = []
        for p in procs:
            k = by_pid.get(p.pid)
            if k is None:
                ident = idents.get(p.pid)
                ks = by_pod.get(ident.pod_uid) if ident is not None and ident.pod_uid else None
                k = ks[0] if ks and len(ks) == 1 else None
            if k is None:
                rest.append(p)
            else:
                members[k].append(p)
        total = g.mem_total_mib
        for k, (region, i) in enumerate(regs):
            owner = (
                f"{region.pod_uid}/{region.container}"
                if region.pod_uid
                else os.path.basename(os.path.dirname(region.path))
            )
            sid = f"{g.uuid}:hami:{owner}"[:256]
            limit = region.mem_limit_bytes[i] if i < len(region.mem_limit_bytes) else 0
            cap = limit // _MIB if limit > 0 else total  # 0: HAMi enforces no memory limit
            # HAMi-core writes sm_limit 100 when the container asked for no core limit, so the
            # region cannot tell "no reservation" from "all cores": the allocation annotation can.
            core = region.sm_limit_pct[i] if i < len(region.sm_limit_pct) else 0
            core = 0 if core >= 100 else core
            grant = self._grant(region.pod_uid, g.uuid, memo) if region.pod_uid else None
            if grant is not None:
                cap, core = grant.mem_mib or cap, grant.cores
            used = sum(hp.used_bytes[i] for hp in region.procs if i < len(hp.used_bytes)) // _MIB
            sm = sum(hp.sm_util[i] for hp in region.procs if i < len(hp.sm_util))
            mine = members[k]
            if not region.procs and mine:  # region not filled in yet: NVML's view of its processes
                used = sum(p.mem_mib or 0 for p in mine)
                sm = sum(p.sm or 0.0 for p in mine)
            lk = region.last_kernel_time
            age = min(_MAX_AGE_S, max(0.0, round(now - lk, 1))) if lk > 0 else None
            ident = next((idents.get(p.pid) for p in mine if idents.get(p.pid) is not None), None)
            slices.append(
                {
                    "slice_id": sid,
                    "gpu_uuid": g.uuid,
                    "kind": "vgpu",
                    "mem_cap_mib": cap if cap is not None else 0,
                    "core_cap_pct": float(min(100, max(0, core))),
                    "mem_used_mib": used,
                    "util_pct": _pct(float(sm)),
                    "last_kernel_age_s": age,
                    "workload": self._workload(
                        ident, memo, container=region.container, pod_uid=region.pod_uid
                    ),
                }
            )
            for p in mine:
                processes.append(self._proc_out(g, p, sid))
        return rest

    def close(self) -> None:
        """Free GPM samples and release NVML (init is reference-counted, so this is ours only)."""
        if not self._inited:
            return
        for g in self.gpus:
            self._drop_mig(g)
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
