"""The dashboards over HTTP on a lake written by the real ingest pipeline (simulated fleet).

A small lake is built in process (simulated fleet -> in-memory bus -> ingest -> Parquet), its
rollups are brought up to date, and the app is served on a loopback port. What the GPU heatmap
shows is held to the raw-sample views of the same lake (an independent path to the same numbers),
and a page started on an empty lake shows the data once rollups appear, without a restart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from dashboard_client import Client, app_config, call, serve, write_users
from lake_views import LakeViews as Warehouse

from collector.fleet import SimulatedFleet
from dashboards.app import create_app
from gpuledger.bus import MemoryBus
from gpuledger.config import load_config
from pipeline.ingest import MemoryIngester
from warehouse.accounting import Accounting
from warehouse.lake import Lake

START = datetime(2026, 11, 1, 9, 40, tzinfo=UTC)
PASSWORD = "app-test-password"


def fill_lake(path: Path, ticks: int, seed: int = 7) -> SimulatedFleet:
    """Simulated fleet -> MemoryBus -> MemoryIngester (inline decoding) -> Parquet lake -> rollups."""
    cfg = load_config(env={"GPULEDGER_LAKE_PATH": str(path), "GPULEDGER_LAKE_MAX_TICK_AGE_S": "0"})
    fleet = SimulatedFleet(seed=seed, start=START, interval_s=10.0)
    bus = MemoryBus()
    ingester = MemoryIngester(bus, Lake(path), cfg, workers=0)
    try:
        for _ in range(ticks):
            for msg in fleet.next_tick():
                bus.append(cfg.kafka.topic, msg["node"].encode(), orjson.dumps(msg))
        stats = ingester.drain()
    finally:
        ingester.close()
    assert stats.rejected == 0
    acct = Accounting(path, tenant_rules=fleet.tenant_rules())
    acct.update()
    acct.close()
    return fleet


def find(node: Any, ident: str) -> Any:
    """The props of the component with id `ident` in a Dash JSON tree."""
    if isinstance(node, list):
        for n in node:
            if (hit := find(n, ident)) is not None:
                return hit
    elif isinstance(node, dict):
        props = node.get("props")
        if isinstance(props, dict) and props.get("id") == ident:
            return props
        for v in node.values():
            if isinstance(v, dict | list) and (hit := find(v, ident)) is not None:
                return hit
    return None


def signed_in(port: int) -> tuple[Client, list]:
    c = Client(port)
    assert c.login("root", PASSWORD)[0] == 302
    return c, json.loads(c.get("/_dash-dependencies")[2])


@pytest.fixture
def users(tmp_path: Path) -> Path:
    f = tmp_path / "users.toml"
    write_users(f, PASSWORD, {"root": None})
    return f


def test_heatmap_matches_the_raw_sample_views(tmp_path: Path, users: Path) -> None:
    lake = tmp_path / "lake"
    fleet = fill_lake(lake, ticks=120)
    cfg = app_config(lake, users, fleet.tenant_rules(), [])
    with serve(create_app(cfg)) as port:
        c, deps = signed_in(port)
        status, resp = call(c, deps, "gpu-heatmap", {"url.pathname": "/gpus", "url.search": ""})
        assert status == 200
        hm = resp["response"]["gpu-heatmap"]["figure"]["data"][0]
        status, resp = call(c, deps, "overview-cards", {"url.pathname": "/", "url.search": ""})
        cost = json.dumps(resp["response"]["overview-cards"]["children"])
        # Drill down to the GPU with the most processes: its process table is the raw samples' own.
        wh = Warehouse(lake, fleet.tenant_rules())
        try:
            gpu, hour = wh.sql("""
                SELECT gpu_uuid, max(date_trunc('hour', ts)) AS h FROM process_sample
                WHERE slice_id IS NOT NULL GROUP BY gpu_uuid
                ORDER BY count(DISTINCT (pid, slice_id)) DESC, 1 LIMIT 1""").fetchall()[0]
            (want,) = wh.sql(f"""
                SELECT count(DISTINCT (pid, slice_id)) FROM process_sample WHERE gpu_uuid = '{gpu}'
                  AND date_trunc('hour', ts) = TIMESTAMPTZ '{hour.isoformat()}'""").fetchall()[0]
        finally:
            wh.close()
        status, resp = call(c, deps, "gpu-detail", {"url.pathname": "/gpus", "url.search": f"?gpu={gpu}"})
        assert status == 200
        table = find(resp, "gpu-processes")
        rows = table["children"][1]["props"]["children"]  # Thead, Tbody -> its rows
        assert want > 0 and len(rows) == want, (want, len(rows), gpu)
        pids = sorted(int(r["props"]["children"][0]["props"]["children"]) for r in rows)
        assert all(p > 0 for p in pids)
    wh = Warehouse(lake, fleet.tenant_rules())
    try:
        raw = {
            g: round(100 * u, 2)
            for g, u in wh.sql(
                "SELECT uuid, sum(used_s) / sum(capacity_s) FROM gpu_acct GROUP BY ALL"
            ).fetchall()
        }
    finally:
        wh.close()
    shown = {
        g: z
        for zs, gs in zip(hm["z"], hm["customdata"], strict=True)
        for z, g in zip(zs, gs, strict=True)
        if g
    }
    assert len(shown) == len(fleet.gpus) == len(raw)
    assert shown == pytest.approx(raw, abs=0.011)  # rounding to 0.01 % on both sides
    assert any(v > 0 for v in shown.values())
    # no price book: the cost card says so instead of showing $0
    assert "chargeback needs a price book" in cost


def test_page_started_on_an_empty_lake_shows_data_once_rollups_arrive(tmp_path: Path, users: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    fleet = SimulatedFleet(seed=7, start=START, interval_s=10.0)
    cfg = app_config(lake, users, fleet.tenant_rules(), [])
    with serve(create_app(cfg)) as port:
        c, deps = signed_in(port)
        status, resp = call(c, deps, "overview-cards", {"url.pathname": "/", "url.search": ""})
        assert status == 200
        assert "No data yet" in json.dumps(resp)
        fill_lake(lake, ticks=30)
        import time

        time.sleep(1.1)  # the rollup fingerprint is looked at once a second
        status, resp = call(c, deps, "gpu-heatmap", {"url.pathname": "/gpus", "url.search": "?range=24h"})
        assert status == 200
        hm = resp["response"]["gpu-heatmap"]["figure"]["data"][0]
        assert sum(1 for row in hm["customdata"] for g in row if g) == len(fleet.gpus)
