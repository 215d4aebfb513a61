"""The enforcer's policy rule by rule on hand-made series (DESIGN §8); each number worked by hand."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from gpuledger.config import ConfigError, EnforcerConfig, load_config
from pipeline.enforcer_policy import (
    PolicyState,
    SliceFeatures,
    Window,
    decide,
    effective_mode,
    floor_mib,
    memory_recommendation,
    recheck,
    round_up,
    with_windows,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GiB = 1024


def windows(
    hours: float, peak: int | None = 10_000, util: float | None = 20.0, end: datetime = NOW, **kw
) -> tuple[Window, ...]:
    """One 5-minute window every 5 minutes for `hours` up to `end`, all with the same values."""
    n = int(hours * 12)
    return tuple(
        Window(end - timedelta(minutes=5 * (n - 1 - i)), peak, util, ticks=30, **kw) for i in range(n)
    )


def vgpu(
    *,
    cap: int = 40_960,
    core: float | None = 50.0,
    used: int = 10_000,
    wins: tuple[Window, ...] = (),
    age_h: float = 48.0,
    tenant: str = "nlp",
    sid: str = "GPU-0:hami:pod-a/main",
    last_ts: datetime | None = None,
) -> SliceFeatures:
    """A HAMi slice whose last sample is its last window's (NOW without windows)."""
    last_ts = last_ts or (wins[-1].start if wins else NOW)
    f = SliceFeatures(
        slice_id=sid,
        cluster="c1",
        node="n1",
        model="H100",
        kind="vgpu",
        tenant=tenant,
        gpu_uuid="GPU-0",
        first_seen=NOW - timedelta(hours=age_h),
        last_ts=last_ts,
        interval_s=10.0,
        mem_cap_mib=cap,
        core_cap_pct=core,
        mem_used_mib=used,
        gpu_mem_total_mib=81_920,
        pod_uid="pod-a",
        container="main",
    )
    return with_windows(f, wins)


def decaying_percentile(points, now, c):
    """The history's percentile of hand-made (time, value) points (one slice, 5-minute grid)."""
    wins = [Window(t, v, None) for t, v in sorted(points)]
    f = with_windows(vgpu(), wins, c) if wins else vgpu()
    return f.summary(now, c).percentile


def cfg(**kw) -> EnforcerConfig:
    return dataclasses.replace(EnforcerConfig(mode="enforce"), **kw)


def mem(ds):
    return [d for d in ds if d.resource == "memory"]


def core(ds):
    return [d for d in ds if d.resource == "core"]


# -- building blocks --------------------------------------------------------------------------


def test_round_up_and_floor() -> None:
    assert round_up(10_001, 256) == 10_240
    assert round_up(10_240, 256) == 10_240
    c = EnforcerConfig()
    assert floor_mib(10_000, c) == 11_000  # 10 % of use beats 512
    assert floor_mib(2_000, c) == 2_512  # 512 beats 10 %
    assert floor_mib(0, c) == 1_024  # the 1 GiB minimum
    assert floor_mib(2_000, c, guarantee=8_192) == 8_192  # the tenant's guarantee


def test_percentile_is_the_bucket_upper_bound_and_old_points_decay() -> None:
    c = EnforcerConfig(percentile=50.0)
    # one value: its 5 % bucket's upper bound, never below the value
    p = decaying_percentile([(NOW, 1000.0)], NOW, c)
    assert 1000.0 <= p < 1050.0
    # two points, the old one half-weighted by one half-life: the median is the recent one
    pts = [(NOW - timedelta(hours=24), 5000.0), (NOW - timedelta(hours=23), 5000.0), (NOW, 1000.0)]
    assert decaying_percentile(pts, NOW, c) > 5000.0  # 0.5 + ~0.51 > 1: old points still win
    pts = [(NOW - timedelta(hours=48), 5000.0), (NOW, 1000.0)]
    assert decaying_percentile(pts, NOW, c) < 1050.0  # 0.25 < 1: the recent one is the median
    # decay-only: a point older than the 8-day window still counts, at 2^-8 of a fresh one
    assert 9.0 <= decaying_percentile([(NOW - timedelta(days=8, minutes=5), 9.0)], NOW, c) < 9.0 * 1.05


