"""Loader for the real GenTD26 GPU trace (Alibaba cluster-trace-v2026-GenAI).

The simulated fleet replays real production behaviour instead of invented curves, so that
idle detection, chargeback and the enforcer are exercised on the shapes operators actually see
(mostly idle inference pods with short bursts, memory held all the time). The trace ships inside
the package (``collector/data/gentd26``) so the demo runs without ``../shared``.

Parsing happens once per process (``load_gentd26`` is cached) with the standard library only.
Each pod becomes two dense series on the trace's 57 s grid, so every lookup is O(1):

- ``pods`` is the sorted union of the pods of both files (144: one pod reports memory only).
- A sample missing between a pod's first and last sample carries the previous value (the pod
  was running; the exporter missed a scrape).
- Outside a pod's own lifetime (before its first or after its last sample) busy is 0 % and
  memory 0 bytes: the pod did not exist yet / any more (the trace comes from an autoscaled
  service). A pod absent from one file reads 0 for that series. ``coverage()`` says how much of
  the grid a pod really covers, so callers can pick pods that run the whole time.
- Time is seconds from the trace start; it wraps around at ``period_s`` so a simulation may run
  longer than the 22.8 h the trace covers.
"""

from __future__ import annotations

import gzip
import math
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data" / "gentd26"
DUTY_FILE = "pod_gpu_duty_cycle.csv.gz"
MEM_FILE = "pod_gpu_memory_used_bytes.csv.gz"
STEP_S = 57


