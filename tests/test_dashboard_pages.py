"""Pages, login and filters over HTTP on the golden fleet (tests/scenario.py), numbers worked by hand.

Golden October: capacity cost USD 22.00 (conservation); tenants alice-lab 1.65, hpc-chem 2.64,
nlp 5.61, research 4.40, vision 3.85; west (H100) 13.20; research's A1 idles 60 min across the
midnight price change (30 min at 2.00 + 30 min at 2.40 = USD 2.20, 1 GPU-h); node-b misses ten
one-minute ticks of two GPUs (1/3 GPU-h unobserved).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import scenario
from dashboard_client import Client, app_config, call, serve, write_users

from dashboards.app import create_app
from dashboards.auth import AuthConfigError, LoginThrottle, TrustedHeaders, load_users, parse_users
from dashboards.filters import Filters
from warehouse.accounting import Accounting
from warehouse.close import CloseSettings, close_month
from warehouse.monthly import month_lines
from warehouse.pricing import PriceBook

PASSWORD = "pages-test-password"


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Any]]:
    root = tmp_path_factory.mktemp("pages")
    lake = scenario.built_lake(root)
    users = root / "users.toml"
    write_users(users, PASSWORD, {"root": None, "vis": ["vision"], "two": ["vision", "nlp"]})
    cfg = app_config(lake, users, scenario.RULES, scenario.BOOK, login_backoff_s=30.0)
    with serve(create_app(cfg)) as port:
        yield port, cfg


def signed_in(port: int, user: str) -> tuple[Client, list[dict[str, Any]]]:
    c = Client(port)
    status, headers, _ = c.login(user, PASSWORD)
    assert (status, headers["location"]) == (302, "/")
    return c, json.loads(c.get("/_dash-dependencies")[2])


def texts(node: Any, ident: str) -> list[str]:
    """The children text of the component with id `ident` in a Dash JSON tree."""
    if isinstance(node, list):
        return [t for n in node for t in texts(n, ident)]
    if not isinstance(node, dict):
        return []
    props = node.get("props", node)
    if props.get("id") == ident:
        ch = props.get("children")
        return [ch if isinstance(ch, str) else json.dumps(ch)]
    return [t for v in props.values() if isinstance(v, dict | list) for t in texts(v, ident)]


def cb(c: Client, deps: list[dict[str, Any]], out: str, path: str, search: str = "") -> dict[str, Any]:
    status, resp = call(c, deps, out, {"url.pathname": path, "url.search": search}, {"url.search": search})
    assert status == 200, resp
    return resp["response"]


def test_overview_numbers_for_admin_viewer_and_filters(golden: tuple[int, Any]) -> None:
    port, _ = golden
    admin, deps = signed_in(port, "root")
    r = cb(admin, deps, "overview-cards", "/")
    cards = r["overview-cards"]["children"]
    got = {k: texts(cards, k)[0] for k in ("card-cost", "card-idle-h", "card-idle-cost", "card-unobserved")}
    assert got == {
        "card-cost": "USD 22.00",
        "card-idle-h": "1.00",
        "card-idle-cost": "USD 2.20",
        "card-unobserved": "0.33",
    }
    names = [t["name"] for t in r["overview-graphs"]["children"][0]["props"]["figure"]["data"]]
    assert names == [f"{c} {s}" for c in ("east", "west") for s in ("utilization", "allocated", "idle GPU-h")]
    west = cb(admin, deps, "overview-cards", "/", "?cluster=west")["overview-cards"]["children"]
    assert texts(west, "card-cost") == ["USD 13.20"]
    assert texts(west, "card-idle-h") == ["0.00"]  # the idle A1 is in east
    nlp = cb(admin, deps, "overview-cards", "/", "?tenant=nlp")["overview-cards"]["children"]
    assert texts(nlp, "card-cost") == ["USD 5.61"]

    vis, vdeps = signed_in(port, "vis")
    v = cb(vis, vdeps, "overview-cards", "/", "?tenant=nlp")["overview-cards"]["children"]  # nlp ignored
    assert texts(v, "card-cost") == ["USD 3.85"]
    assert texts(v, "card-idle-h") == ["0.00"] and texts(v, "card-unobserved") == ["0.33"]
    assert texts(v, "card-util") == []  # fleet utilization is not a viewer's
    two, tdeps = signed_in(port, "two")
    t = cb(two, tdeps, "overview-cards", "/")["overview-cards"]["children"]
    assert texts(t, "card-cost") == ["USD 9.46"]  # vision 3.85 + nlp 5.61
    t = cb(two, tdeps, "overview-cards", "/", "?tenant=nlp&tenant=research")["overview-cards"]["children"]
    assert texts(t, "card-cost") == ["USD 5.61"]


def test_tenants_table_and_tenant_page(golden: tuple[int, Any]) -> None:
    port, _ = golden
    admin, deps = signed_in(port, "root")
    table = json.dumps(cb(admin, deps, "tenants-table", "/tenants"))
    order = [
        table.index(f'"children": "{t}"') for t in ("nlp", "research", "vision", "hpc-chem", "alice-lab")
    ]
    assert order == sorted(order)  # by cost, highest first
    for cost in ("USD 5.61", "USD 4.40", "USD 3.85", "USD 2.64", "USD 1.65"):
        assert cost in table
    page = cb(admin, deps, "tenant-detail", "/tenants/research")["tenant-detail"]["children"]
    assert texts(page, "tenant-cost") == ["USD 4.40"] and texts(page, "tenant-slices") == ["1"]
    assert texts(page, "tenant-cost-last") == ["USD 0.00"]  # September: no data
    assert texts(page, "tenant-eff") == ["25.0 %"]  # busy 50 % for 60 of 120 minutes
    idle = json.dumps(texts(page, "tenant-idle-table"))
    assert "lab/sweep-0" in idle and "USD 2.20" in idle and "2026-10-15 23:30" in idle
    missing = cb(admin, deps, "tenant-detail", "/tenants/nobody")["tenant-detail"]["children"]
    assert texts(missing, "tenant-missing") == ["No such tenant in your view"]


def test_chargeback_open_then_closed_matches_month_lines(golden: tuple[int, Any], tmp_path: Path) -> None:
    port, cfg = golden
    admin, deps = signed_in(port, "root")
    body = cb(admin, deps, "chargeback-body", "/chargeback", "?month=2026-10")["chargeback-body"]["children"]
    assert texts(body, "chargeback-state") == ["not closed: accrual to date"]
    assert texts(body, "chargeback-check") == [
        "Conservation: lines add up to USD 22.00; capacity x price = USD 22.00: ok"
    ]
    settings = CloseSettings.from_config(cfg)
    lines, note, closed = month_lines(cfg.lake.path, "2026-10", settings)
    assert (note, closed) == ("not closed: accrual to date", False)
    shown = texts(body, "charge-lines")[0]
    assert shown.count('"type": "Tr"') == len(lines) + 1  # header + one row per line
    from dashboards.pages import tenant_label

    assert all(f'"children": "{tenant_label(ln.tenant)}"' in shown for ln in lines)
    assert '"children": "unallocated capacity"' in shown and "__unallocated__" not in shown
    # money to the cent with the exact value in the tooltip; unit prices with their unit
    assert '"children": "USD 5.61", "title": "USD 5.61 exact"' in shown
    assert '"children": "USD 2.00", "title": "USD 2.00 exact"' in shown
    assert '"children": "USD 3.60 / GPU-h"' in shown and '"children": "USD 2.40 / GPU-h"' in shown

    # The same month closed (on a copy of the lake): the ledger's lines and manifest hash.
    lake2 = tmp_path / "lake"
    shutil.copytree(cfg.lake.path, lake2)
    close_month(lake2, "2026-10", settings, now=datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC))
    closed_lines, sha, is_closed = month_lines(lake2, "2026-10", settings)
    assert is_closed and closed_lines == lines
    users = tmp_path / "u.toml"
    write_users(users, PASSWORD, {"root": None})
    with serve(create_app(app_config(lake2, users, scenario.RULES, scenario.BOOK))) as port2:
        c, d2 = signed_in(port2, "root")
        body = cb(c, d2, "chargeback-body", "/chargeback")["chargeback-body"]["children"]
        assert texts(body, "chargeback-state") == [f"closed; ledger manifest sha256 {sha}"]
        assert texts(body, "chargeback-check")[0].endswith(": ok")
        status, headers, csv = c.get("/download/2026-10.csv")
        assert (
            status == 200
            and headers["content-disposition"] == 'attachment; filename="2026-10-fleet-charges.csv"'
        )
        from warehouse.charges_csv import charges_csv_bytes

        assert csv == charges_csv_bytes(closed_lines)


def test_gpu_heatmap_and_drill_down(golden: tuple[int, Any]) -> None:
    port, _ = golden
    admin, deps = signed_in(port, "root")
    fig = cb(admin, deps, "gpu-heatmap", "/gpus")["gpu-heatmap"]["figure"]
    hm = fig["data"][0]
    assert hm["y"] == ["east/node-a", "west/node-b"]
    assert hm["customdata"] == [[scenario.A0, scenario.A1], [scenario.B0, scenario.B1]]
    # A0: MIG 70 % x 3/7 = 30 %; A1: 50 % half the time = 25 %; B0: 30 + 20 = 50 %; B1: 40 + 10 + 10 = 60 %
    assert hm["z"] == [[30.0, 25.0], [50.0, 60.0]]
    detail = cb(admin, deps, "gpu-detail", "/gpus", f"?gpu={scenario.B1}")["gpu-detail"]["children"]
    assert texts(detail, "gpu-title") == [f"{scenario.B1} (NVIDIA H100 80GB HBM3) on node-b"]
    slices = json.dumps(texts(detail, "gpu-slices"))
    assert all(w in slices for w in ("slurm-job/77", "vision/infer-1", "nlp/embed-2"))
    vis, vdeps = signed_in(port, "vis")
    vfig = cb(vis, vdeps, "gpu-heatmap", "/gpus")["gpu-heatmap"]["figure"]["data"][0]
    # each GPU in the column of its index: B1 is GPU 1 on the axis as in its tooltip
    assert vfig["customdata"] == [[scenario.A0, None], [None, scenario.B1]]
    assert vfig["z"] == [[30.0, None], [None, 10.0]]  # vision's own use of those GPUs
    assert vfig["text"][1][1].startswith(f"GPU 1: {scenario.B1}")
    vd = cb(vis, vdeps, "gpu-detail", "/gpus", f"?gpu={scenario.B1}")["gpu-detail"]["children"]
    vs = json.dumps(texts(vd, "gpu-slices"))
    assert "vision/infer-1" in vs and "nlp" not in vs and "slurm-job/77" not in vs


def test_idle_now_lists_nothing_after_the_idle_period_ended(golden: tuple[int, Any]) -> None:
    port, _ = golden
    admin, deps = signed_in(port, "root")
    body = cb(admin, deps, "idle-table", "/idle")["idle-table"]["children"]
    # research's A1 was idle 23:31-00:30 and busy again until 01:00: not idle now
    assert texts(body, "idle-now") != [] and "sweep-0" not in json.dumps(body)


def test_login_csrf_backoff_and_redirects(golden: tuple[int, Any]) -> None:
    port, _ = golden
    c = Client(port)
    status, headers, _ = c.get("/chargeback?month=2026-10")
    assert status == 302 and headers["location"] == "/login?next=%2Fchargeback%3Fmonth%3D2026-10"
    form = b"username=root&password=" + PASSWORD.encode()
    status, _, page = c.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and b"The form expired" in page  # no CSRF token
    status, _, _ = c.request(
        "POST",
        "/login",
        form,
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
    )
    assert status == 403
    status, headers, _ = c.login("root", PASSWORD, nxt="//evil.example/x")
    assert (status, headers["location"]) == (302, "/")  # never redirected off-site

    b = Client(port)
    for _ in range(3):  # login_free_attempts = 3 are checked at once
        assert b.login("vis", "wrong")[0] == 401
    status, headers, page = b.login("vis", PASSWORD)  # then 30 s, even for the right password
    assert status == 429 and b"Too many failed sign-ins" in page and 1 <= int(headers["retry-after"]) <= 30
    assert b.login("root", PASSWORD)[0] == 302  # another user from the same address is not slowed


def test_throttle_delays_grow_and_reset() -> None:
    now = [1000.0]
    t = LoginThrottle(free=2, base_s=1.0, max_s=8.0, clock=lambda: now[0])
    assert t.wait_s("u", "a") == 0.0
    for _ in range(2):
        t.failed("u", "a")
    assert t.wait_s("u", "a") == 1.0
    t.failed("u", "a")
    assert t.wait_s("u", "a") == 2.0
    for _ in range(5):
        t.failed("u", "a")
    assert t.wait_s("u", "a") == 8.0  # capped
    now[0] += 8.0
    assert t.wait_s("u", "a") == 0.0
    assert t.wait_s("u", "b") == 0.0
    t.succeeded("u", "a")
    t.failed("u", "a")
    assert t.wait_s("u", "a") == 0.0


def test_trusted_header_mode(tmp_path: Path) -> None:
    lake = scenario.built_lake(tmp_path)
    cfg = app_config(lake, "", scenario.RULES, scenario.BOOK, auth="trusted-header")
    with serve(create_app(cfg)) as port:
        c = Client(port, {"X-Forwarded-User": "eve", "X-Forwarded-Groups": "staff, gpuledger-tenant-vision"})
        deps = json.loads(c.get("/_dash-dependencies")[2])
        r = cb(c, deps, "overview-cards", "/", "?tenant=nlp")["overview-cards"]["children"]
        assert texts(r, "card-cost") == ["USD 3.85"]
        assert c.get("/login")[0] == 404
        a = Client(port, {"X-Forwarded-User": "root", "X-Forwarded-Groups": "gpuledger-admins"})
        r = cb(a, deps, "overview-cards", "/")["overview-cards"]["children"]
        assert texts(r, "card-cost") == ["USD 22.00"]
        assert (
            Client(port, {"X-Forwarded-User": "x", "X-Forwarded-Groups": "staff"}).get("/_dash-layout")[0]
            == 403
        )
        assert Client(port).get("/_dash-layout")[0] == 403
    cfg.dashboard.trusted_proxies = ["10.0.0.0/8"]
    with serve(create_app(cfg)) as port:
        c = Client(port, {"X-Forwarded-User": "root", "X-Forwarded-Groups": "gpuledger-admins"})
        status, _, body = c.get("/_dash-layout")
        assert status == 403 and b"127.0.0.1 is not a trusted proxy" in body


def test_trusted_headers_groups_mapping() -> None:
    th = TrustedHeaders("U", "G", ["192.168.0.0/16"], "admins", "t-")
    assert th.principal("192.168.1.2", {"U": "a", "G": "admins"})[0].tenants is None
    p, _ = th.principal("192.168.1.2", {"U": "b", "G": "t-x;t-y, other"})
    assert p.tenants == frozenset({"x", "y"}) and p.role == "tenant-viewer"
    assert th.principal("10.1.1.1", {"U": "a", "G": "admins"})[0] is None
    assert th.principal("192.168.1.2", {"G": "admins"}) == (None, "the proxy sent no U header")


def test_users_file_errors(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="does not exist"):
        load_users(tmp_path / "none.toml")
    bad = tmp_path / "u.json"
    bad.write_text('{"users": [{"name": "a", "password_hash": "plain", "role": "admin"}]}')
    with pytest.raises(AuthConfigError, match=r"users\[0\] \('a'\): password_hash: expected an argon2"):
        load_users(bad)
    h = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA"
    with pytest.raises(AuthConfigError, match="role = 'owner': expected one of admin, tenant-viewer"):
        parse_users({"users": [{"name": "a", "password_hash": h, "role": "owner"}]}, "x")
    with pytest.raises(AuthConfigError, match="a tenant-viewer needs at least one tenant"):
        parse_users({"users": [{"name": "a", "password_hash": h, "role": "tenant-viewer"}]}, "x")
    with pytest.raises(AuthConfigError, match="a second user with this name"):
        parse_users({"users": [{"name": "a", "password_hash": h, "role": "admin"}] * 2}, "x")


def test_filters_round_trip_and_bounds() -> None:
    f = Filters.from_search("?cluster=east&cluster=east&model=A%20B&tenant=x&range=30d&month=2026-10&gpu=G")
    assert f == Filters(("east",), ("A B",), ("x",), "30d", "2026-10", "G")
    assert Filters.from_search(f.to_search()) == f
    junk = Filters.from_search("?range=1y&month=2026-13&cluster=" + "x" * 500)
    assert junk == Filters()
    assert Filters().to_search() == ""


def test_shared_idle_periods_answer_like_a_fresh_connection(tmp_path: Path) -> None:
    """The dashboards compute the idle periods once per process and share them over their pooled
    connections (Accounting.share_idle): a connection using the shared table answers exactly as
    one that stitched the periods itself."""
    lake = scenario.built_lake(tmp_path)

    def acct() -> Accounting:
        return Accounting(lake, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))

    own, shared = acct(), acct()
    try:
        shared.share_idle(own.idle_table())
        cases: list[tuple[list[str], str | None, str]] = [
            ([], None, ""),
            (["cluster"], "hour", ""),
            (["model"], "day", "cluster = 'east'"),
            (["tenant"], None, ""),
            (["tenant", "cluster"], "hour", "tenant IN ('research', 'vision')"),
            (["slice", "workload", "kind", "node"], None, "gpu_uuid = " + repr(scenario.A1)),
        ]
        for by, grain, where in cases:
            assert shared.measures(by, grain=grain, where=where) == own.measures(by, grain=grain, where=where)
        start, end = datetime(2026, 10, 15, 23, tzinfo=UTC), datetime(2026, 10, 16, 0, 30, tzinfo=UTC)
        assert shared.idle_periods() == own.idle_periods()
        assert shared.idle_periods(start, end, "research") == own.idle_periods(start, end, "research")
        assert [r["cost"] for r in shared.idle_periods()] == [Decimal("2.20")]
        assert own.measures(["tenant"], grain=None, where="tenant = 'research'")[0]["idle_gpu_h"] == 1.0
    finally:
        own.close()
        shared.close()


def test_heatmap_orders_gpus_by_their_index_within_a_node() -> None:
    from dashboards.pages import heatmap

    def cell(node: str, gpu: str, index: int | None, util: float) -> dict[str, Any]:
        return {
            "cluster": "c",
            "node": node,
            "gpu": gpu,
            "model": "H100",
            "index": index,
            "util": util,
            "alloc": 1,
        }

    fig = heatmap(
        {
            "cells": [
                cell("n1", "GPU-ff", 0, 0.1),
                cell("n1", "GPU-00", 2, 0.3),
                cell("n1", "GPU-77", 1, 0.2),
                cell("n2", "GPU-zz", None, 0.9),  # index unknown: after the known ones
                cell("n2", "GPU-aa", 3, 0.4),
            ]
        }
    )["data"][0]
    assert fig["y"] == ["c/n1", "c/n2"]
    assert fig["customdata"] == [
        ["GPU-ff", "GPU-77", "GPU-00", None, None],
        [None, None, None, "GPU-aa", "GPU-zz"],
    ]
    assert fig["z"] == [[10.0, 20.0, 30.0, None, None], [None, None, None, 40.0, 90.0]]
    assert fig["text"][0][1].startswith("GPU 1: GPU-77")
    assert fig["text"][1][3].startswith("GPU 3: GPU-aa")  # the axis column is the tooltip's index
    assert fig["x"] == ["GPU 0", "GPU 1", "GPU 2", "GPU 3", "GPU 4"]


def test_gpu_rollups_keep_the_nvml_index(golden: tuple[int, Any]) -> None:
    _, cfg = golden
    from warehouse.accounting import Accounting

    a = Accounting(cfg.lake.path)
    try:
        got = dict(a.sql("SELECT DISTINCT gpu_uuid, gpu_index FROM gpu_hourly").fetchall())
    finally:
        a.close()
    assert got == {scenario.A0: 0, scenario.A1: 1, scenario.B0: 0, scenario.B1: 1}


def test_pdf_download_is_the_report_the_cli_writes(golden: tuple[int, Any], tmp_path: Path) -> None:
    from warehouse.close import CloseSettings
    from warehouse.monthly import build_reports
    from warehouse.report_pdf import render_pdf

    port, cfg = golden
    settings = CloseSettings.from_config(cfg)
    # ("vis" may be slowed down by the login test's bad passwords: "two" asks for one of its tenants)
    for user, path, tenant in (
        ("root", "/download/2026-10.pdf", None),
        ("two", "/download/2026-10.pdf?tenant=vision", "vision"),
    ):
        c, _ = signed_in(port, user)
        status, _, body = c.get(path)
        assert status == 200 and body.startswith(b"%PDF")
        report = build_reports(cfg.lake.path, "2026-10", settings, tenant=tenant, fleet=tenant is None)[0]
        assert report.tenant == tenant
        out = tmp_path / f"{user}.pdf"
        render_pdf(report, out)
        assert body == out.read_bytes(), user


def test_a_bad_month_in_the_link_is_named(golden: tuple[int, Any]) -> None:
    port, _ = golden
    admin, deps = signed_in(port, "root")  # one sign-in: the login rate limit counts them
    for month in ("2025-13", "foo", "2020-01"):
        body = cb(admin, deps, "chargeback-body", "/chargeback", f"?month={month}")["chargeback-body"]
        assert texts(body["children"], "chargeback-month-notice") == [
            f"No charges for month {month!r} (from the link): showing 2026-10. Months with charges: 2026-10."
        ]
    good = cb(admin, deps, "chargeback-body", "/chargeback", "?month=2026-10")["chargeback-body"]["children"]
    assert texts(good, "chargeback-month-notice") == []


def test_a_tenant_viewer_sees_its_lines_numbered_from_one(golden: tuple[int, Any], tmp_path: Path) -> None:
    """The ledger's line numbers would tell a viewer how many lines other tenants have."""
    _, cfg = golden
    users = tmp_path / "u.toml"  # a server of its own: the module's "vis" is throttled by an earlier test
    write_users(users, PASSWORD, {"root": None, "vis": ["vision"]})
    with serve(create_app(app_config(cfg.lake.path, users, scenario.RULES, scenario.BOOK))) as port:
        viewer_and_admin_lines(port)
        # ... and so do its downloads (CSV, FOCUS) and its report (the PDF's lines come from it)
        vis, _ = signed_in(port, "vis")
        status, _, csv = vis.get("/download/2026-10.csv")
        rows = [r.split(",") for r in csv.decode().strip().splitlines()]
        col = rows[0].index("line_no")
        assert status == 200 and [int(r[col]) for r in rows[1:]] == list(range(1, len(rows)))
        assert {r[rows[0].index("tenant")] for r in rows[1:]} == {"vision"}
    from warehouse.close import CloseSettings
    from warehouse.monthly import build_reports

    (report,) = build_reports(
        cfg.lake.path, "2026-10", CloseSettings.from_config(cfg), tenant="vision", fleet=False
    )
    assert [ln.line_no for ln in report.lines] == list(range(1, len(report.lines) + 1))