def test_recommendation_is_max_of_percentile_and_24h_max_with_margin() -> None:
    c = EnforcerConfig()
    # 2 days at 10,000 MiB and one spike of 20,000 MiB 2 h ago: the 24 h max wins
    wins = list(windows(48))
    wins[-24] = Window(wins[-24].start, 20_000, 20.0)
    rec = memory_recommendation(vgpu(wins=tuple(wins)), NOW, c)
    assert rec["max24_mib"] == 20_000
    assert rec["recommendation_mib"] == round_up(20_000 * 1.15, 256) == 23_040
    assert rec["confidence"] == 1.0
    # the spike 30 h ago is out of the 24 h max; P98 of the rest is ~10,000's bucket
    wins = list(windows(48))
    wins[-360] = Window(wins[-360].start, 20_000, 20.0)
    rec = memory_recommendation(vgpu(wins=tuple(wins)), NOW, c)
    assert rec["max24_mib"] == 10_000
    assert 10_000 * 1.15 <= rec["recommendation_mib"] <= round_up(10_500 * 1.15, 256)


# -- grow -------------------------------------------------------------------------------------


def test_grow_at_once_when_recommendation_above_cap() -> None:
    f = vgpu(cap=8_192, used=7_000, wins=windows(1, peak=9_000))
    # first seen at 8 GiB: that is its allocation, and the enforcer never gives more than that
    assert mem(decide(PolicyState(), [f], NOW, cfg())[0]) == []
    # seen at 40 GiB before (the enforcer shrank it): it grows back to the recommendation at once
    st = PolicyState()
    _, st = decide(st, [vgpu(cap=40_960, wins=windows(1, peak=9_000))], NOW - timedelta(minutes=1), cfg())
    ds, _ = decide(st, [f], NOW, cfg())
    (d,) = mem(ds)
    p98 = decaying_percentile([(NOW, 9_000.0)], NOW, EnforcerConfig())
    assert 9_000 < p98 < 9_450
    assert (d.action, d.old_cap, d.new_cap, d.send) == ("grow", 8_192, round_up(p98 * 1.15, 256), True)
    assert d.new_cap == 10_752


def test_grow_when_use_passes_90_percent_of_cap() -> None:
    st = PolicyState()
    _, st = decide(st, [vgpu(cap=40_960, wins=windows(1, peak=5_000))], NOW - timedelta(minutes=1), cfg())
    f = vgpu(cap=10_240, used=9_300, wins=windows(1, peak=5_000))  # 9,300 > 0.9 x 10,240
    ds, _ = decide(st, [f], NOW, cfg())
    (d,) = mem(ds)
    # cap + max(512, 10 % of cap) = 11,264; above the 1.15 x recommendation and used + floor (10,230)
    assert (d.action, d.new_cap, d.send) == ("grow", 11_264, True)
    assert d.reason == "use above 90% of the cap"


def test_grow_only_sends_grows_and_recommend_sends_nothing() -> None:
    st = PolicyState()
    _, st = decide(st, [vgpu(cap=40_960, wins=windows(1, peak=9_000))], NOW - timedelta(minutes=1), cfg())
    f = vgpu(cap=8_192, used=7_000, wins=windows(1, peak=9_000))
    (d,) = mem(decide(st, [f], NOW, cfg(mode="grow-only"))[0])
    assert d.send and d.mode == "grow-only"
    (d,) = mem(decide(st, [f], NOW, cfg(mode="recommend"))[0])
    assert not d.send and d.mode == "recommend"
    assert decide(st, [f], NOW, cfg(mode="off"))[0] == []


# -- shrink and its guards ----------------------------------------------------------------------


