"""Property tests on random fleets: money is conserved to the cent under every mode and policy.

Each example builds a small random fleet (nodes, GPUs of two models, slices of every kind with
random caps, utilisations and tenants, random gaps), writes it through the ingest decoder into a
lake and closes the books. The expected totals are recomputed here in plain Python from DESIGN
§6, independently of the SQL.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Any

import scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenario import write

from warehouse.accounting import Accounting
from warehouse.chargeback import MODES, POLICIES, ChargePolicy, compute_charges
from warehouse.lake import Lake
from warehouse.pricing import PriceBook

MODELS = {"NVIDIA A100-SXM4-80GB": 81920, "NVIDIA H100 80GB HBM3": 81559}
BOOK = [
    {"model": "NVIDIA A100-SXM4-80GB", "gpu_hour": "1.37", "from": "2026-01-01"},
    {"model": "NVIDIA A100-SXM4-80GB", "gpu_hour": "1.91", "from": "2026-09-15"},
    {"model": "NVIDIA H100 80GB HBM3", "gpu_hour": "3.07", "from": "2026-01-01"},
]
RULES = [
    {"tenant": "t-ns", "namespace": "a"},
    {"tenant": "t-user", "user": "u"},
    {"tenant": "t-acct", "account": "x"},
]
WORKLOADS = [
    {"namespace": "a", "pod": "p"},
    {"user": "u"},
    {"account": "x", "job_id": "1"},
    {"namespace": "zz"},
]
START = datetime(2026, 9, 14, 22, 0, tzinfo=UTC)  # two days across the A100 price change


def price(model: str, day: date) -> Decimal:
    best = None
    for e in BOOK:
        if e["model"] == model and date.fromisoformat(e["from"]) <= day:
            best = Decimal(e["gpu_hour"])
    assert best is not None
    return best


@st.composite
def slice_(draw: Any, gpu: str, mem: int, i: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["whole", "mig", "vgpu", "timeslice"]))
    s: dict[str, Any] = {
        "slice_id": f"{gpu}:{kind}:{i}",
        "gpu_uuid": gpu,
        "kind": kind,
        "util_pct": draw(st.one_of(st.none(), st.floats(0, 100, allow_nan=False))),
        "workload": dict(draw(st.sampled_from(WORKLOADS))),
    }
    if kind == "mig":
        c = draw(st.integers(1, 7))
        s.update(
            mig_profile=f"{c}g.{10 * c}gb",
            gi_id=i,
            ci_id=0,
            mig_uuid=f"MIG-{i}",
            compute_slices=c,
            memory_slices=draw(st.integers(1, 8)),
            gpu_compute_slices=7,
            gpu_memory_slices=8,
            mem_cap_mib=1000,
            mem_used_mib=10,
        )
    elif kind == "vgpu":
        s.update(
            mem_cap_mib=draw(st.integers(1, mem)),
            core_cap_pct=draw(st.sampled_from([0, 10, 25, 50, 100])),
            mem_used_mib=1,
            last_kernel_age_s=1,
        )
    elif kind == "timeslice":
        s["replicas"] = draw(st.integers(1, 6))
    return s


@st.composite
def fleet(draw: Any) -> list[dict[str, Any]]:
    msgs = []
    n_nodes = draw(st.integers(1, 2))
    for n in range(n_nodes):
        gpus = []
        layout = []
        for g in range(draw(st.integers(1, 3))):
            model = draw(st.sampled_from(sorted(MODELS)))
            uuid = f"GPU-{n:04d}{g:04d}-0000-4000-8000-000000000000"
            slices = [draw(slice_(uuid, MODELS[model], j)) for j in range(draw(st.integers(0, 3)))]
            gpus.append((uuid, g, model))
            layout.append(slices)
        interval = draw(st.sampled_from([30.0, 60.0, 3600.0]))
        ticks = draw(st.integers(1, 8))
        step = timedelta(seconds=interval)
        keep = draw(st.lists(st.booleans(), min_size=ticks, max_size=ticks))
        t0 = START + timedelta(hours=draw(st.integers(0, 3)))
        for k in range(ticks):
            if not keep[k] and k:
                continue  # a gap
            msgs.append(
                {
                    "schema": "gpuledger.sample/v1",
                    "cluster": f"c{n % 2}",
                    "node": f"n{n}",
                    "boot_id": f"{n:08d}-0000-4000-8000-000000000000",
                    "seq": k,
                    "ts": (t0 + step * (k + 1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "interval_s": interval,
                    "gpus": [
                        {
                            "uuid": u,
                            "index": i,
                            "model": m,
                            "mem_total_mib": MODELS[m],
                            "mem_used_mib": 0,
                            "util_pct": 0.0,
                            "power_w": 100.0,
                            "energy_j": draw(st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))),
                            "temp_c": 40,
                            "mig_mode": False,
                            "state": "ok",
                        }
                        for u, i, m in gpus
                    ],
                    "slices": [s for sl in layout for s in sl],
                    "processes": [],
                }
            )
    return msgs


def expected_capacity_cost(msgs: list[dict[str, Any]], month: str) -> Decimal:
    """Σ over GPU ticks of Δ x price / 3600 for the month's hours, computed in Python."""
    with localcontext(Context(prec=60)):
        return sum(expected_capacity_cost_by_segment(msgs, month).values(), Decimal(0))