@dataclass(frozen=True)
class Trace:
    """Per-pod busy % and memory bytes on a fixed grid, with O(1) lookups.

    Pods are addressed by their position in ``pods`` (sorted, so positions are stable across
    processes and machines). ``t`` is seconds from the trace start and may be any real number:
    it wraps around every ``period_s``.
    """

    pods: list[str]
    step_s: int
    n_steps: int
    start_anon: float
    duty_rows: int
    mem_rows: int
    duty_pods: int
    mem_pods: int
    busy_mean_raw: float
    busy_zero_fraction_raw: float
    _busy: list[array] = field(repr=False)
    _busy_cum: list[array] = field(repr=False)
    _mem: list[array] = field(repr=False)
    _coverage: list[float] = field(repr=False)
    _life: list[tuple[int, int]] = field(repr=False, default_factory=list)  # first, last step

    @property
    def period_s(self) -> int:
        """Length of one pass over the trace; lookups wrap around at this many seconds."""
        return self.n_steps * self.step_s

    def busy_pct(self, pod_index: int, t: float) -> float:
        """GPU busy % of the pod at ``t`` (the 57 s sample that covers ``t``)."""
        return self._busy[pod_index][int(t // self.step_s) % self.n_steps]

    def mem_bytes(self, pod_index: int, t: float) -> float:
        """GPU memory bytes the pod held at ``t`` (gauge semantics: the covering sample)."""
        return self._mem[pod_index][int(t // self.step_s) % self.n_steps]

    def _busy_integral(self, pod_index: int, t: float) -> float:
        """Integral of busy % from 0 to ``t`` (%·s), exact for the piecewise-constant series."""
        step = self.step_s
        cum = self._busy_cum[pod_index]
        laps, rest = divmod(t, self.n_steps * step)
        i = int(rest // step)
        if i >= self.n_steps:  # float edge: rest rounds up to the period
            i = self.n_steps - 1
        return laps * cum[self.n_steps] + cum[i] + (rest - i * step) * self._busy[pod_index][i]

    def busy_mean(self, pod_index: int, t0: float, t1: float) -> float:
        """Average busy % over ``(t0, t1]`` in O(1).

        A tick's util is the busy-time average over its interval (DESIGN §4), not one gauge
        read, so a replay must average the samples the interval overlaps.
        """
        if t1 <= t0:
            return self.busy_pct(pod_index, t1)
        v = (self._busy_integral(pod_index, t1) - self._busy_integral(pod_index, t0)) / (t1 - t0)
        return 0.0 if v < 0.0 else (100.0 if v > 100.0 else v)

    def mem_peak_bytes(self, pod_index: int) -> float:
        """Highest memory the pod held over the trace (used to scale memory into a slice cap)."""
        return max(self._mem[pod_index])

    def coverage(self, pod_index: int) -> float:
        """Fraction of grid steps where the pod has a real sample in both files (0..1)."""
        return self._coverage[pod_index]

    def lifetime_s(self, pod_index: int) -> tuple[float, float]:
        """Seconds from the trace start of the pod's first sample and the end of its last one."""
        first, last = self._life[pod_index]
        return first * self.step_s, (last + 1) * self.step_s

    def full_pods(self, min_coverage: float = 0.95) -> list[int]:
        """Positions of the pods that run (almost) the whole trace, in ``pods`` order."""
        return [i for i, c in enumerate(self._coverage) if c >= min_coverage]


def _read_rows(path: Path, value_col: int, ts_col: int) -> tuple[list[str], list[float], list[float]]:
    """Parse one trace CSV into (pod, timestamp, value) columns.

    The files are simple numeric CSVs without quoting, so splitting lines is both correct and
    several times faster than the csv module (keeps the cold load well under a second).
    """
    text = gzip.decompress(path.read_bytes()).decode("ascii")
    lines = text.splitlines()
    header = lines[0].split(",")
    if header[value_col] != "value" or header[ts_col] != "timestamp_anon" or header[2] != "container_ip":
        raise ValueError(f"{path.name}: unexpected header {header!r}")
    pods: list[str] = []
    ts: list[float] = []
    vals: list[float] = []
    for line in lines[1:]:
        if not line:
            continue
        parts = line.split(",")
        pods.append(parts[2])
        ts.append(float(parts[ts_col]))
        vals.append(float(parts[value_col]))
    return pods, ts, vals


def _densify(
    pods: list[str], idx: list[int], vals: list[float], pod_pos: dict[str, int], n_pods: int, n_steps: int
) -> tuple[list[array], list[int]]:
    """Turn samples into one dense series per pod (carry inside the lifetime, 0 outside)."""
    sparse: list[dict[int, float]] = [{} for _ in range(n_pods)]
    for pod, i, v in zip(pods, idx, vals, strict=True):
        sparse[pod_pos[pod]][i] = v
    series: list[array] = []
    counts: list[int] = []
    for samples in sparse:
        out = array("d", bytes(8 * n_steps))
        counts.append(len(samples))
        if samples:
            first, last = min(samples), max(samples)
            cur = samples[first]
            get = samples.get
            for i in range(first, last + 1):
                cur = get(i, cur)
                out[i] = cur
        series.append(out)
    return series, counts


def load_gentd26_from(directory: Path) -> Trace:
    """Load the trace from ``directory`` without caching (tests and other copies of the files)."""
    d_pods, d_ts, d_vals = _read_rows(directory / DUTY_FILE, value_col=0, ts_col=1)
    m_pods, m_ts, m_vals = _read_rows(directory / MEM_FILE, value_col=1, ts_col=0)
    if not d_ts or not m_ts:
        raise ValueError(f"{directory}: empty trace file")
    t_start = min(min(d_ts), min(m_ts))
    t_end = max(max(d_ts), max(m_ts))
    n_steps = round((t_end - t_start) / STEP_S) + 1
    pod_names = sorted(set(d_pods) | set(m_pods))
    pos = {p: i for i, p in enumerate(pod_names)}
    d_idx = [round((t - t_start) / STEP_S) for t in d_ts]
    m_idx = [round((t - t_start) / STEP_S) for t in m_ts]
    busy, d_counts = _densify(d_pods, d_idx, d_vals, pos, len(pod_names), n_steps)
    mem, m_counts = _densify(m_pods, m_idx, m_vals, pos, len(pod_names), n_steps)
    busy_cum: list[array] = []
    for series in busy:
        cum = array("d", bytes(8 * (n_steps + 1)))
        acc = 0.0
        for i, v in enumerate(series):
            cum[i] = acc
            acc += v * STEP_S
        cum[n_steps] = acc
        busy_cum.append(cum)
    coverage = [min(dc, mc) / n_steps for dc, mc in zip(d_counts, m_counts, strict=True)]
    first, last = [n_steps] * len(pod_names), [-1] * len(pod_names)
    for pods_, idx in ((d_pods, d_idx), (m_pods, m_idx)):
        for p, i in zip(pods_, idx, strict=True):
            k = pos[p]
            if i < first[k]:
                first[k] = i
            if i > last[k]:
                last[k] = i
    life = list(zip(first, last, strict=True))
    zeros = sum(1 for v in d_vals if v == 0.0)
    return Trace(
        pods=pod_names,
        step_s=STEP_S,
        n_steps=n_steps,
        start_anon=t_start,
        duty_rows=len(d_vals),
        mem_rows=len(m_vals),
        duty_pods=len(set(d_pods)),
        mem_pods=len(set(m_pods)),
        busy_mean_raw=math.fsum(d_vals) / len(d_vals),
        busy_zero_fraction_raw=zeros / len(d_vals),
        _busy=busy,
        _busy_cum=busy_cum,
        _mem=mem,
        _coverage=coverage,
        _life=life,
    )


@lru_cache(maxsize=1)
def load_gentd26() -> Trace:
    """The packaged GenTD26 trace, parsed once per process (about 0.5 s cold, then free)."""
    return load_gentd26_from(DATA_DIR)