def viewer_and_admin_lines(port: int) -> None:
    vis, deps = signed_in(port, "vis")
    body = cb(vis, deps, "chargeback-body", "/chargeback", "?month=2026-10")["chargeback-body"]["children"]
    table = json.loads(texts(body, "charge-lines")[0])
    rows = table[1]["props"]["children"]
    numbers = [r["props"]["children"][0]["props"]["children"] for r in rows]
    assert numbers == list(range(1, len(rows) + 1)) and len(rows) >= 1
    admin, adeps = signed_in(port, "root")
    abody = cb(admin, adeps, "chargeback-body", "/chargeback", "?month=2026-10")["chargeback-body"][
        "children"
    ]
    arows = json.loads(texts(abody, "charge-lines")[0])[1]["props"]["children"]
    vision_nos = [
        r["props"]["children"][0]["props"]["children"]
        for r in arows
        if r["props"]["children"][2]["props"]["children"] == "vision"
    ]
    assert len(vision_nos) == len(rows) and vision_nos != numbers  # the ledger's own numbers differ


def test_overview_cards_say_which_window_they_cover(golden: tuple[int, Any]) -> None:
    port, _ = golden
    admin, deps = signed_in(port, "root")
    resp = cb(admin, deps, "overview-cards", "/", "?range=24h")
    labels = re.findall(r'"children": "([^"]*)"', json.dumps(resp["overview-cards"]))
    assert "Cost, 2026-10 to date" in labels and "Idle GPU-h, 2026-10 to date" in labels
    assert "Utilization, last 24h" in labels and "Allocation rate, last 24h" in labels
    window = texts(resp["overview-cards"]["children"], "card-window")
    assert len(window) == 1 and re.fullmatch(
        r"last 24h: \d{4}-\d\d-\d\d \d\d:\d\d to \d{4}-\d\d-\d\d \d\d:\d\d UTC", window[0]
    )
