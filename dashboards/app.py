"""The first dashboard page: fleet utilization and allocation over time, per cluster.

Small on purpose (the full dashboards are their own piece of work): one graph read from the
warehouse's hourly query, refreshed every 30 s, so the demo shows data flowing end to end.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import dash
from dash import dcc, html
from dash.dependencies import Input, Output

from gpuledger.config import Config
from warehouse.views import Warehouse


def fleet_figure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Utilization and allocation rate per cluster per hour as a plotly figure dict."""
    by: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    for r in rows:
        acc = by[r["cluster"]][r["hour"]]
        acc[0] += r["capacity_gpu_h"]
        acc[1] += r["used_gpu_h"]
        acc[2] += r["reserved_gpu_h"]
    traces = []
    for cluster in sorted(by):
        hours = sorted(by[cluster])
        cap = [by[cluster][h][0] or 1.0 for h in hours]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{cluster} utilization",
                "x": [h.isoformat() for h in hours],
                "y": [round(100 * by[cluster][h][1] / c, 2) for h, c in zip(hours, cap, strict=True)],
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "line": {"dash": "dot"},
                "name": f"{cluster} allocated",
                "x": [h.isoformat() for h in hours],
                "y": [round(100 * by[cluster][h][2] / c, 2) for h, c in zip(hours, cap, strict=True)],
            }
        )
    return {
        "data": traces,
        "layout": {
            "title": {"text": "Fleet utilization and allocation (% of GPU-hours)"},
            "yaxis": {"range": [0, 100], "ticksuffix": " %"},
            "xaxis": {"title": {"text": "hour (UTC)"}},
            "height": 480,
        },
    }


def create_app(cfg: Config) -> dash.Dash:
    app = dash.Dash(__name__, title="gpuledger")
    local = threading.local()

    def warehouse() -> Warehouse:
        # One DuckDB connection per server thread: connections are not shared across threads.
        if not hasattr(local, "wh"):
            local.wh = Warehouse(cfg.lake.path, cfg.tenants.rules, cfg.tenants.default)
        return local.wh

    app.layout = html.Div(
        [
            html.H2("gpuledger: fleet"),
            html.Div(id="summary"),
            dcc.Graph(id="fleet-graph"),
            dcc.Interval(id="tick", interval=30_000),
        ],
        style={"fontFamily": "sans-serif", "margin": "1em 2em"},
    )

    @app.callback(
        Output("fleet-graph", "figure"), Output("summary", "children"), Input("tick", "n_intervals")
    )
    def refresh(_n: int | None) -> tuple[dict[str, Any], str]:
        wh = warehouse()
        s = wh.summary()
        text = (
            f"{s['gpus']} GPUs, {s['slices']} slices, {s['tenants']} tenants; "
            f"utilization {100 * (s['utilization'] or 0):.1f} %, "
            f"allocation {100 * (s['allocation_rate'] or 0):.1f} %, "
            f"unallocated {s['unallocated_gpu_h'] or 0:.1f} GPU-h"
        )
        return fleet_figure(wh.fleet_hourly()), text

    return app
