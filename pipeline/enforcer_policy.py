"""The enforcer's policy (DESIGN §8): state + features + now -> decisions, pure and deterministic.

Nothing here reads the lake, the clock or the network: the job (pipeline/enforcer.py) reads the
features through warehouse/enforcer_features.py, calls `decide`, re-checks each decision against
the freshest sample (`recheck`) and only then sends it. The offline evaluation calls the same
`decide` on a replayed trace, so what is measured is what runs.

Memory caps are hard (a mistake is an out-of-memory in a tenant's job), so they grow at once and
shrink slowly behind every guard; core caps are soft (a mistake is throttling). The enforcer never
gives a slice more than it was originally allocated (the scheduler placed that much): grows and
rollbacks are capped at the first cap seen for the slice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from gpuledger.config import ENFORCER_MODES, EnforcerConfig
from pipeline.enforcer_history import FleetHistory, SliceSummary, history_from_windows

_EMPTY = SliceSummary(None, None, None, None, 0.0, None, None)

MODE_RANK = {m: i for i, m in enumerate(ENFORCER_MODES)}  # off < recommend < grow-only < enforce
SHRINKS = ("shrink", "lower")
MIG_MEMORY_SLICES = (1, 2, 4, 8)  # memory slices of the MIG profiles of 7g/8-slice GPUs (1g..7g)


@dataclass(frozen=True)
class Window:
    """One peak window (`peak_minutes`) of one slice, as warehouse/enforcer_features.py computes it:
    what is folded into the history (pipeline/enforcer_history.py)."""

    start: datetime
    mem_peak_mib: int | None  # highest use in the window
    util_max: float | None  # highest busy % of a tick in the window
    ticks: int = 1
    pinned_ticks: int = 0  # ticks with util >= core cap - core_pinned_points
    oom_suspect: bool = False  # a suspected out-of-memory in the window (docs/enforcer.md)


@dataclass(frozen=True)
class SliceFeatures:
    """What the policy knows of one slice: its last sample, and its row in the fleet's history
    (pipeline/enforcer_history.py), whose summaries are computed once per cycle for all slices."""

    slice_id: str
    cluster: str
    node: str
    model: str
    kind: str  # whole | mig | vgpu | timeslice
    tenant: str
    gpu_uuid: str
    first_seen: datetime
    last_ts: datetime
    interval_s: float
    mem_cap_mib: int | None
    core_cap_pct: float | None
    mem_used_mib: int | None
    gpu_mem_total_mib: int | None = None
    pod_uid: str | None = None
    container: str | None = None
    memory_slices: int | None = None
    gpu_memory_slices: int | None = None
    replicas: int | None = None
    history: FleetHistory | None = None
    row: int = -1

    @property
    def pool(self) -> str:
        return f"{self.cluster}/{self.model}"

    def summary(self, now: datetime, cfg: EnforcerConfig) -> SliceSummary:
        if self.history is None or self.row < 0:
            return _EMPTY
        return self.history.slice_summary(self.row, now, cfg)


def with_windows(
    f: SliceFeatures, wins: Sequence[Window], cfg: EnforcerConfig | None = None
) -> SliceFeatures:
    """`f` with a one-slice history of `wins` (hand-made series in tests and small tools)."""
    h = history_from_windows(cfg or EnforcerConfig(), {f.slice_id: list(wins)})
    return replace(f, history=h, row=h.row(f.slice_id) or 0)


@dataclass
class SliceState:
    """What the policy remembers of one slice between cycles (JSON-serialisable)."""

    requested_mem_mib: int | None = None  # first cap seen: the allocation; never exceeded
    requested_core_pct: float | None = None
    recs: list[tuple[str, int]] = field(default_factory=list)  # (iso time, memory recommendation)
    last_shrink_at: str | None = None
    shrink_from: int | None = None
    last_core_lower_at: str | None = None
    core_lower_from: float | None = None
    no_shrink_until: str | None = None
    last_oom_window: str | None = None  # latest OOM window already acted on
    pending_until: dict[str, str] = field(default_factory=dict)  # resource -> iso: a sent decision in flight
    last_reco: dict[str, int] = field(default_factory=dict)  # resource -> last recommendation recorded


@dataclass
class PolicyState:
    slices: dict[str, SliceState] = field(default_factory=dict)
    shrinks: list[tuple[str, str, str]] = field(default_factory=list)  # (iso, pool, slice): the budget
    regressions: dict[str, list[str]] = field(default_factory=dict)  # tenant -> rollback times
    demoted: dict[str, str] = field(default_factory=dict)  # tenant -> when it was put back to recommend

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicyState:
        slices = {}
        for k, v in data.get("slices", {}).items():
            v = dict(v)
            v["recs"] = [tuple(r) for r in v.get("recs", [])]
            slices[k] = SliceState(**v)
        return cls(
            slices=slices,
            shrinks=[tuple(x) for x in data.get("shrinks", [])],
            regressions={k: list(v) for k, v in data.get("regressions", {}).items()},
            demoted=dict(data.get("demoted", {})),
        )


@dataclass(frozen=True)
class Decision:
    """One cap change (or recommendation) for one slice; `send` says whether it goes to the node."""

    decision_id: str
    slice_id: str
    cluster: str
    node: str
    gpu_uuid: str
    pod_uid: str | None
    container: str | None
    tenant: str
    pool: str
    slice_kind: str
    resource: str  # memory (MiB) | core (%) | mig_memory_slices | timeslice_replicas
    action: str  # grow | shrink | raise | lower | rollback | rightsize
    old_cap: int
    new_cap: int
    reason: str
    mode: str
    send: bool
    issued_at: datetime
    expires_at: datetime
    note: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)


# -- small pure helpers -----------------------------------------------------------------------


def _iso(t: datetime) -> str:
    return t.isoformat()


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def round_up(mib: float, step: int) -> int:
    """Up to the next multiple of `step` MiB (an exact multiple stays)."""
    return int(math.ceil(mib / step - 1e-9) * step)


def floor_mib(used: int | None, cfg: EnforcerConfig, guarantee: int = 0) -> int:
    """The lowest cap allowed: used + max(floor_mib, floor_frac x used), min_cap_mib, the guarantee."""
    u = used or 0
    return int(max(u + max(cfg.floor_mib, cfg.floor_frac * u), cfg.min_cap_mib, guarantee))


def memory_recommendation(f: SliceFeatures, now: datetime, cfg: EnforcerConfig) -> dict[str, Any] | None:
    """max(P98, 24 h max) x (1 + margin), rounded up to round_mib; with its inputs. None: no data."""
    s = f.summary(now, cfg)
    p = s.percentile
    if p is None:
        return None
    max24 = s.max24 or 0.0
    raw = max(p, max24) * (1.0 + cfg.margin)
    history_h = s.history_hours or 0.0
    return {
        "percentile_mib": round(p, 1),
        "max24_mib": int(max24),
        "recommendation_mib": round_up(raw, cfg.round_mib),
        "history_hours": round(history_h, 3),
        "confidence": round(min(1.0, history_h / cfg.shrink_min_history_hours), 3)
        if cfg.shrink_min_history_hours > 0
        else 1.0,
    }


def effective_mode(f: SliceFeatures, state: PolicyState, cfg: EnforcerConfig) -> str:
    """The stricter of the pool's mode and the tenant's; opt-out is off; a demoted tenant is recommend."""
    if f.tenant in cfg.opt_out:
        return "off"
    mode = cfg.pools.get(f.pool, cfg.mode)
    tmode = cfg.tenants.get(f.tenant, "enforce")
    if MODE_RANK[tmode] < MODE_RANK[mode]:
        mode = tmode
    if f.tenant in state.demoted and MODE_RANK[mode] > MODE_RANK["recommend"]:
        mode = "recommend"
    return mode


def may_send(action: str, mode: str) -> bool:
    """Rollbacks undo the enforcer's own change and go out in any mode but off; grows from
    grow-only up; shrinks and lowerings only in enforce."""
    if mode == "off":
        return False
    if action == "rollback":
        return True
    if action in ("grow", "raise"):
        return MODE_RANK[mode] >= MODE_RANK["grow-only"]
    if action in SHRINKS:
        return mode == "enforce"
    return False  # rightsize: a recommendation, never an action


def decision_id(slice_id: str, resource: str, action: str, old: int, new: int, now: datetime) -> str:
    """Deterministic: the same inputs give the same id, so a re-run never makes a second decision."""
    key = f"{slice_id}|{resource}|{action}|{old}|{new}|{_iso(now)}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- the policy -------------------------------------------------------------------------------


class _Cycle:
    """One call of `decide`: accumulates decisions and updates the (copied) state."""

    def __init__(self, state: PolicyState, now: datetime, cfg: EnforcerConfig) -> None:
        self.state, self.now, self.cfg = state, now, cfg
        self.out: list[Decision] = []

    def emit(
        self,
        f: SliceFeatures,
        mode: str,
        resource: str,
        action: str,
        old: int,
        new: int,
        reason: str,
        inputs: dict[str, Any],
        note: str = "",
    ) -> Decision:
        send = may_send(action, mode)
        d = Decision(
            decision_id=decision_id(f.slice_id, resource, action, old, new, self.now),
            slice_id=f.slice_id,
            cluster=f.cluster,
            node=f.node,
            gpu_uuid=f.gpu_uuid,
            pod_uid=f.pod_uid,
            container=f.container,
            tenant=f.tenant,
            pool=f.pool,
            slice_kind=f.kind,
            resource=resource,
            action=action,
            old_cap=int(old),
            new_cap=int(new),
            reason=reason,
            mode=mode,
            send=send,
            issued_at=self.now,
            expires_at=self.now + timedelta(seconds=self.cfg.decision_ttl_s),
            note=note,
            inputs=inputs,
        )
        self.out.append(d)
        return d


def decide(
    state: PolicyState, features: Sequence[SliceFeatures], now: datetime, cfg: EnforcerConfig
) -> tuple[list[Decision], PolicyState]:
    """Every decision of one cycle and the state after it; `state` is not modified.

    Order per slice: rollback of a regression, growth after a suspected out-of-memory, growth on
    need, then shrink behind its guards (and the pool's budget, applied last, largest first).
    """
    st = copy_state(state)
    cyc = _Cycle(st, now, cfg)
    _prune(st, now, cfg)
    pool_sizes: dict[str, int] = {}
    for f in features:
        if f.kind == "vgpu":
            pool_sizes[f.pool] = pool_sizes.get(f.pool, 0) + 1
    shrink_candidates: list[tuple[SliceFeatures, str, str, int, int, str, dict[str, Any], str]] = []
    for f in sorted(features, key=lambda x: x.slice_id):
        mode = effective_mode(f, st, cfg)
        if mode == "off":
            continue
        s = st.slices.setdefault(f.slice_id, SliceState())
        if s.requested_mem_mib is None and f.mem_cap_mib is not None:
            s.requested_mem_mib = f.mem_cap_mib
        if s.requested_core_pct is None and f.core_cap_pct is not None:
            s.requested_core_pct = f.core_cap_pct
        if f.kind in ("mig", "timeslice"):
            _rightsize(cyc, f, s, mode)
            continue
        if f.kind != "vgpu":
            continue
        if (now - f.last_ts).total_seconds() > cfg.stale_ticks * f.interval_s:
            continue  # never write a cap from stale data
        shrink_candidates += _memory(cyc, f, s, mode)
        shrink_candidates += _core(cyc, f, s, mode)
    _apply_budget(cyc, shrink_candidates, pool_sizes)
    return cyc.out, st


def copy_state(state: PolicyState) -> PolicyState:
    """A deep copy of the state, without `copy.deepcopy`'s cost (the offline evaluation calls
    `decide` tens of thousands of times): every leaf is immutable, only the containers are copied."""
    return PolicyState(
        slices={
            k: replace(v, recs=list(v.recs), pending_until=dict(v.pending_until), last_reco=dict(v.last_reco))
            for k, v in state.slices.items()
        },
        shrinks=list(state.shrinks),
        regressions={k: list(v) for k, v in state.regressions.items()},
        demoted=dict(state.demoted),
    )


def _prune(st: PolicyState, now: datetime, cfg: EnforcerConfig) -> None:
    hour = now - timedelta(hours=1)
    st.shrinks = [x for x in st.shrinks if _t(x[0]) > hour]
    week = now - timedelta(days=cfg.regressions_days)
    st.regressions = {k: [t for t in v if _t(t) > week] for k, v in st.regressions.items()}
    st.regressions = {k: v for k, v in st.regressions.items() if v}


def _pending(s: SliceState, resource: str, now: datetime) -> bool:
    until = s.pending_until.get(resource)
    return until is not None and _t(until) > now


def _record(cyc: _Cycle, s: SliceState, d: Decision) -> None:
    """State after an emitted decision: in flight until it expires; a recommendation is remembered
    so the same one is not written again every cycle."""
    if d.send:
        s.pending_until[d.resource] = _iso(d.expires_at)
        s.last_reco.pop(d.resource, None)
    else:
        s.last_reco[d.resource] = d.new_cap


def _quiet(s: SliceState, resource: str, new: int, send: bool) -> bool:
    """A recommendation equal to the last one recorded is not written again."""
    return not send and s.last_reco.get(resource) == new


def _memory(cyc: _Cycle, f: SliceFeatures, s: SliceState, mode: str) -> list[Any]:
    cfg, now = cyc.cfg, cyc.now
    cap = f.mem_cap_mib
    if cap is None or cap <= 0:
        return []
    rec = memory_recommendation(f, now, cfg)
    if rec is None:
        return []
    s.recs = [r for r in s.recs if _t(r[0]) > now - timedelta(hours=cfg.shrink_lookback_hours)]
    s.recs.append((_iso(now), rec["recommendation_mib"]))
    guarantee = int(cfg.guarantees_mib.get(f.tenant, 0))
    floor = round_up(floor_mib(f.mem_used_mib, cfg, guarantee), cfg.round_mib)
    ceiling = s.requested_mem_mib or cap
    inputs = {**rec, "used_mib": f.mem_used_mib, "floor_mib": floor, "requested_mib": ceiling}
    if _pending(s, "memory", now):
        return []
    # 1. a suspected out-of-memory: rollback if it follows our shrink, grow in any case
    last = _t(s.last_oom_window) if s.last_oom_window else None
    h = f.history
    seen = f.summary(now, cfg).last_oom  # the latest OOM window: the ring is read only past it
    ooms = h.oom_windows(f.row, last, now) if h is not None and seen and (last is None or seen > last) else []
    if ooms:
        s.last_oom_window = _iso(max(ooms))
        peak = h.last_peak(f.row, now, 3) if h is not None else 0
        grown = round_up(max(cfg.oom_factor * max(cap, peak), cap + cfg.oom_extra_mib), cfg.round_mib)
        s.no_shrink_until = _iso(now + timedelta(hours=cfg.oom_no_shrink_hours))
        regression = False
        if s.last_shrink_at is not None and s.shrink_from is not None:
            at = _t(s.last_shrink_at)
            if any(at < w <= at + timedelta(hours=cfg.rollback_hours) for w in ooms):
                regression = True
        action, reason = "grow", "suspected out-of-memory"
        if regression:
            action, reason = "rollback", "suspected out-of-memory within the rollback window of a shrink"
            grown = max(grown, s.shrink_from or 0)
            _regress(cyc, f.tenant)
            s.last_shrink_at, s.shrink_from = None, None
        new = min(grown, max(ceiling, cap))
        if new > cap and not _quiet(s, "memory", new, may_send(action, mode)):
            _record(cyc, s, cyc.emit(f, mode, "memory", action, cap, new, reason, inputs))
        return []
    # 2. grow at once
    near = f.mem_used_mib is not None and f.mem_used_mib > cfg.grow_use_frac * cap
    if rec["recommendation_mib"] > cap or near:
        want = max(rec["recommendation_mib"], floor)
        if near:
            want = max(want, round_up(cap + max(cfg.floor_mib, cfg.floor_frac * cap), cfg.round_mib))
        new = min(want, max(ceiling, cap))
        reason = f"use above {cfg.grow_use_frac:.0%} of the cap" if near else "recommendation above cap"
        if new > cap and not _quiet(s, "memory", new, may_send("grow", mode)):
            _record(cyc, s, cyc.emit(f, mode, "memory", "grow", cap, new, reason, inputs))
        return []
    # 3. shrink, behind every guard
    target = max(max(r for _, r in s.recs), floor)
    if target >= cap:
        return []
    if rec["history_hours"] < cfg.shrink_min_history_hours:
        return []
    if (now - f.first_seen).total_seconds() < cfg.shrink_min_age_hours * 3600:
        return []
    if (cap - target) / cap < cfg.shrink_min_change:
        return []
    if s.no_shrink_until and _t(s.no_shrink_until) > now:
        return []
    if s.last_shrink_at and now - _t(s.last_shrink_at) < timedelta(hours=cfg.shrink_every_hours):
        return []
    new = max(target, round_up(cap * (1 - cfg.shrink_max_step), cfg.round_mib))
    if new >= cap or _quiet(s, "memory", new, may_send("shrink", mode)):
        return []
    reason = f"P{cfg.percentile:g} and 24 h peak well below cap"
    return [(f, mode, "memory", cap, new, reason, inputs, "")]


def _core(cyc: _Cycle, f: SliceFeatures, s: SliceState, mode: str) -> list[Any]:
    cfg, now = cyc.cfg, cyc.now
    cap = f.core_cap_pct
    if cap is None or cap <= 0 or _pending(s, "core", now):
        return []  # core 0: no reservation, nothing to cap
    note = "applies at restart: HAMi-core reads sm_limit once per process start"
    requested = s.requested_core_pct or cap
    summ = f.summary(now, cfg)
    pinned = summ.pinned
    p95 = summ.core_p95
    inputs = {"pinned_fraction": round(pinned, 4), "p95_util_pct": p95, "requested_pct": requested}
    if s.last_core_lower_at is not None and s.core_lower_from is not None:
        at = _t(s.last_core_lower_at)
        h = f.history
        until = at + timedelta(hours=cfg.rollback_hours)
        after = h.pinned_fraction(f.row, at, until) if h is not None else 0.0
        if after > cfg.core_pinned_frac:
            new = int(s.core_lower_from)
            s.last_core_lower_at, s.core_lower_from = None, None
            _regress(cyc, f.tenant)
            if new > cap:
                reason = "pinned within the rollback window of a lowering"
                _record(cyc, s, cyc.emit(f, mode, "core", "rollback", int(cap), new, reason, inputs, note))
            return []
    if pinned > cfg.core_pinned_frac:
        new = math.ceil(min(requested, max(cap + cfg.core_raise_points, cfg.core_raise_factor * cap)))
        if new > cap and not _quiet(s, "core", new, may_send("raise", mode)):
            reason = f"pinned in {pinned:.0%} of the last {cfg.core_window_minutes:g} min"
            _record(cyc, s, cyc.emit(f, mode, "core", "raise", int(cap), new, reason, inputs, note))
        return []
    first = summ.util_start
    if p95 is None or first is None or (now - first).total_seconds() < cfg.shrink_min_history_hours * 3600:
        return []
    if p95 >= cfg.core_lower_p95_frac * cap:
        return []
    if s.last_core_lower_at and now - _t(s.last_core_lower_at) < timedelta(hours=cfg.core_lower_every_hours):
        return []
    new = int(
        max(cap - cfg.core_lower_max_points, math.ceil(p95 / cfg.core_lower_p95_frac), cfg.core_min_pct)
    )
    if new >= cap or _quiet(s, "core", new, may_send("lower", mode)):
        return []
    reason = f"24 h P95 {p95:g} % below {cfg.core_lower_p95_frac:g} x cap"
    return [(f, mode, "core", int(cap), new, reason, inputs, note)]


def _apply_budget(cyc: _Cycle, cands: list[Any], pool_sizes: dict[str, int]) -> None:
    """Shrinks and lowerings: at most budget_frac of a pool's slices (at least one) change per hour,
    largest relative reclaim first; recommendations (not sent) use no budget."""
    st, now = cyc.state, cyc.now
    used: dict[str, set[str]] = {}
    for _, pool, sid in st.shrinks:
        used.setdefault(pool, set()).add(sid)
    for f, mode, resource, old, new, reason, inputs, note in sorted(
        cands, key=lambda c: (-(c[3] - c[4]) / c[3], c[0].slice_id, c[2])
    ):
        s = st.slices[f.slice_id]
        action = "shrink" if resource == "memory" else "lower"
        send = may_send(action, mode)
        if send:
            limit = max(1, int(cyc.cfg.budget_frac * pool_sizes.get(f.pool, 1)))
            changed = used.setdefault(f.pool, set())
            if f.slice_id not in changed and len(changed) >= limit:
                continue  # a slice already changed this hour may change its other cap
            changed.add(f.slice_id)
            st.shrinks.append((_iso(now), f.pool, f.slice_id))
        d = cyc.emit(f, mode, resource, action, old, new, reason, {**inputs, "budget_left": send}, note)
        _record(cyc, s, d)
        if send and resource == "memory":
            s.last_shrink_at, s.shrink_from = _iso(now), old
        elif send:
            s.last_core_lower_at, s.core_lower_from = _iso(now), old


def _regress(cyc: _Cycle, tenant: str) -> None:
    """A rollback is a regression; `regressions_max` of them within `regressions_days` demote the tenant."""
    st = cyc.state
    st.regressions.setdefault(tenant, []).append(_iso(cyc.now))
    if len(st.regressions[tenant]) >= cyc.cfg.regressions_max and tenant not in st.demoted:
        st.demoted[tenant] = _iso(cyc.now)


def _rightsize(cyc: _Cycle, f: SliceFeatures, s: SliceState, mode: str) -> None:
    """MIG and time-sliced slices: the smallest MIG memory-slice count, or the largest replica count,
    that would have held the observed peak with the margin. A recommendation only, never sent."""
    cfg, now = cyc.cfg, cyc.now
    peak = f.summary(now, cfg).peak
    if peak is None:
        return
    need = peak * (1 + cfg.margin)
    inputs = {"peak_mib": int(peak), "need_mib": round(need, 1)}
    if f.kind == "mig" and f.memory_slices and f.gpu_memory_slices and f.mem_cap_mib:
        per = f.mem_cap_mib / f.memory_slices
        fits = [k for k in MIG_MEMORY_SLICES if k <= f.gpu_memory_slices and k * per >= need]
        if fits and min(fits) < f.memory_slices and not _quiet(s, "mig_memory_slices", min(fits), False):
            d = cyc.emit(
                f,
                mode,
                "mig_memory_slices",
                "rightsize",
                f.memory_slices,
                min(fits),
                "observed peak fits a smaller MIG profile",
                inputs,
            )
            _record(cyc, s, d)
    elif f.kind == "timeslice" and f.replicas and f.gpu_mem_total_mib and need > 0:
        most = int(f.gpu_mem_total_mib // need)
        if most > f.replicas and not _quiet(s, "timeslice_replicas", most, False):
            d = cyc.emit(
                f,
                mode,
                "timeslice_replicas",
                "rightsize",
                f.replicas,
                most,
                "observed peak would fit more time-slice replicas",
                inputs,
            )
            _record(cyc, s, d)


def recheck(
    d: Decision,
    fresh_cap: int | None,
    fresh_used_mib: int | None,
    fresh_ts: datetime | None,
    interval_s: float,
    now: datetime,
    cfg: EnforcerConfig,
) -> str | None:
    """Just before a decision is sent, against the freshest sample: None to send, else why not."""
    if fresh_ts is None or (now - fresh_ts).total_seconds() > cfg.stale_ticks * interval_s:
        return "no fresh sample of the slice"
    if fresh_cap is not None and int(fresh_cap) != d.old_cap:
        return f"cap is now {fresh_cap}, the decision expected {d.old_cap}"
    if d.resource == "memory" and d.new_cap < d.old_cap:
        need = floor_mib(fresh_used_mib, cfg)
        if d.new_cap < need:
            return f"new cap {d.new_cap} MiB below fresh use + floor ({need} MiB)"
    return None