def shrinkable(**kw) -> SliceFeatures:
    """40 GiB cap, 48 h of 10,000 MiB peaks, used 10,000: recommendation 11,520, floor 11,264."""
    base = {"cap": 40_960, "used": 10_000, "wins": windows(48), "age_h": 48.0}
    return vgpu(**{**base, **kw})


def test_shrink_at_most_25_percent_per_step() -> None:
    ds, st = decide(PolicyState(), [shrinkable()], NOW, cfg())
    (d,) = mem(ds)
    assert (d.action, d.old_cap, d.new_cap, d.send) == ("shrink", 40_960, 30_720, True)
    assert d.inputs["history_hours"] == pytest.approx(47.917, abs=1e-3)
    assert st.slices[d.slice_id].shrink_from == 40_960


def test_shrink_reaches_recommendation_when_within_a_step() -> None:
    ds, _ = decide(PolicyState(), [shrinkable(cap=14_336)], NOW, cfg())
    (d,) = mem(ds)
    rec = round_up(decaying_percentile([(NOW, 10_000.0)], NOW, EnforcerConfig()) * 1.15, 256)
    assert d.new_cap == max(rec, 11_264) == 11_776


@pytest.mark.parametrize(
    "features, c, why",
    [
        (shrinkable(wins=windows(23)), cfg(), "less than a day of history"),
        (shrinkable(age_h=11.9), cfg(), "slice younger than 12 h"),
        (shrinkable(cap=12_288), cfg(), "change below 10 %"),
        (shrinkable(last_ts=NOW - timedelta(seconds=21)), cfg(), "last sample older than two ticks"),
        (shrinkable(), cfg(mode="grow-only"), "grow-only never shrinks"),
    ],
)
def test_shrink_guards(features: SliceFeatures, c: EnforcerConfig, why: str) -> None:
    ds, _ = decide(PolicyState(), [features], NOW, c)
    assert [d for d in mem(ds) if d.send] == [], why


def test_shrink_once_per_6h_and_uses_highest_recommendation_of_last_6h() -> None:
    c = cfg()
    _, st = decide(PolicyState(), [shrinkable()], NOW, c)
    later = NOW + timedelta(hours=5, minutes=59)
    f = shrinkable(cap=30_720, wins=windows(48, end=later), age_h=54)
    assert [d for d in mem(decide(st, [f], later, c)[0]) if d.send] == []
    # a spike to 16,000 MiB 3 h after the shrink raises the recommendation, then use falls again:
    # 6 h after the shrink (cap 24 GiB by then) the step goes only to the spike's recommendation
    spike = NOW + timedelta(hours=3)
    _, st2 = decide(st, [shrinkable(cap=30_720, wins=windows(3, peak=16_000, end=spike))], spike, c)
    at = NOW + timedelta(hours=6)
    (d,) = mem(decide(st2, [shrinkable(cap=24_576, wins=windows(48, end=at), age_h=54)], at, c)[0])
    spike_rec = round_up(decaying_percentile([(NOW, 16_000.0)], NOW, EnforcerConfig()) * 1.15, 256)
    assert d.action == "shrink" and d.new_cap == spike_rec == 18_944


def test_tenant_guarantee_is_a_floor() -> None:
    c = cfg(guarantees_mib={"nlp": 32_768})
    ds, _ = decide(PolicyState(), [shrinkable()], NOW, c)
    (d,) = mem(ds)
    assert d.new_cap == 32_768


def test_fleet_budget_10_percent_of_pool_per_hour() -> None:
    fs = [shrinkable(sid=f"GPU-0:hami:pod-{i:02d}/main") for i in range(25)]
    ds, st = decide(PolicyState(), fs, NOW, cfg())
    sent = [d for d in mem(ds) if d.send]
    assert len(sent) == 2  # floor(0.10 x 25)
    assert [d.slice_id for d in sent] == ["GPU-0:hami:pod-00/main", "GPU-0:hami:pod-01/main"]
    # 59 minutes later the budget is still spent; 61 minutes later two more go
    t = NOW + timedelta(minutes=59)
    fs2 = [shrinkable(sid=f.slice_id, wins=windows(48, end=t)) for f in fs[2:]]
    fs2 = [dataclasses.replace(f, last_ts=t) for f in fs2]
    assert [d for d in mem(decide(st, fs2, t, cfg())[0]) if d.send] == []
    t = NOW + timedelta(minutes=61)
    fs3 = [with_windows(dataclasses.replace(f, last_ts=t), windows(48, end=t)) for f in fs2]
    assert len([d for d in mem(decide(st, fs3, t, cfg())[0]) if d.send]) == 2


