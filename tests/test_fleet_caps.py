"""The simulated fleet's vGPU slices respond to their caps (SimulatedFleet.apply_cap), and the demo's
in-process enforcer runs against it in `enforce` mode (gpuledger/demo_enforcer.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import orjson
import pytest

from collector.caps import SimulatedCapAgent
from collector.fleet import SimulatedFleet
from gpuledger.bus import MemoryBus
from gpuledger.config import Config
from gpuledger.demo_enforcer import DemoEnforcer, demo_enforcer_settings
from pipeline.ingest import MemoryIngester
from warehouse.enforcer_audit import audit_sql
from warehouse.enforcer_features import windows
from warehouse.lake import Lake

START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
HAMI = "-hami-"


def _slices(msgs, node=None):
    return {s["slice_id"]: s for m in msgs if node in (None, m["node"]) for s in m["slices"]}


def _procs(msgs, slice_id):
    return sorted(p["pid"] for m in msgs for p in m["processes"] if p["slice_id"] == slice_id)


def _rising_slice(a: SimulatedFleet, b: SimulatedFleet):
    """A live vGPU slice whose use rises by more than 256 MiB at the next tick (seen on the twin b)."""
    now, nxt = _slices(a.next_tick()), _slices(b.next_tick())
    b_next = _slices(b.next_tick())
    for sid, s in sorted(now.items()):
        if s["kind"] == "vgpu" and sid in b_next and b_next[sid]["mem_used_mib"] > s["mem_used_mib"] + 256:
            assert nxt[sid] == s  # the twins agree up to here
            return sid, s, b_next[sid]["mem_used_mib"]
    raise AssertionError("no vGPU slice with rising use")


def test_caps_show_in_later_ticks_and_bad_caps_are_refused() -> None:
    f = SimulatedFleet(seed=7, start=START, interval_s=60)
    s = next(s for s in _slices(f.next_tick()).values() if s["kind"] == "vgpu" and s["core_cap_pct"])
    sid, cap, used, core = s["slice_id"], s["mem_cap_mib"], s["mem_used_mib"], s["core_cap_pct"]
    assert f.apply_cap(sid, mem_cap_mib=cap + 256).status == "refused"  # above the allocation
    low = f.apply_cap(sid, mem_cap_mib=used + 100)
    assert (low.status, low.cap_after) == ("refused", cap)
    assert (
        low.reason
        == f"new cap {used + 100} MiB below use {used} MiB + floor ({used + max(512, 0.1 * used):.0f} MiB)"
    )
    assert f.apply_cap(sid, mem_cap_mib=cap - 256, old_cap=cap - 1).reason == (
        f"cap changed under the agent: limit is {cap} MiB, decision expected {cap - 1}"
    )
    assert f.apply_cap("GPU-x:hami:nope", core_cap_pct=10).status == "refused"
    assert f.apply_cap(sid, core_cap_pct=0).reason == "core cap 0 outside 1-100"
    new_mem = (used + 512 + max(512, used // 10) + 255) // 256 * 256
    r = f.apply_cap(sid, mem_cap_mib=new_mem, old_cap=cap)
    assert (r.status, r.reason, r.used_mib, r.cap_before, r.cap_after) == (
        "applied",
        None,
        used,
        cap,
        new_mem,
    )
    r = f.apply_cap(sid, core_cap_pct=core + 10, old_cap=core)
    assert (r.status, r.cap_before, r.cap_after) == ("applies-at-restart", core, core + 10)
    later = _slices(f.next_tick())[sid]
    assert (later["mem_cap_mib"], later["core_cap_pct"]) == (new_mem, core + 10)
    with pytest.raises(ValueError):
        f.apply_cap(sid)


def test_cap_changes_are_deterministic_by_seed() -> None:
    def run() -> list:
        f = SimulatedFleet(seed=11, start=START, interval_s=300)
        out = []
        for k in range(30):
            msgs = f.next_tick()
            if k == 3:
                for sid, s in sorted(_slices(msgs).items()):
                    if s["kind"] == "vgpu":
                        f.apply_cap(sid, mem_cap_mib=s["mem_used_mib"] + 512, floor_mib=0, floor_frac=0)
            out.append(orjson.dumps(msgs))
        return [out, list(f.oom_events)]

    a, b = run(), run()
    assert a == b and len(a[1]) > 0


def test_shrink_below_demand_fails_as_hami_core_and_is_one_oom_signal(tmp_path) -> None:
    a = SimulatedFleet(seed=7, start=START, interval_s=300)
    b = SimulatedFleet(seed=7, start=START, interval_s=300)  # the twin shows the next tick's demand
    sid, s, demand = _rising_slice(a, b)
    node = next(n for n in a.nodes if n in {m["node"] for m in b.next_tick() if sid in _slices([m])})
    used = s["mem_used_mib"]
    res = a.apply_cap(sid, mem_cap_mib=used, floor_mib=0, floor_frac=0)
    assert (res.status, res.cap_after) == ("applied", used)
    cfg = Config()
    cfg.lake.path = str(tmp_path / "lake")
    cfg.lake.max_tick_age_s = 0
    bus, lake = MemoryBus(), Lake(cfg.lake.path)
    ing = MemoryIngester(bus, lake, cfg, workers=0)
    ticks = []
    for k in range(4):
        if k == 2:  # the cap back to the allocation (what the enforcer's growth after an OOM does)
            assert a.apply_cap(sid, mem_cap_mib=s["mem_cap_mib"]).status == "applied"
        msgs = [m for m in a.next_tick() if m["node"] == node]
        ticks.append(msgs)
        for m in msgs:
            bus.append(cfg.kafka.topic, node.encode(), orjson.dumps(m))
    ing.drain()
    ing.close()
    oom_t, down_t, back_t = (_slices(t)[sid] for t in ticks[:3])
    assert (oom_t["mem_used_mib"], oom_t["mem_cap_mib"]) == (used, used)  # held the cap, then failed
    assert (down_t["mem_used_mib"], _procs(ticks[1], sid)) == (0, [])  # container down: nothing held
    assert len(_procs(ticks[2], sid)) == len(_procs(ticks[0], sid)) > 0
    assert set(_procs(ticks[2], sid)).isdisjoint(_procs(ticks[0], sid))  # restarted: new processes
    assert back_t["mem_cap_mib"] == s["mem_cap_mib"] and back_t["mem_used_mib"] > used
    assert [(e["slice_id"], e["cap_mib"], e["demand_mib"]) for e in a.oom_events] == [(sid, used, demand)]
    # the enforcer's suspected-OOM signal: exactly the window of the failing tick (a's second, 00:10)
    w = windows(lake, START + timedelta(hours=1), window_s=300).to_pylist()
    flagged = sorted((r["slice_id"], r["w_start"]) for r in w if r["oom_suspect"])
    assert flagged == [(sid, START + timedelta(minutes=10))]


def test_simulated_day_and_a_half_in_enforce_mode_causes_no_oom(tmp_path) -> None:
    cfg = Config()
    cfg.lake.path = str(tmp_path / "lake")
    cfg.lake.max_tick_age_s = 0
    demo_enforcer_settings(cfg)
    assert cfg.enforcer.mode == "enforce"
    fleet = SimulatedFleet(seed=7, start=START, interval_s=300)
    bus, lake = MemoryBus(), Lake(cfg.lake.path)
    ing = MemoryIngester(bus, lake, cfg, workers=0)
    de = DemoEnforcer(cfg, fleet, every_s=1800)
    last: dict[str, dict] = {}
    for _ in range(36 * 12):  # 36 h of 5-minute ticks, HAMi nodes only, a policy cycle every 30 min
        for m in fleet.next_tick():
            if HAMI in m["node"]:
                bus.append(cfg.kafka.topic, m["node"].encode(), orjson.dumps(m))
                last.update(_slices([m]))
        de.after_tick(ing.drain)
    ing.close()
    assert len(de.cycles) == 72
    assert fleet.oom_events == []
    con = duckdb.connect()
    acks = con.sql(
        f"SELECT resource, status, count(*) FROM {audit_sql(lake, 'acks')} GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert acks == [("core", "applies-at-restart", 18), ("memory", "applied", 24)]
    sent = con.sql(
        f"SELECT action, count(*) FROM {audit_sql(lake, 'decisions')} WHERE sent GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert sent == [("grow", 2), ("lower", 16), ("rollback", 2), ("shrink", 22)]
    # every applied memory cap is what the fleet reports afterwards (the last applied one per slice)
    final = con.sql(
        f"SELECT slice_id, arg_max(cap_after, acked_at) FROM {audit_sql(lake, 'acks')} "
        "WHERE resource = 'memory' AND status = 'applied' GROUP BY ALL"
    ).fetchall()
    assert len(final) > 0
    assert {sid: last[sid]["mem_cap_mib"] for sid, _ in final if sid in last} == {
        sid: cap for sid, cap in final if sid in last
    }


def test_simulated_agent_answers_once_and_refuses_expired() -> None:
    f = SimulatedFleet(seed=7, start=START, interval_s=60)
    s = next(s for s in _slices(f.next_tick()).values() if s["kind"] == "vgpu")
    agent = SimulatedCapAgent(f)
    msg = {
        "schema": "gpuledger.cap-decision/v1",
        "decision_id": "c" * 32,
        "cluster": "prod-east",
        "node": "pe-h200-hami-01",
        "slice_id": s["slice_id"],
        "gpu_uuid": s["gpu_uuid"],
        "pod_uid": s["workload"]["pod_uid"],
        "container": s["workload"]["container"],
        "tenant": "nlp",
        "pool": "prod-east/H200",
        "slice_kind": "vgpu",
        "resource": "memory",
        "action": "shrink",
        "old_cap": s["mem_cap_mib"],
        "new_cap": s["mem_cap_mib"] - 256,
        "reason": "test",
        "note": "",
        "mode": "enforce",
        "issued_at": "2026-11-02T00:01:00.000000Z",
        "expires_at": "2026-11-02T00:06:00.000000Z",
        "inputs": {},
    }
    ack = agent.handle(msg)
    assert (ack["status"], ack["cap_after"]) == ("applied", s["mem_cap_mib"] - 256)
    assert agent.handle(msg) is None
    for _ in range(10):
        f.next_tick()
    old = dict(msg, decision_id="d" * 32, old_cap=s["mem_cap_mib"] - 256, new_cap=s["mem_cap_mib"] - 512)
    late = agent.handle(old)
    assert (late["status"], late["reason"]) == ("refused", "expired at 2026-11-02T00:06:00.000000Z")
