"""Offline evaluation of the enforcer (DESIGN §8): a causal replay of a trace's memory and busy series.

`gpuledger enforcer evaluate TRACE` replays each pod of a GenTD26-layout trace (loaded by
collector/traces.py, the same loader the replay backend uses) as one HAMi vGPU slice that today
holds a whole GPU (the static baseline), and runs in the same pass:

- `static`: every pod keeps its whole GPU (memory cap = the GPU's memory, core cap 100 %);
- `policy`: the real `pipeline.enforcer_policy.decide` in `enforce` mode, called every `cycle_s`
  with features built only from what was observed up to that instant (5-minute windows of peaks,
  the last sample, suspected out-of-memory windows); its sent decisions apply from the next step;
- `vpa`: a VPA-style recipe: P90 of the same decaying histogram of window peaks x 1.15 (memory)
  and of the windows' highest busy % x 1.15 (core), applied every cycle when it grows or moves by
  at least `shrink_min_change`; an out-of-memory records max(1.2 x cap, cap + 100 MiB) as a peak
  (VPA's OOM bump);
- `oracle`: a clairvoyant cap, at each cycle the pod's highest use from then to its end (future
  maximum), for memory and for busy %.

What a slice "uses" is the trace's demand. A step whose demand is above the memory cap in force
is a violation (HAMi-core would have refused the allocation); a run of such steps of one pod is
one suspected out-of-memory event. The policy and VPA then observe use clipped at the cap and a
window flagged `oom_suspect`, which is what the lake would show (docs/enforcer.md), so they react
as they would in production. Core caps count as applied at once (HAMi applies them at the next
process start, so this is optimistic for core); a step whose busy % is above the core cap is
counted as throttled.

Everything here is deterministic: the same trace and configuration give the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpuledger.config import EnforcerConfig
from pipeline.enforcer_history import FleetHistory
from pipeline.enforcer_policy import PolicyState, SliceFeatures, decide, round_up

MIB = 1 << 20
METHODS = ("static", "policy", "vpa", "oracle")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # replay clock origin (the trace's timestamps are anonymised)


@dataclass(frozen=True)
class Series:
    """Per-pod demand on a fixed grid: memory MiB and busy %; a pod exists in [first, last] steps."""

    pods: list[str]
    step_s: int
    mem_mib: list[list[float]]
    busy: list[list[float]]
    life: list[tuple[int, int]]
    gpu_mem_mib: int = 81559  # H100 80GB, as the replay backend (collector/replay.py)

    @property
    def n_steps(self) -> int:
        return max((last + 1 for _, last in self.life), default=0)


def series_from_trace(
    directory: str | Path,
    *,
    gpu_mem_mib: int = 81559,
    pods: int | None = None,
    hours: float | None = None,
) -> Series:
    """A GenTD26-layout trace directory as a Series (optionally the first `pods` pods, first `hours`)."""
    from collector.traces import load_gentd26_from

    tr = load_gentd26_from(Path(directory))
    n = tr.n_steps if hours is None else min(tr.n_steps, max(1, int(hours * 3600 // tr.step_s)))
    idx = [i for i in range(len(tr.pods)) if tr._life[i][1] >= tr._life[i][0]]
    if pods is not None:
        idx = idx[:pods]
    mem, busy, life, names = [], [], [], []
    for i in idx:
        first, last = tr._life[i]
        if first >= n:
            continue
        last = min(last, n - 1)
        mem.append([tr._mem[i][s] / MIB for s in range(n)])
        busy.append([tr._busy[i][s] for s in range(n)])
        life.append((first, last))
        names.append(tr.pods[i])
    return Series(names, tr.step_s, mem, busy, life, gpu_mem_mib)


@dataclass
class Result:
    """The evaluation of one method over one series."""

    method: str
    reclaimed_gib_h: float = 0.0
    gpu_equivalents: float = 0.0  # reclaimed memory as whole GPUs, averaged over the trace
    slack: float = 0.0  # mean over pod-steps of (cap - use) / cap, use clipped at the cap
    violation_rate: float = 0.0  # pod-steps with memory demand above the cap
    oom_events: int = 0  # runs of violating steps of one pod
    oom_per_slice_day: float = 0.0
    throttled_rate: float = 0.0  # pod-steps with busy % above the core cap
    changes: int = 0  # cap changes applied (memory and core)
    changes_per_slice_day: float = 0.0
    median_changes_per_slice_day: float = 0.0
    reversals: int = 0  # a change opposite to the previous change of the same pod and resource
    static_gpus_peak: int = 0
    gpus_peak: int = 0  # best-fit packing of the caps at the busiest cycle
    gpus_mean: float = 0.0
    packing_gain: float = 0.0  # 1 - GPU-hours needed / GPU-hours held statically
    demoted: int = 0  # policy: tenants (pods) put back to recommend
    slice_days: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"}


def pack(items: Sequence[tuple[float, float]], mem_cap: float, core_cap: float = 100.0) -> int:
    """GPUs needed to hold every (memory, core) item under its caps: best fit, largest memory first.

    An item goes to the open GPU where it leaves the least memory free among those where both its
    memory and its core fit; a new GPU otherwise. An item larger than a GPU gets one of its own.
    """
    bins: list[list[float]] = []  # [memory free, core free]
    for m, c in sorted(items, key=lambda x: (-x[0], -x[1])):
        best, best_left = -1, math.inf
        for k, (fm, fc) in enumerate(bins):
            if m <= fm + 1e-9 and c <= fc + 1e-9 and fm - m < best_left:
                best, best_left = k, fm - m
        if best < 0:
            bins.append([mem_cap - m, core_cap - c])
        else:
            bins[best][0] -= m
            bins[best][1] -= c
    return len(bins)


class _Pod:
    """Replay state of one pod under one method."""

    __slots__ = ("changes", "closed", "core_cap", "cur", "first_mem", "last_dir", "mem_cap", "violating")

    def __init__(self, mem_cap: float, core_cap: float) -> None:
        self.mem_cap, self.core_cap = mem_cap, core_cap
        self.closed: list[dict[str, Any]] = []  # windows closed since the last fold
        self.cur: dict[str, Any] | None = None  # the open window
        self.violating = False
        self.changes = 0
        self.last_dir: dict[str, int] = {}
        self.first_mem = mem_cap


def _suffix_max(xs: Sequence[float], first: int, last: int) -> list[float]:
    out = [0.0] * (last + 2)
    acc = 0.0
    for s in range(last, first - 1, -1):
        acc = max(acc, xs[s])
        out[s] = acc
    return out


def evaluate(
    series: Series,
    cfg: EnforcerConfig,
    *,
    methods: Sequence[str] = METHODS,
    cycle_s: float = 300.0,
    vpa_percentile: float = 90.0,
    vpa_margin: float = 0.15,
) -> dict[str, Result]:
    """Replay `series` under each method; the policy sees only the past. Returns method -> Result."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}: expected one of {', '.join(METHODS)}")
    cfg = replace(cfg, mode="enforce", pools={}, tenants={}, opt_out=[])
    vcfg = replace(cfg, percentile=vpa_percentile, margin=vpa_margin)
    step = series.step_s
    n = series.n_steps
    peak_s = cfg.peak_minutes * 60.0
    every = max(1, round(cycle_s / step))
    total = float(series.gpu_mem_mib)
    out: dict[str, Result] = {}
    fut_mem = [_suffix_max(series.mem_mib[p], *series.life[p]) for p in range(len(series.pods))]
    fut_busy = [_suffix_max(series.busy[p], *series.life[p]) for p in range(len(series.pods))]
    for method in methods:
        out[method] = _run(series, method, cfg, vcfg, every, peak_s, total, n, step, fut_mem, fut_busy)
    return out


