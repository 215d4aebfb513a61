"""Helpers to drive the dashboards over real HTTP the way a browser's Dash renderer does.

Used by the tests and the benchmark: serve the app on a loopback port, sign in through the
login form, and build `/_dash-update-component` bodies from `/_dash-dependencies`.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import dash
from werkzeug.serving import make_server

HTTP_TIMEOUT = 60


@contextmanager
def serve(app: dash.Dash) -> Iterator[int]:
    """The app on 127.0.0.1:<free port> in a thread; always shut down on the way out."""
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dash-test-server", daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    if thread.is_alive():
        raise RuntimeError("the dashboard test server did not stop")


class Client:
    """One keep-alive HTTP connection with a cookie jar and optional fixed headers."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
        self.cookies: dict[str, str] = {}
        self.headers = dict(headers or {})

    def close(self) -> None:
        self.conn.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        h = {**self.headers, **(headers or {})}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.conn.request(method, path, body=body, headers=h)
        resp = self.conn.getresponse()
        data = resp.read()
        for value in resp.headers.get_all("Set-Cookie") or []:
            c = SimpleCookie()
            c.load(value)
            for k, morsel in c.items():
                if morsel.value and morsel["expires"] != "Thu, 01 Jan 1970 00:00:00 GMT":
                    self.cookies[k] = morsel.value
                else:
                    self.cookies.pop(k, None)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def post_json(self, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def login(self, user: str, password: str, nxt: str = "/") -> tuple[int, dict[str, str], bytes]:
        status, _, page = self.get("/login?" + urlencode({"next": nxt}))
        if status != 200:
            raise AssertionError(f"GET /login: {status}")
        m = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        if not m:
            raise AssertionError("no csrf token on the login page")
        form = urlencode(
            {"csrf_token": m.group(1).decode(), "username": user, "password": password, "next": nxt}
        )
        return self.request(
            "POST", "/login", form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        )


def outputs_of(dep: dict[str, Any]) -> list[dict[str, str]]:
    """'..a.b...c.d..' (several outputs) or 'a.b' -> [{id, property}], allow_duplicate suffixes dropped."""
    text = dep["output"]
    parts = text.strip(".").split("...") if text.startswith("..") else [text]
    out = []
    for part in parts:
        cid, prop = part.rsplit(".", 1)
        out.append({"id": cid, "property": prop.split("@")[0]})
    return out


def callback_body(dep: dict[str, Any], values: dict[str, Any], state: dict[str, Any] | None = None) -> dict:
    """The body the renderer POSTs for `dep`, inputs from `values` ('id.prop' -> value, else None)."""
    state = state or {}
    outs = outputs_of(dep)
    return {
        "output": dep["output"],
        "outputs": outs if dep["output"].startswith("..") else outs[0],
        "inputs": [{**i, "value": values.get(f"{i['id']}.{i['property']}")} for i in dep["inputs"]],
        "state": [{**s, "value": state.get(f"{s['id']}.{s['property']}")} for s in dep["state"]],
        "changedPropIds": [f"{i['id']}.{i['property']}" for i in dep["inputs"]],
    }


def find_dep(deps: list[dict[str, Any]], output_id: str) -> dict[str, Any]:
    for d in deps:
        if any(o["id"] == output_id for o in outputs_of(d)):
            return d
    raise KeyError(f"no callback outputs {output_id!r}")


def call(
    client: Client,
    deps: list[dict[str, Any]],
    output_id: str,
    values: dict[str, Any],
    state: dict | None = None,
) -> tuple[int, Any]:
    """POST one callback; (status, parsed response or raw text)."""
    status, _, raw = client.post_json(
        "/_dash-update-component", callback_body(find_dep(deps, output_id), values, state)
    )
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def write_users(path: Any, password: str, users: dict[str, list[str] | None]) -> None:
    """A users file: name -> tenants (None: admin), one password for all (tests and the benchmark)."""
    from dashboards.auth import hash_password

    h = hash_password(password)
    out = []
    for name, tenants in users.items():
        role = "admin" if tenants is None else "tenant-viewer"
        entry = f'[[users]]\nname = "{name}"\npassword_hash = "{h}"\nrole = "{role}"\n'
        if tenants is not None:
            entry += "tenants = [" + ", ".join(f'"{t}"' for t in tenants) + "]\n"
        out.append(entry)
    with open(path, "w") as fh:
        fh.write("\n".join(out))


def app_config(
    lake: Any, users_file: Any, rules: list[dict[str, Any]], book: list[dict[str, Any]], **dash: Any
):
    """A Config for the dashboards over `lake` with these tenant rules and prices."""
    from gpuledger.config import load_config

    cfg = load_config(env={})
    cfg.lake.path = str(lake)
    cfg.tenants.rules = list(rules)
    cfg.pricing.book = list(book)
    cfg.dashboard.users_file = str(users_file)
    cfg.dashboard.secret_key = "test-secret-key-0123456789abcdef"
    for k, v in dash.items():
        setattr(cfg.dashboard, k, v)
    return cfg
