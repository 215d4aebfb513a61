"""A fake NVML at the pynvml function boundary, so the real collector code runs without a GPU.

`FakeNvml` is module-like: the same function names, argument orders and return shapes as
nvidia-ml-py (structs with the same attribute names: ``.total/.used/.free``, process infos with
``.pid/.usedGpuMemory/.gpuInstanceId/.computeInstanceId``, samples with
``.timeStamp/.sampleValue.uiVal``, process samples with ``.pid/.timeStamp/.smUtil/.memUtil``),
and it raises pynvml's own exceptions built from the real codes
(``pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)`` is a ``NVMLError_NotSupported``).
Constants, error classes and everything else it does not define come from pynvml itself.

Scriptable: GPUs and MIG instances (`FakeGpu`, `FakeMig`), processes (`FakeProcess`),
processes that appear between NVML's count and read (``appear_on_read``), energy counter
resets (set ``energy_mj``), lost or broken GPUs (``fault``), functions the driver lacks
(``missing``: FunctionNotFound) or the binding lacks (``hidden``: no attribute), NotSupported
per GPU and function (``not_supported``), any other NVML error per GPU and function (``errors``),
memory health (ECC counts, retired pages before Ampere, remapped rows since). Time is the fake's
own clock (`clock`, `advance`), which also feeds the driver's sample buffers, the energy counters
and GPM counters, so a backend built with ``clock=fake.clock`` sees a consistent world. `calls`
counts every call.
"""

from __future__ import annotations

import bisect
import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pynvml

NO_INSTANCE = 0xFFFFFFFF
MIB = 1 << 20
GIB = 1 << 30
PROCESS_FUNCTIONS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)


def err(code: int) -> pynvml.NVMLError:
    """pynvml's own exception for an NVML return code (the subclass pynvml itself would raise)."""
    return pynvml.NVMLError(code)


class FakeProcess:
    """A process holding a CUDA context: host PID, device memory, MIG instance, SM busy %."""

    __slots__ = ("ci", "gi", "pid", "sm_pct", "used_bytes")

    def __init__(
        self,
        pid: int,
        used_bytes: int | None,
        sm_pct: float = 0.0,
        gi: int = NO_INSTANCE,
        ci: int = NO_INSTANCE,
    ) -> None:
        self.pid, self.used_bytes, self.sm_pct, self.gi, self.ci = pid, used_bytes, sm_pct, gi, ci


class _ProcInfo:
    """nvmlStructToFriendlyObject(c_nvmlProcessInfo_v3_t): what pynvml hands back per process."""

    __slots__ = ("computeInstanceId", "gpuInstanceId", "pid", "usedGpuCcProtectedMemory", "usedGpuMemory")

    def __init__(self, p: FakeProcess) -> None:
        self.pid = p.pid
        self.usedGpuMemory = p.used_bytes
        self.gpuInstanceId = p.gi
        self.computeInstanceId = p.ci
        self.usedGpuCcProtectedMemory = 0


class _Value:
    __slots__ = ("dVal", "uiVal", "ulVal", "ullVal")

    def __init__(self, v: int) -> None:
        self.uiVal = self.ulVal = self.ullVal = v
        self.dVal = float(v)


class Sample:
    """c_nvmlSample_t: ``.timeStamp`` (µs) and ``.sampleValue.uiVal``."""

    __slots__ = ("sampleValue", "timeStamp")

    def __init__(self, ts: int, value: int) -> None:
        self.timeStamp = ts
        self.sampleValue = _Value(value)


class ProcSample:
    """c_nvmlProcessUtilizationSample_t."""

    __slots__ = ("decUtil", "encUtil", "memUtil", "pid", "smUtil", "timeStamp")

    def __init__(self, pid: int, ts: int, sm: int, mem: int = 0) -> None:
        self.pid, self.timeStamp, self.smUtil, self.memUtil = pid, ts, sm, mem
        self.encUtil = self.decUtil = 0


class _Memory:
    __slots__ = ("free", "total", "used")

    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, total - used


class _Utilization:
    __slots__ = ("gpu", "memory")

    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu, self.memory = gpu, memory