def expected_capacity_cost_by_segment(msgs: list[dict[str, Any]], month: str) -> dict[tuple, Decimal]:
    """Capacity x price per (cluster, model, price from), computed in Python from the messages.

    GPU-seconds x $/GPU-hour are products of short decimals, exact; one division at the end."""
    with localcontext(Context(prec=60)):
        out: dict[tuple, Decimal] = defaultdict(Decimal)
        for m in msgs:
            ts = datetime.fromisoformat(m["ts"].replace("Z", "+00:00"))
            hour = (ts - timedelta(seconds=m["interval_s"] / 2)).replace(minute=0, second=0, microsecond=0)
            if hour.strftime("%Y-%m") != month:
                continue
            for g in m["gpus"]:
                p = PriceBook(BOOK).price_at(g["model"], hour.date())
                out[(m["cluster"], g["model"], p.valid_from)] += Decimal(str(m["interval_s"])) * p.gpu_hour
        return {k: v / 3600 for k, v in out.items()}


def expected_reserved(msgs: list[dict[str, Any]]) -> dict[str, float]:
    """DESIGN §6 share and reserved per tenant, in plain Python floats (GPU-hours)."""
    out: dict[str, float] = defaultdict(float)
    rules = {"namespace": ("a", "t-ns"), "user": ("u", "t-user"), "account": ("x", "t-acct")}
    for m in msgs:
        mem = {g["uuid"]: g["mem_total_mib"] for g in m["gpus"]}
        by_gpu: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for s in m["slices"]:
            k = s["kind"]
            if k == "whole":
                share = 1.0
            elif k == "mig":
                share = max(s["compute_slices"] / 7, s["memory_slices"] / 8)
            elif k == "vgpu":
                share = min(1.0, max(s["mem_cap_mib"] / mem[s["gpu_uuid"]], s["core_cap_pct"] / 100))
            else:
                share = 1 / s["replicas"]
            tenant = "unassigned"
            for key in ("namespace", "user", "account"):  # the order of RULES
                if s["workload"].get(key) == rules[key][0]:
                    tenant = rules[key][1]
                    break
            by_gpu[s["gpu_uuid"]].append((tenant, share))
        for items in by_gpu.values():
            total = sum(sh for _, sh in items)
            for tenant, sh in items:
                out[tenant] += m["interval_s"] * sh / max(1.0, total) / 3600
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet())
def test_conservation_under_every_mode_and_policy(msgs: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write(Lake(tmp), msgs)
        acct = Accounting(tmp, tenant_rules=RULES, price_book=PriceBook(BOOK))
        try:
            acct.update()
            for month in ("2026-09",):
                want = expected_capacity_cost(msgs, month)
                for mode in MODES:
                    for policy in POLICIES:
                        c = compute_charges(
                            acct, month, ChargePolicy(mode=mode, idle_policy=policy, kwh_price=None)
                        )
                        # lines add up to the independently computed capacity cost, to the cent
                        assert abs(c.expected_total - want) < Decimal("1e-20")
                        # every (cluster, model, price segment) subtotal is its own capacity cost
                        # rounded to the cent, and the month is the sum of its subtotals
                        cap_cost = expected_capacity_cost_by_segment(msgs, month)
                        billed: dict[tuple, Decimal] = defaultdict(Decimal)
                        for ln in c.lines:
                            billed[(ln.cluster, ln.gpu_model, ln.price_from)] += ln.cost
                        assert set(billed) == set(cap_cost)
                        with localcontext(Context(prec=60)):
                            for key, exact in cap_cost.items():
                                assert billed[key] == exact.quantize(Decimal("0.01"), ROUND_HALF_EVEN), key
                        assert sum(ln.cost for ln in c.lines) == c.total == sum(billed.values())
                        assert abs(c.total - want) <= Decimal("0.005") * len(cap_cost)
                        # every line within a cent of its exact cost; no negative line
                        for ln in c.lines:
                            assert abs(ln.cost - ln.cost_exact) < Decimal("0.01")
                            assert ln.cost_exact >= 0
                        # tenant sums equal the fleet total
                        per_tenant: dict[str, Decimal] = defaultdict(Decimal)
                        for ln in c.lines:
                            per_tenant[ln.tenant] += ln.cost
                        assert sum(per_tenant.values()) == c.total
                        # reserved never above capacity, per cluster/model/price segment
                        seg: dict[tuple, Decimal] = defaultdict(Decimal)
                        for ln in c.lines:
                            if ln.line_type == "usage":
                                seg[(ln.cluster, ln.gpu_model, ln.price_from)] += ln.reserved_gpu_hours
                                seg[(ln.cluster, ln.gpu_model, ln.price_from, "billed")] += ln.gpu_hours
                        cap = _capacity_by_segment(acct, month)
                        for key, v in seg.items():
                            assert v <= cap[key[:3]] + Decimal("1e-9")
                        if mode == "hybrid":
                            for ln in c.lines:
                                if ln.line_type == "usage":
                                    assert ln.gpu_hours >= ln.reserved_gpu_hours - Decimal("1e-12")
                # reserved per tenant matches DESIGN §6 computed in Python
                got = {r["tenant"]: r["reserved_gpu_h"] for r in acct.measures(["tenant"], grain=None)}
                want_r = {t: v for t, v in expected_reserved(msgs).items() if v > 0}
                assert set(got) >= set(want_r)
                for t, v in want_r.items():
                    assert abs(got[t] - v) < 1e-6
        finally:
            acct.close()


def _capacity_by_segment(acct: Accounting, month: str) -> dict[tuple, Decimal]:
    rows = acct.sql(
        """
        SELECT g.cluster, g.model, p.valid_from, sum(g.capacity_s) FROM gpu_hourly g
        JOIN prices p ON p.model = g.model AND CAST(g.hour AS DATE) >= p.valid_from
                     AND CAST(g.hour AS DATE) < p.valid_to
        WHERE strftime(g.hour, '%Y-%m') = '"""
        + month
        + "' GROUP BY ALL"
    ).fetchall()
    return {(c, m, vf): Decimal(s) / 3600 for c, m, vf, s in rows}


# -- a slice-hour is one slice-hour, however the agent and the lake cut it -------------------------

HOUR = datetime(2026, 10, 20, 23, 0, tzinfo=UTC)  # its 00:00 tick lands in the next date partition
GPU = "GPU-d0000000-0000-4000-8000-000000000000"


def _tick(k: int, boot: str, seq: int, util: float | None, ts: datetime | None = None) -> dict[str, Any]:
    """One node, one H100 time-sliced 4 ways, one replica held by namespace a (tenant t-ns)."""
    replica = scenario.quarter_replica(GPU, util, f"{GPU}:ts:0", {"namespace": "a", "pod": "p"})
    return scenario.one_gpu_tick(ts or HOUR + timedelta(minutes=k), boot, seq, [replica], gpu=GPU, node="n")


def _boot(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-000000000000"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    utils=st.lists(st.sampled_from([0.0, 5.0, 10.0, 25.0, 40.0, 70.0, 100.0]), min_size=60, max_size=60),
    restarts=st.sets(st.integers(min_value=2, max_value=60), max_size=4),
)
def test_hybrid_over_any_split_of_a_slice_hour_equals_hybrid_over_the_hour(
    utils: list[float], restarts: set[int]
) -> None:
    """Agent restarts (a new boot, seq from 1) and the date partition at midnight cut the hour's
    rollup rows; hybrid bills max(reserved, used) of the whole slice-hour all the same."""
    msgs, boot, seq = [], 0, 0
    for k in range(1, 61):
        if k in restarts:
            boot, seq = boot + 1, 0
        seq += 1
        msgs.append(_tick(k, _boot(boot), seq, utils[k - 1]))
    with tempfile.TemporaryDirectory() as tmp:
        for b in sorted({m["boot_id"] for m in msgs}):
            write(Lake(tmp), [m for m in msgs if m["boot_id"] == b])
        acct = Accounting(tmp, tenant_rules=RULES, price_book=PriceBook(BOOK))
        try:
            acct.update()
            c = compute_charges(acct, "2026-10", ChargePolicy(mode="hybrid"))
        finally:
            acct.close()
    with localcontext(Context(prec=60)):
        used = sum((Decimal(str(u)) / 100 * 60 for u in utils), Decimal(0)) / 3600
    want = max(Decimal("0.25"), used)  # bursts never pass the free 0.75 of this GPU-hour
    (line,) = [ln for ln in c.lines if ln.line_type == "usage"]
    assert abs(line.gpu_hours - want) < Decimal("1e-40")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    busy=st.lists(st.booleans(), min_size=90, max_size=90),
    silences=st.dictionaries(st.integers(min_value=2, max_value=90), st.integers(1, 400), max_size=4),
)
def test_no_idle_period_contains_a_gap(busy: list[bool], silences: dict[int, int]) -> None:
    """Random idle and busy ticks with random silences (the agent stalls: seq goes on, time jumps).
    Every idle period is a run of ticks each starting where the previous one ended: its length is
    exactly its ticks, and no silence falls inside it."""
    msgs, ts = [], HOUR
    for k in range(1, 91):
        ts += timedelta(minutes=1 + silences.get(k, 0))
        msgs.append(_tick(k, _boot(0), k, 50.0 if busy[k - 1] else 0.0, ts=ts))
    ends = [datetime.fromisoformat(m["ts"].replace("Z", "+00:00")) for m in msgs]
    with tempfile.TemporaryDirectory() as tmp:
        write(Lake(tmp), msgs)
        acct = Accounting(tmp, tenant_rules=RULES, idle_min_minutes=3)
        try:
            acct.update()
            periods = acct.idle_periods()
        finally:
            acct.close()
    # the periods expected from the ticks themselves: maximal runs of idle ticks without a silence
    want, run = [], []
    for k in range(1, 91):
        idle = not busy[k - 1]
        if idle and run and k not in silences:
            run.append(k)
            continue
        if len(run) >= 3:
            want.append((ends[run[0] - 1] - timedelta(minutes=1), ends[run[-1] - 1]))
        run = [k] if idle else []
    if len(run) >= 3:
        want.append((ends[run[0] - 1] - timedelta(minutes=1), ends[run[-1] - 1]))
    got = sorted((p["start"], p["end"]) for p in periods)
    assert got == sorted(want)
    for p in periods:
        inside = [e for e in ends if p["start"] < e <= p["end"]]
        assert p["minutes"] == len(inside)
