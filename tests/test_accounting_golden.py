"""Golden accounting scenario (tests/scenario.py), every number worked out by hand.

Capacity: node-a 2 A100 x 120 min = 4 GPU-h (2 in hour 23 of the 15th at $2.00, 2 in hour 00
of the 16th at $2.40: the 00:00 tick covers 23:59-00:00 and belongs to the 15th); node-b 2 H100
x 110 min (10 ticks missing) = 11/3 GPU-h at $3.60. Capacity cost = 4.00 + 4.80 + 13.20 = 22.00.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import scenario

from warehouse.accounting import Accounting
from warehouse.chargeback import ChargePolicy, compute_charges
from warehouse.close import CloseSettings, close_month, read_ledger
from warehouse.errors import CloseError, PriceError
from warehouse.lake import Lake
from warehouse.pricing import PriceBook
from warehouse.rules import UNHEALTHY_REASON_SQL
from warehouse.staging import samples_sql

A100, H100 = scenario.A100, scenario.H100
OCT_CLOSED = datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)
NOV_CLOSED = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    scenario.write(Lake(root), scenario.messages())
    return root


@pytest.fixture(scope="module")
def acct(lake_root: Path):
    a = Accounting(lake_root, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    a.update()
    yield a
    a.close()


def lines_of(charges) -> list[tuple[str, str, str, str, str, str]]:
    return [
        (ln.line_type, ln.tenant, ln.cluster, ln.gpu_model, ln.price_from.isoformat(), f"{ln.cost:.2f}")
        for ln in charges.lines
    ]


def by_tenant(charges) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for ln in charges.lines:
        out[ln.tenant] = out.get(ln.tenant, Decimal(0)) + ln.cost
    return out


OLD, NEW, H = "2026-01-01", "2026-10-16", "2026-01-01"


def test_reserved_mode_platform_policy(acct: Accounting) -> None:
    c = compute_charges(acct, "2026-10", ChargePolicy(mode="reserved", idle_policy="platform"))
    assert lines_of(c) == [
        # alice-lab: time-slice 1/4 x 110 min = 27.5 min = 0.458333 GPU-h x 3.60
        ("usage", "alice-lab", "west", H100, H, "1.65"),
        # hpc-chem: HAMi 0.5 / 1.25 = 0.4 x 110 min = 44 min x 3.60/h
        ("usage", "hpc-chem", "west", H100, H, "2.64"),
        # nlp: HAMi 0.75 / 1.25 = 0.6 x 110 min = 1.1 h -> 3.96, plus a 1/4 replica 1.65
        ("usage", "nlp", "west", H100, H, "5.61"),
        # research: whole A100, 1 h at 2.00 and 1 h at 2.40
        ("usage", "research", "east", A100, OLD, "2.00"),
        ("usage", "research", "east", A100, NEW, "2.40"),
        # vision: MIG 3g share 0.5 x 1 h at each price, plus a 1/4 replica of B1
        ("usage", "vision", "east", A100, OLD, "1.00"),
        ("usage", "vision", "east", A100, NEW, "1.20"),
        ("usage", "vision", "west", H100, H, "1.65"),
        # the rest of the MIG GPU; the fourth, unheld replica of B1
        ("unallocated", "__unallocated__", "east", A100, OLD, "1.00"),
        ("unallocated", "__unallocated__", "east", A100, NEW, "1.20"),
        ("unallocated", "__unallocated__", "west", H100, H, "1.65"),
    ]
    assert c.total == Decimal("22.00") == c.expected_total
    assert [ln.line_no for ln in c.lines] == list(range(1, 12))
    first = c.lines[0]
    assert first.gpu_hours.quantize(Decimal("1e-20")) == (Decimal("27.5") / 60).quantize(Decimal("1e-20"))
    assert first.unit_price == Decimal("3.60")
    assert first.charge_start == datetime(2026, 10, 1, tzinfo=UTC)
    assert first.charge_end == datetime(2026, 11, 1, tzinfo=UTC)
    vision_new = c.lines[6]
    assert vision_new.charge_start == datetime(2026, 10, 16, tzinfo=UTC)
    assert vision_new.reserved_gpu_hours == Decimal("0.5")
    assert c.capacity_gpu_h.quantize(Decimal("1e-20")) == (4 + Decimal(11) / 3).quantize(Decimal("1e-20"))


def test_used_mode_bills_busy_time_and_the_platform_keeps_the_rest(acct: Accounting) -> None:
    c = compute_charges(acct, "2026-10", ChargePolicy(mode="used"))
    assert lines_of(c) == [
        ("usage", "alice-lab", "west", H100, H, "2.64"),  # 0.4 x 110 min = 44 min
        ("usage", "hpc-chem", "west", H100, H, "1.32"),  # 0.2 x 110 min = 22 min
        ("usage", "nlp", "west", H100, H, "2.64"),  # (0.3 + 0.1) x 110 min
        ("usage", "research", "east", A100, OLD, "0.50"),  # 50 % for 30 min of hour 23
        ("usage", "research", "east", A100, NEW, "0.60"),  # 50 % for 30 min of hour 00
        ("usage", "vision", "east", A100, OLD, "0.60"),  # MIG 70 % x 3/7 = 0.3 GPU x 1 h
        ("usage", "vision", "east", A100, NEW, "0.72"),
        ("usage", "vision", "west", H100, H, "0.66"),  # 0.1 x 110 min
        ("unallocated", "__unallocated__", "east", A100, OLD, "2.90"),  # 4.00 - 1.10
        ("unallocated", "__unallocated__", "east", A100, NEW, "3.48"),  # 4.80 - 1.32
        ("unallocated", "__unallocated__", "west", H100, H, "5.94"),  # 13.20 - 7.26
    ]
    assert c.total == Decimal("22.00")


def test_hybrid_bills_burst_into_free_capacity(acct: Accounting) -> None:
    c = compute_charges(acct, "2026-10", ChargePolicy(mode="hybrid"))
    t = by_tenant(c)
    # alice-lab bursts to 0.4 on a GPU with a free replica (0.25 free): pays 0.4 x 110 min.
    assert t["alice-lab"] == Decimal("2.64")
    # nobody else uses more than they hold: hybrid = reserved
    assert t["nlp"] == Decimal("5.61") and t["hpc-chem"] == Decimal("2.64")
    assert t["vision"] == Decimal("3.85") and t["research"] == Decimal("4.40")
    # B1's free quarter is 0.25 x 110 min = 1.65, of which alice's burst took 0.15 x 110 min = 0.99
    assert t["__unallocated__"] == Decimal("2.20") + Decimal("0.66")
    assert c.total == Decimal("22.00")


def test_even_idle_policy_with_energy_and_largest_remainder_per_subtotal(acct: Accounting) -> None:
    c = compute_charges(acct, "2026-10", ChargePolicy(idle_policy="even", kwh_price=Decimal("0.20")))
    idle = [(ln.tenant, ln.gpu_model, f"{ln.cost:.2f}") for ln in c.lines if ln.line_type == "idle_share"]
    energy = [
        (ln.tenant, ln.gpu_model, ln.kwh.quantize(Decimal("1e-9")), f"{ln.cost:.2f}")
        for ln in c.lines
        if ln.line_type == "energy"
    ]
    # A100: 1.00 and 1.20 unallocated, split evenly over vision and research. H100: 1.65 over
    # the four tenants on B0/B1 = 0.4125 each (fraction .25 of a cent each): the H100 subtotal is
    # 13.20 exactly, so one of the four gets the missing cent; equal fractions go by line order
    # (tenant name): alice-lab.
    assert idle == [
        ("alice-lab", H100, "0.42"),
        ("hpc-chem", H100, "0.41"),
        ("nlp", H100, "0.41"),
        ("research", A100, "0.50"),
        ("research", A100, "0.60"),
        ("vision", A100, "0.50"),
        ("vision", A100, "0.60"),
        ("vision", H100, "0.41"),
    ]
    # Energy: 18 kJ per GPU tick = 0.3 kWh per GPU-hour ($0.06). A0 and A1 go whole to their one
    # tenant; B0 (0.55 kWh) by used share 0.3:0.2; B1 (0.55 kWh) by 0.4:0.1:0.1. Exact cents:
    # alice 7.333, hpc 4.4, nlp 6.6 + 1.8333 = 8.4333, vision 1.8333: 22 cents of H100 energy,
    # rounded within that subtotal: floors 20, the two missing cents go to the largest fractions,
    # vision .833 and nlp .433 (hpc's .4 loses).
    q = Decimal("1e-9")
    assert energy == [
        ("alice-lab", H100, (Decimal("0.55") * 4 / 6).quantize(q), "0.07"),
        ("hpc-chem", H100, Decimal("0.22").quantize(q), "0.04"),
        ("nlp", H100, (Decimal("0.33") + Decimal("0.55") / 6).quantize(q), "0.09"),
        ("research", A100, Decimal("0.3").quantize(q), "0.06"),
        ("research", A100, Decimal("0.3").quantize(q), "0.06"),
        ("vision", A100, Decimal("0.3").quantize(q), "0.06"),
        ("vision", A100, Decimal("0.3").quantize(q), "0.06"),
        ("vision", H100, (Decimal("0.55") / 6).quantize(q), "0.02"),
    ]
    # 22.00 of GPU time + 2.3 kWh x 0.20 = 22.46, to the cent
    assert c.total == Decimal("22.46")
    assert abs(sum(ln.cost_exact for ln in c.lines) - c.expected_total) < Decimal("1e-20")


def test_weighted_policy_spreads_by_reserved_within_cluster_and_model(acct: Accounting) -> None:
    c = compute_charges(acct, "2026-10", ChargePolicy(idle_policy="weighted"))
    shares = {(ln.tenant, ln.gpu_model, ln.price_from): ln for ln in c.lines if ln.line_type == "idle_share"}
    old = date(2026, 1, 1)
    # 1.00 of A100 (old price) over vision (0.5 GPU-h reserved) and research (1 GPU-h): 1/3, 2/3
    assert abs(shares[("vision", A100, old)].cost_exact - Decimal(1) / 3) < Decimal("1e-20")
    assert abs(shares[("research", A100, old)].cost_exact - Decimal(2) / 3) < Decimal("1e-20")
    assert shares[("vision", A100, old)].cost + shares[("research", A100, old)].cost == Decimal("1.00")
    # 1.65 of H100 by reserved: nlp 1.1 + 0.458333, hpc-chem 0.733333, alice 0.458333, vision 0.458333
    h = [ln for (t, m, _), ln in shares.items() if m == H100]
    assert sum(ln.cost_exact for ln in h) == Decimal("1.65")
    nlp = shares[("nlp", H100, old)].cost_exact
    # nlp holds (66 + 27.5) of the (66 + 44 + 3 x 27.5) reserved minutes = 17/35
    assert abs(nlp - Decimal("1.65") * 17 / 35) < Decimal("1e-12")
    assert not [ln for ln in c.lines if ln.line_type == "unallocated"]
    assert c.total == Decimal("22.00")


def test_a_model_without_a_price_is_an_error_naming_model_and_date(lake_root: Path) -> None:
    book = [e for e in scenario.BOOK if e["model"] != H100]
    a = Accounting(lake_root, tenant_rules=scenario.RULES, price_book=PriceBook(book))
    with pytest.raises(PriceError, match=r"no price for GPU model 'NVIDIA H100 80GB HBM3' on 2026-10-15"):
        compute_charges(a, "2026-10")
    # a price that starts after the data began is missing for the earlier dates too
    late = [*book, {"model": H100, "gpu_hour": "3.60", "from": "2026-10-16"}]
    a = Accounting(lake_root, tenant_rules=scenario.RULES, price_book=PriceBook(late))
    with pytest.raises(PriceError, match="on 2026-10-15"):
        compute_charges(a, "2026-10")


def test_idle_period_crosses_midnight_and_the_price_change(acct: Accounting) -> None:
    periods = acct.idle_periods()
    assert len(periods) == 1
    p = periods[0]
    assert (p["tenant"], p["workload"], p["node"], p["gpu_uuid"], p["kind"]) == (
        "research",
        "lab/sweep-0",
        "node-a",
        scenario.A1,
        "whole",
    )
    assert p["start"] == datetime(2026, 10, 15, 23, 30, tzinfo=UTC)
    assert p["end"] == datetime(2026, 10, 16, 0, 30, tzinfo=UTC)
    assert p["minutes"] == 60.0 and p["gpu_hours"] == 1.0
    assert p["cost"] == Decimal("2.20")  # 0.5 h at 2.00 + 0.5 h at 2.40
    # Within the 16th only the second half counts.
    (p16,) = acct.idle_periods(start=date(2026, 10, 16))
    assert p16["gpu_hours"] == 0.5 and p16["cost"] == Decimal("1.20")
    # 61 minutes of idleness are needed once the minimum is raised past 60
    strict = Accounting(
        acct.lake, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK), idle_min_minutes=61
    )
    assert strict.idle_periods() == []


def test_measures_by_tenant_and_fleet(acct: Accounting) -> None:
    t = {r["tenant"]: r for r in acct.measures(["tenant"], grain=None)}
    assert t["research"]["reserved_gpu_h"] == 2.0
    assert t["research"]["used_gpu_h"] == 0.5
    assert t["research"]["idle_gpu_h"] == 1.0
    assert t["research"]["efficiency"] == 0.25
    assert t["alice-lab"]["burst_gpu_h"] == pytest.approx(0.15 * 110 / 60)
    assert t["alice-lab"]["efficiency"] == pytest.approx(1.6)
    (fleet,) = acct.measures([], grain=None)
    assert fleet["capacity_gpu_h"] == pytest.approx(4 + 11 / 3)
    assert fleet["unallocated_gpu_h"] == pytest.approx(1.0 + 0.25 * 110 / 60)
    assert fleet["reserved_gpu_h"] + fleet["unallocated_gpu_h"] == pytest.approx(fleet["capacity_gpu_h"])
    days = acct.measures(["cluster"], grain="day")
    assert [(r["period"].date(), r["cluster"], round(r["capacity_gpu_h"], 9)) for r in days] == [
        (date(2026, 10, 15), "east", 2.0),  # 23:01 .. 00:00 (the 00:00 tick ends the 15th)
        (date(2026, 10, 15), "west", 2.0),
        (date(2026, 10, 16), "east", 2.0),
        (date(2026, 10, 16), "west", round(50 * 2 / 60, 9)),  # ten ticks missing
    ]


def test_coverage_reports_the_gap_as_unobserved(acct: Accounting) -> None:
    rows = acct.coverage(datetime(2026, 10, 15, tzinfo=UTC), datetime(2026, 10, 16, 1, tzinfo=UTC))
    got = {
        (r["node"], r["day"]): (round(r["observed_gpu_h"], 9), round(r["unobserved_gpu_h"], 9)) for r in rows
    }
    assert got == {
        ("node-a", date(2026, 10, 15)): (round(59 * 2 / 60, 9), 0.0),
        ("node-b", date(2026, 10, 15)): (round(59 * 2 / 60, 9), 0.0),
        ("node-a", date(2026, 10, 16)): (round(61 * 2 / 60, 9), 0.0),
        ("node-b", date(2026, 10, 16)): (round(51 * 2 / 60, 9), round(10 * 2 / 60, 9)),
    }


def settings(**kw) -> CloseSettings:
    base = {
        "tenant_rules": tuple(scenario.RULES),
        "default_tenant": "unassigned",
        "currency": "USD",
        "book": tuple(PriceBook(scenario.BOOK).as_config()),
        "kwh": "",
        "mode": "reserved",
        "idle_policy": "platform",
        "idle_util_ratio": 0.05,
        "idle_min_minutes": 30.0,
    }
    return CloseSettings(**{**base, **kw})


def test_close_is_byte_identical_and_late_data_becomes_corrections(tmp_path: Path, lake_root: Path) -> None:
    root = tmp_path / "lake"
    shutil.copytree(lake_root, root, ignore=shutil.ignore_patterns("rollups", "ledger"))
    with pytest.raises(CloseError, match="not over yet"):
        close_month(root, "2026-10", settings(), now=datetime(2026, 10, 31, 23, tzinfo=UTC))
    first = close_month(root, "2026-10", settings(), now=OCT_CLOSED)
    charges = (first.path / "charges.parquet").read_bytes()
    manifest = (first.path / "manifest.json").read_bytes()
    assert first.manifest["totals"]["cost"] == "22.00"
    assert first.manifest["lines"] == 11
    # again: same bytes, reported as unchanged
    again = close_month(root, "2026-10", settings(), now=OCT_CLOSED)
    assert again.unchanged
    # from scratch (ledger and rollups removed): the same bytes
    shutil.rmtree(root / "ledger")
    shutil.rmtree(root / "rollups")
    redo = close_month(root, "2026-10", settings(), now=OCT_CLOSED)
    assert not redo.unchanged
    assert (redo.path / "charges.parquet").read_bytes() == charges
    assert (redo.path / "manifest.json").read_bytes() == manifest

    # node-b's ten missing minutes arrive after the close
    scenario.write(Lake(root), scenario.messages(late=True))
    with pytest.raises(CloseError, match="already closed"):
        close_month(root, "2026-10", settings(), now=NOV_CLOSED)
    nov = close_month(root, "2026-11", settings(), now=NOV_CLOSED)
    got = sorted(
        (ln.line_type, ln.tenant, ln.corrects_period, ln.corrects_line_type, f"{ln.cost:.2f}")
        for ln in nov.lines
    )
    # 10 more minutes of 2 H100 = 1/3 GPU-h x 3.60 = 1.20: nlp 0.6 x 10 min + 0.25 x 10 min,
    # hpc-chem 0.4 x 10 min, alice and vision 0.25 x 10 min, the free replica 0.25 x 10 min
    assert got == [
        ("correction", "__unallocated__", "2026-10", "unallocated", "0.15"),
        ("correction", "alice-lab", "2026-10", "usage", "0.15"),
        ("correction", "hpc-chem", "2026-10", "usage", "0.24"),
        ("correction", "nlp", "2026-10", "usage", "0.51"),
        ("correction", "vision", "2026-10", "usage", "0.15"),
    ]
    assert nov.manifest["totals"]["cost"] == "1.20"
    assert nov.manifest["corrects"] == ["2026-10"]
    # the closed month is untouched
    assert (redo.path / "charges.parquet").read_bytes() == charges
    oct_lines, _ = read_ledger(root, "2026-10")
    assert sum(ln.cost for ln in oct_lines) == Decimal("22.00")
    # closing November again changes nothing; December has nothing left to correct
    assert close_month(root, "2026-11", settings(), now=NOV_CLOSED).unchanged
    dec = close_month(root, "2026-12", settings(), now=datetime(2027, 1, 1, 1, tzinfo=UTC))
    assert dec.lines == [] and dec.manifest["totals"]["cost"] == "0.00"


def test_cents_follow_the_independent_total_on_a_half_cent() -> None:
    """Lines whose own sum passes a half cent in the 40th digit still round to the independent
    total (2.925 -> 2.92 half-even), not to their own sum (found by the property test)."""
    from dataclasses import replace as _replace

    from warehouse.chargeback import _round_cents, check_conservation

    c = _line()
    third = Decimal("2.925") / 3
    lines = [
        _replace(c, cost_exact=third),
        _replace(c, cost_exact=third),
        _replace(c, cost_exact=Decimal("2.925") - 2 * third + Decimal("1e-40")),
    ]
    rounded = _round_cents(lines)
    assert sum(ln.cost for ln in rounded) == Decimal("2.92")
    check_conservation("2026-10", rounded, Decimal("2.925"))


def _line():
    from warehouse.ledger_model import ChargeLine

    t = datetime(2026, 10, 1, tzinfo=UTC)
    return ChargeLine(
        "2026-10",
        0,
        "usage",
        "x",
        "c",
        "m",
        t,
        t,
        date(2026, 1, 1),
        Decimal(0),
        Decimal(1),
        None,
        "USD",
        Decimal(0),
        Decimal(0),
        "reserved",
        "platform",
    )


def test_saved_idle_periods_read_the_same_and_follow_their_inputs(tmp_path: Path, lake_root: Path) -> None:
    root = tmp_path / "lake"
    shutil.copytree(lake_root, root)
    a = Accounting(root, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    a.update()
    computed = (a.idle_periods(), a.measures(by=["tenant"], grain="day"))
    assert a.idle_source == "computed"
    path = a.save_idle()
    assert path.exists() and path.parent.name == "_derived"
    a.close()

    b = Accounting(root, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    assert (b.idle_periods(), b.measures(by=["tenant"], grain="day")) == computed
    assert b.idle_source == "saved" and b.idle_path() == path
    b.close()

    # other tenant rules or idle settings: not the saved periods
    c = Accounting(root, price_book=PriceBook(scenario.BOOK))
    d = Accounting(
        root, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK), idle_min_minutes=61
    )
    assert c.idle_path() != path and d.idle_path() != path
    assert d.idle_periods() == [] and d.idle_source == "computed"
    c.close()
    d.close()

    # new samples change the idle-run rollups: a new key, computed again; older files pruned
    late = Accounting(root, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    scenario.write(Lake(root), scenario.messages(late=True))
    assert late.update().rebuilt > 0
    assert late.idle_path() != path
    late.idle_periods()
    assert late.idle_source == "computed"
    newer = late.save_idle(keep=1)
    assert sorted(p.name for p in (root / "rollups" / "_derived").iterdir()) == [newer.name]
    late.close()


# -- month-boundary reproductions (each a few ticks, no Kafka) ------------------------------------

H0 = datetime(2026, 10, 20, 23, 0, tzinfo=UTC)  # the last hour of a date: its 00:00 tick is the next date's
G = "GPU-c0000000-0000-4000-8000-000000000000"
BOOT_A, BOOT_B = scenario.BOOT_A, scenario.BOOT_B
PRICE4 = [{"model": H100, "gpu_hour": "4.00", "from": "2026-01-01"}]


def _tick(
    k: int,
    boot: str,
    slices: list[dict],
    *,
    seq: int | None = None,
    start: datetime = H0,
    gpu: str = G,
    model: str = H100,
) -> dict:
    """Tick k of one node with one GPU: ts = start + k minutes (Δ = 60 s)."""
    ts = start + timedelta(minutes=k)
    return scenario.one_gpu_tick(ts, boot, k if seq is None else seq, slices, gpu=gpu, model=model)


def _ts_slice(util: float, gpu: str = G) -> dict:
    """A 1/4 time-sliced replica held by namespace ml."""
    ml = {"namespace": "ml", "pod": "p1", "container": "main", "pod_uid": "p1"}
    return scenario.quarter_replica(gpu, util, f"{gpu}:ts:p1", ml)


def _mig_2g(util: float) -> dict:
    return {
        "slice_id": f"{G}:mig:1:0",
        "gpu_uuid": G,
        "kind": "mig",
        "mem_cap_mib": 19968,
        "util_pct": util,
        "mig_profile": "2g.20gb",
        "gi_id": 1,
        "ci_id": 0,
        "mig_uuid": "MIG-c0-1",
        "compute_slices": 2,
        "memory_slices": 2,
        "gpu_compute_slices": 7,
        "gpu_memory_slices": 8,
        "workload": {"namespace": "ml", "pod": "p1", "container": "main", "pod_uid": "p1"},
    }


def _acct(tmp_path: Path, msgs: list[dict], book: list[dict] = PRICE4, **kw) -> Accounting:
    root = tmp_path / "lake"
    # one ingest batch per boot: each agent's ticks as it would send them
    for boot in sorted({m["boot_id"] for m in msgs}):
        scenario.write(Lake(root), [m for m in msgs if m["boot_id"] == boot])
    a = Accounting(root, tenant_rules=[{"tenant": "ml", "namespace": "ml"}], price_book=PriceBook(book), **kw)
    a.update()
    return a


def _ml_settings():  # -> CloseSettings
    """Namespace ml is tenant ml, H100 at $4, reserved mode, platform idle policy."""
    from warehouse.close import CloseSettings

    return CloseSettings(
        tenant_rules=({"tenant": "ml", "namespace": "ml"},),
        default_tenant="unassigned",
        currency="USD",
        book=tuple(PriceBook(PRICE4).as_config()),
        kwh="",
        mode="reserved",
        idle_policy="platform",
        idle_util_ratio=0.05,
        idle_min_minutes=30.0,
    )


def _usage_hours(c) -> dict[str, Decimal]:
    return {ln.tenant: ln.gpu_hours for ln in c.lines if ln.line_type == "usage"}


def test_hybrid_sums_a_slice_hour_across_agent_restarts(tmp_path: Path) -> None:
    """A 1/4 replica at 40 % for 30 min under boot B1, then 10 % for 30 min under B2: reserved =
    used = 0.25 GPU-h, so hybrid bills 0.25 (0.325 when each boot's piece burst on its own)."""
    msgs = [_tick(k, BOOT_A, [_ts_slice(40.0)]) for k in range(1, 31)]
    msgs += [_tick(k, BOOT_B, [_ts_slice(10.0)], seq=k - 30) for k in range(31, 61)]
    a = _acct(tmp_path, msgs)
    try:
        for mode in ("reserved", "used", "hybrid"):
            c = compute_charges(a, "2026-10", ChargePolicy(mode=mode))
            assert _usage_hours(c) == {"ml": Decimal("0.25")}, mode
            assert [f"{ln.cost:.2f}" for ln in c.lines] == ["1.00", "3.00"]  # ml, unallocated at $4
    finally:
        a.close()


def test_hybrid_sums_a_slice_hour_across_date_partitions(tmp_path: Path) -> None:
    """10 % all of hour 23 and 70 % on the 00:00:00 tick only (stored under the next date): the
    hour uses 0.11 GPU-h of its 0.25 reserved, so hybrid bills 0.25 (0.2575 before)."""
    msgs = [_tick(k, BOOT_A, [_ts_slice(70.0 if k == 60 else 10.0)]) for k in range(1, 61)]
    a = _acct(tmp_path, msgs)
    try:
        assert sorted(p.name for p in (a.lake.root / "rollups" / "slice_hourly").iterdir()) == [
            "date=2026-10-20",
            "date=2026-10-21",
        ]
        used = compute_charges(a, "2026-10", ChargePolicy(mode="used"))
        assert _usage_hours(used)["ml"] == Decimal("0.11")  # (59 x 0.1 + 0.7) x 60 s
        hybrid = compute_charges(a, "2026-10", ChargePolicy(mode="hybrid"))
        assert _usage_hours(hybrid) == {"ml": Decimal("0.25")}
        assert hybrid.total == Decimal("4.00")
    finally:
        a.close()


def test_idle_period_ends_at_a_silence_even_when_seq_does_not_skip(tmp_path: Path) -> None:
    """10 idle ticks, 5 hours of silence (the agent stalled: seq goes on), 20 idle ticks: two runs
    of 10 and 20 minutes, neither 30 minutes long: no idle period and no idle GPU-hours (before:
    one 330-minute period of 0.125 GPU-h). A gap is unobserved, never idle."""
    msgs = [_tick(k, BOOT_A, [_ts_slice(0.0)]) for k in range(1, 11)]
    msgs += [_tick(k, BOOT_A, [_ts_slice(0.0)], seq=k - 300) for k in range(311, 331)]
    a = _acct(tmp_path, msgs)
    try:
        assert a.idle_periods() == []
        assert a.measures(["tenant"], grain=None)[0]["idle_gpu_h"] == 0
        runs = a.sql("SELECT first_seq, last_seq, ticks FROM r_idle_runs ORDER BY first_seq").fetchall()
        assert runs == [(1, 10, 10), (11, 30, 20)]  # seq 10 -> 11 across five silent hours
        # the silence is unobserved GPU time: 5 hours of the node's one GPU
        cov = a.coverage(datetime(2026, 10, 20, 23, 0, tzinfo=UTC), datetime(2026, 10, 21, 4, 30, tzinfo=UTC))
        assert sum(r["unobserved_gpu_h"] for r in cov) == pytest.approx(5.0)
    finally:
        a.close()


def test_idle_period_still_spans_hours_and_dates_without_a_gap(tmp_path: Path) -> None:
    """The same slice idle for 40 minutes across midnight (two dates, two hours): one period."""
    msgs = [_tick(k, BOOT_A, [_ts_slice(0.0)]) for k in range(41, 81)]
    a = _acct(tmp_path, msgs)
    try:
        (p,) = a.idle_periods()
        assert p["minutes"] == 40 and p["gpu_hours"] == pytest.approx(40 / 60 / 4)
        assert p["cost"] == Decimal("0.67")  # 1/6 GPU-h x $4
    finally:
        a.close()


@pytest.mark.parametrize(
    ("slice_", "idle"),
    [
        (_mig_2g(5.0), False),  # used 0.05 x 2/7 = exactly 0.05 of its 2/7 share: not idle
        (_mig_2g(4.99), True),
        (_ts_slice(1.25), False),  # 0.0125 of a 1/4 replica: exactly 0.05
        (_ts_slice(1.2499), True),
    ],
    ids=["mig-2g-5.0", "mig-2g-4.99", "timeslice-1.25", "timeslice-1.2499"],
)
def test_a_ratio_of_exactly_the_threshold_is_not_idle(tmp_path: Path, slice_: dict, idle: bool) -> None:
    msgs = [_tick(k, BOOT_A, [slice_]) for k in range(1, 41)]
    a = _acct(tmp_path, msgs)
    try:
        ((ticks,),) = a.sql("SELECT sum(idle_ticks) FROM slice_hourly").fetchall()
        assert ticks == (40 if idle else 0)
        assert len(a.idle_periods()) == (1 if idle else 0)
    finally:
        a.close()


def test_cents_add_up_per_model_not_only_per_month() -> None:
    """Two models whose fractions would pool: H100 exact 0.012 and A100 0.008. Pooled largest
    remainder gives both cents to H100 (0.02 / 0.00); per subtotal each model is right (0.01 each)."""
    from dataclasses import replace as _replace

    from warehouse.chargeback import _round_cents, check_conservation

    c = _line()
    lines = [
        _replace(c, tenant="a", gpu_model=H100, cost_exact=Decimal("0.006")),
        _replace(c, tenant="b", gpu_model=H100, cost_exact=Decimal("0.006")),
        _replace(c, tenant="a", gpu_model=A100, cost_exact=Decimal("0.004")),
        _replace(c, tenant="b", gpu_model=A100, cost_exact=Decimal("0.004")),
    ]
    out = _round_cents(lines)
    by_model: dict[str, Decimal] = {}
    for ln in out:
        by_model[ln.gpu_model] = by_model.get(ln.gpu_model, Decimal(0)) + ln.cost
    assert by_model == {H100: Decimal("0.01"), A100: Decimal("0.01")}
    check_conservation("2026-10", out, Decimal("0.02"))


def test_exact_ties_follow_line_order_not_division_noise() -> None:
    """Two tenants with the same exact cost (0.005 each, one cent to hand out): the cent goes to
    the first in line order (tenant name), also when 60-digit division left noise in the 50th
    digit that favours the other."""
    from dataclasses import replace as _replace

    from warehouse.chargeback import _round_cents

    c = _line()
    noise = Decimal("1e-50")
    lines = [
        _replace(c, tenant="zeta", cost_exact=Decimal("0.005") + noise),
        _replace(c, tenant="alpha", cost_exact=Decimal("0.005") - noise),
    ]
    out = {ln.tenant: ln.cost for ln in _round_cents(lines)}
    assert out == {"alpha": Decimal("0.01"), "zeta": Decimal("0.00")}


def test_corrections_are_the_cents_difference_of_the_reclosed_month(tmp_path: Path) -> None:
    """Late data for a closed month: each correction bills what the month bills now minus what it
    billed, in cents, so a correction is always a whole number of cents that adds up."""
    from warehouse.close import close_month, read_ledger

    msgs = [_tick(k, BOOT_A, [_ts_slice(10.0)]) for k in range(1, 41)]
    late = [_tick(k, BOOT_A, [_ts_slice(10.0)]) for k in range(41, 48)]
    root = tmp_path / "lake"
    scenario.write(Lake(root), msgs)
    settings = _ml_settings()
    oct_ = close_month(root, "2026-10", settings, now=OCT_CLOSED)
    billed = {ln.tenant: ln.cost for ln in oct_.lines}
    assert billed == {"ml": Decimal("0.67"), "__unallocated__": Decimal("2.00")}  # 40 min: 1/6 + 1/2 GPU-h
    scenario.write(Lake(root), late)
    nov = close_month(root, "2026-11", settings, now=NOV_CLOSED)
    a = settings.accounting(root)
    a.update()
    now = {ln.tenant: ln.cost for ln in compute_charges(a, "2026-10").lines}
    a.close()
    assert now == {"ml": Decimal("0.78"), "__unallocated__": Decimal("2.35")}  # 47 min at $4
    got = {ln.tenant: ln.cost for ln in nov.lines if ln.line_type == "correction"}
    want = {"ml": Decimal("0.11"), "__unallocated__": Decimal("0.35")}
    assert got == {t: now[t] - billed[t] for t in now} == want
    # The exact differences are 0.11666.. and 0.35 (0.46666..): rounded on their own they would
    # bill 0.47, a cent more than the month's bill actually moved.
    lines, _ = read_ledger(root, "2026-11")
    assert sum(ln.cost for ln in lines) == Decimal("0.46") == Decimal(nov.manifest["totals"]["cost"])


def test_a_node_that_stops_sending_retires_after_a_day(tmp_path: Path) -> None:
    """A node's last tick at 23:40 on the 20th: its silence is unobserved for 24 hours, then the
    node is retired (its capacity leaves the fleet) instead of a week of unobserved GPU-hours."""
    msgs = [_tick(k, BOOT_A, [_ts_slice(10.0)]) for k in range(1, 41)]
    a = _acct(tmp_path, msgs)
    try:
        end = datetime(2026, 10, 27, tzinfo=UTC)
        cov = a.coverage(datetime(2026, 10, 20, tzinfo=UTC), end)
        assert sum(r["unobserved_gpu_h"] for r in cov) == pytest.approx(24.0)
        assert {r["day"].isoformat() for r in cov} == {"2026-10-20", "2026-10-21"}
        retired = datetime(2026, 10, 21, 23, 40, tzinfo=UTC)
        assert {r["retired_at"] for r in cov} == {retired}
        assert [(r["node"], r["retired_at"]) for r in a.retired_nodes(end)] == [("n1", retired)]
        # not retired yet while the range ends within the day; a shorter setting retires sooner
        assert a.retired_nodes(datetime(2026, 10, 21, 12, tzinfo=UTC)) == []
    finally:
        a.close()
    b = Accounting(tmp_path / "lake", retire_after_hours=2)
    try:
        cov = b.coverage(datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 10, 27, tzinfo=UTC))
        assert sum(r["unobserved_gpu_h"] for r in cov) == pytest.approx(2.0)
    finally:
        b.close()


