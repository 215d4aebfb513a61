"""The Caps page (`/caps`): what the enforcer did to the vGPU caps (docs/enforcer.md).

Per slice, cap against use over time with the recommendation band (floor .. recommendation of the
decisions recorded for it); the decisions of the range with their state (recorded, held, pending,
applied, refused, applies-at-restart, expired); memory reclaimed per tenant and pool in GiB and
GPU-equivalents. Data: warehouse/enforcer_views.py, asked with the signed-in principal's tenants
only (a viewer never sees another tenant's slices or decisions), as on every page.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dash import dcc, html
from dash.dependencies import Output

from dashboards.filters import Filters

PATH, LABEL = "/caps", "Caps"
TABLE = {"borderCollapse": "collapse", "fontSize": "90%", "marginTop": ".5em"}
CELL = {"border": "1px solid #e3e3e3", "padding": ".2em .5em", "textAlign": "right"}
LCELL = {**CELL, "textAlign": "left"}
TOP = 6  # slices drawn (largest reclaim first)


def skeleton() -> list[Any]:
    return [html.Div(id="caps-body")]


def _table(tid: str, head: list[str], rows: list[list[Any]], left: int = 1) -> html.Table:
    return html.Table(
        [html.Tr([html.Th(h, style=LCELL if i < left else CELL) for i, h in enumerate(head)])]
        + [html.Tr([html.Td(v, style=LCELL if i < left else CELL) for i, v in enumerate(r)]) for r in rows],
        id=tid,
        style=TABLE,
    )


def figure(sid: str, series: list[dict[str, Any]], band: list[dict[str, Any]]) -> dict[str, Any]:
    """Cap and use (5-minute peaks) of one slice, with the recorded recommendation band as steps."""
    t = [p["t"] for p in series]
    data: list[dict[str, Any]] = []
    if band:
        bt = [b["t"] for b in band] + ([t[-1]] if t and t[-1] > band[-1]["t"] else [])
        lo = [b["floor_mib"] for b in band] + ([band[-1]["floor_mib"]] if len(bt) > len(band) else [])
        hi = [b["recommendation_mib"] for b in band] + (
            [band[-1]["recommendation_mib"]] if len(bt) > len(band) else []
        )
        step = {"shape": "hv"}
        data.append({"x": bt, "y": lo, "name": "floor", "mode": "lines", "line": {**step, "width": 0}})
        data.append(
            {
                "x": bt,
                "y": hi,
                "name": "recommendation band",
                "mode": "lines",
                "fill": "tonexty",
                "line": {**step, "width": 0},
                "fillcolor": "rgba(44,160,44,0.2)",
            }
        )
    data.append(
        {"x": t, "y": [p["cap_mib"] for p in series], "name": "cap", "mode": "lines", "line": {"shape": "hv"}}
    )
    data.append({"x": t, "y": [p["used_mib"] for p in series], "name": "use (5-min peak)", "mode": "lines"})
    return {
        "data": data,
        "layout": {
            "title": {"text": sid, "font": {"size": 12}},
            "height": 260,
            "margin": {"l": 60, "r": 10, "t": 30, "b": 30},
            "yaxis": {"title": {"text": "MiB"}, "rangemode": "tozero"},
        },
    }


def body(v: dict[str, Any]) -> list[Any]:
    """The page from a caps_view() result."""
    if not v["slices"] and not v["decisions"]:
        return [
            html.P("No vGPU slice or enforcer decision in your view for this time range.", id="caps-empty")
        ]
    out: list[Any] = [html.H3("Memory reclaimed (allocation - cap now)")]
    out.append(
        _table(
            "caps-reclaimed",
            ["tenant", "pool", "vGPU slices", "shrunk", "GiB reclaimed", "GPU-equivalents"],
            [
                [a["tenant"], a["pool"], a["slices"], a["shrunk"], f"{a['gib']:,.1f}", f"{a['gpu_eq']:.2f}"]
                for a in v["by_tenant_pool"]
            ],
            left=2,
        )
    )
    out.append(html.H3("Cap against use"))
    graphs = [
        dcc.Graph(id={"type": "caps-graph", "slice": sid}, figure=figure(sid, pts, v["band"].get(sid, [])))
        for sid, pts in v["series"].items()
    ]
    out.append(html.Div(graphs or [html.P("No samples in the range.")], id="caps-graphs"))
    out.append(html.H3("Decisions"))
    out.append(
        _table(
            "caps-decisions",
            ["issued", "tenant", "slice", "resource", "action", "old", "new", "mode", "state", "reason"],
            [
                [
                    d["issued_at"].strftime("%Y-%m-%d %H:%M"),
                    d["tenant"],
                    d["slice_id"],
                    d["resource"],
                    d["action"],
                    d["old_cap"],
                    d["new_cap"],
                    d["mode"],
                    d["state"],
                    d["held"] or d["ack_reason"] or d["reason"],
                ]
                for d in v["decisions"]
            ],
            left=5,
        )
    )
    return out


def narrow(v: dict[str, Any], clusters: tuple[str, ...], models: tuple[str, ...]) -> dict[str, Any]:
    """The view cut to the cluster and GPU model filters (a pool is "cluster/model")."""
    if not clusters and not models:
        return v
    from warehouse.enforcer_views import reclaimed_by

    def keep(pool: str) -> bool:
        c, _, m = pool.partition("/")
        return (not clusters or c in clusters) and (not models or m in models)

    slices = [r for r in v["slices"] if keep(r["pool"])]
    ids = {r["slice_id"] for r in slices}
    return {
        **v,
        "slices": slices,
        "by_tenant_pool": reclaimed_by(slices),
        "decisions": [d for d in v["decisions"] if keep(d["pool"])],
        "series": {k: x for k, x in v["series"].items() if k in ids},
        "band": {k: x for k, x in v["band"].items() if k in ids},
    }


def register(app: Any, data: Any, cfg: Any, principal: Any, inputs: list[Any]) -> None:
    """The page's data callback; `data` is the app's DashboardData (its lake and tenant rules)."""
    from warehouse.enforcer_views import caps_view

    @app.callback(Output("caps-body", "children"), *inputs)
    def caps(_path: Any, search: str | None, _n: Any) -> list[Any]:
        f = Filters.from_search(search)
        end = data.latest_tick()
        if end is None:
            return [html.P("No data yet.", id="caps-empty")]
        allowed = principal().allowed(f.tenants)
        v = caps_view(
            data.lake,
            end + timedelta(seconds=1),
            allowed,
            cfg.tenants.rules,
            cfg.tenants.default,
            hours=f.hours,
            top=TOP,
        )
        return body(narrow(v, f.clusters, f.models))
