"""`gpuledger demo` serves the dashboards: rollups built, demo prices and users in place, costs shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from dashboard_client import Client, call
from processes import stop

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


def wait_for_dashboard(proc: subprocess.Popen[str], lines: list[str]) -> tuple[int, str]:
    """The demo's dashboard port and admin password, read from its stderr as it prints them."""
    deadline = time.monotonic() + START_TIMEOUT_S
    port = password = None
    while time.monotonic() < deadline and proc.poll() is None and not (port and password):
        text = "".join(lines)
        m = re.search(r"dashboard on http://127\.0\.0\.1:(\d+)/", text)
        p = re.search(r"dashboard user admin: password (\S+)", text)
        port, password = (int(m.group(1)) if m else None), (p.group(1) if p else None)
        time.sleep(0.2)
    assert port and password, "".join(lines)[-3000:]
    return port, password


def test_demo_serves_the_dashboards_with_costs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = ["demo", "--until", "20m", "--port", "0", "--lake", str(tmp_path / "lake")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", *demo],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        port, password = wait_for_dashboard(proc, lines)
        text = "".join(lines)
        # the replay's summary already brought the rollups up to date (it prints their cost)
        assert re.search(r"rollups: ([12]) dates? up to date \(0 rebuilt now, \1 already current\)", text), (
            text[-2000:]
        )
        assert "development server" not in text  # served by waitress
        c = Client(port)
        assert c.login("admin", password)[0] == 302
        deps = json.loads(c.get("/_dash-dependencies")[2])
        status, resp = call(c, deps, "overview-cards", {"url.pathname": "/", "url.search": ""})
        assert status == 200
        cards = dict(re.findall(r'"children": "([^"]*)", "id": "(card-[a-z-]+)"', json.dumps(resp)))
        cost = {v: k for k, v in cards.items()}["card-cost"]
        assert re.fullmatch(r"USD [\d,]+\.\d\d", cost) and cost != "USD 0.00", cards
        c.close()
        viewers = dict(re.findall(r"dashboard user viewer-(\S+): password (\S+)", text))
        assert viewers, text[-2000:]
        tenant = sorted(viewers)[0]
        v = Client(port)
        assert v.login(f"viewer-{tenant}", password)[0] != 302  # each user has its own password
        v.close()
        v = Client(port)
        assert v.login(f"viewer-{tenant}", viewers[tenant])[0] == 302
        status, resp = call(v, deps, "tenants-table", {"url.pathname": "/tenants", "url.search": ""})
        rows = re.findall(r'"href": "/tenants/([^"?]+)', json.dumps(resp))
        assert rows == [tenant]
        v.close()
    finally:
        stop(proc)
        reader.join(timeout=5)


def test_demo_of_a_past_window_shows_the_same_numbers_everywhere(tmp_path: Path) -> None:
    """demo --start (a window inside last month, no live fleet): its summary, the Overview cards,
    the Tenants page and the month's report agree on cost, idle GPU-hours and idle cost."""
    from decimal import Decimal

    from test_cli import summary
    from test_cli_first_hour import gpuledger, last_month

    month = last_month()
    start = f"{month}-15T10:00"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = ["demo", "--until", "2h", "--start", start, "--port", "0", "--lake", str(tmp_path / "lake")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", *demo],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda s=s, acc=acc: acc.extend(s), daemon=True)
        for s, acc in ((proc.stdout, out), (proc.stderr, err))
    ]
    for r in readers:
        r.start()
    try:
        port, password = wait_for_dashboard(proc, err)
        assert "no live fleet" in "".join(err)
        s = summary("".join(out))
        c = Client(port)
        assert c.login("admin", password)[0] == 302
        deps = json.loads(c.get("/_dash-dependencies")[2])
        _, resp = call(c, deps, "overview-cards", {"url.pathname": "/", "url.search": ""})
        cards = {
            v: k for k, v in re.findall(r'"children": "([^"]*)", "id": "(card-[a-z-]+)"', json.dumps(resp))
        }
        assert cards["card-cost"] == s["cost (reserved)"]
        assert cards["card-idle-h"] == s["allocated-idle GPU-h"]
        assert cards["card-idle-cost"] == s["allocated-idle cost"]
        assert f"Cost, {month} to date" in json.dumps(resp)
        _, resp = call(c, deps, "tenants-table", {"url.pathname": "/tenants", "url.search": ""})
        tenant_costs = re.findall(r'"children": "USD ([\d,]+\.\d\d)", "title": "[^"]*"', json.dumps(resp))
        # first money column per row: the month's cost; the unallocated line is not a tenant
        per_row = tenant_costs[0::2]
        unallocated = Decimal(s["unallocated cost"].split()[1].replace(",", ""))
        total = Decimal(s["cost (reserved)"].split()[1].replace(",", ""))
        assert sum(Decimal(x.replace(",", "")) for x in per_row) + unallocated == total
        c.close()
    finally:
        stop(proc)
    rep = gpuledger(tmp_path, "report", "--month", month, "--format", "csv", "--out", str(tmp_path / "r"))
    assert rep.rc == 0, rep.err
    import csv

    rows = list(csv.DictReader((tmp_path / "r" / f"{month}-fleet-charges.csv").open()))
    assert f"USD {sum(Decimal(r['cost']) for r in rows):,.2f}" == s["cost (reserved)"]