def test_a_closed_months_report_shows_the_usage_it_was_billed_from(tmp_path: Path) -> None:
    """Late data for a closed month changes its rollups but not its report: capacity and idle stay
    as closed, beside the ledger; the late data is the next month's correction."""
    from warehouse.close import close_month
    from warehouse.monthly import build_reports

    root = tmp_path / "lake"
    scenario.write(Lake(root), [_tick(k, BOOT_A, [_ts_slice(0.0)]) for k in range(1, 41)])
    settings = _ml_settings()
    close_month(root, "2026-10", settings, now=OCT_CLOSED)
    before = build_reports(root, "2026-10", settings)
    scenario.write(Lake(root), [_tick(k, BOOT_A, [_ts_slice(0.0)]) for k in range(41, 101)])
    after = build_reports(root, "2026-10", settings)
    for b, a in zip(before, after, strict=True):
        assert a.totals == b.totals and a.daily == b.daily and a.top_idle == b.top_idle
    fleet = after[0]
    assert fleet.totals["capacity_gpu_h"] == Decimal("0.666666667")  # as closed: 40 of the 100 minutes
    assert fleet.totals["cost"] == Decimal("2.67") == sum(ln.cost for ln in fleet.lines)
    assert fleet.totals["idle_gpu_h"] == Decimal("0.166666667")  # one 40-minute idle period, 1/4 GPU
    # the open month's accrual is where the rest shows up, once November closes
    nov = close_month(root, "2026-11", settings, now=NOV_CLOSED)
    assert sum(ln.cost for ln in nov.lines if ln.corrects_period == "2026-10") == Decimal("4.00")


