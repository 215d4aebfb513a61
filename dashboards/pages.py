"""Page skeletons, tables and figures, built from what `dashboards.data` returns (no queries here).

Figures are plain plotly dicts and tables plain HTML, so that what a callback sends can be read
and checked as JSON by the isolation tests.
"""

from __future__ import annotations

import math
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
    """The ledger's `__unallocated__` line is the platform's unused capacity: say so in words; the
    platform's unhealthy lines by their reason (warehouse.ledger_model.tenant_display_name)."""
    from warehouse.ledger_model import UNALLOCATED_TENANT, tenant_display_name

    return UNALLOCATED_LABEL if t == UNALLOCATED_TENANT else tenant_display_name(t)


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
            html.Div(id="gpu-panels"),
        ]
    if path == "/idle":
        return [html.Div(id="idle-table")]
    if path == "/caps":
        from dashboards import caps_page

        return caps_page.skeleton()
    return [html.H3("Page not found", id="not-found")]


def no_data() -> html.Div:
    return html.Div("No data yet: the lake has no rollups in this view.", className="no-data")


# -- charts -----------------------------------------------------------------------------------------

# plotly's default qualitative colours (D3 category10): one per legend group, so that a group's
# lines and bars read as one thing
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
MAX_LEGEND = 8  # more traces than this: the legend lists groups, not traces


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw - 1e-12 * mag:
            return float(m * mag)
    return float(10 * mag)  # pragma: no cover (the loop always returns)


def round_axis(vmax: float | None, ticks: int = 5) -> dict[str, Any]:
    """A y axis from 0 with ticks at round numbers, a little headroom above `vmax`."""
    if vmax is None or vmax <= 0:
        return {"rangemode": "tozero"}
    step = nice_step(vmax, ticks)
    top = math.ceil(vmax * 1.05 / step) * step
    return {"range": [0, top], "tick0": 0, "dtick": step}


PCT_AXIS = {"range": [0, 100], "tick0": 0, "dtick": 20, "ticksuffix": " %"}


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
    cards += sm_cards(o)
    checks = []
    if o.get("checks_failed"):
        checks = [
            html.Div(
                [html.B("Data checks failed on the last rollup build: "), "; ".join(o["checks_failed"])],
                id="card-checks",
                style={
                    "background": "#fff4e0",
                    "border": "1px solid #e0a040",
                    "padding": ".4em .6em",
                    "flexBasis": "100%",
                },
            )
        ]
    return [
        *checks,
        *cards,
        html.Div(f"last {o['range']}: {rng}", id="card-window", style={"color": "#666", "alignSelf": "end"}),
    ]


def sm_cards(o: dict[str, Any]) -> list[Any]:
    """The SM-activity basis beside kernel-busy (docs/accounting.md), only where some slice tick had
    SM activity in the range: otherwise the two bases are the same and nothing is shown."""
    if not o.get("sm"):
        return []
    last = f"last {o['range']}"
    out = []
    if o["scope"] == "fleet":
        out += [
            card(f"Utilization, SM activity, {last}", pct(o["utilization_sm"]), "card-util-sm"),
            card(f"Efficiency (used / reserved), kernel busy, {last}", pct(o["efficiency"]), "card-eff-busy"),
        ]
    out += [
        card(f"Efficiency (used / reserved), SM activity, {last}", pct(o["efficiency_sm"]), "card-eff-sm"),
        card(
            f"Idle on SM activity (reserved GPU-h the SMs did not use), {last}",
            num(o["unused_sm_gpu_h"]),
            "card-idle-sm",
        ),
    ]
    return out