# -- out-of-memory, rollback, kill-switch -------------------------------------------------------


def test_after_suspected_oom_grow_and_no_shrink_for_24h() -> None:
    wins = list(windows(48))
    wins[-2] = Window(wins[-2].start, 40_000, 20.0, oom_suspect=True)
    st = PolicyState()
    _, st = decide(st, [shrinkable(cap=40_960, wins=windows(1))], NOW - timedelta(hours=60), cfg())
    st.slices["GPU-0:hami:pod-a/main"].requested_mem_mib = 65_536
    ds, st = decide(st, [shrinkable(wins=tuple(wins))], NOW, cfg())
    (d,) = mem(ds)
    # max(1.2 x max(40,960, 40,000), 40,960 + 512) = 49,152
    assert (d.action, d.new_cap, d.send) == ("grow", 49_152, True)
    # the same OOM window is acted on once; no shrink for 24 h even with a low recommendation
    t = NOW + timedelta(hours=23)
    f = shrinkable(cap=49_152, wins=windows(48, end=t))
    assert mem(decide(st, [dataclasses.replace(f, last_ts=t)], t, cfg())[0]) == []
    t = NOW + timedelta(hours=24, minutes=1)
    f = shrinkable(cap=49_152, wins=windows(48, end=t))
    (d,) = mem(decide(st, [dataclasses.replace(f, last_ts=t)], t, cfg())[0])
    assert d.action == "shrink"


def test_rollback_of_shrink_followed_by_oom_and_kill_switch_after_two() -> None:
    c = cfg()
    ds, st = decide(PolicyState(), [shrinkable()], NOW, c)
    assert mem(ds)[0].new_cap == 30_720
    t = NOW + timedelta(minutes=30)
    wins = windows(48, end=t)
    wins = (*wins[:-1], Window(wins[-1].start, 30_000, 20.0, oom_suspect=True))
    ds, st = decide(st, [shrinkable(cap=30_720, wins=wins, last_ts=t)], t, c)
    (d,) = mem(ds)
    assert (d.action, d.old_cap, d.new_cap, d.send) == ("rollback", 30_720, 40_960, True)
    assert st.regressions == {"nlp": [t.isoformat()]} and st.demoted == {}
    # a second regression of the same tenant (another slice) within 7 days: back to recommend
    sid = "GPU-0:hami:pod-b/main"
    t2 = NOW + timedelta(days=2)
    ds, st = decide(st, [shrinkable(sid=sid, wins=windows(48, end=t2), last_ts=t2)], t2, c)
    assert mem(ds)[0].action == "shrink"
    t3 = t2 + timedelta(minutes=50)
    wins = windows(48, end=t3)
    wins = (*wins[:-1], Window(wins[-1].start, 30_000, 20.0, oom_suspect=True))
    ds, st = decide(st, [shrinkable(sid=sid, cap=30_720, wins=wins, last_ts=t3)], t3, c)
    assert mem(ds)[0].action == "rollback" and mem(ds)[0].send  # the rollback itself still goes out
    assert st.demoted == {"nlp": t3.isoformat()}
    assert effective_mode(shrinkable(), st, c) == "recommend"
    t4 = t3 + timedelta(hours=7)
    ds, _ = decide(st, [shrinkable(sid="GPU-0:hami:pod-c/main", wins=windows(48, end=t4), last_ts=t4)], t4, c)
    assert [d.send for d in mem(ds)] == [False]