def test_a_charge_policy_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="chargeback mode 'cheap': expected one of reserved, used, hybrid"):
        ChargePolicy(mode="cheap")
    with pytest.raises(ValueError, match="idle policy 'nobody'"):
        ChargePolicy(idle_policy="nobody")
    p = ChargePolicy("hybrid", "even", Decimal("0.2"))
    with pytest.raises(AttributeError):
        p.mode = "used"  # type: ignore[misc]  # frozen: one policy object for the whole period


# -- issue 17: unhealthy GPU ticks and the SM-activity basis, worked by hand ----------------------
# One H100 at $4 for one hour (60 ticks of 60 s): capacity $4.00. Namespace ml holds a 1/4 replica,
# 80% busy (kernel running) and 40% SM active. Ticks 1-15 had Xid 79 (fell off the bus): unhealthy.


def _sick_hour() -> list[dict]:
    msgs = []
    for k in range(1, 61):
        replica = _ts_slice(80.0)
        replica["sm_active_pct"] = 40.0
        m = _tick(k, BOOT_A, [replica])
        m["gpus"][0].update(xid_count=1 if k <= 15 else 0, xid_last=79 if k <= 15 else None)
        msgs.append(m)
    return msgs


XID79 = "__unhealthy__/xid 79: GPU fell off the bus"


