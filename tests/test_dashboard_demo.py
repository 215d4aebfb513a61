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

from dashboards.testing import Client, call

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


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
        deadline = time.monotonic() + START_TIMEOUT_S
        port = password = None
        while time.monotonic() < deadline and proc.poll() is None and not (port and password):
            text = "".join(lines)
            m = re.search(r"dashboard on http://127\.0\.0\.1:(\d+)/", text)
            p = re.search(r"password for all: (\S+)", text)
            port, password = (int(m.group(1)) if m else None), (p.group(1) if p else None)
            time.sleep(0.2)
        assert port and password, "".join(lines)[-3000:]
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
        viewer = re.search(r"dashboard users: admin, viewer-<tenant> \(([^)]*)\)", text)
        assert viewer
        tenant = viewer.group(1).split(", ")[0]
        v = Client(port)
        assert v.login(f"viewer-{tenant}", password)[0] == 302
        status, resp = call(v, deps, "tenants-table", {"url.pathname": "/tenants", "url.search": ""})
        rows = re.findall(r'"href": "/tenants/([^"?]+)', json.dumps(resp))
        assert rows == [tenant]
        v.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        reader.join(timeout=5)
