"""The simulated fleet: deterministic, schema-valid, and holding every case accounting must handle.

Shares, reserved and used are recomputed here by hand from the DESIGN §6 formulas, so these
tests check the fleet against the contract rather than against its own code.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from collector.fleet import GpuSpec, SimulatedFleet
from collector.traces import load_gentd26

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "gpuledger" / "sample.schema.json"
START = datetime(2026, 11, 1, tzinfo=UTC)
MODELS = {
    "NVIDIA H200": 143771,
    "NVIDIA H100 80GB HBM3": 81559,
    "NVIDIA A100-SXM4-80GB": 81920,
    "Tesla V100-SXM2-32GB": 32768,
    "NVIDIA GeForce RTX 4090": 24564,
}
_P80 = {
    "1g.10gb": (1, 1),
    "1g.20gb": (1, 2),
    "2g.20gb": (2, 2),
    "3g.40gb": (3, 4),
    "4g.40gb": (4, 4),
    "7g.80gb": (7, 8),
}
MIG_PROFILES = {
    "NVIDIA A100-SXM4-80GB": _P80,
    "NVIDIA H100 80GB HBM3": _P80,
    "NVIDIA H200": {
        "1g.18gb": (1, 1),
        "1g.35gb": (1, 2),
        "2g.35gb": (2, 2),
        "3g.71gb": (3, 4),
        "4g.71gb": (4, 4),
        "7g.141gb": (7, 8),
    },
}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"

Ticks = list[list[dict[str, Any]]]


def run(fleet: SimulatedFleet, n: int) -> Ticks:
    return [fleet.next_tick() for _ in range(n)]


@pytest.fixture(scope="module")
def fleet30() -> tuple[SimulatedFleet, Ticks]:
    fleet = SimulatedFleet(seed=7)
    return fleet, run(fleet, 30)


@pytest.fixture(scope="module")
def two_hours() -> Ticks:
    return run(SimulatedFleet(seed=7, interval_s=60.0), 120)


@pytest.fixture(scope="module")
def ten_days() -> Ticks:
    return run(SimulatedFleet(seed=7, interval_s=3600.0), 240)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def share(sl: dict[str, Any], gpu: dict[str, Any]) -> float:
    """DESIGN §6 share of a slice."""
    kind = sl["kind"]
    if kind == "whole":
        return 1.0
    if kind == "mig":
        return max(
            sl["compute_slices"] / sl["gpu_compute_slices"], sl["memory_slices"] / sl["gpu_memory_slices"]
        )
    if kind == "vgpu":
        return max(sl["mem_cap_mib"] / gpu["mem_total_mib"], sl["core_cap_pct"] / 100)
    return 1.0 / sl["replicas"]


def used_fraction(sl: dict[str, Any]) -> float | None:
    """DESIGN §6 busy fraction of the whole GPU attributable to the slice."""
    if sl["util_pct"] is None:
        return None
    if sl["kind"] == "mig":
        return sl["util_pct"] / 100 * sl["compute_slices"] / sl["gpu_compute_slices"]
    return sl["util_pct"] / 100


def match(rules: list[dict[str, str]], wl: dict[str, Any] | None) -> str:
    for rule in rules:
        key = next(k for k in rule if k != "tenant")
        value = rule[key]
        if wl is None:
            break
        if key == "label":
            k, v = value.split("=", 1)
            hit = (wl.get("labels") or {}).get(k) == v
        else:
            hit = wl.get(key) == value
        if hit:
            return rule["tenant"]
    return "unassigned"


def by_gpu(msg: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {g["uuid"]: [] for g in msg["gpus"]}
    for sl in msg["slices"]:
        out[sl["gpu_uuid"]].append(sl)
    return out


def all_messages(ticks: Ticks) -> list[dict[str, Any]]:
    return [m for tick in ticks for m in tick]


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = [orjson.dumps(m) for m in all_messages(run(SimulatedFleet(seed=7), 50))]
    b = [orjson.dumps(m) for m in all_messages(run(SimulatedFleet(seed=7), 50))]
    c = [orjson.dumps(m) for m in all_messages(run(SimulatedFleet(seed=8), 50))]
    assert len(a) == 50 * 25
    assert a == b
    assert a != c
    assert sum(x != y for x, y in zip(a, c, strict=True)) == len(a)  # every node's message differs


def test_start_changes_timestamps_only_through_start() -> None:
    other = datetime(2026, 12, 3, 8, 30, tzinfo=UTC)
    m = SimulatedFleet(seed=7, start=other).next_tick()[0]
    assert m["ts"] == "2026-12-03T08:30:10Z"


def test_no_global_random_state_used() -> None:
    random.seed(123)
    state = random.getstate()
    first = [orjson.dumps(m) for m in all_messages(run(SimulatedFleet(seed=3), 5))]
    assert random.getstate() == state
    random.seed(999)
    second = [orjson.dumps(m) for m in all_messages(run(SimulatedFleet(seed=3), 5))]
    assert first == second


# -- schema --------------------------------------------------------------------------------------


def test_every_message_validates(
    fleet30: tuple[SimulatedFleet, Ticks], validator: jsonschema.Draft202012Validator
) -> None:
    msgs = all_messages(fleet30[1])
    assert len(msgs) == 30 * 25
    for m in msgs:
        errors = list(validator.iter_errors(m))
        assert not errors, f"{m['node']} seq {m['seq']}: {errors[0].message[:300]}"
        assert len(orjson.dumps(m)) < 1 << 20


def test_long_run_messages_validate(ten_days: Ticks, validator: jsonschema.Draft202012Validator) -> None:
    sample = [m for k, tick in enumerate(ten_days) for m in tick if m["seq"] == 0 or k % 40 == 0]
    assert len(sample) > 100
    for m in sample:
        errors = list(validator.iter_errors(m))
        assert not errors, f"{m['node']} seq {m['seq']}: {errors[0].message[:300]}"


# -- composition ---------------------------------------------------------------------------------


def test_fleet_shape(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    fleet, ticks = fleet30
    assert len(fleet.clusters) >= 2
    assert 20 <= len(fleet.nodes) <= 30
    assert 120 <= len(fleet.gpus) <= 200
    assert all(isinstance(g, GpuSpec) for g in fleet.gpus)
    assert {g.model for g in fleet.gpus} == set(MODELS)
    assert all(g.mem_total_mib == MODELS[g.model] for g in fleet.gpus)
    assert len({g.uuid for g in fleet.gpus}) == len(fleet.gpus)
    assert all(re.fullmatch("GPU-" + UUID, g.uuid) for g in fleet.gpus)
    msgs = ticks[0]
    assert [m["node"] for m in msgs] == fleet.nodes
    sizes = {m["node"]: len(m["gpus"]) for m in msgs}
    assert set(sizes.values()) >= {8, 4, 2}
    n_slices = sum(len(m["slices"]) for m in msgs)
    assert 150 <= n_slices <= 500
    kinds = {sl["kind"] for m in msgs for sl in m["slices"]}
    assert kinds == {"whole", "mig", "vgpu", "timeslice"}
    for m in msgs:
        assert re.fullmatch(UUID, m["boot_id"])
        assert m["cluster"] in fleet.clusters
        for g in m["gpus"]:
            assert g["state"] == "ok"
            assert g["mem_total_mib"] == MODELS[g["model"]]
    per_cluster_models = defaultdict(set)
    for g in fleet.gpus:
        per_cluster_models[g.cluster].add(g.model)
    assert all(len(v) >= 2 for v in per_cluster_models.values())


def test_describe_matches_the_messages() -> None:
    fleet = SimulatedFleet(seed=7)
    msgs = fleet.next_tick()
    d = fleet.describe()
    assert d["clusters"] == len({m["cluster"] for m in msgs}) >= 2
    assert d["nodes"] == len(msgs)
    assert d["gpus"] == sum(len(m["gpus"]) for m in msgs)
    assert d["slices"] == sum(len(m["slices"]) for m in msgs)
    assert d["processes"] == sum(len(m["processes"]) for m in msgs)
    kinds: dict[str, int] = defaultdict(int)
    for m in msgs:
        for sl in m["slices"]:
            kinds[sl["kind"]] += 1
    assert d["slices_by_kind"] == dict(sorted(kinds.items()))
    assert sum(d["gpus_by_model"].values()) == d["gpus"]
    assert d["trace_slices"] >= 20
    assert len(d["tenants_expected"]) >= 5


def test_scale_multiplies_nodes() -> None:
    one, two = SimulatedFleet(scale=1), SimulatedFleet(scale=2)
    assert len(two.nodes) == 2 * len(one.nodes)
    assert len(two.gpus) == 2 * len(one.gpus)
    assert len(set(two.nodes)) == len(two.nodes)
    assert len({g.uuid for g in two.gpus}) == len(two.gpus)


def test_hami_overcommit_undercommit_and_core_zero(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    sums = []
    core_zero = 0
    for m in fleet30[1][0]:
        gpus = {g["uuid"]: g for g in m["gpus"]}
        for uuid, slices in by_gpu(m).items():
            vg = [s for s in slices if s["kind"] == "vgpu"]
            if not vg:
                continue
            assert len(vg) == len(slices)  # HAMi does not mix with other kinds on one GPU
            sums.append(sum(share(s, gpus[uuid]) for s in vg))
            for s in vg:
                assert re.fullmatch(f"GPU-{UUID}:hami:{UUID}/[a-z0-9-]+", s["slice_id"])
                assert s["slice_id"].startswith(s["gpu_uuid"] + ":hami:")
                assert isinstance(s["mem_cap_mib"], int)
                assert 0 < s["mem_cap_mib"] <= gpus[uuid]["mem_total_mib"]
                assert s["mem_used_mib"] <= s["mem_cap_mib"]
                assert s["last_kernel_age_s"] >= 0
                core_zero += s["core_cap_pct"] == 0
    assert max(sums) > 1.0  # over-committed GPU
    assert min(sums) < 1.0  # under-committed GPU
    assert core_zero >= 1


def test_mig_layouts_are_real_and_valid(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    partial = full = 0
    for m in fleet30[1][0]:
        slices = by_gpu(m)
        for g in m["gpus"]:
            mine = slices[g["uuid"]]
            if not g["mig_mode"]:
                assert all(s["kind"] != "mig" for s in mine)
                continue
            assert g["util_pct"] is None  # unsupported on MIG
            assert g["power_w"] is not None and g["energy_j"] is not None
            assert all(s["kind"] == "mig" for s in mine)
            table = MIG_PROFILES[g["model"]]
            c = sum(s["compute_slices"] for s in mine)
            mm = sum(s["memory_slices"] for s in mine)
            assert c <= 7 and mm <= 8
            assert len({s["gi_id"] for s in mine}) == len(mine)
            assert sum(s["mem_cap_mib"] for s in mine) <= g["mem_total_mib"]
            for s in mine:
                assert table[s["mig_profile"]] == (s["compute_slices"], s["memory_slices"])
                assert (s["gpu_compute_slices"], s["gpu_memory_slices"]) == (7, 8)
                assert re.fullmatch("MIG-" + UUID, s["mig_uuid"])
                assert s["ci_id"] == 0
                # profile names round the instance memory up to whole "gb" (GiB): 39.25 GiB -> 40gb
                gib = int(re.search(r"\.(\d+)gb", s["mig_profile"]).group(1))
                assert 0.85 * gib * 1024 <= s["mem_cap_mib"] <= gib * 1024
                if g["model"] == "NVIDIA A100-SXM4-80GB":
                    assert s["util_pct"] is None  # no GPM on Ampere
                else:
                    assert s["util_pct"] is not None
            if c == 7 or mm == 8:
                full += 1
            else:
                partial += 1
    assert full >= 3 and partial >= 2
    procs = [p for m in fleet30[1][0] for p in m["processes"]]
    mig_ids = {s["slice_id"] for m in fleet30[1][0] for s in m["slices"] if s["kind"] == "mig"}
    assert all(p["sm_util_pct"] is None for p in procs if p["slice_id"] in mig_ids)


def test_timeslice_replicas(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    fewer = 0
    for m in fleet30[1][0]:
        for slices in by_gpu(m).values():
            ts = [s for s in slices if s["kind"] == "timeslice"]
            if not ts:
                continue
            assert len(ts) == len(slices)
            replicas = {s["replicas"] for s in ts}
            assert len(replicas) == 1
            r = replicas.pop()
            assert len(ts) <= r
            fewer += len(ts) < r
            assert all(s["mem_cap_mib"] is None for s in ts)
    assert fewer >= 1


def test_unallocated_gpus(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    empty = 0
    for m in fleet30[1][0]:
        for g in m["gpus"]:
            if not by_gpu(m)[g["uuid"]]:
                empty += 1
                assert g["mem_used_mib"] == 0
                assert g["util_pct"] in (None, 0.0)
    assert empty >= 5


def test_tenants_by_every_matcher_and_unassigned(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    fleet, ticks = fleet30
    rules = fleet.tenant_rules()
    for rule in rules:
        assert set(rule) - {"tenant"} in ({"namespace"}, {"label"}, {"account"}, {"user"})
        assert isinstance(rule["tenant"], str) and rule["tenant"]
        if "label" in rule:
            assert re.fullmatch(r"[^=]+=[^=]+", rule["label"])
    slices = [s for m in ticks[0] for s in m["slices"]]
    tenants = defaultdict(int)
    matched_by = set()
    for s in slices:
        wl = s["workload"]
        assert wl is not None
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in (wl["labels"] or {}).items())
        t = match(rules, wl)
        tenants[t] += 1
        if t != "unassigned":
            rule = next(r for r in rules if match([r], wl) != "unassigned")
            matched_by.add(next(k for k in rule if k != "tenant"))
    named = {t for t in tenants if t != "unassigned"}
    assert len(named) >= 5
    assert tenants["unassigned"] >= 5
    assert matched_by == {"namespace", "label", "account", "user"}
    # Slurm and bare-metal identities have the expected shape
    slurm = [s["workload"] for s in slices if s["workload"]["job_id"]]
    assert slurm and all(
        w["namespace"] is None and w["pod"] is None and w["account"] and w["user"] for w in slurm
    )
    host = [s["workload"] for s in slices if s["workload"]["user"] and not s["workload"]["job_id"]]
    assert host and all(w["namespace"] is None and w["account"] is None for w in host)
    # rule order matters: a shared namespace is split by label
    shared = {match(rules, s["workload"]) for s in slices if s["workload"]["namespace"] == "ml-shared"}
    assert {"nlp", "recsys", "unassigned"} <= shared


def test_processes_add_up_to_their_slices(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    n = 0
    for m in all_messages(fleet30[1]):
        slices = {s["slice_id"]: s for s in m["slices"]}
        assert len(slices) == len(m["slices"])
        pids = [p["pid"] for p in m["processes"]]
        assert len(set(pids)) == len(pids)
        mem: dict[str, int] = defaultdict(int)
        sm: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for p in m["processes"]:
            s = slices[p["slice_id"]]
            assert p["gpu_uuid"] == s["gpu_uuid"]
            mem[p["slice_id"]] += p["mem_used_mib"]
            count[p["slice_id"]] += 1
            if p["sm_util_pct"] is not None:
                sm[p["slice_id"]] += p["sm_util_pct"]
            wl = s["workload"]
            assert p["pod_uid"] == wl["pod_uid"]
            assert p["job_id"] == wl["job_id"]
            if wl["pod_uid"]:
                assert re.fullmatch("[0-9a-f]{64}", p["container_id"])
            else:
                assert p["container_id"] is None
        for sid, s in slices.items():
            assert 1 <= count[sid] <= 4
            assert mem[sid] == s["mem_used_mib"]
            if s["kind"] != "mig":
                assert abs(sm[sid] - s["util_pct"]) < 0.01
            n += 1
    assert n > 5000


def test_gpu_values_consistent_with_slices(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    idle_power = {
        "NVIDIA H200": 60,
        "NVIDIA H100 80GB HBM3": 60,
        "NVIDIA A100-SXM4-80GB": 45,
        "Tesla V100-SXM2-32GB": 30,
        "NVIDIA GeForce RTX 4090": 15,
    }
    tdp = {
        "NVIDIA H200": 700,
        "NVIDIA H100 80GB HBM3": 700,
        "NVIDIA A100-SXM4-80GB": 400,
        "Tesla V100-SXM2-32GB": 300,
        "NVIDIA GeForce RTX 4090": 450,
    }
    for m in all_messages(fleet30[1]):
        slices = by_gpu(m)
        for g in m["gpus"]:
            mine = slices[g["uuid"]]
            assert g["mem_used_mib"] == sum(s["mem_used_mib"] for s in mine) <= g["mem_total_mib"]
            if not g["mig_mode"]:
                expect = min(100.0, sum(s["util_pct"] for s in mine))
                assert abs(g["util_pct"] - expect) <= 0.011 * max(1, len(mine))
            for s in mine:
                if s["kind"] == "whole":
                    assert s["util_pct"] == g["util_pct"]
                    assert s["mem_cap_mib"] == g["mem_total_mib"]
                if s["mem_cap_mib"] is not None:
                    assert s["mem_used_mib"] <= s["mem_cap_mib"]
            assert idle_power[g["model"]] <= g["power_w"] <= tdp[g["model"]]
            assert g["energy_j"] == pytest.approx(g["power_w"] * m["interval_s"], abs=0.01)
            assert 20 <= g["temp_c"] <= 90


def test_seq_and_ts_advance(fleet30: tuple[SimulatedFleet, Ticks]) -> None:
    ticks = fleet30[1]
    for k, tick in enumerate(ticks, start=1):
        ts = (START + timedelta(seconds=10 * k)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for m in tick:
            assert m["ts"] == ts
            assert m["interval_s"] == 10.0
            assert m["schema"] == "gpuledger.sample/v1"
    for prev, cur in itertools.pairwise(ticks):
        for a, b in zip(prev, cur, strict=True):
            assert a["node"] == b["node"]
            assert b["boot_id"] == a["boot_id"]
            assert b["seq"] == a["seq"] + 1
    assert all(m["seq"] == 0 for m in ticks[0])


def test_fractional_interval_timestamps() -> None:
    fleet = SimulatedFleet(seed=1, interval_s=2.5)
    assert [fleet.next_tick()[0]["ts"] for _ in range(2)] == [
        "2026-11-01T00:00:02.500000Z",
        "2026-11-01T00:00:05Z",
    ]


def test_start_in_another_timezone_is_converted_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    fleet = SimulatedFleet(start=datetime(2026, 11, 1, 1, 0, tzinfo=cet))
    assert fleet.next_tick()[0]["ts"] == "2026-11-01T00:00:10Z"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": datetime(2026, 11, 1)},  # naive
        {"interval_s": 0},
        {"interval_s": 7200},
        {"scale": 0},
    ],
)
def test_bad_arguments_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatedFleet(**kwargs)


# -- behaviour over time -------------------------------------------------------------------------


def test_idle_runs_and_bursts_over_two_hours(two_hours: Ticks) -> None:
    interval = 60.0
    run_len: dict[str, int] = defaultdict(int)
    longest: dict[str, int] = defaultdict(int)
    deep_longest: dict[str, int] = defaultdict(int)
    deep_run: dict[str, int] = defaultdict(int)
    bursts = vgpu_over_core = 0
    for tick in two_hours:
        seen = set()
        for m in tick:
            gpus = {g["uuid"]: g for g in m["gpus"]}
            for uuid, slices in by_gpu(m).items():
                total = sum(share(s, gpus[uuid]) for s in slices)
                for s in slices:
                    used = used_fraction(s)
                    if used is None:
                        continue
                    sid = s["slice_id"]
                    seen.add(sid)
                    sh = share(s, gpus[uuid])
                    reserved = sh / max(1.0, total)
                    ratio = used / reserved
                    run_len[sid] = run_len[sid] + 1 if ratio < 0.05 else 0
                    longest[sid] = max(longest[sid], run_len[sid])
                    deep_run[sid] = deep_run[sid] + 1 if ratio < 0.02 else 0
                    deep_longest[sid] = max(deep_longest[sid], deep_run[sid])
                    if used > sh:
                        bursts += 1
                    if s["kind"] == "vgpu" and s["core_cap_pct"] > 0 and s["util_pct"] > s["core_cap_pct"]:
                        vgpu_over_core += 1
        for sid in list(run_len):
            if sid not in seen:
                run_len[sid] = 0
                deep_run[sid] = 0
    idle_slices = [sid for sid, n in longest.items() if n * interval >= 30 * 60]
    assert len(idle_slices) >= 5
    assert any(n * interval >= 30 * 60 for n in deep_longest.values())
    assert bursts >= 10
    assert vgpu_over_core >= 1


def test_trace_slices_replay_the_trace() -> None:
    fleet = SimulatedFleet(seed=7, interval_s=57.0)
    ticks = run(fleet, 30)
    trace = load_gentd26()
    # a MIG slice on a Hopper GPU reports the instance activity = the trace pod's busy % as is
    found = 0
    for node in fleet._nodes:
        for gpu in node.gpus:
            for slot in gpu.slots:
                pat = getattr(slot, "pattern", None)
                if pat is None or pat.name != "trace" or slot.kind != "mig":
                    continue
                if slot.null_util or not slot.active:
                    continue
                sid = slot.slice_tpl["slice_id"]
                series = [
                    next(s for m in tick for s in m["slices"] if s["slice_id"] == sid)["util_pct"]
                    for tick in ticks
                ]
                expect = [
                    round(trace.busy_mean(pat.pod, (k - 1) * 57.0 + pat.off, k * 57.0 + pat.off), 2)
                    for k in range(1, 31)
                ]
                assert series == pytest.approx(expect, abs=0.011)
                found += 1
    assert found >= 3


def test_reboots_churn_and_unique_slice_lifetimes(ten_days: Ticks) -> None:
    per_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    tick_of: dict[int, int] = {}
    for k, tick in enumerate(ten_days, start=1):
        for m in tick:
            per_node[m["node"]].append(m)
            tick_of[id(m)] = k
    assert len(per_node) == 25
    reboots = 0
    for msgs in per_node.values():
        for a, b in itertools.pairwise(msgs):
            if b["boot_id"] == a["boot_id"]:
                assert b["seq"] == a["seq"] + 1
                assert tick_of[id(b)] == tick_of[id(a)] + 1
            else:
                reboots += 1
                assert b["seq"] == 0
                assert tick_of[id(b)] > tick_of[id(a)] + 1  # the node was down: ticks missing
                old = {s["slice_id"] for s in a["slices"]}
                assert not old & {s["slice_id"] for s in b["slices"]}
                assert not {p["pid"] for p in a["processes"]} & {p["pid"] for p in b["processes"]}
        # a slice_id lives in one unbroken run of its node's messages and never comes back
        where: dict[str, list[int]] = defaultdict(list)
        for i, m in enumerate(msgs):
            for s in m["slices"]:
                where[s["slice_id"]].append(i)
        for idx in where.values():
            assert idx == list(range(idx[0], idx[0] + len(idx)))
    assert reboots >= 3
    lifetimes = {s["slice_id"] for tick in ten_days for m in tick for s in m["slices"]}
    per_tick = max(sum(len(m["slices"]) for m in tick) for tick in ten_days)
    assert len(lifetimes) > 2 * per_tick
    jobs = {
        s["workload"]["job_id"]
        for tick in ten_days
        for m in tick
        for s in m["slices"]
        if s["workload"]["job_id"]
    }
    assert len(jobs) > 50
