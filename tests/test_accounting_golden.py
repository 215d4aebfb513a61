"""Golden accounting scenario (tests/scenario.py), every number worked out by hand.

Capacity: node-a 2 A100 x 120 min = 4 GPU-h (2 in hour 23 of the 15th at $2.00, 2 in hour 00
of the 16th at $2.40: the 00:00 tick covers 23:59-00:00 and belongs to the 15th); node-b 2 H100
x 110 min (10 ticks missing) = 11/3 GPU-h at $3.60. Capacity cost = 4.00 + 4.80 + 13.20 = 22.00.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import scenario

from warehouse.accounting import Accounting
from warehouse.chargeback import compute_charges
from warehouse.close import CloseSettings, close_month, read_ledger
from warehouse.errors import CloseError, PriceError
from warehouse.lake import Lake
from warehouse.pricing import PriceBook

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
    c = compute_charges(acct, "2026-10", mode="reserved", idle_policy="platform")
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
    c = compute_charges(acct, "2026-10", mode="used")
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
    c = compute_charges(acct, "2026-10", mode="hybrid")
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
    c = compute_charges(acct, "2026-10", idle_policy="even", kwh_price=Decimal("0.20"))
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
    c = compute_charges(acct, "2026-10", idle_policy="weighted")
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