def _features(
    series: Series, p: int, pod: _Pod, hist: FleetHistory, now: datetime, observed: float
) -> SliceFeatures:
    first = series.life[p][0]
    name = series.pods[p]
    return SliceFeatures(
        slice_id=name,
        cluster="replay",
        node="replay-node",
        model="trace",
        kind="vgpu",
        tenant=name,  # one tenant per pod: the kill switch acts per pod (docs/enforcer.md)
        gpu_uuid=f"GPU-{name}",
        first_seen=EPOCH + timedelta(seconds=first * series.step_s),
        last_ts=now,
        interval_s=float(series.step_s),
        mem_cap_mib=int(pod.mem_cap),
        core_cap_pct=float(pod.core_cap),
        mem_used_mib=int(observed),
        gpu_mem_total_mib=series.gpu_mem_mib,
        history=hist,
        row=int(hist.rows([name])[0]),
    )


def _fold(series: Series, live: list[tuple[int, _Pod]], hists: Sequence[tuple[FleetHistory, str]]) -> None:
    """Each live pod's windows closed since the last cycle and its open one (folded again every
    cycle as it fills: a re-folded window replaces itself) into the method's histories; `hists`
    pairs a history with the window value it takes as its memory peak ("mem" or "util")."""
    ids: list[str] = []
    starts: list[int] = []
    vals: dict[str, list[float]] = {"mem": [], "util": []}
    ticks: list[int] = []
    pinned: list[int] = []
    oom: list[bool] = []
    for p, pd in live:
        wins = pd.closed + ([pd.cur] if pd.cur is not None else [])
        pd.closed = []
        for w in wins:
            ids.append(series.pods[p])
            starts.append(int(w["start"].timestamp()))
            vals["mem"].append(float(int(w["mem"])))
            vals["util"].append(float(w["util"]))
            ticks.append(w["ticks"])
            pinned.append(w["pinned"])
            oom.append(w["oom"])
    if not ids:
        return
    for h, what in hists:
        h.fold(ids, starts, vals[what], vals["util"], ticks, pinned, oom)


