"""Activity patterns of the simulated fleet's slices: how busy a slice is and how much memory it holds.

Each pattern's ``sample(t0, t1, age, rnd)`` returns (a, m): a = activity as a fraction of the
slice's nominal compute (may exceed 1 for a HAMi slice bursting over its core cap), m = memory as
a fraction of its nominal memory. Only time-varying work happens here; everything static is
precomputed, because the fleet samples every slice of every node each tick. They are the shapes a
chargeback system must handle: a real trace replayed (GenTD26), allocations idle for hours while
holding memory, notebooks, training with checkpoint dips, diurnal services, bursts over the
reserved share, Slurm batch jobs.
"""

from __future__ import annotations

import math
from typing import Any

from collector.traces import Trace

HOUR = 3600.0
DAY = 86400.0


class TracePattern:
    """Replays one GenTD26 pod at a fixed time offset; memory scaled so its peak fits the cap."""

    __slots__ = ("gain", "mscale", "off", "pod", "trace")
    name = "trace"

    def __init__(self, trace: Trace, pod: int, off: float, peak_frac: float) -> None:
        self.trace, self.pod, self.off = trace, pod, off
        self.gain = 0.01
        peak = trace.mem_peak_bytes(pod)
        self.mscale = peak_frac / peak if peak > 0 else 0.0

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        o = self.off
        return (
            self.trace.busy_mean(self.pod, t0 + o, t1 + o) * self.gain,
            self.trace.mem_bytes(self.pod, t1 + o) * self.mscale,
        )


class IdlePattern:
    """An allocation nobody uses: memory held, (almost) no kernels — the waste idle detection finds."""

    __slots__ = ("m",)
    name = "idle"

    def __init__(self, m: float) -> None:
        self.m = m

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        return rnd() * 0.003, self.m


class NotebookPattern:
    """Interactive notebook: short active windows, hours of idle while the kernel holds memory."""

    __slots__ = ("active", "level", "m_busy", "m_idle", "period", "phase")
    name = "notebook"

    def __init__(
        self, period: float, active: float, phase: float, level: float, m_idle: float, m_busy: float
    ) -> None:
        self.period, self.active, self.phase = period, active, phase
        self.level, self.m_idle, self.m_busy = level, m_idle, m_busy

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        if (t1 + self.phase) % self.period < self.active:
            return self.level * (0.6 + 0.8 * rnd()), self.m_busy
        return rnd() * 0.002, self.m_idle


class TrainingPattern:
    """Steady training with periodic checkpoint/eval dips; memory flat near its working set."""

    __slots__ = ("ckpt", "ckpt_len", "level", "m", "phase")
    name = "training"

    def __init__(self, level: float, m: float, ckpt: float, ckpt_len: float, phase: float) -> None:
        self.level, self.m, self.ckpt, self.ckpt_len, self.phase = level, m, ckpt, ckpt_len, phase

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        if (t1 + self.phase) % self.ckpt < self.ckpt_len:
            return 0.03 + 0.05 * rnd(), self.m
        return self.level + 0.06 * (rnd() - 0.5), self.m


class DiurnalPattern:
    """A service following the working day (UTC hour of the simulated clock)."""

    __slots__ = ("amp", "base", "m0", "m1", "peak_h", "tod0")
    name = "diurnal"

    def __init__(self, base: float, amp: float, peak_h: float, m0: float, m1: float, tod0: float) -> None:
        self.base, self.amp, self.peak_h, self.m0, self.m1, self.tod0 = base, amp, peak_h, m0, m1, tod0

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        h = ((self.tod0 + t1) % DAY) / HOUR
        c = math.cos((h - self.peak_h) * (math.pi / 12.0))
        f = c * c * c if c > 0.0 else 0.0
        a = self.base + self.amp * f + 0.04 * (rnd() - 0.5)
        return (a if a > 0.0 else 0.0), self.m0 + self.m1 * f


class BurstPattern:
    """Phases far above the reserved share (e.g. HAMi core 20 % running at 60 %), then quiet."""

    __slots__ = ("duty", "hi", "lo", "m", "period", "phase")
    name = "burst"

    def __init__(self, period: float, duty: float, hi: float, lo: float, phase: float, m: float) -> None:
        self.period, self.duty, self.hi, self.lo, self.phase, self.m = period, duty, hi, lo, phase, m

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        if (t1 + self.phase) % self.period < self.duty * self.period:
            return self.hi * (0.9 + 0.2 * rnd()), self.m
        return self.lo * (0.5 + rnd()), self.m * 0.8


class BatchPattern:
    """A Slurm job: data loading ramp, then a steady compute plateau."""

    __slots__ = ("level", "m", "ramp")
    name = "batch"

    def __init__(self, level: float, m: float, ramp: float) -> None:
        self.level, self.m, self.ramp = level, m, ramp

    def sample(self, t0: float, t1: float, age: float, rnd: Any) -> tuple[float, float]:
        if age < self.ramp:
            f = age / self.ramp if age > 0.0 else 0.0
            return 0.05 + 0.1 * rnd(), self.m * (0.1 + 0.9 * f)
        return self.level + 0.08 * (rnd() - 0.5), self.m
