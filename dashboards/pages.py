"""Page skeletons, tables and figures, built from what `dashboards.data` returns (no queries here).

Figures are plain plotly dicts and tables plain HTML, so that what a callback sends can be read
and checked as JSON by the isolation tests.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from dash import dcc, html

from dashboards.filters import RANGES, Filters

PAGES = [
    ("/", "Overview"),
    ("/tenants", "Tenants"),
    ("/chargeback", "Chargeback"),
    ("/gpus", "GPUs"),
    ("/idle", "Idle"),
    ("/caps", "Caps"),  # dashboards/caps_page.py
]
CARD = {"border": "1px solid #ddd", "borderRadius": "6px", "padding": ".6em 1em", "minWidth": "11em"}
TABLE = {"borderCollapse": "collapse", "fontSize": "90%", "marginTop": ".5em"}
CELL = {"border": "1px solid #e3e3e3", "padding": ".2em .5em", "textAlign": "right"}
LCELL = {**CELL, "textAlign": "left"}


UNALLOCATED_LABEL = "unallocated capacity"


def money(v: Decimal | None, currency: str) -> str:
    return "—" if v is None else f"{currency} {Decimal(v).quantize(Decimal('0.01')):,.2f}"


def plain(v: Decimal) -> str:
    """A decimal in full, at least to the cent: 2 -> '2.00', 2.905 -> '2.905' (never 1E+1)."""
    d = Decimal(v).normalize()
    exp = d.as_tuple().exponent
    places = max(2, -exp) if isinstance(exp, int) else 2
    return f"{d:,.{places}f}"


def exact(v: Decimal | None, currency: str) -> str:
    """The exact amount (the ledger keeps cents and the exact value) for a tooltip."""
    return "" if v is None else f"{currency} {plain(v)} exact"


def money_cell(v: Decimal | None, currency: str, exact_value: Decimal | None = None) -> html.Span:
    """Money to the cent, its exact value in the tooltip (a 56-digit number is never printed)."""
    return html.Span(money(v, currency), title=exact(v if exact_value is None else exact_value, currency))


def unit_price(v: Decimal, currency: str) -> str:
    """A price with its unit: cents at least, more places only where the price has them."""
    return f"{currency} {plain(v)} / GPU-h"


def tenant_label(t: str) -> str:
    """The ledger's `__unallocated__` line is the platform's unused capacity: say so in words."""
    from warehouse.ledger_model import UNALLOCATED_TENANT

    return UNALLOCATED_LABEL if t == UNALLOCATED_TENANT else t


def pct(v: float | Decimal | None) -> str:
    return "—" if v is None else f"{100 * float(v):.1f} %"


def num(v: float | Decimal | None, places: int = 2) -> str:
    return "—" if v is None else f"{float(v):,.{places}f}"


def when(t: datetime | None) -> str:
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M")


def card(label: str, value: str, cid: str) -> html.Div:
    return html.Div(
        [
            html.Div(label, style={"color": "#666", "fontSize": "85%"}),
            html.Div(value, id=cid, style={"fontSize": "140%"}),
        ],
        style=CARD,
    )


MAX_ROWS = 100


def table(header: list[str], rows: list[list[Any]], tid: str, left: int = 1) -> html.Div:
    """A plain table (at most MAX_ROWS rows, then a count of the rest); the first `left` columns are
    text (left-aligned), the rest numbers."""
    more = [html.P(f"… and {len(rows) - MAX_ROWS} more", id=f"{tid}-more")] if len(rows) > MAX_ROWS else []
    return html.Div([_table(header, rows[:MAX_ROWS], tid, left), *more])


def _table(header: list[str], rows: list[list[Any]], tid: str, left: int) -> html.Table:
    return html.Table(
        [
            html.Thead(
                html.Tr([html.Th(h, style=LCELL if i < left else CELL) for i, h in enumerate(header)])
            ),
            html.Tbody(
                [
                    html.Tr([html.Td(c, style=LCELL if i < left else CELL) for i, c in enumerate(r)])
                    for r in rows
                ]
            ),
        ],
        id=tid,
        style=TABLE,
    )


def nav(search: str, path: str) -> list[Any]:
    keep = Filters.from_search(search).with_(month=None, gpu=None).to_search()
    links = []
    for href, label in PAGES:
        active = path == href or (href != "/" and path.startswith(href + "/"))
        links.append(
            dcc.Link(
                label,
                href=href + keep,
                id=f"nav-{label.lower()}",
                style={"marginRight": "1.2em", "fontWeight": "bold" if active else "normal"},
            )
        )
    return links


def filter_bar(f: Filters, options: dict[str, list[str]], month: bool, months: list[str]) -> html.Div:
    def dd(fid: str, opts: list[str], value: tuple[str, ...], placeholder: str) -> dcc.Dropdown:
        return dcc.Dropdown(
            id=fid,
            options=[{"label": o, "value": o} for o in opts],
            value=list(value),
            multi=True,
            placeholder=placeholder,
            style={"minWidth": "14em"},
        )

    items = [
        dd("f-cluster", options["clusters"], f.clusters, "all clusters"),
        dd("f-model", options["models"], f.models, "all GPU models"),
        dd(
            "f-tenant",
            options["tenants"],
            tuple(t for t in f.tenants if t in options["tenants"]),
            "all tenants",
        ),
        dcc.Dropdown(
            id="f-range",
            options=[{"label": f"last {r}", "value": r} for r in RANGES],
            value=f.range,
            clearable=False,
            style={"minWidth": "9em"},
        ),
    ]
    if month:
        items.append(
            dcc.Dropdown(
                id="f-month",
                options=[{"label": m, "value": m} for m in months],
                value=f.month or (months[0] if months else None),
                clearable=False,
                style={"minWidth": "9em"},
            )
        )
    return html.Div(
        items, id="filters", style={"display": "flex", "gap": ".6em", "flexWrap": "wrap", "margin": ".6em 0"}
    )


def skeleton(path: str) -> list[Any]:
    """The containers a page's data callback fills."""
    if path == "/":
        return [
            html.Div(id="overview-cards", style={"display": "flex", "gap": ".8em", "flexWrap": "wrap"}),
            html.Div(id="overview-graphs"),
        ]
    if path == "/tenants":
        return [html.Div(id="tenants-table")]
    if path.startswith("/tenants/"):
        return [html.Div(id="tenant-detail")]
    if path == "/chargeback":
        return [html.Div(id="chargeback-body")]
    if path == "/gpus":
        return [
            dcc.Graph(id="gpu-heatmap", figure={"data": [], "layout": {"height": 300}}),
            html.Div(id="gpu-detail"),
        ]
    if path == "/idle":
        return [html.Div(id="idle-table")]
    if path == "/caps":
        from dashboards import caps_page

        return caps_page.skeleton()
    return [html.H3("Page not found", id="not-found")]