def test_oom_more_than_an_hour_after_shrink_is_not_a_regression() -> None:
    c = cfg()
    _, st = decide(PolicyState(), [shrinkable()], NOW, c)
    t = NOW + timedelta(minutes=65)
    wins = windows(48, end=t)
    wins = (*wins[:-1], Window(wins[-1].start, 30_000, 20.0, oom_suspect=True))
    ds, st = decide(st, [shrinkable(cap=30_720, wins=wins, last_ts=t)], t, c)
    (d,) = mem(ds)
    assert d.action == "grow" and d.new_cap == 36_864  # 1.2 x 30,720, within the 40,960 allocation
    assert st.regressions == {}


# -- core -------------------------------------------------------------------------------------


def test_core_pinned_raises_to_min_requested_max_plus10_times1_5() -> None:
    st = PolicyState()
    _, st = decide(st, [vgpu(core=60.0, wins=windows(1))], NOW - timedelta(hours=1), cfg())
    # cap now 30: pinned (util >= 25) in 2 of 30 ticks of each window in the last 15 min = 6.7 % > 5 %
    wins = windows(1, util=30.0, pinned_ticks=2)
    (d,) = core(decide(st, [vgpu(core=30.0, wins=wins)], NOW, cfg())[0])
    assert (d.action, d.old_cap, d.new_cap, d.send) == ("raise", 30, 45, True)
    assert d.note.startswith("applies at restart")
    # 1 pinned tick of 30 per window = 3.3 %: no raise
    assert core(decide(st, [vgpu(core=30.0, wins=windows(1, pinned_ticks=1))], NOW, cfg())[0]) == []
    # capped at the requested 60 from 50: max(60, 75) -> 60
    (d,) = core(decide(st, [vgpu(core=50.0, wins=wins)], NOW, cfg())[0])
    assert d.new_cap == 60


def test_core_lowered_slowly_when_p95_below_60_percent() -> None:
    f = shrinkable(core=50.0, wins=windows(48, util=12.0))
    ds, st = decide(PolicyState(), [f], NOW, cfg(budget_frac=1.0))
    (d,) = core(ds)
    assert (d.action, d.old_cap, d.new_cap) == ("lower", 50, 40)  # at most 10 points
    # P95 27 >= 0.6 x 40 = 24 stays; at 50 it would be 27 < 30: lowered towards ceil(27 / 0.6) = 45
    (d,) = core(decide(PolicyState(), [shrinkable(core=50.0, wins=windows(48, util=27.0))], NOW, cfg())[0])
    assert d.new_cap == 45
    t = NOW + timedelta(hours=5)
    f2 = with_windows(dataclasses.replace(f, core_cap_pct=40.0, last_ts=t), windows(48, util=12.0, end=t))
    assert core(decide(st, [f2], t, cfg(budget_frac=1.0))[0]) == []  # once per 6 h


def test_core_lowering_rolled_back_on_pinning_within_an_hour() -> None:
    f = shrinkable(core=50.0, wins=windows(48, util=12.0))
    _, st = decide(PolicyState(), [f], NOW, cfg(budget_frac=1.0))
    t = NOW + timedelta(minutes=20)
    wins = windows(48, util=40.0, end=t, pinned_ticks=10)
    ds, st = decide(st, [shrinkable(core=40.0, wins=wins, last_ts=t)], t, cfg(budget_frac=1.0))
    (d,) = core(ds)
    assert (d.action, d.old_cap, d.new_cap, d.send) == ("rollback", 40, 50, True)
    assert st.regressions == {"nlp": [t.isoformat()]}


# -- modes, MIG / time-slicing, determinism, re-check -------------------------------------------


def test_modes_per_pool_and_tenant_with_opt_out() -> None:
    st = PolicyState()
    c = cfg(mode="recommend", pools={"c1/H100": "enforce"}, tenants={"vision": "grow-only"}, opt_out=["hpc"])
    assert effective_mode(vgpu(), st, c) == "enforce"
    assert effective_mode(vgpu(tenant="vision"), st, c) == "grow-only"
    assert effective_mode(vgpu(tenant="hpc"), st, c) == "off"
    assert effective_mode(dataclasses.replace(vgpu(), model="A100"), st, c) == "recommend"
    # a tenant mode never loosens a pool's
    assert (
        effective_mode(vgpu(tenant="x"), st, cfg(mode="recommend", tenants={"x": "enforce"})) == "recommend"
    )


