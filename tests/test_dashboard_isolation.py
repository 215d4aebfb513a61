"""Tenant isolation over HTTP: a tenant-viewer asking for another tenant's data gets none of it.

The golden fleet (tests/scenario.py, five tenants) is served on a loopback port. Every callback
listed by Dash's `/_dash-dependencies` and every Flask route of the app is called as the viewer of
"vision" with hostile inputs (other tenants in the query string, the path and the filters, GPUs
that only other tenants hold), and the raw responses are searched for the other tenants' names,
workloads, slices, GPUs and costs. The same requests as an admin do show them (the check can fail).
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scenario
from dashboard_client import Client, app_config, callback_body, serve, write_users
from pypdf import PdfReader

from dashboards.app import create_app

PASSWORD = "correct horse battery staple"
A1, B0, B1 = scenario.A1, scenario.B0, scenario.B1
OTHERS = ["research", "nlp", "hpc-chem", "alice-lab", "__unallocated__"]
# What only other tenants have: names, workloads, slices, the GPUs only they hold, their costs
# (USD 1.65 is also vision's own H100 line, so alice-lab's 1.65 cannot be told apart and is left out).
FORBIDDEN = [
    *OTHERS,
    "lab/sweep-0",
    "llm-0",
    "embed-2",
    "slurm-job/4242",
    "slurm-job/77",
    "p-sweep",
    "p-llm",
    "job-4242",
    ":ts:alice",
    A1,
    B0,
    "5.61",  # nlp
    "2.64",  # hpc-chem
    "4.40",  # research
    "22.00",  # the fleet total
]
PATHS = [
    "/",
    "/tenants",
    "/tenants/nlp",
    "/tenants/research",
    "/tenants/__unallocated__",
    "/chargeback",
    "/gpus",
    "/idle",
    "/caps",
]
FOREIGN = "&".join(f"tenant={t}" for t in OTHERS)
SEARCHES = ["", f"?{FOREIGN}", f"?gpu={B0}&{FOREIGN}", f"?gpu={A1}", "?range=90d&month=2026-10&tenant=nlp"]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Any]]:
    root = tmp_path_factory.mktemp("iso")
    lake = scenario.built_lake(root)
    users = root / "users.toml"
    write_users(users, PASSWORD, {"root": None, "vis": ["vision"]})
    app = create_app(app_config(lake, users, scenario.RULES, scenario.BOOK))
    with serve(app) as port:
        yield port, app


@pytest.fixture
def served(served_app: tuple[int, Any]) -> int:
    return served_app[0]


def client(port: int, user: str) -> Client:
    c = Client(port)
    status, headers, _ = c.login(user, PASSWORD)
    assert status == 302 and headers["location"] == "/"
    return c


def leaks(raw: bytes | str) -> list[str]:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    return [s for s in FORBIDDEN if s in text]


def hostile_values(dep: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Input/state values for one callback: every path x search, foreign filter values, foreign clicks."""
    ids = {f"{i['id']}.{i['property']}" for i in dep["inputs"] + dep["state"]}
    for path, search in itertools.product(PATHS, SEARCHES):
        v: dict[str, Any] = {"url.pathname": path, "url.search": search, "tick.n_intervals": 3}
        v.update(
            {
                "f-tenant.value": OTHERS,
                "f-cluster.value": ["east", "west"],
                "f-range.value": "90d",
                "f-month.value": "2026-10",
                "f-model.value": [],
                "gpu-heatmap.clickData": {"points": [{"customdata": B0}]},
            }
        )
        yield {k: v[k] for k in ids if k in v}, {k: v[k] for k in ids if k in v}


def test_every_callback_answers_a_viewer_with_its_own_tenant_only(served: int) -> None:
    vis, admin = client(served, "vis"), client(served, "root")
    try:
        status, _, raw = vis.get("/_dash-dependencies")
        assert status == 200
        deps = json.loads(raw)
        outputs = sorted(d["output"].split("@")[0] for d in deps)
        # The callbacks this test knows; a new one must be added to PATHS/hostile_values consciously.
        assert outputs == sorted(
            [
                "nav.children",
                "page.children",
                "url.search",
                "url.search",
                "url.search",
                "..overview-cards.children...overview-graphs.children..",
                "tenants-table.children",
                "tenant-detail.children",
                "chargeback-body.children",
                "gpu-heatmap.figure",
                "gpu-detail.children",
                "gpu-panels.children",
                "idle-table.children",
                "caps-body.children",
            ]
        )
        calls = 0
        admin_saw: set[str] = set()
        for dep in deps:
            for values, state in hostile_values(dep):
                body = callback_body(dep, values, state)
                status, _, raw = vis.post_json("/_dash-update-component", body)
                assert status in (200, 204), (dep["output"], values, raw[:500])
                assert leaks(raw) == [], (dep["output"], values, leaks(raw))
                calls += 1
                status, _, raw = admin.post_json("/_dash-update-component", body)
                assert status in (200, 204)
                admin_saw |= set(leaks(raw))
        assert calls == len(deps) * len(PATHS) * len(SEARCHES)
        # The admin receives every one of those strings from the same requests: the search is not blind.
        assert {"nlp", "research", "5.61", "22.00", B0, A1} <= admin_saw
    finally:
        vis.close()
        admin.close()


