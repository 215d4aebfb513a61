"""Monthly reports rendered from hand-made MonthReports: exact money, escaping, PDF text, files.

The fleet month below is worked out by hand: every total asserted here is the sum of the
lines written out in `LINES`, so a renderer that drops, doubles or rounds a line fails.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pypdf
import pytest

from warehouse.ledger_model import UNALLOCATED_TENANT, ChargeLine, DailyPoint, IdlePeriod, MonthReport
from warehouse.report_content import format_money, format_pct, format_price, format_qty
from warehouse.report_html import render_html
from warehouse.report_pdf import render_pdf
from warehouse.reports import safe_name, write_reports

MONTH = "2026-06"
ML = "ml-research"
VS = "vision & speech"
XSS = "<script>"
START = datetime(2026, 6, 1, tzinfo=UTC)
MID = datetime(2026, 6, 16, tzinfo=UTC)
END = datetime(2026, 7, 1, tzinfo=UTC)


def line(
    no: int,
    tenant: str,
    cluster: str,
    model: str,
    gpu_h: str,
    price: str,
    cost: str,
    line_type: str = "usage",
    start: datetime = START,
    end: datetime = END,
    kwh: str | None = None,
    corrects: str | None = None,
) -> ChargeLine:
    qty = D(kwh) if kwh is not None else D(gpu_h)
    return ChargeLine(
        billing_period=MONTH,
        line_no=no,
        line_type=line_type,
        tenant=tenant,
        cluster=cluster,
        gpu_model=model,
        charge_start=start,
        charge_end=end,
        price_from=start.date(),
        gpu_hours=D(gpu_h),
        unit_price=D(price),
        kwh=None if kwh is None else D(kwh),
        currency="USD",
        cost_exact=qty * D(price),
        cost=D(cost),
        mode="reserved",
        idle_policy="platform",
        corrects_period=corrects,
        reserved_gpu_hours=None if line_type in ("unallocated", "energy") else D(gpu_h),
        used_gpu_hours=None if line_type in ("unallocated", "energy") else D(gpu_h) / 4,
    )


# Reserved mode, platform idle policy. H100 at 2.50/GPU-h on east; A100 on west at 1.20, then
# 1.10 from mid-month. Cost = GPU-hours x price, already to the cent.
LINES = [
    line(1, ML, "east", "H100", "1200.5", "2.50", "3001.25"),  # 1200.5 x 2.50
    line(2, ML, "west", "A100", "800", "1.20", "960.00"),
    line(3, VS, "east", "H100", "300.2", "2.50", "750.50"),
    line(4, XSS, "west", "A100", "100", "1.20", "120.00"),
    line(5, UNALLOCATED_TENANT, "east", "H100", "150", "2.50", "375.00", "unallocated"),
    line(6, UNALLOCATED_TENANT, "west", "A100", "60.5", "1.20", "72.60", "unallocated"),
    line(
        7,
        ML,
        "east",
        "H100",
        "4",
        "2.50",
        "10.00",
        "correction",
        start=datetime(2026, 5, 31, tzinfo=UTC),
        end=START,
        corrects="2026-05",
    ),
    line(8, VS, "west", "A100", "10.25", "1.20", "12.30", end=MID),  # price segment 1
    line(9, VS, "west", "A100", "10.5", "1.10", "11.55", start=MID),  # price segment 2
    line(10, ML, "east", "H100", "0", "0.15", "18.08", "energy", kwh="120.5"),  # 18.075 -> 18.08
]
# Per tenant: ML 3001.25 + 960.00 + 10.00 + 18.08 = 3989.33; VS 750.50 + 12.30 + 11.55 = 774.35;
# XSS 120.00; unallocated 375.00 + 72.60 = 447.60. Fleet 3989.33 + 774.35 + 120.00 + 447.60 = 5331.28.
# east/H100: 3001.25 + 750.50 + 375.00 + 10.00 + 18.08 = 4154.83; west/A100: 1176.45.
COST_BY = [("west", "A100", D("1176.45")), ("east", "H100", D("4154.83"))]


def daily(n: int = 30) -> list[DailyPoint]:
    # capacity 40 GPUs x 24 h; reserved 600 + 10 d; used 150 + 5 d; idle 20 on odd days, else 0.
    return [
        DailyPoint(
            day=date(2026, 6, d),
            capacity_gpu_h=D(960),
            reserved_gpu_h=D(600 + 10 * d),
            used_gpu_h=D(150 + 5 * d),
            idle_gpu_h=D(20) if d % 2 else D(0),
        )
        for d in range(1, n + 1)
    ]


def idle(tenant: str, workload: str, start: datetime, hours: int, gpu_h: str, cost: str) -> IdlePeriod:
    return IdlePeriod(
        tenant=tenant,
        workload=workload,
        cluster="east",
        node="gpu-n07",
        gpu_uuid="GPU-1b2c",
        gpu_model="H100",
        slice_id="GPU-1b2c:mig:1:0",
        start=start,
        end=start + timedelta(hours=hours, minutes=30),
        gpu_hours=D(gpu_h),
        cost=D(cost),
    )


TOP_IDLE = [
    # crosses midnight: 2026-06-03 22:00 -> 2026-06-04 12:30
    idle(ML, "train/llm-pretrain-7f9c", datetime(2026, 6, 3, 22, tzinfo=UTC), 14, "14.5", "36.25"),
    idle(XSS, "ns/<img src=x>", datetime(2026, 6, 10, 8, tzinfo=UTC), 2, "2.5", "6.25"),
]

# Sums of daily(): capacity 30 x 960 = 28800; reserved 30 x 600 + 10 x 465 = 22650;
# used 30 x 150 + 5 x 465 = 6825; idle 15 x 20 = 300.
FLEET_TOTALS = {
    "capacity_gpu_h": D(28800),
    "reserved_gpu_h": D(22650),
    "used_gpu_h": D(6825),
    "idle_gpu_h": D(300),
    "idle_cost": D("42.50"),
    "cost": D("5331.28"),
    "utilization": D(6825) / D(28800),  # 23.697...%
    "allocation_rate": D(22650) / D(28800),  # 78.645...%
    "efficiency": D(6825) / D(22650),  # 30.132...%
}


def fleet_report(**changes) -> MonthReport:  # type: ignore[no-untyped-def]
    base = MonthReport(
        month=MONTH,
        tenant=None,
        currency="USD",
        mode="reserved",
        idle_policy="platform",
        manifest_sha256="ab" * 32,
        daily=daily(),
        lines=list(LINES),
        cost_by_cluster_model=list(COST_BY),
        top_idle=list(TOP_IDLE),
        totals=dict(FLEET_TOTALS),
    )
    return replace(base, **changes)


def tenant_report(tenant: str, cost: str) -> MonthReport:
    lines = [ln for ln in LINES if ln.tenant == tenant]
    return fleet_report(
        tenant=tenant,
        lines=lines,
        top_idle=[p for p in TOP_IDLE if p.tenant == tenant],
        cost_by_cluster_model=[("east", "H100", D(cost))],
        totals={"cost": D(cost), "reserved_gpu_h": D("2004.5")},
    )


def empty_report(month: str = "2026-02") -> MonthReport:
    return MonthReport(
        month=month,
        tenant=None,
        currency="EUR",
        mode="reserved",
        idle_policy="platform",
        manifest_sha256="cd" * 32,
        daily=[],
        lines=[],
        cost_by_cluster_model=[],
        top_idle=[],
    )


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(path).pages)


def tables(html_text: str) -> dict[str, list[list[str]]]:
    """Each <table> after an <h3 id=KEY>, as rows of cell texts (still HTML-escaped)."""
    out = {}
    for key, body in re.findall(r'<h3 id="(\w+)">[^<]*</h3>\s*<table>(.*?)</table>', html_text, re.S):
        out[key] = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr.*?</tr>", body)]
    return out


# ---------------------------------------------------------------------------------------------
# number formatting


def test_money_is_exact_cents_with_separators() -> None:
    assert format_money(D("1234567.5"), "USD") == "USD 1,234,567.50"
    assert format_money(D("999.990000000000"), "USD") == "USD 999.99"
    assert format_money(D("-12.3"), "EUR") == "EUR -12.30"
    assert format_money(D("-0.00"), "USD") == "USD 0.00"
    assert format_money(D(0), "USD") == "USD 0.00"
    assert format_money(D("100"), "USD") == "USD 100.00"
    with pytest.raises(ValueError, match=r"line 3 cost: 0\.125 is not a whole number of cents"):
        format_money(D("0.125"), "USD", "line 3 cost")
    with pytest.raises(TypeError, match="expected a Decimal, got float"):
        format_money(1.5, "USD")


def test_prices_quantities_and_ratios() -> None:
    assert format_price(D("2.500000000000"), "USD") == "USD 2.50"
    assert format_price(D("2.125"), "USD") == "USD 2.125"
    assert format_price(D("1250"), "USD") == "USD 1,250.00"
    assert format_qty(D("12345.675")) == "12,345.68"  # half-even: ...675 -> ...68
    assert format_qty(D("0.125")) == "0.12"  # half-even
    assert format_qty(D("120.5"), 3) == "120.500"
    assert format_pct(D(6825) / D(28800)) == "23.7%"
    assert format_pct(D("1.5")) == "150.0%"


# ---------------------------------------------------------------------------------------------
# HTML


def test_fleet_html_totals_to_the_cent() -> None:
    page = render_html(fleet_report())
    assert "<h1>GPU chargeback — Fleet — 2026-06</h1>" in page
    assert '<p class="total">Total USD 5,331.28</p>' in page
    cards = dict(re.findall(r'<div class="k">(.*?)</div><div class="v">(.*?)</div>', page))
    assert cards == {
        "Total cost": "USD 5,331.28",
        "Capacity": "28,800.00 GPU-h",
        "Reserved": "22,650.00 GPU-h",
        "Used": "6,825.00 GPU-h",
        "Utilization (used / capacity)": "23.7%",
        "Allocation rate (reserved / capacity)": "78.6%",
        "Efficiency (used / reserved)": "30.1%",
        "Allocated-idle": "300.00 GPU-h",
        "Allocated-idle cost": "USD 42.50",
    }
    t = tables(page)
    assert t["tenants"] == [
        ["Tenant", "Billed GPU-h", "Reserved GPU-h", "Used GPU-h", "Cost", "Share"],
        # used 2004.5 / 4 = 501.125 -> 501.12 (half-even); 3989.33 / 5331.28 = 74.83%
        [ML, "2,004.50", "2,004.50", "501.12", "USD 3,989.33", "74.8%"],
        ["vision &amp; speech", "320.95", "320.95", "80.24", "USD 774.35", "14.5%"],
        [UNALLOCATED_TENANT, "210.50", "", "", "USD 447.60", "8.4%"],
        ["&lt;script&gt;", "100.00", "100.00", "25.00", "USD 120.00", "2.3%"],
    ]
    assert f"{UNALLOCATED_TENANT} is capacity nobody reserved, carried by the platform." in page
    assert t["cost_by_cluster_model"] == [
        ["Cluster", "GPU model", "Cost", "Share"],
        ["east", "H100", "USD 4,154.83", "77.9%"],
        ["west", "A100", "USD 1,176.45", "22.1%"],
    ]


def test_charge_lines_table_has_every_line_and_marks_corrections() -> None:
    page = render_html(fleet_report())
    rows = tables(page)["lines"]
    assert rows[0] == [
        "#",
        "Type",
        "Tenant",
        "Cluster",
        "GPU model",
        "Period segment (UTC, end exclusive)",
        "Price from",
        "Quantity",
        "Unit price",
        "Reserved GPU-h",
        "Used GPU-h",
        "Cost",
    ]
    assert [r[0] for r in rows[1:]] == [str(n) for n in range(1, 11)]
    assert rows[1] == [
        "1",
        "usage",
        ML,
        "east",
        "H100",
        "2026-06-01 00:00 – 2026-07-01 00:00",
        "2026-06-01",
        "1,200.5000 GPU-h",
        "USD 2.50 / GPU-h",
        "1,200.5000",
        "300.1250",
        "USD 3,001.25",
    ]
    assert rows[7][1:3] == ["correction of 2026-05", ML]
    assert rows[7][5] == "2026-05-31 00:00 – 2026-06-01 00:00"
    assert rows[9][5:9] == [
        "2026-06-16 00:00 – 2026-07-01 00:00",
        "2026-06-16",
        "10.5000 GPU-h",
        "USD 1.10 / GPU-h",
    ]
    assert rows[10][7:] == ["120.500 kWh", "USD 0.15 / kWh", "", "", "USD 18.08"]
    # exactly one highlighted row, and it is the correction
    assert page.count('<tr class="correction">') == 1
    assert re.search(r'<tr class="correction"><td class="num">7</td><td>correction of 2026-05</td>', page)


def test_top_idle_table() -> None:
    rows = tables(render_html(fleet_report()))["top_idle"]
    assert rows[1] == [
        ML,
        "train/llm-pretrain-7f9c",
        "east",
        "gpu-n07",
        "H100",
        "GPU-1b2c:mig:1:0",
        "2026-06-03 22:00",
        "2026-06-04 12:30",
        "14 h 30 min",
        "14.50",
        "USD 36.25",
    ]
    assert rows[2][:2] == ["&lt;script&gt;", "ns/&lt;img src=x&gt;"]


def test_user_text_is_escaped_everywhere() -> None:
    page = render_html(fleet_report())
    assert "<script" not in page.lower()
    assert "<img" not in page
    assert "&lt;script&gt;" in page
    assert "vision &amp; speech" in page
    assert "vision & speech" not in page


def test_html_is_self_contained() -> None:
    page = render_html(fleet_report())
    assert page.count("<svg") == 4  # utilization, GPU-hours, idle, cost
    for chart in ("utilization", "gpu_hours", "idle", "cost"):
        assert f'<h3 id="{chart}">' in page
    refs = re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("#") for r in refs)  # only in-page SVG references
    assert all(r.startswith("#") for r in re.findall(r"url\(([^)]*)\)", page))
    assert "<link" not in page and "@import" not in page
    # the only URLs are XML namespace names, which nothing fetches
    assert set(re.findall(r"https?://[^\"' )]*", page)) == {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }
    assert page.rstrip().endswith(
        f"<footer>Ledger manifest sha256 {'ab' * 32} · mode reserved · idle policy platform</footer>"
        "\n</body>\n</html>"
    )


def test_html_is_deterministic() -> None:
    assert render_html(fleet_report()) == render_html(fleet_report())


def test_tenant_html_shows_only_that_tenant() -> None:
    page = render_html(tenant_report(ML, "3989.33"))
    assert "<h1>GPU chargeback — Tenant ml-research — 2026-06</h1>" in page
    assert '<p class="total">Total USD 3,989.33</p>' in page
    t = tables(page)
    assert "tenants" not in t  # the fleet's per-tenant table is not in a tenant's report
    assert [r[0] for r in t["lines"][1:]] == ["1", "2", "7", "10"]
    assert "vision" not in page and "script" not in page


def test_tenant_report_refuses_other_tenants_data() -> None:
    with pytest.raises(ValueError, match=r"charge line 3: tenant 'vision & speech' in the report of tenant"):
        render_html(fleet_report(tenant=ML, totals={}))
    with pytest.raises(
        ValueError, match=r"top_idle\[1\]: tenant '<script>' in the report of tenant 'ml-research'"
    ):
        render_html(fleet_report(tenant=ML, lines=[LINES[0]], totals={}, top_idle=list(TOP_IDLE)))


def test_inconsistent_report_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"totals\['cost'\] is 5331.29 but the charge lines add up to 5331.28"
    ):
        render_html(fleet_report(totals={**FLEET_TOTALS, "cost": D("5331.29")}))
    with pytest.raises(ValueError, match=r"charge line 2: currency 'EUR'"):
        render_html(fleet_report(lines=[LINES[0], replace(LINES[1], currency="EUR")], totals={}))
    with pytest.raises(ValueError, match=r"charge line 1: billed in 2026-05"):
        render_html(fleet_report(lines=[replace(LINES[0], billing_period="2026-05")], totals={}))
    with pytest.raises(ValueError, match=r"charge line 1 cost: 3001.255 is not a whole number of cents"):
        render_html(fleet_report(lines=[replace(LINES[0], cost=D("3001.255"))], totals={}))
    with pytest.raises(ValueError, match=r"MonthReport.month: expected YYYY-MM, got '2026-13'"):
        render_html(fleet_report(month="2026-13"))


def test_empty_month_says_no_data() -> None:
    page = render_html(empty_report())
    assert "No data for 2026-02: the closed ledger holds no charge lines and no samples" in page
    assert '<p class="total">Total EUR 0.00</p>' in page
    assert "<svg" not in page and "<table" not in page
    assert '<div class="k">Utilization (used / capacity)</div><div class="v">n/a</div>' in page


def test_month_without_daily_points_still_bills() -> None:
    page = render_html(fleet_report(daily=[]))
    assert "No daily data this month." in page
    assert page.count("<svg") == 1  # the cost chart only
    assert '<p class="total">Total USD 5,331.28</p>' in page


# ---------------------------------------------------------------------------------------------
# PDF


def test_tenant_pdf_text_has_exact_total(tmp_path: Path) -> None:
    path = tmp_path / "ml.pdf"
    render_pdf(tenant_report(ML, "3989.33"), path)
    text = pdf_text(path)
    assert "Total USD 3,989.33" in text
    assert "GPU chargeback — Tenant ml-research — 2026-06" in text
    assert "correction of 2026-05" in text
    reader = pypdf.PdfReader(path)
    assert reader.metadata["/CreationDate"] == "D:20260701000000+00'00'"
    assert reader.metadata["/Title"] == "GPU chargeback — Tenant ml-research — 2026-06"


def test_pdf_prints_markup_in_names_as_text(tmp_path: Path) -> None:
    path = tmp_path / "x.pdf"
    render_pdf(tenant_report(XSS, "120.00"), path)
    text = pdf_text(path)
    assert "Tenant <script> — 2026-06" in text
    assert "ns/<img src=x>" in text
    assert "Total USD 120.00" in text


def test_pdf_is_byte_identical(tmp_path: Path) -> None:
    render_pdf(fleet_report(), tmp_path / "a.pdf")
    render_pdf(fleet_report(), tmp_path / "b.pdf")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


def test_empty_month_pdf(tmp_path: Path) -> None:
    render_pdf(empty_report(), tmp_path / "e.pdf")
    text = pdf_text(tmp_path / "e.pdf")
    assert "Total EUR 0.00" in text
    assert "No data for 2026-02" in text


def big_fleet(tenants: int = 30) -> MonthReport:
    """30 tenants on 2 clusters x 2 models with a mid-month price change: 240 usage lines."""
    lines: list[ChargeLine] = []
    prices = {"H100": ("2.50", "2.40"), "A100": ("1.20", "1.10")}
    for t in range(tenants):
        for cluster in ("east", "west"):
            for model, (p1, p2) in prices.items():
                for (start, end), price in zip(((START, MID), (MID, END)), (p1, p2), strict=True):
                    gpu_h = D(100 + t)
                    lines.append(
                        line(
                            len(lines) + 1,
                            f"team-{t:02d}",
                            cluster,
                            model,
                            str(gpu_h),
                            price,
                            str(gpu_h * D(price)),
                        )
                    )
                    lines[-1] = replace(lines[-1], charge_start=start, charge_end=end)
    by: dict[tuple[str, str], D] = {}
    for ln in lines:
        by[ln.cluster, ln.gpu_model] = by.get((ln.cluster, ln.gpu_model), D(0)) + ln.cost
    idles = [replace(TOP_IDLE[0], tenant=f"team-{i:02d}", workload=f"ns{i}/pod-{i}") for i in range(20)]
    return fleet_report(
        lines=lines,
        cost_by_cluster_model=[(c, m, v) for (c, m), v in by.items()],
        top_idle=idles,
        totals={**FLEET_TOTALS, "cost": sum((ln.cost for ln in lines), D(0))},
    )


def test_thirty_tenant_fleet_pdf_is_small(tmp_path: Path) -> None:
    report = big_fleet()
    total = sum((ln.cost for ln in report.lines), D(0))
    path = tmp_path / "fleet.pdf"
    t0 = time.perf_counter()
    render_pdf(report, path)
    elapsed = time.perf_counter() - t0
    size = path.stat().st_size
    assert size < 1_000_000, size
    assert elapsed < 20, elapsed  # ~1 s measured; loose bound on a shared 2-core machine
    text = pdf_text(path)
    assert f"Total {format_money(total, 'USD')}" in text
    assert "team-29" in text and "team-00" in text


# ---------------------------------------------------------------------------------------------
# files


def test_safe_names_never_collide() -> None:
    h = lambda s: hashlib.sha256(s.encode()).hexdigest()[:8]  # noqa: E731
    assert safe_name(None) == "fleet"
    assert safe_name("ml-research") == "ml-research"
    assert safe_name("<script>") == f"script-{h('<script>')}"
    assert safe_name("a/b") == f"a_b-{h('a/b')}"
    assert safe_name("a_b") == "a_b"
    assert safe_name("fleet") == f"fleet-{h('fleet')}"
    assert safe_name("..") == f"_-{h('..')}"
    assert len(safe_name("x" * 500)) == 80 + 9


def test_write_reports(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    paths = write_reports(fleet_report(), out, ["pdf", "csv", "html", "focus", "pdf"])
    assert paths == [out / "2026-06-fleet.pdf", out / "2026-06-fleet.html"]
    assert sorted(p.name for p in out.iterdir()) == ["2026-06-fleet.html", "2026-06-fleet.pdf"]
    assert paths[1].read_text(encoding="utf-8") == render_html(fleet_report())
    assert paths[0].read_bytes()[:5] == b"%PDF-"

    xss = write_reports(tenant_report(XSS, "120.00"), out, "html")
    assert [p.name for p in xss] == [f"2026-06-{safe_name(XSS)}.html"]
    assert xss[0].parent == out

    with pytest.raises(ValueError, match=r"report format 'docx': expected some of html, pdf, csv, focus"):
        write_reports(fleet_report(), out, ["html", "docx"])


def test_pdf_has_no_pending_temp_files_after_failure(tmp_path: Path) -> None:
    bad = fleet_report(lines=[replace(LINES[0], cost=D("1.001"))], totals={})
    with pytest.raises(ValueError, match="not a whole number of cents"):
        write_reports(bad, tmp_path, ["pdf"])
    assert list(tmp_path.iterdir()) == []


def test_pdf_reads_from_bytes_roundtrip(tmp_path: Path) -> None:
    """The written PDF is a well-formed document pypdf can page through (two pages or more)."""
    render_pdf(big_fleet(), tmp_path / "f.pdf")
    reader = pypdf.PdfReader(io.BytesIO((tmp_path / "f.pdf").read_bytes()))
    assert len(reader.pages) >= 2
    assert all(p.mediabox.width > p.mediabox.height for p in reader.pages)  # landscape


def test_same_bytes_in_another_process(tmp_path: Path) -> None:
    """No hash-seed or object-address dependence: a fresh interpreter renders the same bytes."""
    code = (
        f"import sys, hashlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_reports import *; "
        f"render_pdf(fleet_report(), {str(tmp_path / 'other.pdf')!r}); "
        "print(hashlib.sha256(render_html(fleet_report()).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    env.pop("SOURCE_DATE_EPOCH", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(render_html(fleet_report()).encode()).hexdigest()
    render_pdf(fleet_report(), tmp_path / "here.pdf")
    assert (tmp_path / "other.pdf").read_bytes() == (tmp_path / "here.pdf").read_bytes()


# ---------------------------------------------------------------------------------------------
# PDF layout: whole words, whole rows

A100_LONG = "NVIDIA A100-SXM4-80GB"
UUID = "GPU-a1000000-0000-4000-8000-000000000000"


def long_names_report() -> MonthReport:
    lines = [replace(ln, gpu_model=A100_LONG) for ln in LINES]
    idles = [
        replace(
            p, gpu_model=A100_LONG, gpu_uuid=UUID, slice_id=f"{UUID}:whole:p-sweep", node="gpu-node-0007-west"
        )
        for p in TOP_IDLE
    ]
    return fleet_report(
        lines=lines,
        top_idle=idles,
        cost_by_cluster_model=[
            ("west", A100_LONG, D("1176.45")),
            ("east", "NVIDIA H100 80GB HBM3", D("4154.83")),
        ],
    )


def test_pdf_never_breaks_a_model_name_or_a_uuid(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    render_pdf(long_names_report(), path)
    cells = pdf_text(path).splitlines()
    # every GPU model cell whole on one line: 1 cost bar row + 10 charge lines + 2 idle rows
    assert sum(c.strip() == A100_LONG for c in cells) == 13
    assert sum(c.strip() == f"{UUID}:whole:p-sweep" for c in cells) == 2
    assert sum(c.strip() == "gpu-node-0007-west" for c in cells) == 2
    assert not [c for c in cells if c.strip() in ("A100-SXM4-80GB", "-SXM4-80GB", "NVIDIA A100")]


def test_pdf_columns_fit_their_widest_word_else_the_font_shrinks() -> None:
    from reportlab.pdfbase.pdfmetrics import stringWidth

    from warehouse.report_content import Column, TableBlock
    from warehouse.report_pdf import PDF_CELL_SIZE, PDF_PAD, pdf_column_layout

    block = TableBlock(
        "k",
        "t",
        (Column("Slice", weight=1), Column("Note", weight=9), Column("Cost", True)),
        [[f"{UUID}:whole:p-sweep", "a b c", "USD 1.00"]],
        "",
    )
    widths, sizes = pdf_column_layout(block, 400.0)
    assert sizes == [PDF_CELL_SIZE] * 3 and abs(sum(widths) - 400.0) < 1e-9
    # the slice's weight alone would give it 400/11 pt; it gets its whole id plus padding
    assert widths[0] == stringWidth(f"{UUID}:whole:p-sweep", "Helvetica", PDF_CELL_SIZE) + PDF_PAD + 1.0
    narrow, small = pdf_column_layout(block, 200.0)  # the words do not fit 200 pt at 6.5 pt: smaller type
    assert abs(sum(narrow) - 200.0) < 1e-9 and 4.0 < small[0] < PDF_CELL_SIZE and len(set(small)) == 1
    text_w = stringWidth(f"{UUID}:whole:p-sweep", "Helvetica", small[0])
    assert abs(narrow[0] - (text_w + PDF_PAD + 1.0)) < 1e-9  # the id fits its cell at that size


def test_pdf_tables_break_between_rows_and_repeat_their_header(tmp_path: Path) -> None:
    report = big_fleet()
    path = tmp_path / "fleet.pdf"
    render_pdf(report, path)
    seen: list[int] = []
    for page in pypdf.PdfReader(path).pages:
        cells = page.extract_text().splitlines()
        starts = [i for i in range(len(cells) - 1) if cells[i].isdigit() and cells[i + 1] == "usage"]
        if not starts:
            continue
        first_header = cells.index(" #") if " #" in cells else len(cells)
        assert first_header < starts[0]  # the lines table's header row heads every page it is on
        for k, i in enumerate(starts):
            n = int(cells[i])
            row = cells[i : starts[k + 1] if k + 1 < len(starts) else len(cells)]
            ln = report.lines[n - 1]
            # the whole row on this page: its tenant, cluster, model and, in its last cell, its cost
            assert row[2:5] == [ln.tenant, ln.cluster, ln.gpu_model]
            assert format_money(ln.cost, "USD") in row[:14], (n, row)
            seen.append(n)
    assert seen == list(range(1, len(report.lines) + 1))