@pytest.mark.parametrize(
    ("mode", "basis", "bill_unhealthy", "expected"),
    [
        # reserved 15 min = 0.25 h; 15 sick ticks x 15 s = 225 s = 0.0625 h -> $0.25 to the platform
        (
            "reserved",
            "busy",
            False,
            [
                ("usage", "ml", "0.75"),
                ("unallocated", "__unallocated__", "3.00"),
                ("unhealthy", XID79, "0.25"),
            ],
        ),
        ("reserved", "busy", True, [("usage", "ml", "1.00"), ("unallocated", "__unallocated__", "3.00")]),
        # used 0.8 x 60 min = 0.8 h ($3.20), of which 15 x 48 s = 0.2 h ($0.80) on sick ticks
        (
            "used",
            "busy",
            False,
            [
                ("usage", "ml", "2.40"),
                ("unallocated", "__unallocated__", "0.80"),
                ("unhealthy", XID79, "0.80"),
            ],
        ),
        # SM active 0.4 x 60 min = 0.4 h ($1.60), of which 15 x 24 s = 0.1 h ($0.40) on sick ticks
        (
            "used",
            "sm_active",
            False,
            [
                ("usage", "ml", "1.20"),
                ("unallocated", "__unallocated__", "2.40"),
                ("unhealthy", XID79, "0.40"),
            ],
        ),
        # hybrid: max(reserved 900 s, used 2,880 s) per slice-hour; the sick part is the larger of its
        # reserved (225 s) and used (720 s) seconds: $0.80
        (
            "hybrid",
            "busy",
            False,
            [
                ("usage", "ml", "2.40"),
                ("unallocated", "__unallocated__", "0.80"),
                ("unhealthy", XID79, "0.80"),
            ],
        ),
        ("used", "sm_active", True, [("usage", "ml", "1.60"), ("unallocated", "__unallocated__", "2.40")]),
    ],
)
def test_unhealthy_ticks_go_to_the_platform_and_used_basis_picks_what_used_bills(
    tmp_path: Path, mode: str, basis: str, bill_unhealthy: bool, expected: list[tuple[str, str, str]]
) -> None:
    acct = _acct(tmp_path, _sick_hour())
    try:
        policy = ChargePolicy(
            mode=mode, idle_policy="platform", bill_unhealthy=bill_unhealthy, used_basis=basis
        )
        c = compute_charges(acct, H0.strftime("%Y-%m"), policy)
    finally:
        acct.close()
    assert [(ln.line_type, ln.tenant, f"{ln.cost:.2f}") for ln in c.lines] == expected
    assert c.total == Decimal("4.00") == c.expected_total
    usage = next(ln for ln in c.lines if ln.line_type == "usage")
    # the tenant's measured hours stay whole; only the bill leaves the sick ticks out
    assert usage.reserved_gpu_hours == Decimal("0.25")
    assert usage.used_gpu_hours == Decimal("0.8" if basis == "busy" else "0.4")