def over_time(rows: list[dict[str, Any]], dim: str, fleet: bool, title: str) -> dict[str, Any]:
    """Utilization and allocation (fleet) or efficiency (tenants), plus idle GPU-h, per `dim` value.

    One colour per value (its lines and its bars); with more than MAX_LEGEND traces the legend is
    grouped by value (a title per value, short trace names, a click hides the whole value)."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[str(r[dim])].append(r)
    data: list[dict[str, Any]] = []
    sm = any(r.get("sm_ticks") for r in rows)  # the SM-activity basis, where a slice tick had it
    per_key = (3 if fleet else 2) + sm
    grouped = len(by) * per_key > MAX_LEGEND
    for n, key in enumerate(sorted(by)):
        color = PALETTE[n % len(PALETTE)]
        pts = sorted(by[key], key=lambda r: r["period"])
        x = [r["period"].isoformat() for r in pts]

        def trace(what: str, extra: dict[str, Any], key: str = key) -> dict[str, Any]:
            t = {"name": what if grouped else f"{key} {what}", **extra}
            if grouped:
                t.update(
                    {
                        "legendgroup": key,
                        "legendgrouptitle": {"text": key},
                        "hovertemplate": f"{key} {what}: %{{y}}<extra></extra>",
                    }
                )
            return t

        lines = [("utilization", "utilization", "solid"), ("allocated", "allocation_rate", "dot")]
        if not fleet:
            lines = [("efficiency", "efficiency", "solid")]
        if sm:
            lines.append(
                ("utilization (SM)", "utilization_sm", "dashdot")
                if fleet
                else ("efficiency (SM)", "efficiency_sm", "dashdot")
            )
        for what, col, dash in lines:
            pct_of = [round(100 * float(r[col] or 0), 2) for r in pts]
            line = {"color": color} if dash == "solid" else {"dash": dash, "color": color}
            data.append(trace(what, {"type": "scatter", "mode": "lines", "line": line, "x": x, "y": pct_of}))
        data.append(
            trace(
                "idle GPU-h",
                {
                    "type": "bar",
                    "x": x,
                    "yaxis": "y2",
                    "opacity": 0.35,
                    "marker": {"color": color},
                    "y": [round(float(r["idle_gpu_h"] or 0), 4) for r in pts],
                },
            )
        )
    stacked: dict[Any, float] = defaultdict(float)  # the bars stack: the axis must hold their sum
    for r in rows:
        stacked[r["period"]] += float(r["idle_gpu_h"] or 0)
    idle_max = max(stacked.values(), default=0.0)
    legend: dict[str, Any] = {"orientation": "h", "y": -0.22, "yanchor": "top"}  # below the axis title
    if grouped:  # groups side by side, each a column: readable with many values
        legend.update({"traceorder": "grouped", "groupclick": "togglegroup"})
    return {
        "data": data,
        "layout": {
            "title": {"text": title},
            "yaxis": dict(PCT_AXIS),
            "yaxis2": {
                "overlaying": "y",
                "side": "right",
                "title": {"text": "idle GPU-h"},
                **round_axis(idle_max, 5),  # its own round ticks, not the % axis's grid carried over
                "showgrid": False,
            },
            "xaxis": {"type": "date", "title": {"text": "UTC"}},
            "barmode": "stack",
            "height": 420 + (20 * math.ceil(len(by) / 4) if grouped else 0),
            "legend": legend,
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
                *(
                    [
                        card("Efficiency, SM activity", pct(d["efficiency_sm"]), "tenant-eff-sm"),
                        card(
                            "Idle on SM activity (reserved GPU-h the SMs did not use)",
                            num(d["unused_sm_gpu_h"]),
                            "tenant-idle-sm",
                        ),
                    ]
                    if d.get("sm")
                    else []
                ),
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


def gpu_label(cluster: str, node: str, index: Any, uuid: str) -> str:
    return (
        f"{cluster}/{node} GPU {index}"
        if isinstance(index, int) and index >= 0
        else f"{cluster}/{node} {uuid}"
    )


def _series_by_gpu(points: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The periods (x) and one entry per GPU (label, node, cluster, uuid, its points by period)."""
    periods = sorted({p["period"] for p in points})
    gpus: dict[str, dict[str, Any]] = {}
    for p in points:
        g = gpus.get(p["gpu"])
        if g is None:
            g = gpus[p["gpu"]] = {
                "uuid": p["gpu"],
                "cluster": p["cluster"],
                "node": p["node"],
                "model": p["model"],
                "index": p["index"],
                "at": {},
            }
        g["at"][p["period"]] = p
    ordered = sorted(
        gpus.values(),
        key=lambda g: (
            g["cluster"],
            g["node"],
            g["index"] if isinstance(g["index"], int) else 1 << 30,
            g["uuid"],
        ),
    )
    seen: dict[str, int] = defaultdict(int)
    for g in ordered:
        label = gpu_label(g["cluster"], g["node"], g["index"], g["uuid"])
        seen[label] += 1
        g["label"] = label if seen[label] == 1 else f"{label} ({g['uuid']})"
    return [p.isoformat() for p in periods], [{**g, "periods": periods} for g in ordered]


def _legend_level(gpus: list[dict[str, Any]]) -> str:
    """'gpu' (one legend entry per GPU) up to MAX_LEGEND GPUs, else 'node', else 'cluster'."""
    if len(gpus) <= MAX_LEGEND:
        return "gpu"
    if len({(g["cluster"], g["node"]) for g in gpus}) <= MAX_LEGEND:
        return "node"
    return "cluster"


