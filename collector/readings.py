"""NVML readings: the one tolerant query layer and the typed per-GPU readings a tick is made from.

Why a layer: NVML differs across drivers, GPU generations and privileges, so every call goes
through `NvmlQuery` (in the style of nvitop's libnvml): ``NotSupported`` and ``NoPermission``
give ``None`` (the schema's "unknown", never 0); a function the driver or the binding lacks
(``FunctionNotFound``, or no such attribute) is remembered as absent and never called again, and
where NVML has several versions of a function (the running-process list) the query layer falls
back from the newest; ``GpuIsLost`` / ``Unknown`` become the GPU's ``state`` for this tick.
``NotFound`` means different things per call, so each call site says what it means.

Readings are NamedTuples, as nvitop's snapshots are: plain, immutable values that the slicing
function (`collector.slicing`) and the tick builder (`collector.tick`) take without touching
NVML. A value NVML could not give is None.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any, NamedTuple

log = logging.getLogger("gpuledger.collector.nvml")

# The GPM metrics one nvmlGpmMetricsGet asks for, in order: the engine activity a MIG slice bills
# by (GRAPHICS_UTIL, DCGM's GR_ENGINE_ACTIVE), then the fields of `Prof` (DCGM's PROF_SM_ACTIVE,
# PROF_SM_OCCUPANCY, PROF_PIPE_TENSOR_ACTIVE, PROF_DRAM_ACTIVE).
GPM_METRICS = (
    "NVML_GPM_METRIC_GRAPHICS_UTIL",
    "NVML_GPM_METRIC_SM_UTIL",
    "NVML_GPM_METRIC_SM_OCCUPANCY",
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "NVML_GPM_METRIC_DRAM_BW_UTIL",
)
_RAISE = object()  # call(..., not_found=_RAISE): NotFound is the caller's to handle
PROC_FNS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
PROC_RETRIES = 3  # InsufficientSize: the process list grew between NVML's count and read
_MAX_GAPS = 64  # consecutive-sample gaps enough to tell the driver's sampling period
# NVML value types of nvmlDeviceGetSamples -> the union member that holds the value.
_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


class ProcReading(NamedTuple):
    """One process on one GPU as NVML lists it; ``gi``/``ci`` its MIG instance (NO_INSTANCE outside MIG)."""

    pid: int
    mem_mib: int | None
    gi: int
    ci: int
    sm: float | None = None  # SM busy % over the tick, None when NVML cannot tell


class Prof(NamedTuple):
    """GPM profiling activity over the tick, % each (DCGM's PROF fields x 100); None: not measured.

    Why beside ``util_pct``: NVML's utilization is the share of time any kernel ran, so one tiny
    kernel keeps it at 100 % while the SMs sit empty; SM activity says how much of the SMs worked.
    """

    sm_active_pct: float | None = None
    sm_occupancy_pct: float | None = None
    tensor_active_pct: float | None = None
    dram_active_pct: float | None = None


class Clocks(NamedTuple):
    """SM and memory clocks (MHz) and the clocks-event-reasons bitmask at the end of the tick."""

    sm_mhz: int | None = None
    mem_mhz: int | None = None
    event_reasons: int | None = None


class Xids(NamedTuple):
    """Xid error events of one GPU during the tick: how many, the last code and the first critical
    one (`gpuledger.health.CRITICAL_XIDS`), so a benign Xid after a critical one hides nothing.
    ``count`` None: events not readable."""

    count: int | None = None
    last: int | None = None
    critical: int | None = None


class Health(NamedTuple):
    """Memory health of one GPU at the end of the tick (each None where NVML cannot say).

    ECC counts are the volatile aggregates (since the driver loaded). Memory repair is page
    retirement before Ampere and row remapping since; each generation answers NotSupported for
    the other's, so one of the two groups is always None.
    """

    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failed: bool | None = None


class MigReading(NamedTuple):
    """One MIG instance in use or not: its static facts and this tick's memory and activity."""

    uuid: str
    gi: int
    ci: int
    profile: str
    compute: int
    memory: int
    mem_total_mib: int
    mem_used_mib: int | None
    util_pct: float | None  # GPM engine activity; None without GPM
    prof: Prof = Prof()  # GPM profiling activity of the instance


class GpuReading(NamedTuple):
    """One physical GPU this tick: the schema's GPU fields plus what slicing needs of it."""

    uuid: str
    index: int
    model: str
    mem_total_mib: int | None
    mem_used_mib: int | None
    util_pct: float | None
    power_w: float | None
    energy_j: float | None
    temp_c: int | None
    mig_mode: bool
    state: str  # ok | lost | unknown
    processes: tuple[ProcReading, ...] = ()
    migs: tuple[MigReading, ...] = ()  # the MIG layout (MIG mode only)
    gpu_compute_slices: int = 7
    gpu_memory_slices: int = 8
    prof: Prof = Prof()  # GPM profiling activity of the whole GPU (Hopper and newer)
    clocks: Clocks = Clocks()
    xids: Xids = Xids()
    health: Health = Health()


class ProcessListGrowing(Exception):
    """The process list kept growing while read (`NvmlQuery.compute_processes`); skip it this tick."""


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

    def compute_processes(self, handle: Any, unsupported: set[str] | None = None) -> list[Any] | None:
        """Running compute processes through the newest function this driver and binding have.

        The ``_v3`` -> ``_v2`` -> unversioned fallback lives here, not at call sites: a version
        the binding or driver lacks is remembered absent and the next older one is asked. The
        list may grow between NVML's count and its read (``InsufficientSize``): asked again, up
        to `PROC_RETRIES` times; `ProcessListGrowing` if it never settles. None: NVML cannot list.
        """
        for name in PROC_FNS:
            if not self.available(name):
                continue
            for _ in range(PROC_RETRIES):
                try:
                    procs = self.call(name, handle, unsupported=unsupported)
                except self.error as exc:
                    if getattr(exc, "value", None) == self.insufficient_size:
                        continue  # more processes appeared between the count and the read: ask again
                    raise
                if procs is None and name in self.absent:
                    break  # this binding's function is missing in the driver: try the older one
                return procs
            else:
                raise ProcessListGrowing(name)
        return None


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
    return pct(acc / span), prev


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
            out[pid] = pct(busy * f)
    else:
        for pid, busy in total.items():
            out[pid] = pct(busy / count[pid])
    return out, newest


def pct(v: float) -> float:
    return 0.0 if v < 0.0 else 100.0 if v > 100.0 else v