def test_unhealthy_line_in_focus_names_the_platform_and_the_reason(tmp_path: Path) -> None:
    from warehouse.focus import focus_table

    acct = _acct(tmp_path, _sick_hour())
    try:
        c = compute_charges(acct, H0.strftime("%Y-%m"), ChargePolicy())
    finally:
        acct.close()
    rows = focus_table(c.lines).to_pylist()
    sick = [r for r in rows if r["SubAccountId"] == XID79]
    assert len(sick) == 1
    assert sick[0]["SubAccountName"] == "Unhealthy GPU time (platform)"
    assert sick[0]["ChargeDescription"] == (
        f"{H100} on c GPU-hours on unhealthy GPU ticks (xid 79: GPU fell off the bus), "
        "carried by the platform"
    )
    assert str(sick[0]["BilledCost"]).startswith("0.25")


def test_tenant_measures_show_both_bases_and_unhealthy_hours(tmp_path: Path) -> None:
    acct = _acct(tmp_path, _sick_hour())
    try:
        (m,) = acct.measures(["tenant"], grain=None)
    finally:
        acct.close()
    assert m["tenant"] == "ml"
    assert m["reserved_gpu_h"] == pytest.approx(0.25)
    assert m["used_gpu_h"] == pytest.approx(0.8) and m["efficiency"] == pytest.approx(3.2)
    assert m["used_sm_gpu_h"] == pytest.approx(0.4) and m["efficiency_sm"] == pytest.approx(1.6)
    assert m["unhealthy_gpu_h"] == pytest.approx(0.0625)  # 15 ticks x 15 s


