"""The Flask side of the dashboards: login, the guard in front of every route, and downloads.

Every request passes `guard` first: the login page and its POST are the only routes open to
anyone (password mode); in trusted-header mode the principal comes from the proxy's headers and
only from the configured proxy addresses. The principal is put on `flask.g` for the Dash
callbacks and the download route, which filter by its tenants on the server.

The login form is CSRF-safe (a per-session token checked with a constant-time compare, and a
SameSite=Lax cookie), and a POST from another origin is refused on every route.

A session lives at most `dashboard.session_hours` from its sign-in (requests do not extend it), and
logout ends it on the server: the cookie carries the user's session generation, which logout bumps
(`SessionGenerations`), so a cookie copied before the logout is refused after it. Every response
carries security headers (`SECURITY_HEADERS` and a Content-Security-Policy that allows only this
origin's scripts and Dash's own inline script, by hash), and a callback body that is not the shape
Dash's renderer sends is answered 400 before Dash sees it.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import flask
from werkzeug.wrappers import Response

from dashboards.auth import (
    LoginThrottle,
    Principal,
    SessionGenerations,
    SessionStateError,
    TrustedHeaders,
    UserStore,
)
from dashboards.data import DashboardData

log = logging.getLogger(__name__)

OPEN_PATHS = ("/login", "/healthz")
CALLBACK_PATH = "/_dash-update-component"
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Dash and Plotly set inline styles (style attributes) and draw with data: images; scripts only
# from this origin plus Dash's inline renderer start, by hash (`script-src` is filled per app).
CSP = (
    "default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
DOWNLOAD_FORMATS = {"csv": "text/csv", "focus.csv": "text/csv", "pdf": "application/pdf"}

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpuledger: sign in</title>
<style>body{font-family:sans-serif;margin:4em auto;max-width:22em}label{display:block;margin:.6em 0}
input{width:100%;padding:.3em}.err{color:#b00}</style></head>
<body><h2>gpuledger</h2>
{% if error %}<p class="err" id="login-error">{{ error }}</p>{% endif %}
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{{ token }}">
<input type="hidden" name="next" value="{{ next }}">
<label>User <input name="username" id="username" autocomplete="username" required></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password" required>
</label>
<button type="submit" id="login-submit">Sign in</button>
</form></body></html>"""


def secret_key(cfg: Any) -> bytes:
    """dashboard.secret_key, else the file dashboard.secret_key_file, else random for this process."""
    d = cfg.dashboard
    if d.secret_key:
        return d.secret_key.encode()
    if d.secret_key_file:
        try:
            key = Path(d.secret_key_file).read_bytes().strip()
        except OSError as exc:
            raise ValueError(
                f"dashboard.secret_key_file = {d.secret_key_file!r}: cannot be read ({exc.strerror})"
            ) from exc
        if len(key) < 16:
            raise ValueError(f"dashboard.secret_key_file = {d.secret_key_file!r}: expected at least 16 bytes")
        return key
    log.warning("dashboard: no secret_key configured; using a random one (sessions end at restart)")
    return secrets.token_bytes(32)


def safe_next(target: str | None) -> str:
    """Only local paths: a login must never redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def principal() -> Principal:
    """The request's principal (set by the guard); routes and callbacks never run without one."""
    p = flask.g.get("principal")
    if p is None:  # unreachable behind the guard; fail closed if it ever is
        flask.abort(401)
    return p