def _change(r: Result, pod: _Pod, resource: str, old: float, new: float) -> None:
    if new == old:
        return
    d = 1 if new > old else -1
    if pod.last_dir.get(resource, d) != d:
        r.reversals += 1
    pod.last_dir[resource] = d
    pod.changes += 1
    r.changes += 1


def _run(
    series: Series,
    method: str,
    cfg: EnforcerConfig,
    vcfg: EnforcerConfig,
    every: int,
    peak_s: float,
    total: float,
    n: int,
    step: int,
    fut_mem: list[list[float]],
    fut_busy: list[list[float]],
) -> Result:
    r = Result(method)
    npods = len(series.pods)
    pods: list[_Pod | None] = [None] * npods
    state = PolicyState()
    origin = int(EPOCH.timestamp())
    hist = FleetHistory(cfg, origin_s=origin)
    vmem, vbusy = FleetHistory(vcfg, origin_s=origin), FleetHistory(vcfg, origin_s=origin)
    reclaimed_mib_steps = 0.0
    slack_sum = 0.0
    pod_steps = viol = throttled = 0
    static_gpu_steps = gpu_steps = 0
    gpus_peak = static_peak = 0
    cycles = 0
    for s in range(n):
        now = EPOCH + timedelta(seconds=s * step)
        wstart = EPOCH + timedelta(seconds=(s * step) // peak_s * peak_s)
        alive = [p for p in range(npods) if series.life[p][0] <= s <= series.life[p][1]]
        observed: dict[int, float] = {}
        for p in alive:
            pod = pods[p]
            if pod is None:
                pod = pods[p] = _Pod(total, 100.0)
                if method == "oracle":  # clairvoyant from the first step
                    pod.mem_cap, pod.core_cap = fut_mem[p][s], fut_busy[p][s]
            use, busy = series.mem_mib[p][s], series.busy[p][s]
            cap = pod.mem_cap
            over = use > cap + 1e-9
            if over:
                viol += 1
                if not pod.violating:
                    r.oom_events += 1
            pod.violating = over
            if busy > pod.core_cap + 1e-9:
                throttled += 1
            seen = min(use, cap)
            observed[p] = seen
            pod_steps += 1
            reclaimed_mib_steps += total - cap
            slack_sum += (cap - seen) / cap if cap > 0 else 0.0
            cur = pod.cur
            if cur is None or cur["start"] != wstart:
                if cur is not None:
                    pod.closed.append(cur)
                cur = pod.cur = {
                    "start": wstart,
                    "mem": 0.0,
                    "util": 0.0,
                    "ticks": 0,
                    "pinned": 0,
                    "oom": False,
                }
            peak = seen
            if over and method == "vpa":
                peak = max(1.2 * cap, cap + 100.0)  # VPA's OOM bump
            cur["mem"] = max(cur["mem"], peak)
            cur["util"] = max(cur["util"], busy)
            cur["ticks"] += 1
            cur["pinned"] += 1 if busy >= pod.core_cap - cfg.core_pinned_points else 0
            cur["oom"] = cur["oom"] or over
        if s % every != 0:
            continue
        cycles += 1
        live = [(p, pods[p]) for p in alive]
        static_gpus = len(live)
        gpus = (
            pack([(pd.mem_cap, pd.core_cap) for _, pd in live], total) if method != "static" else static_gpus
        )
        static_gpu_steps += static_gpus
        gpu_steps += gpus
        gpus_peak, static_peak = max(gpus_peak, gpus), max(static_peak, static_gpus)
        if method == "static":
            continue
        if method == "oracle":
            for p, pd in live:
                if s + 1 <= series.life[p][1]:
                    _change(r, pd, "memory", pd.mem_cap, fut_mem[p][s + 1])
                    _change(r, pd, "core", pd.core_cap, fut_busy[p][s + 1])
                    pd.mem_cap, pd.core_cap = fut_mem[p][s + 1], fut_busy[p][s + 1]
            continue
        if method == "vpa":
            _fold(series, live, ((vmem, "mem"), (vbusy, "util")))
            names = [series.pods[p] for p, _ in live]
            mems = vmem.percentiles(vcfg.percentile, vmem.rows(names))
            busys = vbusy.percentiles(vcfg.percentile, vbusy.rows(names))
            for (_, pd), m, b in zip(live, mems, busys, strict=True):
                _vpa(r, vcfg, pd, float(m), float(b), total)
            continue
        _fold(series, live, ((hist, "mem"),))
        feats = [_features(series, p, pd, hist, now, observed[p]) for p, pd in live]
        decisions, state = decide(state, feats, now, cfg)
        for d in decisions:
            if not d.send:
                continue
            pd = _by_name(series, pods, d.slice_id)
            if d.resource == "memory":
                new = min(float(d.new_cap), total)
                _change(r, pd, "memory", pd.mem_cap, new)
                pd.mem_cap = new
            elif d.resource == "core":
                new = min(float(d.new_cap), 100.0)
                _change(r, pd, "core", pd.core_cap, new)
                pd.core_cap = new
            state.slices[d.slice_id].pending_until.pop(d.resource, None)  # acknowledged at once
    r.demoted = len(state.demoted)
    hours = step / 3600.0
    r.reclaimed_gib_h = round(reclaimed_mib_steps * hours / 1024.0, 3)
    r.gpu_equivalents = round(reclaimed_mib_steps / (total * n), 3) if n else 0.0
    r.slack = round(slack_sum / pod_steps, 4) if pod_steps else 0.0
    r.violation_rate = round(viol / pod_steps, 6) if pod_steps else 0.0
    r.throttled_rate = round(throttled / pod_steps, 6) if pod_steps else 0.0
    days = pod_steps * step / 86400.0
    r.slice_days = round(days, 4)
    r.oom_per_slice_day = round(r.oom_events / days, 4) if days else 0.0
    r.changes_per_slice_day = round(r.changes / days, 3) if days else 0.0
    per = [
        pods[p].changes / ((series.life[p][1] - series.life[p][0] + 1) * step / 86400.0)
        for p in range(npods)
        if pods[p] is not None
    ]
    r.median_changes_per_slice_day = round(statistics.median(per), 3) if per else 0.0
    r.static_gpus_peak, r.gpus_peak = static_peak, gpus_peak
    r.gpus_mean = round(gpu_steps / cycles, 2) if cycles else 0.0
    r.packing_gain = round(1.0 - gpu_steps / static_gpu_steps, 4) if static_gpu_steps else 0.0
    return r


def _by_name(series: Series, pods: list[_Pod | None], name: str) -> _Pod:
    pod = pods[series.pods.index(name)]
    assert pod is not None
    return pod


def _vpa(r: Result, vcfg: EnforcerConfig, pd: _Pod, mem: float, busy: float, total: float) -> None:
    """VPA's step for one pod from the decaying percentiles of its peaks and busy % (NaN: none)."""
    if math.isnan(mem):
        return
    want = min(float(round_up(max(mem * (1 + vcfg.margin), 1.0), vcfg.round_mib)), total)
    if want > pd.mem_cap or (pd.mem_cap - want) / pd.mem_cap >= vcfg.shrink_min_change:
        _change(r, pd, "memory", pd.mem_cap, want)
        pd.mem_cap = want
    if not math.isnan(busy):
        cwant = float(min(100, max(vcfg.core_min_pct, math.ceil(busy * (1 + vcfg.margin)))))
        if cwant > pd.core_cap or (pd.core_cap - cwant) / pd.core_cap >= vcfg.shrink_min_change:
            _change(r, pd, "core", pd.core_cap, cwant)
            pd.core_cap = cwant


# -- reporting ---------------------------------------------------------------------------------

COLUMNS = (
    ("method", "method", "{}"),
    ("reclaimed_gib_h", "reclaimed GiB-h", "{:.1f}"),
    ("gpu_equivalents", "GPU-eq", "{:.2f}"),
    ("slack", "slack", "{:.1%}"),
    ("violation_rate", "violations", "{:.3%}"),
    ("oom_events", "OOM events", "{}"),
    ("oom_per_slice_day", "OOM/slice-day", "{:.3f}"),
    ("throttled_rate", "throttled", "{:.2%}"),
    ("changes_per_slice_day", "changes/slice-day", "{:.2f}"),
    ("median_changes_per_slice_day", "median", "{:.2f}"),
    ("reversals", "reversals", "{}"),
    ("gpus_peak", "GPUs peak", "{}"),
    ("gpus_mean", "GPUs mean", "{:.1f}"),
    ("packing_gain", "packing gain", "{:.1%}"),
)


def table(results: Sequence[Result], label: str = "") -> str:
    """A Markdown table of results (one row per method)."""
    head = ([label] if label else []) + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = r.row()
        cells = ([r.extra.get("label", "")] if label else []) + [fmt.format(row[k]) for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DEFAULT_SWEEP_HOURS = (24.0, 12.0, 6.0, 3.0, 1.0)
DEFAULT_SWEEP_PM = ((98.0, 0.15), (95.0, 0.10), (90.0, 0.05), (99.0, 0.25))
_FAST = {"shrink_min_history_hours": 3.0, "shrink_min_age_hours": 3.0}
DEFAULT_PACING: tuple[tuple[str, dict[str, Any]], ...] = (
    ("history 3 h, shrink <= 50 % every 1 h", {**_FAST, "shrink_max_step": 0.5, "shrink_every_hours": 1.0}),
    (
        "history 3 h, shrink <= 50 % every 1 h, core -30 points every 1 h",
        {
            **_FAST,
            "shrink_max_step": 0.5,
            "shrink_every_hours": 1.0,
            "core_lower_max_points": 30.0,
            "core_lower_every_hours": 1.0,
        },
    ),
    (
        "history 3 h, shrink <= 50 % every 1 h, core -30 points every 1 h, budget 50 %/h",
        {
            **_FAST,
            "shrink_max_step": 0.5,
            "shrink_every_hours": 1.0,
            "core_lower_max_points": 30.0,
            "core_lower_every_hours": 1.0,
            "budget_frac": 0.5,
        },
    ),
)


def sweep(
    series: Series,
    cfg: EnforcerConfig,
    *,
    hours: Sequence[float] = DEFAULT_SWEEP_HOURS,
    pm: Sequence[tuple[float, float]] = DEFAULT_SWEEP_PM,
    cycle_s: float = 300.0,
    pacing: Sequence[tuple[str, dict[str, Any]]] = (),
) -> list[Result]:
    """The policy under each history requirement (slice age guard min(h, its default)) and each
    (percentile, margin); the rest of the configuration as given. `pacing`: (label, overrides)
    runs after the grid, e.g. larger and more frequent steps."""
    out = []
    for h in hours:
        for pct, margin in pm:
            c = replace(
                cfg,
                shrink_min_history_hours=h,
                shrink_min_age_hours=min(h, cfg.shrink_min_age_hours),
                percentile=pct,
                margin=margin,
            )
            r = evaluate(series, c, methods=("policy",), cycle_s=cycle_s)["policy"]
            r.extra["label"] = f"history {h:g} h, P{pct:g} x {1 + margin:g}"
            r.extra.update(group=f"history {h:g} h", history_h=h, percentile=pct, margin=margin)
            out.append(r)
    for label, over in pacing:
        c = replace(cfg, **over)
        r = evaluate(series, c, methods=("policy",), cycle_s=cycle_s)["policy"]
        r.extra.update(label=label, group="faster pacing", **over)
        out.append(r)
    return out


def plot_frontier(base: dict[str, Result], swept: Sequence[Result], path: str | Path) -> Path:
    """Reclaimed GiB-hours against violation rate: every swept policy point, VPA, oracle, static."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    groups: dict[str, list[Result]] = {}
    for r in swept:
        groups.setdefault(r.extra.get("group", "policy"), []).append(r)
    for g, rs in groups.items():
        ax.scatter(
            [100 * r.violation_rate for r in rs], [r.reclaimed_gib_h for r in rs], label=f"policy, {g}"
        )
    for name, marker in (("vpa", "s"), ("oracle", "*"), ("static", "x")):
        if name in base:
            r = base[name]
            ax.scatter([100 * r.violation_rate], [r.reclaimed_gib_h], marker=marker, s=90, color="k")
            ax.annotate(
                name, (100 * r.violation_rate, r.reclaimed_gib_h), textcoords="offset points", xytext=(6, 4)
            )
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("violation rate (% of pod-steps with memory demand above the cap)")
    ax.set_ylabel("reclaimed GPU memory (GiB-hours)")
    ax.set_title("Enforcer offline evaluation on GenTD26 (22.8 h): reclaimed vs violations")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, metadata={"Software": None})
    plt.close(fig)
    return p


def report(
    trace: str | Path,
    cfg: EnforcerConfig,
    *,
    cycle_s: float = 300.0,
    pods: int | None = None,
    hours: float | None = None,
    do_sweep: bool = False,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """`gpuledger enforcer evaluate`: the defaults-as-configured table, optionally the sweep and plot."""
    d = Path(trace)
    if not d.is_dir():
        raise ValueError(f"evaluate: {d}: not a directory (a GenTD26-layout trace, DESIGN §10)")
    from collector.traces import DUTY_FILE, MEM_FILE

    for f in (DUTY_FILE, MEM_FILE):
        if not (d / f).is_file():
            raise ValueError(f"evaluate: {d}: missing {f} (a GenTD26-layout trace, DESIGN §10)")
    series = series_from_trace(d, pods=pods, hours=hours)
    if not series.pods:
        raise ValueError(f"evaluate: {d}: no pod in the selected part of the trace")
    base = evaluate(series, cfg, cycle_s=cycle_s)
    out: dict[str, Any] = {
        "trace": str(d),
        "pods": len(series.pods),
        "hours": round(series.n_steps * series.step_s / 3600.0, 3),
        "cycle_s": cycle_s,
        "results": {k: v.row() for k, v in base.items()},
        "table": table(list(base.values())),
    }
    if do_sweep or plot:
        swept = sweep(series, cfg, cycle_s=cycle_s, pacing=DEFAULT_PACING)
        out["sweep"] = [{**r.row(), **{k: v for k, v in r.extra.items()}} for r in swept]
        out["sweep_table"] = table(swept, label="configuration")
        if plot:
            out["plot"] = str(plot_frontier(base, swept, plot))
    return out