def test_gpu_hours_carry_health_events(tmp_path: Path) -> None:
    acct = _acct(tmp_path, _sick_hour())
    try:
        # an hour can sit in two date partitions (its last tick is stamped at midnight): add them up
        rows = acct.sql(
            "SELECT sum(ticks), sum(unhealthy_ticks), string_agg(DISTINCT unhealthy_reason, '; ') "
            "FROM gpu_hourly GROUP BY hour"
        ).fetchall()
    finally:
        acct.close()
    assert rows == [(60, 15, "xid 79: GPU fell off the bus")]


def test_a_month_with_an_unhealthy_hour_closes_to_the_same_bytes_twice(tmp_path: Path) -> None:
    from dataclasses import replace

    acct = _acct(tmp_path, _sick_hour())
    acct.close()
    root = tmp_path / "lake"
    settings = replace(_ml_settings(), mode="used", used_basis="sm_active")
    first = close_month(root, "2026-10", settings, now=NOV_CLOSED)
    data = (first.path / "charges.parquet").read_bytes()
    again = close_month(root, "2026-10", settings, now=NOV_CLOSED)
    assert (again.path / "charges.parquet").read_bytes() == data
    lines, manifest = read_ledger(root, "2026-10")
    assert manifest["config"]["pricing"]["used_basis"] == "sm_active"
    got = [(ln.line_type, ln.tenant, f"{ln.cost:.2f}") for ln in lines]
    assert got == [
        ("usage", "ml", "1.20"),
        ("unallocated", "__unallocated__", "2.40"),
        ("unhealthy", XID79, "0.40"),
    ]