def build_server(cfg: Any, data: DashboardData) -> flask.Flask:
    d = cfg.dashboard
    server = flask.Flask("gpuledger-dashboards")
    server.secret_key = secret_key(cfg)
    server.config.update(
        SESSION_COOKIE_NAME="gpuledger_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=d.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=d.session_hours),
        SESSION_REFRESH_EACH_REQUEST=False,  # the cookie's expiry is the sign-in's, never slid
    )
    lifetime_s = d.session_hours * 3600.0
    store: UserStore | None = None
    headers: TrustedHeaders | None = None
    if d.auth == "password":
        if not d.users_file:
            raise ValueError(
                "dashboard.auth = 'password' needs dashboard.users_file (a TOML or JSON users file)"
            )
        store = UserStore(d.users_file)
    else:
        headers = TrustedHeaders(
            d.user_header, d.groups_header, d.trusted_proxies, d.admin_group, d.tenant_group_prefix
        )
    throttle = LoginThrottle(d.login_free_attempts, d.login_backoff_s, d.login_backoff_max_s)
    gens = SessionGenerations(
        d.session_state_file or Path(cfg.lake.path) / "_dashboard" / "sessions.json" if store else None
    )
    # "clock" (unix seconds) is replaceable by tests; "script_hashes" and "callbacks" are set by the
    # Dash app built on this server (dashboards.app).
    ext: dict[str, Any] = {
        "store": store,
        "throttle": throttle,
        "data": data,
        "sessions": gens,
        "clock": time.time,
        "script_hashes": [],
        "callbacks": None,
    }
    server.extensions["gpuledger"] = ext

    @server.before_request
    def guard() -> Response | None:
        req = flask.request
        if req.method not in ("GET", "HEAD", "OPTIONS"):
            origin = req.headers.get("Origin")
            if origin and urlsplit(origin).netloc != req.host:
                return _refuse(403, "cross-origin request refused")
        if req.path in OPEN_PATHS:
            return None
        if headers is not None:
            p, why = headers.principal(req.remote_addr, req.headers)
            if p is None:
                return _refuse(403, why)
            flask.g.principal = p
            return None
        s = flask.session.get("user")
        why = "not signed in"
        if s and s.get("role") in ("admin", "tenant-viewer"):
            # Absolute lifetime from the sign-in, and not revoked by a logout since.
            iat, now = s.get("iat"), ext["clock"]()
            try:
                current = gens.current(str(s.get("name", "")))
            except SessionStateError as exc:
                log.error("dashboard: %s; refusing sessions until it is fixed", exc)
                return _refuse(503, "sessions unavailable")
            if not isinstance(iat, int | float) or not (now - lifetime_s <= iat <= now + 300):
                s, why = None, "session expired: sign in again"
            elif s.get("gen") != current:
                s, why = None, "signed out: sign in again"
            if s is None:
                flask.session.clear()
        else:
            s = None
        if s is None:
            if (
                req.method == "GET"
                and not req.path.startswith("/_dash-")
                and not req.path.startswith("/download")
            ):
                nxt = req.full_path if req.query_string else req.path
                return flask.redirect("/login?" + urlencode({"next": nxt}))
            return _refuse(401, why)
        # Re-read the user each request: a removed user or changed tenants apply at once.
        user = store.users().get(s["name"]) if store else None
        if user is None:
            flask.session.clear()
            return _refuse(401, "not signed in")
        flask.g.principal = user.principal()
        return None

    @server.before_request
    def callback_shape() -> Response | None:
        # After `guard`: only a signed-in principal gets this far with a callback.
        req = flask.request
        if req.method != "POST" or not req.path.endswith(CALLBACK_PATH):
            return None
        body = req.get_json(silent=True)
        why = callback_body_error(body, ext["callbacks"])
        return _refuse(400, f"malformed callback: {why}") if why else None

    @server.after_request
    def security_headers(resp: Response) -> Response:
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        hashes = "".join(" " + h for h in ext["script_hashes"])
        resp.headers.setdefault("Content-Security-Policy", CSP.format(hashes=hashes))
        return resp

    @server.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @server.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if store is None:
            return _refuse(404, "sign-in is done by the proxy")
        req = flask.request
        token = flask.session.get("csrf") or secrets.token_urlsafe(32)
        flask.session["csrf"] = token
        nxt = safe_next(req.values.get("next"))
        if req.method == "GET":
            return flask.render_template_string(LOGIN_PAGE, token=token, next=nxt, error=None)
        sent = req.form.get("csrf_token", "")
        if not sent or not hmac.compare_digest(sent, token):
            return _page(400, token, nxt, "The form expired; please sign in again.")
        name = req.form.get("username", "")[:200]
        pw = req.form.get("password", "")[:1000]
        addr = req.remote_addr or "?"
        wait = throttle.wait_s(name, addr)
        if wait > 0:
            resp = _page(429, token, nxt, f"Too many failed sign-ins: try again in {wait:.0f} s.")
            resp.headers["Retry-After"] = str(max(1, round(wait)))
            return resp
        p = store.authenticate(name, pw)
        if p is None:
            throttle.failed(name, addr)
            log.warning("dashboard: failed sign-in for %r from %s", name, addr)
            return _page(401, token, nxt, "Wrong user name or password.")
        throttle.succeeded(name, addr)
        flask.session.clear()  # a new session on sign-in (no fixation)
        flask.session.permanent = True
        flask.session["user"] = {
            **p.as_session(),
            "iat": int(ext["clock"]()),
            "gen": gens.current(p.name),
        }
        flask.session["csrf"] = secrets.token_urlsafe(32)
        return flask.redirect(nxt)

    @server.post("/logout")
    def logout() -> Any:
        sent = flask.request.form.get("csrf_token", "")
        if not sent or not hmac.compare_digest(sent, flask.session.get("csrf", "")):
            return _refuse(400, "bad form token")
        user = flask.session.get("user") or {}
        if user.get("name"):
            gens.bump(user["name"])  # this cookie and every copy of it are refused from now on
        flask.session.clear()
        return flask.redirect("/login")

    @server.get("/download/<name>")
    def download(name: str) -> Any:
        # <month>.<format>: 2026-10.csv, 2026-10.focus.csv, 2026-10.pdf
        month, _, fmt = name.partition(".")
        return _download(data, principal(), month, fmt, flask.request.args.get("tenant"))

    return server