class _Attributes:
    __slots__ = ("computeInstanceSliceCount", "gpuInstanceSliceCount", "memorySizeMB", "multiprocessorCount")

    def __init__(self, gi_slices: int, ci_slices: int, mem_mb: int) -> None:
        self.gpuInstanceSliceCount = gi_slices
        self.computeInstanceSliceCount = ci_slices
        self.memorySizeMB = mem_mb
        self.multiprocessorCount = 16 * ci_slices


class _ProfileInfo:
    __slots__ = ("id", "memorySizeMB", "sliceCount")

    def __init__(self, pid: int, slices: int, mem_mb: int) -> None:
        self.id, self.sliceCount, self.memorySizeMB = pid, slices, mem_mb


class _GpmSupport:
    __slots__ = ("isSupportedDevice", "version")

    def __init__(self, ok: bool) -> None:
        self.version = 1
        self.isSupportedDevice = int(ok)


# GPM metric id -> the attribute of `FakeGpu` / `FakeMig` holding its % (advance() integrates it).
GPM_PROF = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: "sm_active_pct",
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy_pct",
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_active_pct",
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_active_pct",
}


class _Profiled:
    """GPM profiling activity (%) a fake GPU or MIG instance runs at, and its cumulative counters."""

    def _init_prof(self, prof: dict[str, float] | None) -> None:
        self.sm_active_pct = self.sm_occupancy_pct = self.tensor_active_pct = self.dram_active_pct = 0.0
        for k, v in (prof or {}).items():
            if k not in GPM_PROF.values():
                raise ValueError(f"prof: unknown key {k!r}; expected one of {sorted(GPM_PROF.values())}")
            setattr(self, k, v)
        self.prof_us = dict.fromkeys(GPM_PROF.values(), 0.0)
        self.gpm_unsupported: set[int] = set()  # GPM metric ids this device answers NotSupported

    def _advance_prof(self, dt_us: int) -> None:
        for k in self.prof_us:
            self.prof_us[k] += getattr(self, k) / 100.0 * dt_us


class EventSet:
    """An NVML event set: the GPUs registered on it and the events queued for nvmlEventSetWait."""

    def __init__(self) -> None:
        self.gpus: dict[int, int] = {}  # id(FakeGpu) -> registered event type mask
        self.queue: list[EventData] = []
        self.freed = False


class EventData:
    """c_nvmlEventData_t: ``.device`` (the handle), ``.eventType``, ``.eventData`` (the Xid)."""

    __slots__ = ("computeInstanceId", "device", "eventData", "eventType", "gpuInstanceId")

    def __init__(self, device: Any, event_type: int, data: int) -> None:
        self.device, self.eventType, self.eventData = device, event_type, data
        self.gpuInstanceId = self.computeInstanceId = NO_INSTANCE


class GpmSample:
    """An opaque GPM sample buffer; the fake records when it was taken and the counters then."""

    __slots__ = ("busy_us", "freed", "gi", "gpu", "prof_us", "ts_us")

    def __init__(self) -> None:
        self.ts_us = 0
        self.busy_us = 0.0
        self.gi: int | None = None
        self.gpu: FakeGpu | None = None
        self.prof_us: dict[str, float] = {}
        self.freed = False


class _GpmMetric:
    __slots__ = ("metricId", "nvmlReturn", "value")

    def __init__(self) -> None:
        self.metricId = 0
        self.nvmlReturn = 0
        self.value = 0.0