# -- issue 17: the energy of unhealthy GPU ticks, worked by hand ----------------------------------
# The sick hour with 18,000 J per GPU tick (0.3 kWh in the hour, 0.075 kWh on the 15 Xid-79 ticks)
# at $4/kWh, and a second tenant cv whose 1/4 replica was 10% busy on the sick ticks only.


def _sick_hour_with_energy() -> list[dict]:
    msgs = _sick_hour()
    cv = {"namespace": "cv", "pod": "p2", "container": "main", "pod_uid": "p2"}
    for k, m in enumerate(msgs, start=1):
        m["gpus"][0]["energy_j"] = 18000.0
        m["slices"].append(scenario.quarter_replica(G, 10.0 if k <= 15 else 0.0, f"{G}:ts:p2", cv))
    return msgs


@pytest.mark.parametrize(
    ("bill_unhealthy", "expected"),
    [
        # GPU time (reserved): each tenant 900 s, 225 s of them on sick ticks -> 675 s = $0.75 each,
        # the platform 2 x 225 s = $0.50; nobody reserved half the GPU: $2.00.
        # Energy: the sick ticks' 0.075 kWh ($0.30) is the platform's; the healthy 0.225 kWh ($0.90)
        # goes by healthy used share: ml 45 x 48 s, cv 0 s -> all of it to ml.
        (
            False,
            [
                ("usage", "cv", "0.75", None),
                ("usage", "ml", "0.75", None),
                ("unallocated", "__unallocated__", "2.00", None),
                ("unhealthy", XID79, "0.50", None),
                ("energy", XID79, "0.30", Decimal("0.075")),
                ("energy", "cv", "0.00", Decimal(0)),  # a tenant of the hour keeps its (empty) line
                ("energy", "ml", "0.90", Decimal("0.225")),
            ],
        ),
        # Billed as usual: 0.3 kWh by used share over the hour, ml 2,880 s and cv 15 x 6 = 90 s:
        # ml 0.3 x 2880/2970 kWh = $1.163636..., cv $0.036363...; 120 cents, the last one to cv's
        # larger fraction (0.64 > 0.36).
        (
            True,
            [
                ("usage", "cv", "1.00", None),
                ("usage", "ml", "1.00", None),
                ("unallocated", "__unallocated__", "2.00", None),
                ("energy", "cv", "0.04", Decimal("0.3") * 90 / 2970),
                ("energy", "ml", "1.16", Decimal("0.3") * 2880 / 2970),
            ],
        ),
    ],
)
def test_energy_of_unhealthy_ticks_goes_to_the_platform(
    tmp_path: Path, bill_unhealthy: bool, expected: list[tuple[str, str, str, Decimal | None]]
) -> None:
    root = tmp_path / "lake"
    scenario.write(Lake(root), _sick_hour_with_energy())
    rules = [{"tenant": "ml", "namespace": "ml"}, {"tenant": "cv", "namespace": "cv"}]
    acct = Accounting(root, tenant_rules=rules, price_book=PriceBook(PRICE4))
    try:
        acct.update()
        policy = ChargePolicy(kwh_price=Decimal("4.00"), bill_unhealthy=bill_unhealthy)
        c = compute_charges(acct, H0.strftime("%Y-%m"), policy)
        (energy,) = acct.sql(
            "SELECT sum(energy_j), sum(unhealthy_energy_j) FROM gpu_hourly WHERE hour = ?", [H0]
        ).fetchall()
    finally:
        acct.close()
    assert energy == (1_080_000.0, 270_000.0)
    got = [(ln.line_type, ln.tenant, f"{ln.cost:.2f}") for ln in c.lines]
    assert got == [e[:3] for e in expected]
    for ln, (*_, kwh) in zip(c.lines, expected, strict=True):
        if kwh is not None:
            assert abs(ln.kwh - kwh) < Decimal("1e-9"), (ln.tenant, ln.kwh)
    # money and energy conserve to the cent: $4.00 of GPU time + 0.3 kWh x $4
    assert c.total == Decimal("5.20") and c.expected_total == Decimal("5.20")
    assert sum((ln.kwh for ln in c.lines if ln.kwh is not None), Decimal(0)) == Decimal("0.3")


def test_unhealthy_energy_line_in_focus_names_the_platform_and_the_reason(tmp_path: Path) -> None:
    from warehouse.focus import focus_table

    acct = _acct(tmp_path, _sick_hour_with_energy())
    try:
        c = compute_charges(acct, H0.strftime("%Y-%m"), ChargePolicy(kwh_price=Decimal("4.00")))
    finally:
        acct.close()
    (row,) = [
        r
        for r in focus_table(c.lines).to_pylist()
        if r["SubAccountId"] == XID79 and r["ConsumedUnit"] == "kW-Hours"
    ]
    assert row["SubAccountName"] == "Unhealthy GPU time (platform)"
    assert row["ChargeDescription"] == (
        f"Energy of {H100} on c on unhealthy GPU ticks (xid 79: GPU fell off the bus), "
        "carried by the platform"
    )
    assert str(row["BilledCost"]).startswith("0.30")