def test_the_viewer_still_gets_its_own_data(served: int) -> None:
    vis = client(served, "vis")
    try:
        deps = json.loads(vis.get("/_dash-dependencies")[2])
        dep = next(d for d in deps if d["output"] == "tenants-table.children")
        status, _, raw = vis.post_json(
            "/_dash-update-component",
            callback_body(dep, {"url.pathname": "/tenants", "url.search": f"?{FOREIGN}"}),
        )
        assert status == 200
        text = raw.decode()
        assert '"vision"' in text and "USD 3.85" in text  # vision's cost: 1.00 + 1.20 + 1.65
    finally:
        vis.close()


def _route_requests() -> list[str]:
    months = ["2026-10", "2026-09", "1999-01"]
    fmts = ["csv", "focus.csv", "pdf", "parquet"]
    tenants = ["", *[f"?tenant={t}" for t in OTHERS], "?tenant=vision"]
    return [f"/download/{m}.{f}{t}" for m in months for f in fmts for t in tenants]


def test_every_flask_route_refuses_other_tenants_data(served_app: tuple[int, Any], tmp_path: Path) -> None:
    served, app = served_app
    vis = client(served, "vis")
    try:
        # Every route of the server, by its rule: each is exercised below or is static code.
        rules = sorted(r.rule for r in app.server.url_map.iter_rules())
        covered = {
            "/download/<name>",
            "/login",
            "/logout",
            "/healthz",
            "/_dash-layout",
            "/_dash-dependencies",
            "/_dash-update-component",
            "/_reload-hash",
            "/",
            "/<path:path>",
        }
        static = {
            r
            for r in rules
            if r.startswith(("/_dash-component-suites/", "/assets/", "/static/")) or r.endswith("favicon.ico")
        }
        assert set(rules) - static == covered, sorted(set(rules) - static - covered)

        for path in [
            "/",
            "/tenants/nlp",
            "/chargeback?tenant=nlp",
            "/_dash-layout",
            "/_dash-dependencies",
            "/_reload-hash",
            "/healthz",
            "/login",
        ]:
            status, _, raw = vis.get(path)
            assert status in (200, 204, 302, 404), (path, status)
            assert leaks(raw) == [], (path, leaks(raw))
        status, _, raw = vis.request(
            "POST", "/logout", b"csrf_token=wrong", {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 400 and leaks(raw) == []

        served_ok = 0
        for path in _route_requests():
            status, _headers, raw = vis.get(path)
            foreign = any(f"tenant={t}" in path for t in OTHERS)
            if foreign or not path.startswith("/download/2026-10.") or ".parquet" in path:
                assert status == 404, (path, status)
                assert leaks(raw) == [], path
                continue
            assert status == 200, (path, status, raw[:300])
            served_ok += 1
            text = raw.decode("utf-8", errors="replace")
            if path.split("?")[0].endswith(".pdf"):
                text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(raw)).pages)
                (tmp_path / "vis.pdf").write_bytes(raw)
            assert "vision" in text, path
            assert leaks(text) == [], (path, leaks(text))
        assert served_ok == 6  # csv, focus.csv, pdf; without a tenant and with ?tenant=vision
    finally:
        vis.close()


def test_signed_out_requests_get_nothing(served: int) -> None:
    anon = Client(served)
    try:
        status, headers, _ = anon.get("/tenants?tenant=nlp")
        assert status == 302 and headers["location"].startswith("/login?next=")
        for path in ["/_dash-layout", "/_dash-dependencies", "/download/2026-10.csv"]:
            status, _, raw = anon.get(path)
            assert (status, raw) == (401, b"not signed in\n"), path
        status, _, raw = anon.post_json("/_dash-update-component", {"output": "tenants-table.children"})
        assert (status, raw) == (401, b"not signed in\n")
    finally:
        anon.close()
