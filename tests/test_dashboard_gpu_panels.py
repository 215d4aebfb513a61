"""The GPUs page's dcgm-exporter-style panels (utilization over time, framebuffer memory, power,
temperature) and the chart rules (round ticks, grouped legends), numbers worked by hand.

Golden fleet (tests/scenario.py): every GPU tick reads 300 W, 50 C and 1,000 of 81,920 MiB. Two
hours, 23:00 and 00:00 UTC; the tick stamped 00:00 belongs to hour 23 (its midpoint) but sits in the
date partition of the 16th, so hour 23 has two gpu_hourly rows per GPU (59 ticks + 1 tick).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import scenario
from dashboard_client import app_config, serve, write_users
from plotly.utils import PlotlyJSONEncoder
from test_dashboard_pages import PASSWORD, cb, signed_in, texts

from dashboards import pages
from dashboards.app import create_app
from dashboards.data import DashboardData
from dashboards.filters import Filters
from warehouse.accounting import Accounting
from warehouse.close import CloseSettings
from warehouse.lake import Lake
from warehouse.pricing import PriceBook

H23 = "2026-10-15T23:00:00+00:00"
H00 = "2026-10-16T00:00:00+00:00"
LABELS = ["east/node-a GPU 0", "east/node-a GPU 1", "west/node-b GPU 0", "west/node-b GPU 1"]


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("panels")
    lake = scenario.built_lake(root)
    users = root / "users.toml"
    write_users(users, PASSWORD, {"root": None, "vis": ["vision"]})
    with serve(create_app(app_config(lake, users, scenario.RULES, scenario.BOOK))) as port:
        yield port


def figures(children: Any) -> dict[str, dict[str, Any]]:
    """The figures of the dcc.Graph components in a Dash JSON tree, by id."""
    out: dict[str, dict[str, Any]] = {}

    def walk(n: Any) -> None:
        if isinstance(n, list):
            for x in n:
                walk(x)
        elif isinstance(n, dict):
            props = n.get("props", {})
            if n.get("type") == "Graph":
                out[props["id"]] = props["figure"]
            for v in props.values():
                if isinstance(v, dict | list):
                    walk(v)

    walk(children)
    return out


def test_admin_panels_show_every_gpu_per_hour(golden: int) -> None:
    admin, deps = signed_in(golden, "root")
    figs = figures(cb(admin, deps, "gpu-panels", "/gpus")["gpu-panels"]["children"])
    assert sorted(figs) == ["gpu-memory", "gpu-power", "gpu-temp", "gpu-timeline"]
    power, temp, mem = figs["gpu-power"], figs["gpu-temp"], figs["gpu-memory"]
    for fig in (power, temp, mem):
        assert [t["name"] for t in fig["data"]] == LABELS  # four GPUs: one legend entry each
        assert all(t["x"] == [H23, H00] and t["showlegend"] for t in fig["data"])
        assert fig["layout"]["xaxis"]["type"] == "date"
    assert [t["y"] for t in power["data"]] == [[300.0, 300.0]] * 4
    assert [t["y"] for t in temp["data"]] == [[50.0, 50.0]] * 4
    assert [t["y"] for t in mem["data"]] == [[1000, 1000]] * 4
    assert [t["text"] for t in mem["data"]] == [["1,000", "1,000"]] * 4  # the peak, in the hover
    # round ticks from 0: 300 W -> 0..400 by 100; 50 C -> 0..60 by 10; 81,920 MiB total -> 0..100k by 20k
    assert {k: power["layout"]["yaxis"][k] for k in ("range", "dtick")} == {"range": [0, 400], "dtick": 100}
    assert {k: temp["layout"]["yaxis"][k] for k in ("range", "dtick")} == {"range": [0, 60], "dtick": 10}
    assert {k: mem["layout"]["yaxis"][k] for k in ("range", "dtick")} == {
        "range": [0, 100000],
        "dtick": 20000,
    }
    tl = figs["gpu-timeline"]["data"][0]
    assert tl["y"] == LABELS and tl["x"] == [H23, H00]
    assert figs["gpu-timeline"]["layout"]["yaxis"]["tickvals"] == LABELS  # every GPU labelled
    # A0 MIG 30 %; A1 50 % busy for 30 of each hour's 60 ticks; B0 30 + 20; B1 40 + 10 + 10
    assert tl["z"] == [[30.0, 30.0], [25.0, 25.0], [50.0, 50.0], [60.0, 60.0]]
    assert tl["customdata"][3] == [scenario.B1, scenario.B1]

    one = figures(cb(admin, deps, "gpu-panels", "/gpus", f"?gpu={scenario.B0}")["gpu-panels"]["children"])
    assert [t["name"] for t in one["gpu-power"]["data"]] == ["west/node-b GPU 0"]


def test_a_viewer_sees_only_the_gpus_its_slices_held(golden: int) -> None:
    vis, deps = signed_in(golden, "vis")
    raw = cb(vis, deps, "gpu-panels", "/gpus", "?tenant=nlp")
    text = json.dumps(raw)
    assert scenario.A1 not in text and scenario.B0 not in text
    figs = figures(raw["gpu-panels"]["children"])
    assert [t["name"] for t in figs["gpu-power"]["data"]] == ["east/node-a GPU 0", "west/node-b GPU 1"]
    assert [t["y"] for t in figs["gpu-power"]["data"]] == [[300.0, 300.0]] * 2
    # utilization is vision's own use: its MIG instance on A0, its 10 % on the time-sliced B1
    assert figs["gpu-timeline"]["data"][0]["z"] == [[30.0, 30.0], [10.0, 10.0]]
    # a GPU the viewer never held, asked for by link: nothing of it, the viewer's own GPUs instead
    other = cb(vis, deps, "gpu-panels", "/gpus", f"?gpu={scenario.B0}")
    assert scenario.B0 not in json.dumps(other)
    names = [t["name"] for t in figures(other["gpu-panels"]["children"])["gpu-power"]["data"]]
    assert names == ["east/node-a GPU 0", "west/node-b GPU 1"]


def rolled_up_lake(root: Path, msgs: list[dict]) -> Path:
    """A lake of `msgs` under `root`, rollups built (the golden scenario's tenants and prices)."""
    lake = root / "lake"
    scenario.write(Lake(lake), msgs)
    acct = Accounting(lake, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    acct.update()
    acct.close()
    return lake


def varied_lake(root: Path) -> Path:
    """The golden fleet with a hotter last tick of hour 23 on A1 (in the other date partition) and
    no power reading on A0 for the whole of hour 00."""
    msgs = scenario.messages()
    for m in msgs:
        ts = m["ts"]
        for g in m["gpus"]:
            if g["uuid"] == scenario.A1 and ts == "2026-10-16T00:00:00Z":
                g.update({"power_w": 360.0, "temp_c": 80, "mem_used_mib": 4000})
            if g["uuid"] == scenario.A0 and "2026-10-16T00:01:00Z" <= ts <= "2026-10-16T01:00:00Z":
                g["power_w"] = None
    return rolled_up_lake(root, msgs)


def test_hour_means_add_both_date_pieces_and_unknown_stays_a_gap(tmp_path: Path) -> None:
    lake = varied_lake(tmp_path)
    cfg = app_config(lake, tmp_path / "u.toml", scenario.RULES, scenario.BOOK)
    data = DashboardData(lake, CloseSettings.from_config(cfg))
    try:
        s = data.gpu_series(None, Filters())
        assert s is not None
        at = {(p["gpu"], p["period"].isoformat()): p for p in s["points"]}
        a1 = at[(scenario.A1, H23)]
        # 59 ticks at 300 W in the 15th's partition + 1 at 360 W in the 16th's: (59*300 + 360) / 60,
        # not the mean of the two pieces' means (330)
        assert a1["power_avg_w"] == 301.0
        assert (a1["temp_avg_c"], a1["temp_max_c"]) == (50.5, 80.0)
        assert (a1["mem_avg_mib"], a1["mem_max_mib"], a1["mem_total_mib"]) == (1050.0, 4000.0, 81920.0)
        assert at[(scenario.A1, H00)]["power_avg_w"] == 300.0
        a0 = at[(scenario.A0, H00)]
        assert a0["power_avg_w"] is None and a0["temp_avg_c"] == 50.0  # unknown power: no value
        assert at[(scenario.A0, H23)]["power_avg_w"] == 300.0
        fig = figures([c.to_plotly_json() for c in pages.gpu_panels(s)])
        power = {t["name"]: t["y"] for t in fig["gpu-power"]["data"]}
        assert power["east/node-a GPU 0"] == [300.0, None]  # a gap in the line, never 0
        assert power["east/node-a GPU 1"] == [301.0, 300.0]
        assert all(t["connectgaps"] is False for t in fig["gpu-power"]["data"])
        # a 30-day range: one point per day, the same sums over counts
        day = data.gpu_series(None, Filters(range="30d"))
        assert day is not None and day["grain"] == "day"
        d = {(p["gpu"], p["period"].isoformat()): p for p in day["points"]}
        # A1 on the 15th: hour 23 (60 ticks, one at 360 W); on the 16th: hour 00 (60 ticks at 300 W)
        assert d[(scenario.A1, "2026-10-15T00:00:00+00:00")]["power_avg_w"] == 301.0
        assert d[(scenario.A0, "2026-10-16T00:00:00+00:00")]["power_avg_w"] is None
    finally:
        data.close()


def series(n_nodes: int, gpus_per_node: int, clusters: int = 1) -> dict[str, Any]:
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    points = []
    for c in range(clusters):
        for n in range(n_nodes):
            for i in range(gpus_per_node):
                for h in range(3):
                    points.append(
                        {
                            "period": t0 + timedelta(hours=h),
                            "cluster": f"c{c}",
                            "node": f"n{n:02d}",
                            "gpu": f"GPU-{c}-{n}-{i}",
                            "model": "M",
                            "index": i,
                            "util": 0.25 * (i % 2),
                            "used_s": 900.0 * (i % 2),
                            "capacity_s": 3600.0,
                            "mem_total_mib": 40960.0,
                            "mem_max_mib": 2000.0,
                            "mem_avg_mib": 1000.0,
                            "power_avg_w": 250.0 + h,
                            "power_sum_w": (250.0 + h) * 60,
                            "power_ticks": 60,
                            "temp_max_c": 70.0,
                            "temp_avg_c": 60.0,
                        }
                    )
    return {"start": t0, "end": t0 + timedelta(hours=3), "grain": "hour", "points": points}


def test_many_gpus_are_grouped_in_the_legend_by_node_then_cluster() -> None:
    figs = figures([c.to_plotly_json() for c in pages.gpu_panels(series(3, 4))])
    data = figs["gpu-power"]["data"]
    assert len(data) == 12
    legend = [t["name"] for t in data if t["showlegend"]]
    assert legend == ["c0/n00", "c0/n01", "c0/n02"]  # 12 GPUs: one entry per node
    assert {t["legendgroup"] for t in data} == set(legend)
    assert len({t["line"]["color"] for t in data}) == 3  # one colour per node
    assert "c0/n01 GPU 2" in data[6]["hovertemplate"]  # the hover still names the GPU
    assert figs["gpu-power"]["layout"]["legend"]["title"]["text"] == "by node"
    assert figs["gpu-timeline"]["layout"]["yaxis"]["tickvals"][:2] == ["c0/n00 GPU 0", "c0/n00 GPU 1"]
    many = figures([c.to_plotly_json() for c in pages.gpu_panels(series(5, 2, clusters=2))])
    assert [t["name"] for t in many["gpu-temp"]["data"] if t["showlegend"]] == ["c0", "c1"]
    few = figures([c.to_plotly_json() for c in pages.gpu_panels(series(1, 8))])
    assert sum(t["showlegend"] for t in few["gpu-power"]["data"]) == 8  # 8 GPUs: each its own


def test_round_ticks() -> None:
    assert [pages.nice_step(v) for v in (300, 50, 81920, 1, 0.3, 7)] == [100, 10, 20000, 0.2, 0.1, 2]
    assert pages.round_axis(300) == {"range": [0, 400], "tick0": 0, "dtick": 100.0}
    assert pages.round_axis(95) == {"range": [0, 100], "tick0": 0, "dtick": 20.0}
    assert pages.round_axis(None) == {"rangemode": "tozero"} == pages.round_axis(0)


def test_overview_legend_groups_beyond_eight_traces() -> None:
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    rows = [
        {
            "period": t0 + timedelta(hours=h),
            "model": f"model-{m}",
            "utilization": 0.25,
            "allocation_rate": 0.5,
            "idle_gpu_h": 1.5,
        }
        for m in range(4)
        for h in range(2)
    ]
    fig = pages.over_time(rows, "model", True, "t")
    assert len(fig["data"]) == 12
    assert [t["name"] for t in fig["data"][:3]] == ["utilization", "allocated", "idle GPU-h"]
    assert [t["legendgroup"] for t in fig["data"][::3]] == [f"model-{m}" for m in range(4)]
    assert fig["data"][3]["legendgrouptitle"] == {"text": "model-1"}
    assert (
        fig["data"][0]["line"]["color"]
        == fig["data"][1]["line"]["color"]
        == fig["data"][2]["marker"]["color"]
    )
    assert fig["layout"]["legend"]["traceorder"] == "grouped"
    assert fig["layout"]["yaxis"]["dtick"] == 20
    # four stacked idle bars of 1.5 GPU-h: the axis holds their sum (6) at round ticks
    assert {k: fig["layout"]["yaxis2"][k] for k in ("range", "dtick")} == {"range": [0, 8], "dtick": 2.0}
    small = pages.over_time(rows[:4], "model", True, "t")  # two models, six traces: names in full
    assert [t["name"] for t in small["data"][:3]] == [
        "model-0 utilization",
        "model-0 allocated",
        "model-0 idle GPU-h",
    ]
    assert "legendgroup" not in small["data"][0]


def test_time_heatmap_has_a_row_per_node_beyond_forty_gpus() -> None:
    small = figures([c.to_plotly_json() for c in pages.gpu_panels(series(2, 4))])["gpu-timeline"]
    assert small["data"][0]["y"] == [f"c0/n0{n} GPU {i}" for n in range(2) for i in range(4)]
    assert small["data"][0]["z"][:2] == [[0.0, 0.0, 0.0], [25.0, 25.0, 25.0]]
    assert small["data"][0]["x"] == [
        "2026-10-01T00:00:00+00:00",
        "2026-10-01T01:00:00+00:00",
        "2026-10-01T02:00:00+00:00",
    ]
    big = figures([c.to_plotly_json() for c in pages.gpu_panels(series(3, 16))])["gpu-timeline"]
    hm = big["data"][0]
    assert hm["y"] == ["c0/n00", "c0/n01", "c0/n02"] == big["layout"]["yaxis"]["tickvals"]
    # per node: 8 of its 16 GPUs used 900 of 3,600 s: 7,200 / 57,600 = 12.5 %
    assert hm["z"] == [[12.5, 12.5, 12.5]] * 3
    assert "customdata" not in hm  # a node row is not one GPU: no click target


def test_beyond_forty_gpus_memory_power_and_temperature_are_rows_per_node() -> None:
    figs = figures([c.to_plotly_json() for c in pages.gpu_panels(series(3, 16))])
    for fid in ("gpu-memory", "gpu-power", "gpu-temp"):
        assert figs[fid]["data"][0]["type"] == "heatmap"
        assert figs[fid]["data"][0]["y"] == ["c0/n00", "c0/n01", "c0/n02"]
        assert figs[fid]["layout"]["yaxis"]["tickvals"] == ["c0/n00", "c0/n01", "c0/n02"]
    # 16 GPUs x mean 1,000 MiB of 16 x 40,960: 2.44 % -> 2.4
    assert figs["gpu-memory"]["data"][0]["z"] == [[2.4, 2.4, 2.4]] * 3
    assert (figs["gpu-memory"]["data"][0]["zmax"], figs["gpu-memory"]["data"][0]["colorbar"]["dtick"]) == (
        100,
        20,
    )
    # per-GPU mean power over the node's ticks: (250 + h) W in hour h
    assert figs["gpu-power"]["data"][0]["z"] == [[250.0, 251.0, 252.0]] * 3
    assert figs["gpu-temp"]["data"][0]["z"] == [[70.0, 70.0, 70.0]] * 3  # the hottest GPU's peak
    assert figs["gpu-power"]["data"][0]["zmax"] == 300  # round: 252 W -> 0..300 by 100
    assert figs["gpu-power"]["data"][0]["colorbar"]["dtick"] == 100


def test_health_events_are_markers_on_the_gpu_timeline() -> None:
    from dashboards.pages import gpu_timeline

    h0, h1 = datetime(2026, 10, 15, 1, tzinfo=UTC), datetime(2026, 10, 15, 2, tzinfo=UTC)

    def pt(sick: int, why: str | None) -> dict[str, Any]:
        return {"capacity_s": 3600.0, "used_s": 1800.0, "unhealthy_ticks": sick, "unhealthy_reason": why}

    gpu = {
        "cluster": "c",
        "node": "n1",
        "uuid": "GPU-1",
        "label": "c/n1/0",
        "periods": [h0, h1],
        "at": {h0: pt(0, None), h1: pt(15, "xid 79: GPU fell off the bus")},
    }
    fig = gpu_timeline([gpu], [h0.isoformat(), h1.isoformat()])
    heat, events = fig["data"]
    assert heat["z"] == [[50.0, 50.0]]
    assert events["x"] == [h1.isoformat()] and events["y"] == ["c/n1/0"]
    assert events["text"] == ["c/n1/0: 15 unhealthy ticks (xid 79: GPU fell off the bus)"]
    # a GPU without health events draws no marker trace: the figure is as it was before issue 17
    gpu["at"][h1] = pt(0, None)
    assert len(gpu_timeline([gpu], [h0.isoformat(), h1.isoformat()])["data"]) == 1


def sm_lake(root: Path) -> Path:
    """The golden fleet with SM activity (GPM) on GPU A0's slices: half their kernel-busy time."""
    msgs = scenario.messages()
    for m in msgs:
        for s in m["slices"]:
            if s["gpu_uuid"] == scenario.A0 and s.get("util_pct") is not None:
                s["sm_active_pct"] = s["util_pct"] / 2
    return rolled_up_lake(root, msgs)


def test_the_sm_activity_basis_shows_beside_kernel_busy_only_where_it_was_seen(tmp_path: Path) -> None:
    lake = sm_lake(tmp_path)
    cfg = app_config(lake, tmp_path / "u.toml", scenario.RULES, scenario.BOOK)
    data = DashboardData(lake, CloseSettings.from_config(cfg))
    try:
        with data.acct() as acct:
            by_gpu = {r["gpu"]: r for r in acct.measures(["gpu"], grain=None)}
        cap = sum(r["capacity_gpu_h"] for r in by_gpu.values())
        used = sum(r["used_gpu_h"] for r in by_gpu.values())
        a0 = by_gpu[scenario.A0]
        assert a0["used_gpu_h"] > 0 and a0["sm_ticks"] > 0
        assert a0["used_sm_gpu_h"] == pytest.approx(a0["used_gpu_h"] / 2, abs=1e-6)
        assert all(
            r["sm_ticks"] == 0 and r["used_sm_gpu_h"] == r["used_gpu_h"]
            for g, r in by_gpu.items()
            if g != scenario.A0
        )
        o = data.overview(None, Filters(range="30d"))
        assert o is not None and o["sm"] is True
        assert o["utilization"] == pytest.approx(used / cap)
        assert o["utilization_sm"] == pytest.approx((used - a0["used_gpu_h"] / 2) / cap, abs=1e-9)
        # idle on SM activity: the reserved GPU-hours the SMs did not use, per slice-hour
        assert o["unused_sm_gpu_h"] >= o["reserved_gpu_h"] - o["used_sm_gpu_h"] - 1e-9
        cards = json.loads(json.dumps(pages.overview_cards(o), cls=PlotlyJSONEncoder))
        pct = pages.pct
        assert texts(cards, "card-util") == [pct(o["utilization"])]
        assert texts(cards, "card-util-sm") == [pct(o["utilization_sm"])] != texts(cards, "card-util")
        assert texts(cards, "card-eff-busy") == [pct(o["efficiency"])]
        assert texts(cards, "card-eff-sm") == [pct(o["efficiency_sm"])]
        assert texts(cards, "card-idle-sm") == [pages.num(o["unused_sm_gpu_h"])]
        series = {(r["cluster"]): r for r in o["series"]["cluster"]}
        assert series["east"]["sm_ticks"] > 0 and series["west"]["sm_ticks"] == 0
        fig = pages.over_time(o["series"]["cluster"], "cluster", True, "t")
        assert [t["name"] for t in fig["data"] if "(SM)" in t["name"]] == [
            "east utilization (SM)",
            "west utilization (SM)",
        ]
        s = data.gpu_series(None, Filters())
        assert s is not None
        figs = figures([c.to_plotly_json() for c in pages.gpu_panels(s)])
        assert sorted(figs) == ["gpu-memory", "gpu-power", "gpu-temp", "gpu-timeline", "gpu-timeline-sm"]
        busy = {
            row: z
            for row, z in zip(
                figs["gpu-timeline"]["data"][0]["y"], figs["gpu-timeline"]["data"][0]["z"], strict=True
            )
        }
        sm = {
            row: z
            for row, z in zip(
                figs["gpu-timeline-sm"]["data"][0]["y"], figs["gpu-timeline-sm"]["data"][0]["z"], strict=True
            )
        }
        assert sm["east/node-a GPU 1"] == busy["east/node-a GPU 1"]  # no SM activity: the busy basis
        assert [
            v is None or v < b
            for v, b in zip(sm["east/node-a GPU 0"], busy["east/node-a GPU 0"], strict=True)
        ] == [True, True]
        assert figs["gpu-timeline-sm"]["layout"]["title"]["text"].startswith("Utilization on SM activity")
        # a tenant with slices on A0: its page has both efficiencies; a tenant without, only busy
        with data.acct() as acct:
            sm_tenants = {r["tenant"] for r in acct.measures(["tenant"], grain=None) if r["sm_ticks"]}
            all_tenants = {r["tenant"] for r in acct.measures(["tenant"], grain=None)}
        assert sm_tenants and all_tenants - sm_tenants
        for tenant in sorted(all_tenants):
            d = data.tenant(None, tenant, Filters(range="30d"))
            assert d is not None and d["sm"] is (tenant in sm_tenants)
            page = json.loads(json.dumps(pages.tenant_detail(d), cls=PlotlyJSONEncoder))
            want = [pages.pct(d["efficiency_sm"])] if d["sm"] else []
            assert texts(page, "tenant-eff-sm") == want
    finally:
        data.close()


def test_without_sm_activity_nothing_is_shown_for_it(tmp_path: Path) -> None:
    lake = varied_lake(tmp_path)
    cfg = app_config(lake, tmp_path / "u.toml", scenario.RULES, scenario.BOOK)
    data = DashboardData(lake, CloseSettings.from_config(cfg))
    try:
        o = data.overview(None, Filters(range="30d"))
        assert o is not None and o["sm"] is False
        cards = json.dumps(pages.overview_cards(o), cls=PlotlyJSONEncoder)
        assert "-sm" not in cards and "SM activity" not in cards
        fig = pages.over_time(o["series"]["model"], "model", True, "t")
        assert not [t for t in fig["data"] if "(SM)" in t["name"]]
        s = data.gpu_series(None, Filters())
        assert s is not None
        assert "gpu-timeline-sm" not in figures([c.to_plotly_json() for c in pages.gpu_panels(s)])
    finally:
        data.close()