class GpmMetricsGet:
    """c_nvmlGpmMetricsGet_t with the same attribute names (the real struct cannot hold fake samples)."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [_GpmMetric() for _ in range(8)]


class FakeMig(_Profiled):
    """One MIG device (GPU instance ``gi`` with compute instance ``ci``); ``prof`` its GPM activity %."""

    def __init__(
        self,
        uuid: str,
        gi: int,
        ci: int,
        profile: str,
        gi_slices: int,
        mem_total_mib: int,
        mem_used_mib: int = 0,
        activity_pct: float = 0.0,
        ci_slices: int | None = None,
        prof: dict[str, float] | None = None,
    ) -> None:
        self._init_prof(prof)
        self.uuid, self.gi, self.ci, self.profile = uuid, gi, ci, profile
        self.gi_slices = gi_slices
        self.ci_slices = ci_slices if ci_slices is not None else gi_slices
        self.mem_total = mem_total_mib * MIB
        self.mem_used = mem_used_mib * MIB
        self.activity_pct = activity_pct
        self.busy_us = 0.0  # cumulative engine-busy time, what GPM samples read
        self.parent: FakeGpu | None = None


class FakeGpu(_Profiled):
    """One physical GPU and what its driver would report; ``prof`` its GPM activity % (whole GPU)."""

    def __init__(
        self,
        index: int,
        uuid: str,
        name: str = "NVIDIA H100 80GB HBM3",
        mem_total_mib: int = 81559,
        *,
        mem_used_mib: int = 0,
        power_mw: int = 70_000,
        energy_mj: int = 1_000_000,
        temp_c: int = 35,
        util_pct: float = 0.0,
        mig_mode: bool = False,
        migs: Iterable[FakeMig | None] = (),
        gpm: bool = True,
        compute_slices: int = 7,
        not_supported: Iterable[str] = (),
        sample_period_s: float = 1 / 6,
        proc_period_s: float = 1.0,
        buffer: int = 120,
        proc_buffer: int = 4000,
        prof: dict[str, float] | None = None,
        sm_clock_mhz: int = 1980,
        mem_clock_mhz: int = 2619,
        clocks_event_reasons: int = 0,
        ecc: tuple[int, int] | None = (0, 0),
        memory_repair: str | None = None,
    ) -> None:
        """``ecc``: volatile (corrected, uncorrected) ECC error counts, None with ECC off
        (NotSupported). ``memory_repair``: ``retire`` (pages; pre-Ampere), ``remap`` (rows; Ampere
        and newer), ``none`` (neither: consumer GPUs); by default from the GPU's name."""
        self._init_prof(prof)
        self.ecc = ecc
        if memory_repair is None:
            memory_repair = "retire" if any(s in name for s in _PRE_AMPERE) else "remap"
        if memory_repair not in ("retire", "remap", "none"):
            raise ValueError(f"memory_repair={memory_repair!r}: expected retire, remap or none")
        self.memory_repair = memory_repair
        self.retired_sbe: list[int] = []  # page addresses retired for multiple single-bit errors
        self.retired_dbe: list[int] = []  # ... for a double-bit error
        self.retired_pending = False
        self.remapped_rows = (0, 0, False, False)  # corrRows, uncRows, isPending, failureOccurred
        self.errors: dict[str, int] = {}  # function name -> NVML code it raises on this GPU
        self.sm_clock_mhz, self.mem_clock_mhz = sm_clock_mhz, mem_clock_mhz
        self.clocks_event_reasons = clocks_event_reasons
        self.index, self.uuid, self.name = index, uuid, name
        self.mem_total = mem_total_mib * MIB
        self.mem_used = mem_used_mib * MIB
        self.power_mw, self.energy_mj, self.temp_c = power_mw, energy_mj, temp_c
        self.util_pct = util_pct  # what advance() writes into the sample buffer
        self.util_gauge: int | None = None  # nvmlDeviceGetUtilizationRates().gpu; None: last sample
        self.auto_samples = True  # advance() fills the sample buffers; False: scripted by the test
        self.mig_mode = mig_mode
        self.migs: list[FakeMig | None] = list(migs)
        for m in self.migs:
            if m is not None:
                m.parent = self
        self.gpm = gpm
        self.compute_slices = compute_slices
        self.not_supported = set(not_supported)
        self.fault: int | None = None  # NVML code every call on this GPU raises (GpuIsLost, Unknown)
        self.procs: list[FakeProcess] = []
        self.appear_on_read: list[FakeProcess] = []  # join between the count and the read
        self.insufficient_times = 0  # the next this many process reads outgrow their buffer
        self.parent_procs_error: int | None = None  # in MIG mode: what the aggregate list raises
        self.sample_period_us = int(sample_period_s * 1e6)
        self.proc_period_us = int(proc_period_s * 1e6)
        self.buffer, self.proc_buffer = buffer, proc_buffer
        self.samples: list[Sample] = []
        self.sample_ts: list[int] = []
        self.proc_samples: list[ProcSample] = []
        self.proc_sample_ts: list[int] = []
        self._next_sample_us: int | None = None
        self._next_proc_us: int | None = None
        self._info_cache: dict[int, tuple[FakeProcess, int | None, _ProcInfo]] = {}

    # scripting helpers
    def add_samples(self, points: Iterable[tuple[int, int]]) -> None:
        """Put (timestamp µs, busy %) samples into the driver's GPU utilization buffer."""
        for ts, v in points:
            self.samples.append(Sample(ts, v))
            self.sample_ts.append(ts)

    def add_proc_samples(self, points: Iterable[tuple[int, int, int]]) -> None:
        """Put (pid, timestamp µs, SM %) samples into the driver's process utilization buffer."""
        for pid, ts, sm in points:
            self.proc_samples.append(ProcSample(pid, ts, sm))
            self.proc_sample_ts.append(ts)

    def info(self, p: FakeProcess) -> _ProcInfo:
        hit = self._info_cache.get(id(p))
        if hit is None or hit[0] is not p or hit[1] != p.used_bytes or hit[2].gpuInstanceId != p.gi:
            hit = (p, p.used_bytes, _ProcInfo(p))
            self._info_cache[id(p)] = hit
        return hit[2]

    def mig_by_gi(self, gi: int) -> FakeMig:
        for m in self.migs:
            if m is not None and m.gi == gi:
                return m
        raise err(pynvml.NVML_ERROR_NOT_FOUND)