def no_data() -> html.Div:
    return html.Div("No data yet: the lake has no rollups in this view.", className="no-data")


# -- overview ------------------------------------------------------------------------------------


def overview_cards(o: dict[str, Any]) -> list[Any]:
    """Money and idle cover the month to date (what the Tenants page, the Chargeback page and the
    month's report show); the rates cover the range chosen in the filter bar. Each card says which."""
    cur = o["currency"]
    mtd = f"{o['month']} to date"
    rng = f"{when(o['start'])} to {when(o['end'])} UTC"
    cards = [
        card(f"Cost, {mtd}", o["cost_error"] or money(o["cost_to_date"], cur), "card-cost"),
        card(f"Idle GPU-h, {mtd}", num(o["idle_gpu_h"]), "card-idle-h"),
        card(f"Idle cost, {mtd}", money(o["idle_cost"], cur), "card-idle-cost"),
        card(f"Unobserved GPU-h, {mtd}", num(o["unobserved_gpu_h"]), "card-unobserved"),
    ]
    if o["scope"] == "fleet":
        cards += [
            card(f"Utilization, last {o['range']}", pct(o["utilization"]), "card-util"),
            card(f"Allocation rate, last {o['range']}", pct(o["allocation_rate"]), "card-alloc"),
        ]
    else:
        cards += [
            card(f"Efficiency (used / reserved), last {o['range']}", pct(o["efficiency"]), "card-eff"),
            card(f"Reserved GPU-h, last {o['range']}", num(o["reserved_gpu_h"]), "card-reserved"),
        ]
    return [
        *cards,
        html.Div(f"last {o['range']}: {rng}", id="card-window", style={"color": "#666", "alignSelf": "end"}),
    ]