def gpu_line_chart(
    gpus: list[dict[str, Any]],
    x: list[str],
    value: str,
    title: str,
    unit: str,
    axis_max: float | None,
    places: int = 1,
    peak: str | None = None,
) -> dict[str, Any]:
    """One line per GPU of `value` per period; None (no known reading) is a gap in the line.

    Up to MAX_LEGEND GPUs each has its legend entry; beyond that the lines are grouped by node (or
    by cluster when there are more nodes than that): one legend entry and one colour per group, a
    click hides the whole group, and the hover names the GPU."""
    level = _legend_level(gpus)
    groups: dict[str, int] = {}
    data = []
    for n, g in enumerate(gpus):
        group = {"gpu": g["label"], "node": f"{g['cluster']}/{g['node']}", "cluster": g["cluster"]}[level]
        first = group not in groups
        if first:
            groups[group] = len(groups)
        color = PALETTE[(n if level == "gpu" else groups[group]) % len(PALETTE)]
        y = []
        for per in g["periods"]:
            pt = g["at"].get(per)
            v = None if pt is None else pt[value]
            y.append(None if v is None else round(v, places))
        t: dict[str, Any] = {
            "type": "scatter",
            "mode": "lines+markers" if len(x) <= 2 else "lines",
            "name": group,
            "legendgroup": group,
            "showlegend": first,
            "line": {"color": color},
            "marker": {"color": color, "size": 5},
            "connectgaps": False,
            "x": x,
            "y": y,
            "customdata": [g["uuid"]] * len(x),
            "hovertemplate": f"{g['label']} ({g['model']})<br>%{{x}}: %{{y}} {unit}<extra></extra>",
        }
        if peak is not None:
            peaks = []
            for per in g["periods"]:
                pt = g["at"].get(per)
                v = None if pt is None else pt[peak]
                peaks.append("—" if v is None else f"{v:,.{places}f}")
            t["text"] = peaks
            t["hovertemplate"] = (
                f"{g['label']} ({g['model']})<br>%{{x}}: mean %{{y}} {unit}, "
                f"peak %{{text}} {unit}<extra></extra>"
            )
        data.append(t)
    return {
        "data": data,
        "layout": {
            "title": {"text": title},
            "height": 320,
            "xaxis": {"type": "date", "title": {"text": "UTC"}},
            "yaxis": {"title": {"text": unit}, **round_axis(axis_max)},
            "legend": {
                "orientation": "h",
                "y": -0.25,
                "yanchor": "top",
                "title": {"text": {"gpu": "", "node": "by node", "cluster": "by cluster"}[level]},
            },
            "margin": {"t": 50},
        },
    }


TIMELINE_GPU_ROWS = 40  # more GPUs than this: the time heatmap has one row per node


def _health_events(gpus: list[dict[str, Any]], per_node: bool) -> list[dict[str, Any]]:
    """Health events (unhealthy GPU ticks, warehouse.rules.UNHEALTHY_REASON_SQL) as markers on the
    timeline's rows, the reason in the hover; no trace at all when there were none."""
    xs: list[str] = []
    ys: list[str] = []
    texts: list[str] = []
    for g in gpus:
        key = f"{g['cluster']}/{g['node']}" if per_node else g["label"]
        for per, pt in sorted(g["at"].items()):
            if pt.get("unhealthy_ticks"):
                xs.append(per.isoformat())
                ys.append(key)
                texts.append(
                    f"{g['label']}: {pt['unhealthy_ticks']} unhealthy ticks ({pt.get('unhealthy_reason')})"
                )
    if not xs:
        return []
    return [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "health events",
            "x": xs,
            "y": ys,
            "text": texts,
            "marker": {"symbol": "x", "color": "red", "size": 10},
            "hovertemplate": "%{x}<br>%{text}<extra></extra>",
            "showlegend": False,
        }
    ]