# What NVML answers with NotSupported when asked about a MIG device handle.
_WHOLE_GPU_ONLY = frozenset(
    {
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetSamples",
        "nvmlDeviceGetProcessUtilization",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlGpmQueryDeviceSupport",
        "nvmlGpmSampleGet",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetRemappedRows",
    }
)
# GPU names of generations before Ampere: they retire pages; Ampere and newer remap rows instead.
_PRE_AMPERE = ("V100", "P100", "P40", "T4", "Tesla")


def _api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Count the call, honour `missing`, and raise the fault of a broken GPU behind a handle."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: FakeNvml, *args: Any) -> Any:
        self.calls[name] += 1
        if name in self.missing:
            raise err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if args:
            h = args[0]
            if isinstance(h, FakeMig) and name in _WHOLE_GPU_ONLY:
                raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
            gpu = h.parent if isinstance(h, FakeMig) else h if isinstance(h, FakeGpu) else None
            if gpu is not None:
                if gpu.fault is not None:
                    raise err(gpu.fault)
                if name in gpu.not_supported:
                    raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
                if name in gpu.errors:
                    raise err(gpu.errors[name])
        return fn(self, *args)

    return wrapper


class FakeNvml:
    """The fake pynvml module. ``hidden`` names are absent attributes (an older nvidia-ml-py)."""

    c_nvmlGpmMetricsGet_t = GpmMetricsGet
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __new__(cls, *args: Any, hidden: Iterable[str] = (), **kwargs: Any) -> FakeNvml:
        hidden = tuple(hidden)
        if hidden:

            def gone(self: Any) -> Any:
                raise AttributeError("not in this nvidia-ml-py")

            cls = type("FakeNvmlOld", (cls,), {n: property(gone) for n in hidden})
        return super().__new__(cls)

    def __init__(
        self,
        gpus: Iterable[FakeGpu],
        *,
        start_s: float = 1_800_000_000.0,
        missing: Iterable[str] = (),
        hidden: Iterable[str] = (),
    ) -> None:
        self.gpus = list(gpus)
        self.now = start_s
        self.missing = set(missing)
        self.calls: Counter[str] = Counter()
        self.inits = 0
        self.gpm_samples: list[GpmSample] = []  # every buffer handed out (tests check they are freed)
        self.event_sets: list[EventSet] = []

    def __getattr__(self, name: str) -> Any:  # constants, error classes, structs: pynvml's own
        if name.startswith(("NVML", "c_")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # -- time ---------------------------------------------------------------------------------

    def clock(self) -> float:
        return self.now

    @property
    def now_us(self) -> int:
        return int(self.now * 1_000_000)

    def advance(self, seconds: float) -> None:
        """Let time pass: fill sample buffers, energy counters and GPM busy time as the driver would."""
        start_us = self.now_us
        self.now += seconds
        end_us = self.now_us
        for g in self.gpus:
            if g.fault is not None:
                continue
            g.energy_mj += int(g.power_mw * seconds)
            g._advance_prof(end_us - start_us)
            for m in g.migs:
                if m is not None:
                    m.busy_us += m.activity_pct / 100.0 * (end_us - start_us)
                    m._advance_prof(end_us - start_us)
            if g.mig_mode or not g.auto_samples:
                continue
            nxt = g._next_sample_us if g._next_sample_us is not None else start_us + g.sample_period_us
            util = round(g.util_pct)
            while nxt <= end_us:
                g.samples.append(Sample(nxt, util))
                g.sample_ts.append(nxt)
                nxt += g.sample_period_us
            g._next_sample_us = nxt
            if len(g.samples) > g.buffer:
                del g.samples[: -g.buffer], g.sample_ts[: -g.buffer]
            nxt = g._next_proc_us if g._next_proc_us is not None else start_us + g.proc_period_us
            busy = [(p.pid, round(p.sm_pct)) for p in g.procs if p.sm_pct > 0]
            while nxt <= end_us:
                for pid, sm in busy:
                    g.proc_samples.append(ProcSample(pid, nxt, sm))
                    g.proc_sample_ts.append(nxt)
                nxt += g.proc_period_us
            g._next_proc_us = nxt
            if len(g.proc_samples) > g.proc_buffer:
                del g.proc_samples[: -g.proc_buffer], g.proc_sample_ts[: -g.proc_buffer]

    # -- library ------------------------------------------------------------------------------

    @_api
    def nvmlInit(self) -> None:
        self.inits += 1

    @_api
    def nvmlShutdown(self) -> None:
        self.inits -= 1

    @_api
    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[index]
        if g.fault is not None:
            raise err(g.fault)
        return g

    @_api
    def nvmlDeviceGetName(self, h: FakeGpu | FakeMig) -> str:
        if isinstance(h, FakeMig):
            assert h.parent is not None
            return f"{h.parent.name} MIG {h.profile}"
        return h.name

    @_api
    def nvmlDeviceGetUUID(self, h: FakeGpu | FakeMig) -> str:
        return h.uuid

    @_api
    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu | FakeMig, version: Any = None) -> _Memory:
        return _Memory(h.mem_total, h.mem_used)

    @_api
    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return h.power_mw

    @_api
    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        return h.energy_mj

    @_api
    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        return h.temp_c

    @_api
    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> _Utilization:
        if h.mig_mode:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        gauge = h.util_gauge
        if gauge is None:
            gauge = h.samples[-1].sampleValue.uiVal if h.samples else 0
        return _Utilization(gauge, 0)

    @_api
    def nvmlDeviceGetSamples(
        self, h: FakeGpu, sampling_type: int, last_seen: int
    ) -> tuple[int, list[Sample]]:
        if h.mig_mode:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if sampling_type != pynvml.NVML_GPU_UTILIZATION_SAMPLES:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        i = bisect.bisect_right(h.sample_ts, last_seen)
        if i >= len(h.samples):
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, h.samples[i:]

    @_api
    def nvmlDeviceGetProcessUtilization(self, h: FakeGpu, last_seen: int) -> list[ProcSample]:
        if h.mig_mode:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        i = bisect.bisect_right(h.proc_sample_ts, last_seen)
        if i >= len(h.proc_samples):
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return h.proc_samples[i:]

    def _running(self, h: FakeGpu | FakeMig) -> list[_ProcInfo]:
        gpu = h.parent if isinstance(h, FakeMig) else h
        assert gpu is not None
        if gpu.insufficient_times > 0:
            gpu.insufficient_times -= 1
            raise err(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        if gpu.appear_on_read:
            # pynvml counted, oversized its buffer, and still the list outgrew it before the read
            gpu.procs.extend(gpu.appear_on_read)
            gpu.appear_on_read = []
            raise err(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        if isinstance(h, FakeMig):
            return [gpu.info(p) for p in gpu.procs if p.gi == h.gi and p.ci == h.ci]
        if gpu.mig_mode and gpu.parent_procs_error is not None:
            raise err(gpu.parent_procs_error)
        return [gpu.info(p) for p in gpu.procs]

    @_api
    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: FakeGpu | FakeMig) -> list[_ProcInfo]:
        return self._running(h)

    @_api
    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: FakeGpu | FakeMig) -> list[_ProcInfo]:
        return self._running(h)

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu | FakeMig) -> list[_ProcInfo]:
        return self._running(h)

    # -- MIG ----------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        mode = int(h.mig_mode)
        return [mode, mode]

    @_api
    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGpu) -> int:
        return 7 if h.mig_mode else 0

    @_api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeGpu, index: int) -> FakeMig:
        if not h.mig_mode or index >= 7:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        m = h.migs[index] if index < len(h.migs) else None
        if m is None:
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return m

    @_api
    def nvmlDeviceIsMigDeviceHandle(self, h: FakeGpu | FakeMig) -> int:
        return int(isinstance(h, FakeMig))

    @_api
    def nvmlDeviceGetGpuInstanceId(self, h: FakeMig) -> int:
        return h.gi

    @_api
    def nvmlDeviceGetComputeInstanceId(self, h: FakeMig) -> int:
        return h.ci

    @_api
    def nvmlDeviceGetAttributes(self, h: FakeMig) -> _Attributes:
        return _Attributes(h.gi_slices, h.ci_slices, h.mem_total // MIB)

    @_api
    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: FakeGpu, profile: int, version: int = 2) -> _ProfileInfo:
        slices = {
            pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE: 7,
            pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE: 4,
        }.get(profile)
        if slices is None or slices > h.compute_slices or (slices == 4 and h.compute_slices == 7):
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _ProfileInfo(profile, slices, h.mem_total // MIB)

    # -- GPM ----------------------------------------------------------------------------------

    @_api
    def nvmlGpmQueryDeviceSupport(self, h: FakeGpu) -> _GpmSupport:
        return _GpmSupport(h.gpm)

    @_api
    def nvmlGpmSampleAlloc(self) -> GpmSample:
        sample = GpmSample()
        self.gpm_samples.append(sample)
        return sample

    @_api
    def nvmlGpmSampleFree(self, sample: GpmSample) -> None:
        sample.freed = True

    @_api
    def nvmlGpmMigSampleGet(self, h: FakeGpu, gi: int, sample: GpmSample) -> GpmSample:
        if not h.gpm:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        m = h.mig_by_gi(gi)
        sample.ts_us, sample.busy_us, sample.gi, sample.gpu = self.now_us, m.busy_us, gi, h
        sample.prof_us = dict(m.prof_us)
        return sample

    @_api
    def nvmlGpmSampleGet(self, h: FakeGpu, sample: GpmSample) -> GpmSample:
        """The whole GPU's counters (GRAPHICS_UTIL of a whole GPU is not modelled: NotSupported)."""
        if not h.gpm:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        sample.ts_us, sample.busy_us, sample.gi, sample.gpu = self.now_us, 0.0, None, h
        sample.prof_us = dict(h.prof_us)
        return sample

    @_api
    def nvmlGpmMetricsGet(self, req: GpmMetricsGet) -> GpmMetricsGet:
        s1, s2 = req.sample1, req.sample2
        dev = s2.gpu if s2.gi is None else s2.gpu.mig_by_gi(s2.gi) if s2.gpu is not None else None
        for metric in req.metrics[: req.numMetrics]:
            mid = metric.metricId
            key = GPM_PROF.get(mid)
            known = (mid == pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL and s2.gi is not None) or key is not None
            if not known or s1.gi != s2.gi or s1.gpu is not s2.gpu or (dev and mid in dev.gpm_unsupported):
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            if s2.ts_us <= s1.ts_us:
                metric.nvmlReturn = pynvml.NVML_ERROR_INVALID_ARGUMENT
                continue
            delta = s2.busy_us - s1.busy_us if key is None else s2.prof_us[key] - s1.prof_us[key]
            metric.value = delta / (s2.ts_us - s1.ts_us) * 100.0
            metric.nvmlReturn = pynvml.NVML_SUCCESS
        return req

    # -- Xid events -----------------------------------------------------------------------------

    def xid(self, gpu: FakeGpu, code: int) -> None:
        """The driver reports Xid ``code`` on ``gpu``: queued on every set the GPU is registered on."""
        for es in self.event_sets:
            if es.gpus.get(id(gpu), 0) & pynvml.nvmlEventTypeXidCriticalError:
                es.queue.append(EventData(gpu, pynvml.nvmlEventTypeXidCriticalError, code))

    @_api
    def nvmlEventSetCreate(self) -> EventSet:
        es = EventSet()
        self.event_sets.append(es)
        return es

    @_api
    def nvmlDeviceRegisterEvents(self, h: FakeGpu, event_types: int, es: EventSet) -> None:
        es.gpus[id(h)] = es.gpus.get(id(h), 0) | event_types

    @_api
    def nvmlEventSetWait_v2(self, es: EventSet, timeout_ms: int) -> EventData:
        if es.freed:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not es.queue:
            raise err(pynvml.NVML_ERROR_TIMEOUT)  # never waits: the fake has no other thread
        ev = es.queue.pop(0)
        if isinstance(ev.device, FakeGpu) and ev.device.fault is not None:
            raise err(ev.device.fault)
        return ev

    @_api
    def nvmlEventSetFree(self, es: EventSet) -> None:
        es.freed = True

    # -- clocks -------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock_type: int) -> int:
        if clock_type == pynvml.NVML_CLOCK_SM:
            return h.sm_clock_mhz
        if clock_type == pynvml.NVML_CLOCK_MEM:
            return h.mem_clock_mhz
        raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    @_api
    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        return h.clocks_event_reasons

    # -- memory health --------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter_type: int) -> int:
        if h.ecc is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # ECC off, or a GPU without ECC memory
        if counter_type not in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC) or error_type not in (
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        ):
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return h.ecc[error_type]

    @_api
    def nvmlDeviceGetRetiredPages(self, h: FakeGpu, source_filter: int) -> list[int]:
        if h.memory_repair != "retire":
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if source_filter == pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS:
            return list(h.retired_sbe)
        if source_filter == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
            return list(h.retired_dbe)
        raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    @_api
    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeGpu) -> int:
        if h.memory_repair != "retire":
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.NVML_FEATURE_ENABLED if h.retired_pending else pynvml.NVML_FEATURE_DISABLED

    @_api
    def nvmlDeviceGetRemappedRows(self, h: FakeGpu) -> tuple[int, int, int, int]:
        if h.memory_repair != "remap":
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        corr, unc, pending, failed = h.remapped_rows
        return (corr, unc, int(pending), int(failed))  # pynvml: four c_uint values


def write_proc_entry(
    root: str, pid: int, *, start: int, cgroup: str, uid: int = 0, environ: bytes = b""
) -> None:
    """A `<root>/<pid>/` entry as the attributor reads it (stat, cgroup, status, environ)."""
    import os

    d = os.path.join(root, str(pid))
    os.makedirs(d, exist_ok=True)
    fields = " ".join(["1"] * 18)
    with open(os.path.join(d, "stat"), "w") as f:
        f.write(f"{pid} (python3) S {fields} {start} 0 0 0\n")
    with open(os.path.join(d, "cgroup"), "w") as f:
        f.write(cgroup)
    with open(os.path.join(d, "status"), "w") as f:
        f.write(f"Name:\tpython3\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    with open(os.path.join(d, "environ"), "wb") as f:
        f.write(environ)
