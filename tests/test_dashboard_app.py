"""The fleet page over HTTP, as a browser's Dash renderer talks to it (no browser).

A small lake is built in process (simulated fleet -> in-memory bus -> the real ingest
pipeline -> Parquet), the app is served by werkzeug on a free port, and the page, its layout
and its callback are fetched the way the renderer fetches them. The numbers the page shows
are held to the warehouse's own queries over the same lake.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from werkzeug.serving import make_server

from collector.fleet import SimulatedFleet
from dashboards.app import create_app, fleet_figure
from gpuledger.bus import MemoryBus
from gpuledger.config import Config, load_config
from pipeline.ingest import MemoryIngester
from warehouse.lake import Lake
from warehouse.views import Warehouse

START = datetime(2026, 11, 1, 9, 40, tzinfo=UTC)
TICKS = 180  # 30 min at 10 s: ts from 09:40:10 to 10:10:00, so the hours 09:00 and 10:00
HOURS = ["2026-11-01T09:00:00+00:00", "2026-11-01T10:00:00+00:00"]
HTTP_TIMEOUT = 30
SUMMARY_RE = re.compile(
    r"(\d+) GPUs, (\d+) slices, (\d+) tenants; utilization (\d+\.\d) %, "
    r"allocation (\d+\.\d) %, unallocated (\d+\.\d) GPU-h"
)


@dataclass
class BuiltLake:
    path: Path
    fleet: SimulatedFleet
    produced: int


def fill_lake(path: Path, ticks: int = TICKS, seed: int = 7) -> BuiltLake:
    """Simulated fleet -> MemoryBus -> MemoryIngester (inline decoding) -> Parquet lake."""
    cfg = load_config(env={"GPULEDGER_LAKE_PATH": str(path)})
    fleet = SimulatedFleet(seed=seed, start=START, interval_s=10.0)
    bus = MemoryBus()
    ingester = MemoryIngester(bus, Lake(path), cfg, workers=0)
    produced = 0
    try:
        for _ in range(ticks):
            for msg in fleet.next_tick():
                bus.append(cfg.kafka.topic, msg["node"].encode(), orjson.dumps(msg))
                produced += 1
        stats = ingester.drain()
    finally:
        ingester.close()
    assert stats.ticks == produced and stats.rejected == 0
    return BuiltLake(path, fleet, produced)


def app_config(lake: Path, fleet: SimulatedFleet) -> Config:
    cfg = load_config(env={"GPULEDGER_LAKE_PATH": str(lake)})
    cfg.tenants.rules = fleet.tenant_rules()
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltLake:
    return fill_lake(tmp_path_factory.mktemp("dash") / "lake")


@contextmanager
def serve(cfg: Config) -> Iterator[tuple[Any, int]]:
    """The Dash app on 127.0.0.1:<free port> in a thread; always shut down on the way out."""
    app = create_app(cfg)
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dash-test-server", daemon=True)
    thread.start()
    try:
        yield app, server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    assert not thread.is_alive(), "the test server did not stop"


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, str, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type") or "", resp.read()


def callback_body(deps: list[dict[str, Any]], n_intervals: int | None = None) -> dict[str, Any]:
    """The body the renderer POSTs for the page's one callback (built from /_dash-dependencies)."""
    assert len(deps) == 1, deps
    dep = deps[0]
    # "..fleet-graph.figure...summary.children..": several outputs, each "id.property"
    outputs = [
        dict(zip(("id", "property"), part.split(".", 1), strict=True))
        for part in dep["output"].strip(".").split("...")
    ]
    return {
        "output": dep["output"],
        "outputs": outputs,
        "inputs": [{**i, "value": n_intervals} for i in dep["inputs"]],
        "state": dep["state"],
        "changedPropIds": [],
    }


