"""The exported Prometheus rules: promtool check/test, and a real Prometheus scraping a running exporter."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import stop

from collector.exporter import AgentExporter
from gpuledger.cli import main
from gpuledger.config import Config
from pipeline.prom_rules import build_rules, duration, render_rules, write_rules

FIXTURES = Path(__file__).parent / "fixtures" / "prom"
INSTALL = "install Debian's prometheus package (apt-get install -y prometheus): it provides {0}"


def need(binary: str) -> str:
    """The binary's path; a missing one FAILS the test (the CI installs it), never skips."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found on PATH: " + INSTALL.format(binary))
    return path


def fixture_config() -> Config:
    """The config tests/fixtures/prom/rules_test.yml was written for."""
    cfg = Config()
    cfg.collector.interval_s = 60.0
    cfg.alerts.pool_unallocated_minutes = 10.0
    cfg.alerts.ingest_lag_messages = 1000
    cfg.alerts.labels = {"env": "test"}
    return cfg


def test_promtool_check_rules(tmp_path: Path) -> None:
    promtool = need("promtool")
    for cfg in (Config(), fixture_config()):
        path = write_rules(cfg, tmp_path / "rules.yml")
        out = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS: 9 rules found" in out.stdout


def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    promtool = need("promtool")
    write_rules(fixture_config(), tmp_path / "rules.yml")
    shutil.copy(FIXTURES / "rules_test.yml", tmp_path / "rules_test.yml")
    out = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # the check above can fail: a rule file with a syntax error in an expression does
    promtool = need("promtool")
    bad = render_rules(Config()).replace(
        "gpuledger:slice_used_fraction < ", "gpuledger:slice_used_fraction < < "
    )
    (tmp_path / "bad.yml").write_text(bad)
    out = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "bad.yml")], capture_output=True, text=True
    )
    assert out.returncode == 1


def test_rules_follow_the_config() -> None:
    cfg = Config()
    cfg.alerts.rules = ["idle_slice", "collector_silent"]
    cfg.alerts.idle_min_minutes = 45
    cfg.alerts.idle_slice_severity = "critical"
    rules = build_rules(cfg, evaluation_interval_s=15)
    (group,) = rules["groups"]
    assert group["interval"] == "15s"
    alerts = {r["alert"]: r for r in group["rules"] if "alert" in r}
    assert sorted(alerts) == ["GpuCollectorSilent", "GpuSliceIdle"]
    idle = alerts["GpuSliceIdle"]
    assert (idle["for"], idle["keep_firing_for"], idle["labels"]) == ("45m", "30s", {"severity": "critical"})
    assert idle["expr"] == "gpuledger:slice_used_fraction < 0.05 * gpuledger:slice_reserved_fraction"
    assert alerts["GpuCollectorSilent"]["expr"].endswith("> 30.0")
    assert [duration(s) for s in (1800, 90, 1.5, 7200, 0)] == ["30m", "90s", "1500ms", "2h", "0s"]


def test_cli_export_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r" / "gpuledger.rules.yml"
    assert main(["alerts", "export-rules", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text() == render_rules(Config())
    assert main(["alerts", "export-rules"]) == 0
    assert capsys.readouterr().out == render_rules(Config())


# -- a real Prometheus ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _idle_tick(ts: float) -> dict[str, Any]:
    g = "GPU-99999999-0000-4000-8000-000000000000"
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": "c1",
        "node": "prom-node",
        "boot_id": "b0000000-0000-4000-8000-000000000000",
        "seq": int(ts),
        "ts": iso,
        "interval_s": 1.0,
        "gpus": [
            {
                "uuid": g,
                "index": 0,
                "model": "NVIDIA H100 80GB HBM3",
                "mem_total_mib": 81920,
                "mem_used_mib": 2000,
                "util_pct": 0.0,
                "power_w": 70.0,
                "energy_j": 70.0,
                "temp_c": 35,
                "mig_mode": False,
                "state": "ok",
            }
        ],
        "slices": [
            {
                "slice_id": f"{g}:whole:uid-nb",
                "gpu_uuid": g,
                "kind": "whole",
                "util_pct": 0.0,
                "mem_used_mib": 2000,
                "workload": {
                    "namespace": "research",
                    "pod": "notebook-0",
                    "container": "main",
                    "pod_uid": "uid-nb",
                },
            }
        ],
        "processes": [],
    }


@pytest.fixture
def exporter() -> Iterator[AgentExporter]:
    exp = AgentExporter(0, addr="127.0.0.1")
    exp.start()
    exp.update(_idle_tick(time.time()))
    yield exp
    exp.close()


def test_real_prometheus_fires_the_exported_rules(tmp_path: Path, exporter: AgentExporter) -> None:
    prometheus = need("prometheus")
    cfg = Config()
    cfg.collector.interval_s = 1.0
    cfg.alerts.idle_min_minutes = 0.05  # for: 3s
    cfg.alerts.rules = ["idle_slice", "idle_gpu", "collector_silent"]
    write_rules(cfg, tmp_path / "rules.yml")
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - rules.yml\n"
        "scrape_configs:\n  - job_name: gpuledger-collector\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115
    )
    base = f"http://127.0.0.1:{port}"
    try:
        firing: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {"GpuSliceIdle", "GpuIdle"} <= set(firing):
            time.sleep(0.5)
            exporter.update(_idle_tick(time.time()))  # the agent keeps ticking: not silent
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                alerts = _get(base + "/api/v1/alerts")["data"]["alerts"]
            except OSError:
                continue  # not listening yet
            firing = {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}
        assert {"GpuSliceIdle", "GpuIdle"} <= set(firing), f"not firing within 60 s: {firing}"
        idle = firing["GpuSliceIdle"]["labels"]
        assert (idle["namespace"], idle["pod"], idle["kind"], idle["severity"], idle["Hostname"]) == (
            "research",
            "notebook-0",
            "whole",
            "warning",
            "prom-node",
        )
        assert "GpuCollectorSilent" not in firing
        assert firing["GpuSliceIdle"]["annotations"]["summary"] == (
            "Idle GPU slice research/notebook-0 on prom-node GPU GPU-99999999-0000-4000-8000-000000000000"
        )
        rules = _get(base + "/api/v1/rules")["data"]["groups"][0]["rules"]
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    finally:
        stop(proc)
