"""Dashboard sessions end at logout and after an absolute lifetime; security headers; bad callbacks 400."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from dashboard_client import app_config, write_users

from dashboards.app import create_app
from dashboards.auth import SessionGenerations, SessionStateError
from dashboards.web import CSP, callback_body_error

PASSWORD = "correct horse battery staple"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path: Path, **dash: Any) -> tuple[Any, Clock]:
    users = tmp_path / "users.toml"
    if not users.exists():
        write_users(users, PASSWORD, {"admin": None, "viewer": ["vision"]})
    cfg = app_config(tmp_path / "lake", users, [{"tenant": "vision", "namespace": "ml-vision"}], [], **dash)
    app = create_app(cfg)
    clock = Clock()
    app.server.extensions["gpuledger"]["clock"] = clock
    return app, clock


def _login(client: Any, user: str = "viewer") -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/login", data={"csrf_token": token, "username": user, "password": PASSWORD, "next": "/"})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def _logout(client: Any) -> int:
    page = client.get("/").get_data(as_text=True)
    # the layout carries the form token; the page itself is Dash's index: read it from the session
    with client.session_transaction() as s:
        token = s["csrf"]
    assert page
    return client.post("/logout", data={"csrf_token": token}).status_code


def _cookie(client: Any) -> str:
    c = client.get_cookie("gpuledger_session")
    assert c is not None
    return c.value


def _nav_body(path: str = "/") -> dict[str, Any]:
    return {
        "output": "nav.children",
        "outputs": {"id": "nav", "property": "children"},
        "inputs": [
            {"id": "url", "property": "pathname", "value": path},
            {"id": "url", "property": "search", "value": ""},
        ],
        "changedPropIds": ["url.pathname"],
    }


def test_logout_revokes_every_copy_of_the_cookie_and_other_sessions(tmp_path: Path) -> None:
    app, _clock = _app(tmp_path)
    a, b, thief = app.server.test_client(), app.server.test_client(), app.server.test_client()
    _login(a)
    _login(b)  # the same user in a second browser
    captured = _cookie(a)
    thief.set_cookie("gpuledger_session", captured)
    assert thief.get("/").status_code == 200
    assert thief.post("/_dash-update-component", json=_nav_body()).status_code == 200

    assert _logout(a) == 302
    r = thief.get("/")  # the cookie copied before the logout is worth nothing now
    assert (r.status_code, r.headers["Location"]) == (302, "/login?next=%2F")
    thief.set_cookie("gpuledger_session", captured)  # the redirect cleared it; send it again
    r = thief.post("/_dash-update-component", json=_nav_body())
    assert (r.status_code, r.get_data(as_text=True)) == (401, "signed out: sign in again\n")
    r = b.post("/_dash-update-component", json=_nav_body())  # every session of the user ended
    assert (r.status_code, r.get_data(as_text=True)) == (401, "signed out: sign in again\n")
    # signing in again works, and gets a session the old cookie still does not match
    c = app.server.test_client()
    _login(c)
    assert c.get("/").status_code == 200
    thief.set_cookie("gpuledger_session", captured)
    assert thief.get("/").status_code == 302
    # another user's sessions are untouched
    admin = app.server.test_client()
    _login(admin, "admin")
    assert _logout(c) == 302 and admin.get("/").status_code == 200
    assert admin.post("/_dash-update-component", json=_nav_body()).status_code == 200


def test_revocation_survives_a_restart(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    a = app.server.test_client()
    _login(a)
    captured = _cookie(a)
    assert _logout(a) == 302
    again, _ = _app(tmp_path)  # a new process with the same key over the same state file
    thief = again.server.test_client()
    thief.set_cookie("gpuledger_session", captured)
    assert thief.get("/").status_code == 302
    thief.set_cookie("gpuledger_session", captured)
    assert thief.post("/_dash-update-component", json=_nav_body()).status_code == 401
    state = json.loads((tmp_path / "lake" / "_dashboard" / "sessions.json").read_text())
    assert state == {"viewer": 1}


def test_absolute_lifetime_is_not_extended_by_requests(tmp_path: Path) -> None:
    app, clock = _app(tmp_path, session_hours=2.0)
    a = app.server.test_client()
    _login(a)
    for step in range(7):  # a request every 20 minutes: 0:00 ... 2:00
        clock.now = T0 + step * 1200
        r = a.get("/")
        assert r.status_code == 200, step
        assert "Set-Cookie" not in r.headers  # nothing slides the cookie's expiry
    clock.now = T0 + 2 * 3600 + 1
    r = a.post("/_dash-update-component", json=_nav_body())
    assert (r.status_code, r.get_data(as_text=True)) == (401, "session expired: sign in again\n")
    assert a.get("/").status_code == 302  # the cookie was cleared: a page asks to sign in
    clock.now = T0 + 2 * 3600 + 2
    _login(a)
    assert a.get("/").status_code == 200


def test_session_cookie_without_sign_in_time_is_refused(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    a = app.server.test_client()
    _login(a)
    with a.session_transaction() as s:  # a cookie of the old format (or a forged field)
        s["user"] = {k: v for k, v in s["user"].items() if k != "iat"}
    r = a.post("/_dash-update-component", json=_nav_body())
    assert (r.status_code, r.get_data(as_text=True)) == (401, "session expired: sign in again\n")


def test_unreadable_session_state_fails_closed(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    a = app.server.test_client()
    _login(a)
    (tmp_path / "lake" / "_dashboard").mkdir(parents=True)
    (tmp_path / "lake" / "_dashboard" / "sessions.json").write_text("{not json")
    assert a.get("/").status_code == 503


def test_session_generations_shared_through_the_file(tmp_path: Path) -> None:
    one, two = SessionGenerations(tmp_path / "s.json"), SessionGenerations(tmp_path / "s.json")
    assert one.current("u") == two.current("u") == 0
    assert one.bump("u") == 1 and two.current("u") == 1
    assert two.bump("u") == 2 and one.current("u") == 2 and one.current("v") == 0
    mem = SessionGenerations(None)
    assert (mem.bump("u"), mem.bump("u"), mem.current("u")) == (1, 2, 2)
    (tmp_path / "s.json").write_text("[1]")
    with pytest.raises(SessionStateError, match="expected a JSON object"):
        SessionGenerations(tmp_path / "s.json").current("u")


def test_security_headers_on_every_response(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    expected_csp = CSP.format(hashes="".join(" " + h for h in app.csp_hashes()))
    assert "frame-ancestors 'none'" in expected_csp and "'sha256-" in expected_csp
    anon, a = app.server.test_client(), app.server.test_client()
    _login(a)
    responses = {
        "login": anon.get("/login"),
        "healthz": anon.get("/healthz"),
        "redirect": anon.get("/gpus"),
        "401": anon.post("/_dash-update-component", json=_nav_body()),
        "index": a.get("/"),
        "layout": a.get("/_dash-layout"),
        "dependencies": a.get("/_dash-dependencies"),
        "callback": a.post("/_dash-update-component", json=_nav_body()),
        "400": a.post("/_dash-update-component", data=b"{", content_type="application/json"),
        "404": a.get("/download/1999-01.csv"),
    }
    statuses = {k: r.status_code for k, r in responses.items()}
    assert statuses == {
        "login": 200,
        "healthz": 200,
        "redirect": 302,
        "401": 401,
        "index": 200,
        "layout": 200,
        "dependencies": 200,
        "callback": 200,
        "400": 400,
        "404": 404,
    }
    for name, r in responses.items():
        h = r.headers
        got = (
            h.get("Content-Security-Policy"),
            h.get("X-Frame-Options"),
            h.get("X-Content-Type-Options"),
            h.get("Referrer-Policy"),
        )
        assert got == (expected_csp, "DENY", "nosniff", "same-origin"), name
    # every inline script the index page runs (outside comments, not a JSON data block) is allowed
    # by its hash: the renderer's start
    index = re.sub(r"<!--.*?-->", "", responses["index"].get_data(as_text=True), flags=re.S)
    scripts = [
        body
        for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", index, re.S)
        if body.strip() and "src=" not in attrs and "application/json" not in attrs
    ]
    assert scripts == ["var renderer = new DashRenderer();"]
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in expected_csp


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json at all", "expected a JSON object"),
        (b"[1, 2]", "expected a JSON object"),
        (b'"nav.children"', "expected a JSON object"),
        (b'{"output": 1}', "'output' must be a non-empty string"),
        (
            b'{"output": "nav.children", "inputs": []}',
            "'outputs' must be an {id, property} object or a list of them",
        ),
        (
            b'{"output": "nav.children", "outputs": {"id": "nav", "property": "children"}}',
            "'inputs' must be a list of {id, property, value} objects",
        ),
        (
            b'{"output": "nav.children", "outputs": {"id": "nav", "property": "children"}, "inputs": [1]}',
            "'inputs' must be a list of {id, property, value} objects",
        ),
        (
            b'{"output": "nav.children", "outputs": {"id": "nav", "property": "children"}, "inputs": [],'
            b' "state": {}}',
            "'state' must be a list of {id, property, value} objects",
        ),
        (
            b'{"output": "nav.children", "outputs": {"id": "nav", "property": "children"}, "inputs": [],'
            b' "changedPropIds": [1]}',
            "'changedPropIds' must be a list of strings",
        ),
        (
            b'{"output": "nope.children", "outputs": {"id": "nope", "property": "children"}, "inputs": []}',
            "no such callback",
        ),
        (
            b'{"output": "nav.children", "outputs": {"id": "nav", "property": "children"},'
            b' "inputs": [{"id": "url", "property": "pathname", "value": "/"}]}',
            "wrong number of inputs or states for this callback",
        ),
    ],
)
def test_malformed_callback_bodies_get_400(tmp_path: Path, body: bytes, why: str) -> None:
    app, _ = _app(tmp_path)
    a = app.server.test_client()
    _login(a)
    r = a.post("/_dash-update-component", data=body, content_type="application/json")
    assert (r.status_code, r.get_data(as_text=True)) == (400, f"malformed callback: {why}\n")
    # the same session still gets well-formed callbacks answered
    assert a.post("/_dash-update-component", json=_nav_body()).status_code == 200


def test_callback_body_check_accepts_what_the_renderer_sends() -> None:
    body = _nav_body()
    assert callback_body_error(body, None) is None
    assert callback_body_error(body, {"nav.children": {"inputs": [1, 2], "state": []}}) is None
    # several outputs and pattern-matching inputs (lists of dependencies)
    multi = {
        "output": "..a.children...b.children..",
        "outputs": [{"id": "a", "property": "children"}, {"id": "b", "property": "children"}],
        "inputs": [[{"id": {"type": "x", "index": 1}, "property": "value", "value": 3}]],
        "state": [],
    }
    assert callback_body_error(multi, None) is None
