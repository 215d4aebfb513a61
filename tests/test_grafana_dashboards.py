"""Grafana dashboards over the node agent's exporter, queried through a real Prometheus (issue 17).

NVIDIA's dcgm-exporter dashboard (its panel queries and variables, test data in
../shared/data/grafana/dcgm-exporter-dashboard-queries.json, with its source) and our own
(deploy/grafana/gpuledger-dashboard.json) are pointed at an exporter fed by the simulated fleet;
a Debian-packaged Prometheus scrapes it, Grafana's template variables are resolved as Grafana
does (the variable's own query, then "All" as a regex of every value), and every panel query must
return series. A panel that returns nothing is a dashboard that shows "No data".
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from processes import stop
from test_prom_rules import _free_port, _get, need

from collector.exporter import AgentExporter
from collector.fleet import SimulatedFleet

DCGM_QUERIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "grafana"
DCGM_QUERIES = DCGM_QUERIES / "dcgm-exporter-dashboard-queries.json"
OURS = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "gpuledger-dashboard.json"


class Prom:
    """A running Prometheus and its query API."""

    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict[str, Any]]:
        out = _get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert out["status"] == "success", (expr, out)
        return list(out["data"]["result"])

    def label_values(self, metric: str, label: str) -> list[str]:
        qs = urllib.parse.urlencode({"match[]": metric})
        return list(_get(f"{self.base}/api/v1/label/{label}/values?{qs}")["data"])


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    """The simulated fleet (25 nodes: whole, MIG with and without GPM, HAMi, time-sliced) scraped."""
    prometheus = need("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    exp = AgentExporter(0, addr="127.0.0.1")
    exp.start()
    fleet = SimulatedFleet(seed=7, start=datetime(2026, 11, 1, tzinfo=UTC), interval_s=10.0)
    for _ in range(3):
        exp.update_all(fleet.sample())
    port = _free_port()
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: gpuledger-collector\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exp.port}']\n"
    )
    log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    p = Prom(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus did not scrape the exporter within 60 s"
            time.sleep(0.5)
            try:
                if p.query("DCGM_FI_PROF_SM_ACTIVE") and p.query(
                    "gpuledger_collector_last_tick_timestamp_seconds"
                ):
                    break
            except OSError:
                continue  # not listening yet
        yield p
    finally:
        stop(proc)
        log.close()
        exp.close()


_SPECIAL = re.compile(r"[.+*?^$()\[\]{}|\\:-]")


def _regex_all(values: list[str]) -> str:
    """Grafana's "All" of a multi-value variable: the values, regex-escaped, as one alternation.

    Inside a PromQL "..." string the regex's escaping backslash is itself escaped (doubled).
    """
    assert values, "the variable's query returned no values"
    return "(" + "|".join(_SPECIAL.sub(lambda m: "\\\\" + m.group(0), v) for v in values) + ")"


def _resolve(variables: list[dict[str, Any]], prom: Prom) -> dict[str, str]:
    """Each query variable's values from its own `label_values(metric, label)` query, as "All"."""
    out: dict[str, str] = {}
    for v in variables:
        q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", q)
        if m:
            out[v["name"]] = _regex_all(prom.label_values(m.group(1), m.group(2)))
    return out


def _substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("$" + name, value)
    assert "$" not in expr, f"unresolved variable in {expr!r}"
    return expr


def test_every_panel_of_nvidias_dcgm_exporter_dashboard_returns_series(prom: Prom) -> None:
    spec = json.loads(DCGM_QUERIES.read_text())
    assert "NVIDIA/dcgm-exporter" in spec["source"]
    values = _resolve(spec["variables"], prom)
    assert set(values) == {"instance", "gpu"}
    empty = []
    for panel in spec["panels"]:
        expr = _substitute(panel["expr"], values)
        if not prom.query(expr):
            empty.append(panel["panel"])
    assert empty == [], f"panels with no data: {empty}"
    assert len(spec["panels"]) == 8
    # the two panels the issue found empty, now with values in dcgm-exporter's units
    clocks = prom.query(_substitute(spec["panels"][4]["expr"], values))
    assert all(1e8 < float(s["value"][1]) <= 3e9 for s in clocks)  # MHz * 1e6 = Hz
    tensor = prom.query("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")
    assert all(0.0 <= float(s["value"][1]) <= 1.0 for s in tensor)  # a ratio, as dcgm-exporter


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            for t in sub.get("targets", []):
                out.append((sub["title"], t["expr"]))
    return out


def test_every_panel_of_our_dashboard_returns_series(prom: Prom) -> None:
    dash = json.loads(OURS.read_text())
    variables = [v for v in dash["templating"]["list"] if v["type"] == "query"]
    values = _resolve(variables, prom)
    assert set(values) == {"hostname"} and values["hostname"].count("|") == 24  # the fleet's 25 nodes
    targets = _targets(dash)
    assert len(targets) >= 18
    empty = [(title, expr) for title, expr in targets if not prom.query(_substitute(expr, values))]
    assert empty == [], f"panels with no data: {empty}"
    titles = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert titles == {"Fleet", "Tenants: reserved vs used", "Idle", "Health"}


def test_our_dashboard_tells_kernel_busy_from_sm_active(prom: Prom) -> None:
    """On the simulated fleet, as on real hardware, SMs are active for less time than kernels run."""
    busy = float(
        prom.query("avg(DCGM_FI_DEV_GPU_UTIL{GPU_I_ID=''} and on (UUID) DCGM_FI_PROF_SM_ACTIVE)")[0]["value"][
            1
        ]
    )
    sm = float(
        prom.query("100 * avg(DCGM_FI_PROF_SM_ACTIVE{GPU_I_ID=''} and on (UUID) DCGM_FI_DEV_GPU_UTIL)")[0][
            "value"
        ][1]
    )
    assert 0 < sm < busy


def test_dashboard_json_is_importable_shape() -> None:
    """What Grafana's import needs: unique panel ids, a datasource variable, every target on it."""
    dash = json.loads(OURS.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] == "gpuledger-fleet" and dash["templating"]["list"][0]["type"] == "datasource"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