def gpu_timeline(
    gpus: list[dict[str, Any]], x: list[str], used: str = "used_s", basis: str = ""
) -> dict[str, Any]:
    """Utilization over time: a row per GPU (a row per node, used / capacity of its GPUs, when
    there are more than TIMELINE_GPU_ROWS GPUs), time on the x axis, every row labelled; a period
    with no data is empty, not 0. `used`: the points' used seconds (`used_sm_s`: the SM-activity
    basis, named by `basis` in the title; health events are drawn on the main timeline only)."""
    per_node = len(gpus) > TIMELINE_GPU_ROWS
    rows: dict[str, dict[str, Any]] = {}
    for g in gpus:
        key = f"{g['cluster']}/{g['node']}" if per_node else g["label"]
        r = rows.setdefault(key, {"uuid": None if per_node else g["uuid"], "used": {}, "cap": {}})
        for per, pt in g["at"].items():
            if pt.get("capacity_s"):
                r["used"][per] = r["used"].get(per, 0.0) + (pt.get(used) or 0.0)
                r["cap"][per] = r["cap"].get(per, 0.0) + pt["capacity_s"]
    periods = gpus[0]["periods"] if gpus else []
    labels = list(rows)
    z = [
        [
            round(100 * rows[k]["used"][per] / rows[k]["cap"][per], 2) if rows[k]["cap"].get(per) else None
            for per in periods
        ]
        for k in labels
    ]
    trace: dict[str, Any] = {
        "type": "heatmap",
        "z": z,
        "x": x,
        "y": labels,
        "zmin": 0,
        "zmax": 100,
        "colorscale": "Viridis",
        "hoverongaps": False,
        "hovertemplate": "%{y}<br>%{x}<br>utilization %{z:.1f} %<extra></extra>",
        "colorbar": {"title": {"text": "util %"}, "tick0": 0, "dtick": 20},
    }
    if not per_node:
        trace["customdata"] = [[rows[k]["uuid"]] * len(x) for k in labels]
    return {
        "data": [trace, *([] if basis else _health_events(gpus, per_node))],
        "layout": _time_rows_layout(
            "Utilization"
            + (f" on {basis}" if basis else "")
            + " over time"
            + (", by node" if per_node else ", by GPU"),
            labels,
        ),
    }


def node_heatmap(
    gpus: list[dict[str, Any]], x: list[str], cell: Any, title: str, unit: str, zmax: float | None, fid: str
) -> dict[str, Any]:
    """A metric per node (rows, every one labelled) over time, for fleets too large for a line per
    GPU: `cell(points of the node's GPUs in one period)` gives the value or None (a gap)."""
    nodes: dict[str, list[dict[str, Any]]] = {}
    for g in gpus:
        nodes.setdefault(f"{g['cluster']}/{g['node']}", []).append(g)
    periods = gpus[0]["periods"] if gpus else []
    labels = list(nodes)
    z = []
    for k in labels:
        row = []
        for per in periods:
            pts = [p for g in nodes[k] if (p := g["at"].get(per)) is not None]
            v = cell(pts) if pts else None
            row.append(None if v is None else round(v, 1))
        z.append(row)
    top = {"range": [0, 100], "dtick": 20} if unit == "%" else round_axis(zmax)  # a share tops at 100 %
    return {
        "data": [
            {
                "type": "heatmap",
                "z": z,
                "x": x,
                "y": labels,
                "zmin": 0,
                **({"zmax": top["range"][1]} if "range" in top else {}),
                "colorscale": "Viridis" if fid != "gpu-temp" else "YlOrRd",
                "hoverongaps": False,
                "hovertemplate": f"%{{y}}<br>%{{x}}<br>%{{z}} {unit}<extra></extra>",
                "colorbar": {
                    "title": {"text": unit},
                    **({"tick0": 0, "dtick": top["dtick"]} if "dtick" in top else {}),
                },
            }
        ],
        "layout": _time_rows_layout(title, labels),
    }


def _mem_pct(pts: list[dict[str, Any]]) -> float | None:
    known = [p for p in pts if p["mem_avg_mib"] is not None and p["mem_total_mib"]]
    return (
        100 * sum(p["mem_avg_mib"] for p in known) / sum(p["mem_total_mib"] for p in known) if known else None
    )


def _power_mean(pts: list[dict[str, Any]]) -> float | None:
    ticks = sum(p.get("power_ticks") or 0 for p in pts)
    return sum(p.get("power_sum_w") or 0 for p in pts) / ticks if ticks else None


def _temp_peak(pts: list[dict[str, Any]]) -> float | None:
    known = [p["temp_max_c"] for p in pts if p["temp_max_c"] is not None]
    return max(known) if known else None


def gpu_basis_cards(points: list[dict[str, Any]]) -> list[Any]:
    """Utilization of the GPUs in view on both bases (kernel busy, SM activity), when some slice
    tick had SM activity; nothing otherwise (the bases would be the same)."""
    if not any(p.get("sm_ticks") for p in points):
        return []
    cap = sum(p["capacity_s"] or 0 for p in points)
    busy = sum(p["used_s"] or 0 for p in points)
    sm = sum(p.get("used_sm_s") or 0 for p in points)
    return [
        html.Div(
            [
                card("Utilization, kernel busy", pct(busy / cap if cap else None), "gpu-util-busy"),
                card("Utilization, SM activity", pct(sm / cap if cap else None), "gpu-util-sm"),
            ],
            style={"display": "flex", "gap": ".8em"},
        )
    ]


