"""The Caps page's data (warehouse/enforcer_views.py) and rendering (dashboards/caps_page.py):
reclaimed memory per tenant and pool, decisions with their ack state, cap/use series with the
recommendation band; a viewer of another tenant sees nothing of it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import orjson
from test_enforcer_control import NOW, SID, tick

from dashboards import caps_page, pages
from gpuledger.config import Config
from gpuledger.decode import decode_batch
from pipeline.enforcer import Enforcer, land_acks
from warehouse.enforcer_views import caps_view
from warehouse.lake import Lake, new_batch_id

RULES = [{"tenant": "nlp", "namespace": "nlp"}]


def _write(lake: Lake, msgs: list[dict]) -> None:
    b = new_batch_id()
    lake.write_batch(decode_batch([orjson.dumps(m) for m in msgs], batch=b, max_message_bytes=1 << 20), b)


def lake_with_a_shrink(tmp_path: Path) -> Lake:
    """Two days at cap 40,960 MiB using 10,000; the enforcer shrinks memory to 30,720 and lowers
    core 50 -> 40; the node acks the memory decision and its next tick shows the new cap."""
    lake = Lake(tmp_path / "lake")
    _write(lake, [tick(k) for k in range(576)])
    cfg = Config()
    cfg.lake.path = str(lake.root)
    cfg.enforcer.mode = "enforce"
    cfg.tenants.rules = RULES
    sent: list[dict] = []
    assert Enforcer(cfg, lambda node, m: sent.append(m)).cycle(NOW)["sent"] == 2
    mem = next(m for m in sent if m["resource"] == "memory")
    ack = {
        "schema": "gpuledger.cap-ack/v1",
        "decision_id": mem["decision_id"],
        "cluster": "c1",
        "node": "n1",
        "slice_id": SID,
        "resource": "memory",
        "status": "applied",
        "reason": None,
        "used_mib": 10000,
        "cap_before": 40960,
        "cap_after": 30720,
        "acked_at": (NOW + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    assert land_acks(lake, [("acks", json.dumps(ack).encode())], NOW) == (1, 0)
    t = tick(576)
    t["ts"] = (NOW + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    t["slices"][0]["mem_cap_mib"] = 30720
    _write(lake, [t])
    return lake


def test_caps_view_exact_and_isolated(tmp_path: Path) -> None:
    lake = lake_with_a_shrink(tmp_path)
    at = NOW + timedelta(minutes=6)
    v = caps_view(lake, at, frozenset({"nlp"}), RULES, hours=2)
    (s,) = v["slices"]
    assert (s["slice_id"], s["tenant"], s["mem_cap_mib"], s["allocation_mib"], s["reclaimed_mib"]) == (
        SID,
        "nlp",
        30720,
        40960,
        10240,
    )
    assert s["gpu_equivalents"] == 0.125  # 10 GiB of an 80 GiB GPU
    assert v["by_tenant_pool"] == [
        {
            "tenant": "nlp",
            "pool": "c1/NVIDIA H100 80GB HBM3",
            "slices": 1,
            "shrunk": 1,
            "gib": 10.0,
            "gpu_eq": 0.125,
        }
    ]
    states = sorted(
        (d["resource"], d["action"], d["old_cap"], d["new_cap"], d["state"]) for d in v["decisions"]
    )
    # core: sent, no ack, expired 5 min after NOW; memory: acked as applied
    assert states == [("core", "lower", 50, 40, "expired"), ("memory", "shrink", 40960, 30720, "applied")]
    pts = v["series"][SID]
    # 2 h back from NOW + 6 min: the ticks of NOW - 110 min .. NOW, then the one at the new cap
    assert [(p["used_mib"], p["cap_mib"]) for p in pts] == [(10000, 40960)] * 23 + [(10000, 30720)]
    (b,) = v["band"][SID]
    # floor: 10,000 + max(512, 10 %) = 11,000 -> 11,008 (256 MiB steps); recommendation: the bucket
    # bound of 10,000, 1.05^189 = 10,236, x 1.15 = 11,771 -> 11,776
    assert (b["t"], b["floor_mib"], b["recommendation_mib"]) == (NOW, 11008, 11776)
    # a viewer of another tenant: nothing of nlp
    other = caps_view(lake, at, frozenset({"vision"}), RULES, hours=2)
    assert (
        other["slices"] == [] and other["decisions"] == [] and other["series"] == {} and other["band"] == {}
    )
    assert caps_view(lake, at, frozenset(), RULES, hours=2)["decisions"] == []
    # the page renders it: tables, one graph per slice with its band
    html = repr(caps_page.body(v))
    assert "caps-reclaimed" in html and "caps-decisions" in html and "recommendation band" in html
    assert "10.0" in html and "0.12" in html
    assert repr(caps_page.body(other)).count("caps-empty") == 1
    # the cluster and model filters
    assert caps_page.narrow(v, ("c1",), ()) == v
    assert caps_page.narrow(v, (), ("NVIDIA H100 80GB HBM3",))["slices"] == v["slices"]
    cut = caps_page.narrow(v, ("c2",), ())
    assert (cut["slices"], cut["by_tenant_pool"], cut["decisions"], cut["series"]) == ([], [], [], {})


def test_caps_page_is_registered() -> None:
    assert ("/caps", "Caps") in pages.PAGES
    assert repr(pages.skeleton("/caps")) == repr(caps_page.skeleton())


def test_monthly_report_right_sizing_section(tmp_path: Path) -> None:
    from decimal import Decimal

    from warehouse.enforcer_views import rightsizing_month
    from warehouse.money_settings import CloseSettings
    from warehouse.monthly import build_reports
    from warehouse.pricing import PriceBook
    from warehouse.report_content import build_content
    from warehouse.report_html import render_html

    lake = lake_with_a_shrink(tmp_path)
    book = PriceBook([{"model": "NVIDIA H100 80GB HBM3", "gpu_hour": "3.00"}])
    rows = rightsizing_month(lake, "2026-11", RULES, book=book)
    # one 300 s tick at cap 30,720 under an allocation of 40,960: 10,240 MiB x 300 s
    gpu_h = 10240 * 300 / 3600 / 81920
    assert rows == [
        {
            "tenant": "nlp",
            "cluster": "c1",
            "model": "NVIDIA H100 80GB HBM3",
            "slices": 1,
            "gib_h": round(10240 * 300 / 3600 / 1024, 3),
            "gpu_h": round(gpu_h, 6),
            "worth": (Decimal("3.00") * Decimal(str(round(gpu_h, 9)))).quantize(Decimal("0.01")),
        }
    ]
    assert rows[0]["gib_h"] == 0.833 and rows[0]["worth"] == Decimal("0.03")
    assert rightsizing_month(lake, "2026-10", RULES, book=book) == []
    assert rightsizing_month(lake, "2026-11", RULES, book=None)[0]["worth"] is None  # no price: no worth
    cfg = Config()
    cfg.tenants.rules = RULES
    cfg.pricing.book = [{"model": "NVIDIA H100 80GB HBM3", "gpu_hour": "3.00"}]
    fleet, nlp = build_reports(lake.root, "2026-11", CloseSettings.from_config(cfg))
    assert nlp.tenant == "nlp" and nlp.rightsizing == fleet.rightsizing == rows
    content = build_content(fleet)
    (sec,) = [s for s in content.sections if s.title == "Right-sizing"]
    assert sec.blocks[0].rows == [["nlp", "c1", "NVIDIA H100 80GB HBM3", "1", "0.8", "0.01", "USD 0.03"]]
    assert "Memory reclaimed by the enforcer" in render_html(fleet)
