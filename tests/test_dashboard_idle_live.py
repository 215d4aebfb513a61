"""The Idle page while a fleet keeps ticking (the demo's live phase): after the rollups move on,
the allocations idle at the latest tick are still listed, and the header's time is that tick.

It went empty before: a pooled connection still on the previous rollups handed its old idle
periods out as the new ones, so no period reached the nodes' new latest tick.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import scenario

from collector.fleet import SimulatedFleet
from dashboards.data import DashboardData
from dashboards.filters import Filters
from gpuledger.config import Config
from gpuledger.demo import _demo_price_book
from warehouse.close import CloseSettings
from warehouse.lake import Lake
from warehouse.rollups import keep_current as keep_rollups_current

INTERVAL = 10.0


def settings_for(fleet: SimulatedFleet) -> CloseSettings:
    cfg = Config()
    cfg.tenants.rules = fleet.tenant_rules()
    cfg.pricing.book = _demo_price_book()
    return CloseSettings.from_config(cfg)


def produce(fleet: SimulatedFleet, lake: Lake, ticks: int) -> None:
    msgs = [m for _ in range(ticks) for m in fleet.next_tick()]
    scenario.write(lake, msgs)


def rebuild(root: Path, settings: CloseSettings) -> None:
    """What the dashboard's rollup timer does between page loads."""
    a = settings.accounting(root)
    try:
        keep_rollups_current(a, 0.0)
    finally:
        a.close()
    time.sleep(1.1)  # the data's fingerprint is looked at most once a second


def test_idle_page_keeps_listing_while_the_fleet_ticks(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    lake = Lake(root)
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    fleet = SimulatedFleet(seed=7, start=start, interval_s=INTERVAL)
    settings = settings_for(fleet)
    produce(fleet, lake, 60 * 6)  # one hour: idle periods of 30 min and more exist
    rebuild(root, settings)
    data = DashboardData(root, settings, connections=2)
    try:
        first = data.idle_now(None, Filters())
        assert first is not None and len(first["rows"]) > 0
        assert first["end"] == data.latest_tick()
        assert first["end"] == start + timedelta(seconds=360 * INTERVAL)
        for _ in range(3):  # the live phase: more ticks, rollups rebuilt, page loaded again
            produce(fleet, lake, 6)
            rebuild(root, settings)
            again = data.idle_now(None, Filters())
            assert again is not None
            assert again["end"] == data.latest_tick()
            assert again["end"] > first["end"]
            # allocations idle through the hour stay idle a minute later: still listed, longer
            assert len(again["rows"]) > 0
            assert max(r["minutes"] for r in again["rows"]) > max(r["minutes"] for r in first["rows"])
            first = again
        # every listed period reaches its node's latest tick
        with data.acct() as a:
            last = dict(a.sql("SELECT node, max(last_ts) FROM r_node_ticks GROUP BY node").fetchall())
        assert all(r["end"] >= last[r["node"]] for r in again["rows"])
    finally:
        data.close()