def gpu_panels(s: dict[str, Any]) -> list[Any]:
    """The panels users of NVIDIA's dcgm-exporter Grafana dashboard look for: utilization over time,
    framebuffer memory used, power draw and temperature, per GPU, per hour (per day beyond 7 days)."""
    x, gpus = _series_by_gpu(s["points"])
    if not gpus:
        return [html.P("No GPU readings in this view for this time range.", id="gpu-panels-empty")]
    grain = s["grain"]
    totals = [p["mem_total_mib"] for p in s["points"] if p["mem_total_mib"] is not None]
    mem_top = max(totals) if totals else max((p["mem_max_mib"] or 0 for p in s["points"]), default=None)
    power = max((p["power_avg_w"] or 0 for p in s["points"]), default=None)
    temp = max((p["temp_max_c"] or 0 for p in s["points"]), default=None)
    head = [
        html.H4(f"GPU readings per {grain}, {when(s['start'])} to {when(s['end'])} UTC"),
        *gpu_basis_cards(s["points"]),
        dcc.Graph(id="gpu-timeline", figure=gpu_timeline(gpus, x)),
    ]
    if any(p.get("sm_ticks") for p in s["points"]):  # no SM trace where no slice had SM activity
        head.append(dcc.Graph(id="gpu-timeline-sm", figure=gpu_timeline(gpus, x, "used_sm_s", "SM activity")))
    if len(gpus) > TIMELINE_GPU_ROWS:  # a line per GPU would be a tangle: a row per node
        return [
            *head,
            dcc.Graph(
                id="gpu-memory",
                figure=node_heatmap(
                    gpus,
                    x,
                    _mem_pct,
                    f"Framebuffer memory used, % of the node's (mean per {grain})",
                    "%",
                    100,
                    "gpu-memory",
                ),
            ),
            dcc.Graph(
                id="gpu-power",
                figure=node_heatmap(
                    gpus,
                    x,
                    _power_mean,
                    f"Power draw per GPU, node mean (mean per {grain})",
                    "W",
                    power,
                    "gpu-power",
                ),
            ),
            dcc.Graph(
                id="gpu-temp",
                figure=node_heatmap(
                    gpus, x, _temp_peak, f"Hottest GPU of the node (peak per {grain})", "°C", temp, "gpu-temp"
                ),
            ),
        ]
    return [
        *head,
        dcc.Graph(
            id="gpu-memory",
            figure=gpu_line_chart(
                gpus,
                x,
                "mem_avg_mib",
                f"Framebuffer memory used (mean per {grain})",
                "MiB",
                mem_top,
                0,
                "mem_max_mib",
            ),
        ),
        dcc.Graph(
            id="gpu-power",
            figure=gpu_line_chart(gpus, x, "power_avg_w", f"Power draw (mean per {grain})", "W", power, 1),
        ),
        dcc.Graph(
            id="gpu-temp",
            figure=gpu_line_chart(
                gpus, x, "temp_avg_c", f"GPU temperature (mean per {grain})", "°C", temp, 1, "temp_max_c"
            ),
        ),
    ]


def gpu_detail(d: dict[str, Any]) -> list[Any]:
    sm = any(s.get("sm_ticks") for s in d["slices"])  # SM-activity columns only where it was seen
    slices = [
        [
            s["slice"],
            s["workload"],
            s["tenant"],
            s["kind"],
            num(s["reserved_gpu_h"]),
            num(s["used_gpu_h"]),
            pct(s["efficiency"]),
            *([num(s["used_sm_gpu_h"]), pct(s["efficiency_sm"]), num(s["unused_sm_gpu_h"])] if sm else []),
        ]
        for s in d["slices"]
    ]
    sm_head = ["used GPU-h (SM)", "efficiency (SM)", "idle GPU-h (SM)"] if sm else []
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
            ["slice", "workload", "tenant", "kind", "reserved GPU-h", "used GPU-h", "efficiency", *sm_head],
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


def _time_rows_layout(title: str, labels: list[str]) -> dict[str, Any]:
    """A heatmap of rows (GPUs or nodes) over UTC time: one labelled row each, first row on top."""
    return {
        "title": {"text": title},
        "height": max(260, 120 + 18 * len(labels)),
        "xaxis": {"type": "date", "title": {"text": "UTC"}},
        "yaxis": {
            "automargin": True,
            "autorange": "reversed",
            "tickmode": "array",
            "tickvals": labels,
            "ticktext": labels,
        },
    }