def post_callback(conn: http.client.HTTPConnection, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    status, ctype, raw = request(conn, "POST", "/_dash-update-component", body)
    assert status == 200, raw[:2000]
    assert ctype.startswith("application/json")
    reply = json.loads(raw)
    assert reply["multi"] is True
    return reply["response"]["fleet-graph"]["figure"], reply["response"]["summary"]["children"]


def layout_ids(node: Any) -> list[str]:
    """Every component id in a serialized Dash layout, depth first."""
    if isinstance(node, list):
        return [i for child in node for i in layout_ids(child)]
    if not isinstance(node, dict) or "props" not in node:
        return []
    props = node["props"]
    own = [props["id"]] if "id" in props else []
    return own + layout_ids(props.get("children"))


def test_page_layout_and_callback_over_http(built: BuiltLake) -> None:
    cfg = app_config(built.path, built.fleet)
    with serve(cfg) as (app, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
        try:
            status, ctype, page = request(conn, "GET", "/")
            assert status == 200 and ctype.startswith("text/html")
            html = page.decode()
            assert "<title>gpuledger</title>" in html and 'id="react-entry-point"' in html

            status, _, raw = request(conn, "GET", "/_dash-layout")
            assert status == 200
            layout = json.loads(raw)
            assert layout_ids(layout) == ["summary", "fleet-graph", "tick"]
            assert "gpuledger: fleet" in raw.decode()

            status, _, raw = request(conn, "GET", "/_dash-dependencies")
            assert status == 200
            deps = json.loads(raw)
            assert [d["output"] for d in deps] == list(app.callback_map)
            body = callback_body(deps)
            assert body["outputs"] == [
                {"id": "fleet-graph", "property": "figure"},
                {"id": "summary", "property": "children"},
            ]
            assert body["inputs"] == [{"id": "tick", "property": "n_intervals", "value": None}]
            figure, text = post_callback(conn, body)
            figure_again, text_again = post_callback(conn, callback_body(deps, n_intervals=1))
        finally:
            conn.close()

    assert (figure_again, text_again) == (figure, text)  # same lake, same answer

    clusters = sorted(built.fleet.clusters)
    assert len(clusters) >= 2
    names = [t["name"] for t in figure["data"]]
    assert names == [f"{c} {series}" for c in clusters for series in ("utilization", "allocated")]

    wh = Warehouse(built.path, cfg.tenants.rules)
    try:
        s = wh.summary()
        # Per cluster and hour, aggregated here independently of fleet_figure (across GPU models).
        expected = {
            (cluster, hour.isoformat()): (util, alloc)
            for cluster, hour, util, alloc in wh.sql("""
                SELECT cluster, hour,
                       round(100 * sum(used_s) / sum(capacity_s), 2),
                       round(100 * sum(reserved_s) / sum(capacity_s), 2)
                FROM gpu_acct GROUP BY ALL""").fetchall()
        }
    finally:
        wh.close()

    for trace in figure["data"]:
        cluster, series = trace["name"].rsplit(" ", 1)
        assert trace["type"] == "scatter"
        assert trace["x"] == HOURS, trace["x"]  # every hour the ticks cover, in order
        assert len(trace["y"]) == len(trace["x"])
        assert all(0 <= y <= 100 for y in trace["y"]), trace["y"]
        col = 0 if series == "utilization" else 1
        assert trace["y"] == [expected[(cluster, x)][col] for x in trace["x"]]
    assert any(y > 0 for t in figure["data"] for y in t["y"])
    assert figure["layout"]["yaxis"]["range"] == [0, 100]

    m = SUMMARY_RE.fullmatch(text)
    assert m, text
    gpus, slices, tenants = (int(g) for g in m.groups()[:3])
    assert (gpus, slices, tenants) == (s["gpus"], s["slices"], s["tenants"])
    assert gpus == len(built.fleet.gpus)
    assert tenants > 1  # the configured rules were applied: without them every slice is "unassigned"
    assert float(m.group(4)) == round(100 * s["utilization"], 1)
    assert float(m.group(5)) == round(100 * s["allocation_rate"], 1)
    assert float(m.group(6)) == round(s["unallocated_gpu_h"], 1)


def test_page_started_on_an_empty_lake_shows_data_once_it_arrives(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    fleet = SimulatedFleet(seed=7, start=START, interval_s=10.0)
    with serve(app_config(lake, fleet)) as (_, port):
        # One keep-alive connection: the same server thread (and its warehouse) answers both.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
        try:
            status, _, raw = request(conn, "GET", "/_dash-dependencies")
            assert status == 200
            body = callback_body(json.loads(raw))
            figure, text = post_callback(conn, body)
            assert figure["data"] == []
            assert text.startswith("0 GPUs, 0 slices, 0 tenants;"), text

            built = fill_lake(lake, ticks=30)
            figure, text = post_callback(conn, callback_body(json.loads(raw), n_intervals=1))
        finally:
            conn.close()
    m = SUMMARY_RE.fullmatch(text)
    assert m, text
    assert int(m.group(1)) == len(built.fleet.gpus)
    assert len(figure["data"]) == 2 * len(built.fleet.clusters)
    assert all(t["x"] == HOURS[:1] for t in figure["data"])  # 09:40-09:45 is all in hour 09


def _row(cluster: str, hour: datetime, capacity: float, used: float, reserved: float) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "model": "any",
        "hour": hour,
        "capacity_gpu_h": capacity,
        "used_gpu_h": used,
        "reserved_gpu_h": reserved,
    }


def test_fleet_figure_sums_models_per_cluster_and_hour() -> None:
    h9 = datetime(2026, 11, 1, 9, tzinfo=UTC)
    h10 = h9 + timedelta(hours=1)
    rows = [
        # given out of order: traces come sorted by cluster, points by hour
        _row("b", h10, 4.0, 1.0, 4.0),
        _row("a", h9, 2.0, 0.5, 1.5),  # a@09: two models, capacity 2 + 1 = 3 GPU-h
        _row("b", h9, 8.0, 0.0, 2.0),
        _row("a", h9, 1.0, 0.25, 1.0),  # used 0.75 / 3 = 25 %, reserved 2.5 / 3 = 83.33 %
        _row("a", h10, 3.0, 1.0, 0.0),  # used 1 / 3 = 33.33 %, reserved 0 %
    ]
    fig = fleet_figure(rows)
    got = [(t["name"], t["x"], t["y"]) for t in fig["data"]]
    x = [h9.isoformat(), h10.isoformat()]
    assert got == [
        ("a utilization", x, [25.0, 33.33]),
        ("a allocated", x, [83.33, 0.0]),
        ("b utilization", x, [0.0, 25.0]),
        ("b allocated", x, [25.0, 100.0]),
    ]
    assert [t.get("line") for t in fig["data"]] == [None, {"dash": "dot"}, None, {"dash": "dot"}]
    assert fig["layout"]["yaxis"]["range"] == [0, 100]


def test_fleet_figure_zero_capacity_hour_and_no_rows() -> None:
    h9 = datetime(2026, 11, 1, 9, tzinfo=UTC)
    fig = fleet_figure([_row("a", h9, 0.0, 0.0, 0.0)])
    assert [(t["name"], t["y"]) for t in fig["data"]] == [("a utilization", [0.0]), ("a allocated", [0.0])]
    assert fleet_figure([])["data"] == []