def test_mig_and_timeslice_get_rightsizing_only() -> None:
    mig = dataclasses.replace(
        vgpu(cap=40_192, wins=windows(2, peak=7_000)),
        kind="mig",
        memory_slices=4,
        gpu_memory_slices=8,
        core_cap_pct=None,
    )
    ts = dataclasses.replace(
        vgpu(wins=windows(2, peak=15_000)), kind="timeslice", replicas=4, mem_cap_mib=None
    )
    ds, st = decide(PolicyState(), [mig, ts], NOW, cfg())
    by = {d.resource: d for d in ds}
    # 7,000 x 1.15 = 8,050 MiB fits 1 memory slice of 10,048 MiB
    assert (by["mig_memory_slices"].old_cap, by["mig_memory_slices"].new_cap) == (4, 1)
    # 81,920 // 17,250 = 4 replicas: not more than now -> nothing; at 10,000 MiB peak -> 7
    assert "timeslice_replicas" not in by
    assert all(not d.send and d.action == "rightsize" for d in ds)
    ts2 = with_windows(ts, windows(2, peak=10_000))
    (d,) = decide(PolicyState(), [ts2], NOW, cfg())[0]
    assert (d.old_cap, d.new_cap) == (4, 7)
    # the same recommendation is not written again next cycle
    assert decide(st, [mig], NOW + timedelta(minutes=1), cfg())[0] == []


def test_decide_is_pure_and_deterministic() -> None:
    fs = [shrinkable(sid=f"GPU-0:hami:pod-{i}/main") for i in range(3)]
    st = PolicyState()
    a = decide(st, fs, NOW, cfg())
    b = decide(st, fs, NOW, cfg())
    assert a[0] == b[0] and a[1] == b[1]
    assert st == PolicyState()  # input state untouched
    assert PolicyState.from_json(a[1].to_json()) == a[1]


def test_recheck_before_send() -> None:
    (d,) = mem(decide(PolicyState(), [shrinkable()], NOW, cfg())[0])
    c = cfg()
    assert recheck(d, 40_960, 10_000, NOW, 10.0, NOW, c) is None
    assert (
        recheck(d, 40_960, 10_000, NOW - timedelta(seconds=21), 10.0, NOW, c)
        == "no fresh sample of the slice"
    )
    assert recheck(d, 36_864, 10_000, NOW, 10.0, NOW, c) == "cap is now 36864, the decision expected 40960"
    assert recheck(d, 40_960, 28_000, NOW, 10.0, NOW, c) == (
        "new cap 30720 MiB below fresh use + floor (30800 MiB)"
    )


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("PERCENTILE", "0", "a percentile in (0, 100]"),
        ("PERCENTILE", "100.5", "a percentile in (0, 100]"),
        ("MARGIN", "-0.1", "a margin >= 0"),
        ("MODE", "shrink", "one of off, recommend, grow-only, enforce"),
        ("POOLS", '{"c1/H100": "auto"}', "to one of off, recommend, grow-only, enforce"),
    ],
)
def test_config_stops_naming_the_key(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(env={f"GPULEDGER_ENFORCER_{key}": value})
    assert f"enforcer.{key.lower()} = " in str(e.value) and expected in str(e.value)


def test_config_defaults_are_design_8() -> None:
    c = load_config(env={}).enforcer
    assert (c.mode, c.percentile, c.margin, c.round_mib, c.half_life_hours, c.window_days) == (
        "off",
        98.0,
        0.15,
        256,
        24.0,
        8.0,
    )
    assert load_config(env={"GPULEDGER_ENFORCER_PERCENTILE": "100"}).enforcer.percentile == 100.0