def over_time(rows: list[dict[str, Any]], dim: str, fleet: bool, title: str) -> dict[str, Any]:
    """Utilization and allocation (fleet) or efficiency (tenants), plus idle GPU-h, per `dim` value."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[str(r[dim])].append(r)
    data: list[dict[str, Any]] = []
    for key in sorted(by):
        pts = sorted(by[key], key=lambda r: r["period"])
        x = [r["period"].isoformat() for r in pts]
        if fleet:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{key} utilization",
                    "x": x,
                    "y": [round(100 * float(r["utilization"] or 0), 2) for r in pts],
                }
            )
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "line": {"dash": "dot"},
                    "name": f"{key} allocated",
                    "x": x,
                    "y": [round(100 * float(r["allocation_rate"] or 0), 2) for r in pts],
                }
            )
        else:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{key} efficiency",
                    "x": x,
                    "y": [round(100 * float(r["efficiency"] or 0), 2) for r in pts],
                }
            )
        data.append(
            {
                "type": "bar",
                "name": f"{key} idle GPU-h",
                "x": x,
                "yaxis": "y2",
                "opacity": 0.35,
                "y": [round(float(r["idle_gpu_h"] or 0), 4) for r in pts],
            }
        )
    return {
        "data": data,
        "layout": {
            "title": {"text": title},
            "yaxis": {"range": [0, 100], "ticksuffix": " %"},
            "yaxis2": {
                "overlaying": "y",
                "side": "right",
                "title": {"text": "idle GPU-h"},
                "rangemode": "tozero",
                "tickmode": "auto",  # its own round ticks, not the % axis's grid carried over
                "nticks": 6,
                "showgrid": False,
            },
            "xaxis": {"title": {"text": "UTC"}},
            "barmode": "stack",
            "height": 420,
            "legend": {"orientation": "h"},
        },
    }


def overview_graphs(o: dict[str, Any]) -> list[Any]:
    fleet = o["scope"] == "fleet"
    what = "Utilization, allocation and idle" if fleet else "Efficiency and idle of your tenants"
    return [
        dcc.Graph(
            id="graph-cluster",
            figure=over_time(o["series"]["cluster"], "cluster", fleet, f"{what} by cluster"),
        ),
        dcc.Graph(
            id="graph-model", figure=over_time(o["series"]["model"], "model", fleet, f"{what} by GPU model")
        ),
    ]


# -- tenants ---------------------------------------------------------------------------------------


def tenants_table(t: dict[str, Any], search: str) -> list[Any]:
    cur = t["currency"]
    rows = [
        [
            dcc.Link(tenant_label(r["tenant"]), href=f"/tenants/{quote(r['tenant'], safe='')}{search}"),
            money_cell(r["cost_to_date"], cur),
            money_cell(r["cost_last_month"], cur),
            num(r["reserved_gpu_h"]),
            num(r["used_gpu_h"]),
            pct(r["efficiency"]),
            num(r["idle_gpu_h"]),
            r["slices"],
        ]
        for r in t["rows"]
    ]
    return [
        html.H3(f"Tenants, {t['month']} to date"),
        table(
            [
                "tenant",
                f"cost {t['month']}",
                f"cost {t['last_month']}",
                "reserved GPU-h",
                "used GPU-h",
                "efficiency",
                "idle GPU-h",
                "slices",
            ],
            rows,
            "tenants",
            left=1,
        ),
    ]


def tenant_detail(d: dict[str, Any]) -> list[Any]:
    cur = d["currency"]
    trend = sorted(d["trend"], key=lambda r: r["period"])
    x = [r["period"].isoformat() for r in trend]
    fig = {
        "data": [
            {
                "type": "scatter",
                "mode": "lines",
                "name": "reserved GPU-h",
                "x": x,
                "y": [round(float(r["reserved_gpu_h"] or 0), 4) for r in trend],
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "used GPU-h",
                "x": x,
                "y": [round(float(r["used_gpu_h"] or 0), 4) for r in trend],
            },
        ],
        "layout": {"title": {"text": f"{d['tenant']}: reserved and used GPU-hours"}, "height": 360},
    }
    slices = [
        [
            s["slice"],
            s["workload"],
            s["kind"],
            s["cluster"],
            s["model"],
            s["node"],
            num(s["reserved_gpu_h"]),
            num(s["used_gpu_h"]),
            pct(s["efficiency"]),
        ]
        for s in d["slices"]
    ]
    idle = [
        [
            i["workload"],
            i["node"],
            i["model"],
            when(i["start"]),
            when(i["end"]),
            num(i["minutes"], 0),
            num(i["gpu_hours"]),
            money(i["cost"], cur),
        ]
        for i in d["idle"]
    ]
    return [
        html.H3(f"Tenant {d['tenant']}", id="tenant-name"),
        html.Div(
            [
                card(f"Cost {d['month']} to date", money(d["cost_to_date"], cur), "tenant-cost"),
                card(f"Cost {d['last_month']}", money(d["cost_last_month"], cur), "tenant-cost-last"),
                card("Efficiency (used / reserved)", pct(d["efficiency"]), "tenant-eff"),
                card("Slices held", str(len(d["slices"])), "tenant-slices"),
            ],
            style={"display": "flex", "gap": ".8em"},
        ),
        dcc.Graph(id="tenant-trend", figure=fig),
        html.H4("Slices held"),
        table(
            [
                "slice",
                "workload",
                "kind",
                "cluster",
                "model",
                "node",
                "reserved GPU-h",
                "used GPU-h",
                "efficiency",
            ],
            slices,
            "tenant-slice-table",
            left=6,
        ),
        html.H4("Idle periods"),
        table(
            ["workload", "node", "model", "start", "end", "minutes", "GPU-h", "cost"],
            idle,
            "tenant-idle-table",
            left=5,
        ),
    ]


# -- chargeback --------------------------------------------------------------------------------------


def chargeback(c: dict[str, Any], tenants: list[str], admin: bool) -> list[Any]:
    if c["month"] is None:
        return [no_data()]
    cur, month = c["currency"], c["month"]
    state = f"closed; ledger manifest sha256 {c['source']}" if c["closed"] else c["source"]
    if c["error"]:
        return [
            html.P(f"{month}: {state}"),
            html.P(c["error"], id="chargeback-error", style={"color": "#b00"}),
        ]
    check_title = ""
    if admin:
        check = (
            f"Conservation: lines add up to {money(c['sum_cents'], cur)}; capacity x price = "
            f"{money(c['expected_exact'], cur)}: " + ("ok" if c["conservation_ok"] else "FAILED")
        )
        check_title = (
            f"lines: {exact(c['sum_exact'], cur)}; capacity x price: {exact(c['expected_exact'], cur)}"
        )
    else:
        check = "Conservation check of the period (all tenants, on the server): " + (
            "ok" if c["conservation_ok"] else "FAILED"
        )
    # An admin sees the ledger's line numbers; a tenant viewer its own lines numbered 1.., so that
    # the gaps between them do not tell how many lines other tenants have.
    rows = [
        [
            ln.line_no if admin else i,
            ln.line_type,
            tenant_label(ln.tenant),
            ln.cluster,
            html.Span(ln.gpu_model, style={"whiteSpace": "nowrap"}),
            ln.price_from.isoformat(),
            num(ln.gpu_hours, 4),
            unit_price(ln.unit_price, cur),
            money_cell(ln.cost, cur, ln.cost_exact),
        ]
        for i, ln in enumerate(c["lines"], start=1)
    ]
    links: list[Any] = []
    scopes: list[str | None] = [None] if admin or len(tenants) == 1 else []
    scopes += tenants if admin or len(tenants) > 1 else []
    for t in scopes:
        q = f"?tenant={quote(t, safe='')}" if t else ""
        label = t or ("fleet" if admin else tenants[0])
        links.append(
            html.Div(
                [
                    html.Span(f"{label}: "),
                    html.A("CSV", href=f"/download/{month}.csv{q}", id=f"dl-csv-{label}", download=""),
                    html.Span(" · "),
                    html.A(
                        "FOCUS", href=f"/download/{month}.focus.csv{q}", id=f"dl-focus-{label}", download=""
                    ),
                    html.Span(" · "),
                    html.A("PDF", href=f"/download/{month}.pdf{q}", id=f"dl-pdf-{label}", download=""),
                ]
            )
        )
    notice = []
    if c.get("asked_month") and c["asked_month"] != month:
        notice = [
            html.P(
                f"No charges for month {c['asked_month']!r} (from the link): showing {month}. "
                f"Months with charges: {', '.join(c['months'])}.",
                id="chargeback-month-notice",
                style={"color": "#b00"},
            )
        ]
    return [
        *notice,
        html.H3(f"Chargeback {month}"),
        html.P(state, id="chargeback-state"),
        html.P(check, id="chargeback-check", title=check_title),
        html.P(f"Total shown: {money(c['total'], cur)}", id="chargeback-total"),
        table(
            ["#", "type", "tenant", "cluster", "GPU model", "price from", "GPU-h", "unit price", "cost"],
            rows,
            "charge-lines",
            left=6,
        ),
        html.H4("Downloads"),
        html.Div(links, id="downloads"),
    ]


# -- GPUs -------------------------------------------------------------------------------------------


def heatmap(h: dict[str, Any]) -> dict[str, Any]:
    """Node x GPU heatmap of utilization, GPUs in NVML index order within a node, UUID in customdata."""
    nodes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in h["cells"]:
        nodes[f"{c['cluster']}/{c['node']}"].append(c)
    names = sorted(nodes)

    # A GPU sits in the column of its NVML index, so "GPU 3" on the axis is GPU 3 in the tooltip
    # even when a viewer sees only some of a node's GPUs; GPUs without an index come after.
    placed: dict[str, dict[int, dict[str, Any]]] = {}
    for n in names:
        known = [c for c in nodes[n] if isinstance(c.get("index"), int) and c["index"] >= 0]
        cols: dict[int, dict[str, Any]] = {}
        for c in sorted(known, key=lambda c: (c["index"], c["gpu"])):
            col = c["index"]
            while col in cols:
                col += 1
            cols[col] = c
        for c in sorted((c for c in nodes[n] if c not in known), key=lambda c: c["gpu"]):
            cols[max(cols, default=-1) + 1] = c
        placed[n] = cols
    width = max((max(cols) + 1 for cols in placed.values() if cols), default=0)
    z, text, custom = [], [], []
    for n in names:
        row = [placed[n].get(i) for i in range(width)]
        z.append([None if c is None or c["util"] is None else round(100 * c["util"], 2) for c in row])
        text.append(
            [
                "" if c is None else f"GPU {i}: {c['gpu']}<br>{c['model']}<br>allocated {pct(c['alloc'])}"
                for i, c in enumerate(row)
            ]
        )
        custom.append([None if c is None else c["gpu"] for c in row])
    return {
        "data": [
            {
                "type": "heatmap",
                "z": z,
                "x": [f"GPU {i}" for i in range(width)],
                "y": names,
                "text": text,
                "customdata": custom,
                "zmin": 0,
                "zmax": 100,
                "colorscale": "Viridis",
                "hovertemplate": "%{y} %{x}<br>%{text}<br>utilization %{z:.1f} %<extra></extra>",
                "colorbar": {"title": {"text": "util %"}},
            }
        ],
        "layout": {
            "title": {"text": "GPU utilization (click a GPU for its slices and processes)"},
            "height": max(300, 120 + 20 * len(names)),
            # every node labelled (plotly would otherwise skip labels on a tall axis)
            "yaxis": {"automargin": True, "tickmode": "array", "tickvals": names, "ticktext": names},
        },
    }


def gpu_detail(d: dict[str, Any]) -> list[Any]:
    slices = [
        [
            s["slice"],
            s["workload"],
            s["tenant"],
            s["kind"],
            num(s["reserved_gpu_h"]),
            num(s["used_gpu_h"]),
            pct(s["efficiency"]),
        ]
        for s in d["slices"]
    ]
    procs = [
        [
            p["pid"],
            p["slice"] or "—",
            p["user"] or "—",
            num(p["sm_util_pct"], 1),
            p["mem_used_mib"],
            p["samples"],
        ]
        for p in d["processes"]
    ]
    return [
        html.H4(f"{d['gpu']} ({d['model']}) on {d['node']}", id="gpu-title"),
        table(
            ["slice", "workload", "tenant", "kind", "reserved GPU-h", "used GPU-h", "efficiency"],
            slices,
            "gpu-slices",
            left=4,
        ),
        html.H4(f"Processes, hour of {when(d['hour'])}"),
        table(["pid", "slice", "user", "SM util %", "memory MiB", "samples"], procs, "gpu-processes", left=3),
    ]


# -- idle ---------------------------------------------------------------------------------------------


def idle_table(d: dict[str, Any]) -> list[Any]:
    cur = d["currency"]
    rows = [
        [
            r["tenant"],
            r["workload"],
            r["cluster"],
            r["node"],
            r["model"],
            r["kind"],
            when(r["start"]),
            num(r["minutes"], 0),
            num(r["gpu_hours"]),
            money(r["cost"], cur),
        ]
        for r in d["rows"]
    ]
    return [
        html.H3(f"Allocations idle now (data up to {when(d['end'])} UTC), longest first"),
        table(
            [
                "tenant",
                "workload",
                "cluster",
                "node",
                "GPU model",
                "kind",
                "idle since",
                "minutes",
                "GPU-h",
                "cost so far",
            ],
            rows,
            "idle-now",
            left=7,
        ),
    ]
