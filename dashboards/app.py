"""The Dash app: pages Overview, Tenants (+ one per tenant), Chargeback, GPUs and Idle.

The view lives in the URL (`dcc.Location`): the filters write the query string and every data
callback reads it, so a copied link shows the same view. Each data callback asks
`dashboards.data` with the tenants of the signed-in principal (`web.principal()`), never with
tenant names taken from the request alone: a viewer's request naming another tenant is answered
with the viewer's own tenants.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

import dash
import flask
from dash import dcc, html
from dash.dependencies import Input, Output, State

from dashboards import pages
from dashboards.data import DashboardData
from dashboards.filters import Filters
from dashboards.web import build_server, principal
from gpuledger.config import Config
from warehouse.close import CloseSettings

REFRESH_MS = 60_000
DATA_INPUTS = [Input("url", "pathname"), Input("url", "search"), Input("tick", "n_intervals")]


def create_app(cfg: Config, data: DashboardData | None = None) -> dash.Dash:
    """The dashboards for `cfg` (lake, tenants, prices, dashboard login settings)."""
    if data is None:
        data = DashboardData(
            cfg.lake.path,
            CloseSettings.from_config(cfg),
            cfg.dashboard.connections,
            retire_after_hours=cfg.alerts.node_retire_hours,
        )
    server = build_server(cfg, data)
    app = dash.Dash(
        __name__,
        server=server,
        title="gpuledger",
        suppress_callback_exceptions=True,  # page containers come and go with the URL
        update_title=None,
    )

    def layout() -> html.Div:
        p = flask.g.get("principal")
        who = (
            []
            if p is None
            else [
                html.Span(
                    f"{p.name} ({p.role}{'' if p.is_admin else ': ' + ', '.join(sorted(p.tenants or ()))})",
                    id="whoami",
                    style={"marginRight": "1em"},
                ),
            ]
        )
        if p is not None and cfg.dashboard.auth == "password":
            who.append(
                html.Form(
                    [
                        dcc.Input(type="hidden", name="csrf_token", value=flask.session.get("csrf", "")),
                        html.Button("Sign out", type="submit", id="logout"),
                    ],
                    method="POST",
                    action="/logout",
                    style={"display": "inline"},
                )
            )
        return html.Div(
            [
                dcc.Location(id="url", refresh=False),
                html.Div(
                    [
                        html.B("gpuledger", style={"marginRight": "2em"}),
                        html.Span(id="nav"),
                        html.Span(who, style={"float": "right"}),
                    ],
                    style={"borderBottom": "1px solid #ccc", "paddingBottom": ".5em"},
                ),
                html.Div(id="page"),
                dcc.Interval(id="tick", interval=REFRESH_MS),
            ],
            style={"fontFamily": "sans-serif", "margin": "1em 2em"},
        )

    app.layout = layout

    def clean(f: Filters) -> Filters:
        """The filters with what the principal may not see taken out (never echo foreign names back)."""
        p = principal()
        if p.tenants is not None:
            f = f.with_(tenants=tuple(t for t in f.tenants if t in p.tenants))
        if f.gpu and not data.gpu_visible(p.tenants, f.gpu):
            f = f.with_(gpu=None)
        return f

    @app.callback(Output("nav", "children"), Input("url", "pathname"), Input("url", "search"))
    def nav(path: str | None, search: str | None) -> list[Any]:
        return pages.nav(clean(Filters.from_search(search)).to_search(), path or "/")

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def page(path: str | None, search: str | None) -> list[Any]:
        p = principal()
        path = path or "/"
        f = Filters.from_search(search)
        allowed = p.allowed()
        opts = data.options(allowed)
        months = data.months() if path == "/chargeback" else []
        return [pages.filter_bar(f, opts, path == "/chargeback", months), *pages.skeleton(path)]

    @app.callback(
        Output("url", "search"),
        Input("f-cluster", "value"),
        Input("f-model", "value"),
        Input("f-tenant", "value"),
        Input("f-range", "value"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def filters_to_url(clusters: Any, models: Any, tenants: Any, rng: Any, search: str | None) -> Any:
        f = Filters.from_search(search)
        new = Filters.from_search(
            f.with_(
                clusters=_strs(clusters),
                models=_strs(models),
                tenants=_strs(tenants),
                range=rng if isinstance(rng, str) else f.range,
            ).to_search()
        )
        s = clean(new).to_search()
        return dash.no_update if s == (search or "") else s

    @app.callback(
        Output("url", "search", allow_duplicate=True),
        Input("f-month", "value"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def month_to_url(month: Any, search: str | None) -> Any:
        f = Filters.from_search(search).with_(month=month if isinstance(month, str) else None)
        s = clean(Filters.from_search(f.to_search())).to_search()
        return dash.no_update if s == (search or "") else s

    @app.callback(
        Output("url", "search", allow_duplicate=True),
        Input("gpu-heatmap", "clickData"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def gpu_to_url(click: Any, search: str | None) -> Any:
        try:
            gpu = click["points"][0]["customdata"]
        except (TypeError, KeyError, IndexError):
            return dash.no_update
        if not isinstance(gpu, str):
            return dash.no_update
        f = clean(Filters.from_search(search).with_(gpu=gpu[:200]))
        return f.to_search() if f.gpu else dash.no_update

    @app.callback(Output("overview-cards", "children"), Output("overview-graphs", "children"), *DATA_INPUTS)
    def overview(_path: Any, search: str | None, _n: Any) -> tuple[list[Any], list[Any]]:
        f = Filters.from_search(search)
        o = data.overview(principal().allowed(f.tenants), f)
        if o is None:
            return [pages.no_data()], []
        return pages.overview_cards(o), pages.overview_graphs(o)

    @app.callback(Output("tenants-table", "children"), *DATA_INPUTS)
    def tenants(_path: Any, search: str | None, _n: Any) -> list[Any]:
        f = Filters.from_search(search)
        t = data.tenants(principal().allowed(f.tenants), f)
        keep = f.with_(month=None, gpu=None, tenants=()).to_search()
        return [pages.no_data()] if t is None else pages.tenants_table(t, keep)

    @app.callback(Output("tenant-detail", "children"), *DATA_INPUTS)
    def tenant(path: str | None, search: str | None, _n: Any) -> list[Any]:
        name = unquote((path or "").removeprefix("/tenants/"))
        f = Filters.from_search(search)
        d = data.tenant(principal().allowed(), name, f)
        if d is None:
            return [html.H3("No such tenant in your view", id="tenant-missing")]
        return pages.tenant_detail(d)

    @app.callback(Output("chargeback-body", "children"), *DATA_INPUTS)
    def chargeback(_path: Any, search: str | None, _n: Any) -> list[Any]:
        p = principal()
        f = Filters.from_search(search)
        c = data.chargeback(p.allowed(f.tenants), f, fleet_totals=p.is_admin)
        # A ?month= that is malformed or has no charges is named, not silently replaced.
        asked = parse_qs((search or "").lstrip("?")).get("month", [None])[0]
        c["asked_month"] = asked[:40] if asked else None
        return pages.chargeback(c, sorted(p.allowed(f.tenants) or ()), p.is_admin)

    @app.callback(Output("gpu-heatmap", "figure"), *DATA_INPUTS)
    def gpu_heatmap(_path: Any, search: str | None, _n: Any) -> dict[str, Any]:
        f = Filters.from_search(search)
        h = data.gpu_heatmap(principal().allowed(f.tenants), f)
        return {"data": [], "layout": {"title": {"text": "no data yet"}}} if h is None else pages.heatmap(h)

    @app.callback(Output("gpu-detail", "children"), *DATA_INPUTS)
    def gpu_detail(_path: Any, search: str | None, _n: Any) -> list[Any]:
        f = Filters.from_search(search)
        if not f.gpu:
            return [html.P("Click a GPU in the heatmap to see its slices and processes.")]
        d = data.gpu_detail(principal().allowed(f.tenants), f.gpu, f)
        if d is None:
            return [html.P("No such GPU in your view for this time range.", id="gpu-missing")]
        return pages.gpu_detail(d)

    @app.callback(Output("gpu-panels", "children"), *DATA_INPUTS)
    def gpu_panels(_path: Any, search: str | None, _n: Any) -> list[Any]:
        f = clean(Filters.from_search(search))  # a GPU outside the view is dropped, not shown
        s = data.gpu_series(principal().allowed(f.tenants), f)
        return [pages.no_data()] if s is None else pages.gpu_panels(s)

    @app.callback(Output("idle-table", "children"), *DATA_INPUTS)
    def idle(_path: Any, search: str | None, _n: Any) -> list[Any]:
        f = Filters.from_search(search)
        d = data.idle_now(principal().allowed(f.tenants), f)
        return [pages.no_data()] if d is None else pages.idle_table(d)

    from dashboards import caps_page

    caps_page.register(app, data, cfg, principal, DATA_INPUTS)

    # For the server's CSP (Dash's inline scripts by hash) and its callback-body check.
    server.extensions["gpuledger"].update(script_hashes=app.csp_hashes(), callbacks=app.callback_map)
    return app


def dashboard_data(app: dash.Dash) -> DashboardData:
    """The app's data layer (the demo warms its caches after each rollup update)."""
    return app.server.extensions["gpuledger"]["data"]


def _strs(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        return ()
    return tuple(x for x in v if isinstance(x, str) and x)