# -- issue 17: the monthly report's GPU health section and the platform's readable names ----------


@pytest.mark.parametrize("bill_unhealthy", [False, True])
def test_the_report_says_what_unhealthy_gpus_cost_each_tenant(tmp_path: Path, bill_unhealthy: bool) -> None:
    from dataclasses import replace

    from test_reports import pdf_text, tables

    from warehouse.monthly import build_reports
    from warehouse.report_html import render_html
    from warehouse.report_pdf import render_pdf

    acct = _acct(tmp_path, _sick_hour())
    acct.close()
    settings = replace(_ml_settings(), mode="used", bill_unhealthy=bill_unhealthy)
    fleet, ml = build_reports(tmp_path / "lake", "2026-10", settings)
    assert (fleet.tenant, ml.tenant) == (None, "ml")
    # used mode, busy basis: 15 sick ticks x 48 s = 0.2 GPU-h ($0.80) of ml's 0.0625 reserved GPU-h
    expected = ["ml", "xid 79: GPU fell off the bus", "0.0625", "0.2000", "USD 0.80"]
    expected.append("taken off the bill" if not bill_unhealthy else "billed")
    for report in (fleet, ml):
        page = render_html(report)
        assert "<h2>GPU health</h2>" in page
        assert tables(page)["gpu_health"][1:] == [expected]
    page = render_html(fleet)
    lines = tables(page)["lines"]
    if bill_unhealthy:
        assert [r[2] for r in lines[1:]] == ["ml", "__unallocated__"]
    else:
        # the platform's line by its reason, never the raw key (the CSV and FOCUS keep the key)
        readable = "Platform: unhealthy GPU time (xid 79: GPU fell off the bus)"
        assert [r[2] for r in lines[1:]] == ["ml", "__unallocated__", readable]
        assert readable in [r[0] for r in tables(page)["tenants"][1:]]
        assert "__unhealthy__" not in page
        render_pdf(fleet, tmp_path / "fleet.pdf")
        text = pdf_text(tmp_path / "fleet.pdf")
        assert "GPU health" in text and "__unhealthy__" not in text


def test_a_healthy_month_has_no_gpu_health_section(tmp_path: Path) -> None:
    from warehouse.monthly import build_reports
    from warehouse.report_html import render_html

    acct = _acct(tmp_path, [_tick(k, BOOT_A, [_ts_slice(80.0)]) for k in range(1, 61)])
    acct.close()
    reports = build_reports(tmp_path / "lake", "2026-10", _ml_settings())
    assert [r.health for r in reports] == [[], []]
    assert all("GPU health" not in render_html(r) for r in reports)


def test_one_display_name_for_the_platforms_unhealthy_lines() -> None:
    from dashboards.pages import tenant_label
    from warehouse.ledger_model import tenant_display_name

    assert tenant_display_name(XID79) == "Platform: unhealthy GPU time (xid 79: GPU fell off the bus)"
    assert tenant_label(XID79) == tenant_display_name(XID79)
    assert tenant_display_name("ml") == tenant_label("ml") == "ml"
    assert tenant_label("__unallocated__") == "unallocated capacity"


# -- issue 17: memory health, worked by hand -------------------------------------------------------
# The same H100 hour, ml's 1/4 replica reserved: 15 s per tick. Corrected ECC errors and remapped
# rows on every tick are healthy (the memory was repaired).
ECC = "uncorrectable ECC error since driver load"
PENDING = "memory repair pending, reset needed"


def _memory_sick_hour(sick: str) -> list[dict]:
    """`ecc`: ticks 21-30 carry an uncorrectable ECC error. `mixed`: as well, ticks 1-15 Xid 79 then
    an application's Xid 13 (xid_last 13, xid_critical 79) and ticks 16-20 a row remap pending."""
    msgs = []
    for k in range(1, 61):
        m = _tick(k, BOOT_A, [_ts_slice(80.0)])
        health = {"ecc_corrected": 3 * k, "ecc_uncorrected": 1 if 21 <= k <= 30 else 0}
        health |= {"remapped_rows_correctable": 1, "remapped_rows_uncorrectable": 0}
        health |= {"row_remap_pending": sick == "mixed" and 16 <= k <= 20, "row_remap_failed": False}
        if sick == "mixed" and k <= 15:
            health |= {"xid_count": 2, "xid_last": 13, "xid_critical": 79}
        m["gpus"][0].update(health)
        msgs.append(m)
    return msgs


@pytest.mark.parametrize(
    ("sick", "expected", "reasons"),
    [
        # 10 ECC ticks x 15 s = 150 s = $0.1666..; ml keeps 50 x 15 s = $0.8333..; the cents floor to
        # $3.99 and the one-cent residue goes to the largest remainder (the ECC line's .667): $0.17
        (
            "ecc",
            [
                ("unallocated", "__unallocated__", "3.00"),
                ("unhealthy", f"__unhealthy__/{ECC}", "0.17"),
                ("usage", "ml", "0.83"),
            ],
            {ECC: 10},
        ),
        # 15 + 5 + 10 sick ticks = 450 s = $0.50; one line per slice-hour and its reasons
        (
            "mixed",
            [
                ("unallocated", "__unallocated__", "3.00"),
                ("unhealthy", f"__unhealthy__/{PENDING}; {ECC}; xid 79: GPU fell off the bus", "0.50"),
                ("usage", "ml", "0.50"),
            ],
            {"xid 79: GPU fell off the bus": 15, PENDING: 5, ECC: 10},
        ),
    ],
)
def test_a_month_with_memory_faults_bills_them_to_the_platform_and_conserves(
    tmp_path: Path, sick: str, expected: list[tuple[str, str, str]], reasons: dict[str, int]
) -> None:
    _acct(tmp_path, _memory_sick_hour(sick)).close()
    gpu = samples_sql(Lake(tmp_path / "lake"), "gpu", ["2026-10-20", "2026-10-21"])
    per_tick = duckdb.sql(
        f"SELECT reason, count(*) FROM (SELECT {UNHEALTHY_REASON_SQL} AS reason FROM {gpu}) "
        "WHERE reason IS NOT NULL GROUP BY ALL"
    ).fetchall()
    assert dict(per_tick) == reasons  # the rule, tick by tick: a benign Xid after Xid 79 hides nothing
    root = tmp_path / "lake"
    first = close_month(root, "2026-10", _ml_settings(), now=NOV_CLOSED)
    data = (first.path / "charges.parquet").read_bytes()
    again = close_month(root, "2026-10", _ml_settings(), now=NOV_CLOSED)
    assert (again.path / "charges.parquet").read_bytes() == data
    lines, _ = read_ledger(root, "2026-10")
    assert sorted((ln.line_type, ln.tenant, f"{ln.cost:.2f}") for ln in lines) == expected
    assert sum(ln.cost for ln in lines) == Decimal("4.00")  # conservation: the hour's capacity
    sick_h = sum(ln.gpu_hours for ln in lines if ln.line_type == "unhealthy")
    assert round(sick_h * 3600, 6) == 15 * sum(reasons.values())  # 15 s per sick tick (12 places kept)