def _dep_ok(x: Any) -> bool:
    return isinstance(x, dict) and isinstance(x.get("id"), str | dict) and isinstance(x.get("property"), str)


def _deps_ok(v: Any) -> bool:
    """A list of {id, property, ...}, or of lists of them (pattern-matching ALL/ALLSMALLER)."""
    return isinstance(v, list) and all(
        _dep_ok(x) or (isinstance(x, list) and all(_dep_ok(y) for y in x)) for x in v
    )


def callback_body_error(body: Any, callbacks: dict[str, Any] | None) -> str | None:
    """Why `body` is not a callback request Dash's renderer could send (None: it could be).

    `callbacks` is the Dash app's callback map; with it the output must name a callback and the
    numbers of inputs and states must be that callback's.
    """
    if not isinstance(body, dict):
        return "expected a JSON object"
    output = body.get("output")
    if not isinstance(output, str) or not output:
        return "'output' must be a non-empty string"
    outputs = body.get("outputs")
    if not (_dep_ok(outputs) or _deps_ok(outputs)):
        return "'outputs' must be an {id, property} object or a list of them"
    inputs, state = body.get("inputs"), body.get("state", [])
    if not _deps_ok(inputs):
        return "'inputs' must be a list of {id, property, value} objects"
    if not _deps_ok(state):
        return "'state' must be a list of {id, property, value} objects"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "'changedPropIds' must be a list of strings"
    if callbacks is not None:
        cb = callbacks.get(output)
        if not isinstance(cb, dict):
            return "no such callback"
        if len(inputs) != len(cb.get("inputs", [])) or len(state) != len(cb.get("state", [])):
            return "wrong number of inputs or states for this callback"
    return None


def _refuse(status: int, why: str) -> Response:
    return Response(why + "\n", status=status, mimetype="text/plain")


def _page(status: int, token: str, nxt: str, error: str) -> Response:
    html = flask.render_template_string(LOGIN_PAGE, token=token, next=nxt, error=error)
    return Response(html, status=status, mimetype="text/html")


def _download(data: DashboardData, p: Principal, month: str, fmt: str, tenant: str | None) -> Response:
    """Charge lines of `month` as CSV, FOCUS CSV or a PDF report, only of the principal's tenants."""
    from warehouse.charges_csv import charges_csv_bytes
    from warehouse.focus import focus_csv_bytes, focus_table
    from warehouse.monthly import tenant_numbered
    from warehouse.reports import safe_name

    if fmt not in DOWNLOAD_FORMATS or month not in data.months():
        return _refuse(404, "no such report")
    if tenant is not None and p.tenants is not None and tenant not in p.tenants:
        return _refuse(404, "no such report")  # the same answer as for a tenant that does not exist
    allowed = frozenset([tenant]) if tenant is not None else p.tenants
    ch = data.month_charges(month)
    if ch.error:
        return _refuse(409, ch.error)
    lines = [ln for ln in ch.lines if allowed is None or ln.tenant in allowed]
    if allowed is not None:  # a tenant's lines numbered from 1 (the ledger's numbers reveal other tenants')
        lines = tenant_numbered(lines)
    scope = safe_name(tenant) if tenant else ("fleet" if p.tenants is None else "tenants")
    name = f"{month}-{scope}"
    if fmt == "csv":
        body, name = charges_csv_bytes(lines), f"{name}-charges.csv"
    elif fmt == "focus.csv":
        body, name = focus_csv_bytes(focus_table(lines)), f"{name}-focus.csv"
    else:
        if p.tenants is not None and tenant is None:
            if len(p.tenants) != 1:
                return _refuse(400, "choose a tenant: ?tenant=NAME")
            tenant = next(iter(p.tenants))
            name = f"{month}-{safe_name(tenant)}"
        body = _pdf(data, month, tenant)
        if body is None:
            return _refuse(404, "no such report")
        name = f"{name}.pdf"
    resp = Response(body, mimetype=DOWNLOAD_FORMATS[fmt])
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    resp.headers["Cache-Control"] = "private, no-store"
    return resp


def _pdf(data: DashboardData, month: str, tenant: str | None) -> bytes | None:
    from warehouse.monthly import build_reports
    from warehouse.report_pdf import render_pdf

    # On a pooled connection: rollups as the dashboard reads them, idle periods already loaded.
    with data.acct() as acct:
        reports = build_reports(
            data.lake, month, data.settings, tenant=tenant, fleet=tenant is None, acct=acct
        )
    if not reports or (tenant is not None and not reports[0].lines and not reports[0].daily):
        return None
    fd, tmp = tempfile.mkstemp(suffix=".pdf")
    os.close(fd)
    try:
        render_pdf(reports[0], tmp)
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)
