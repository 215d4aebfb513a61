"""The `gpuledger` command line, run as a user runs it: a subprocess in an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from lake_views import LakeViews as Warehouse

SUMMARY_KEYS = (
    "ticks produced",
    "ticks ingested",
    "rejected to DLQ",
    "nodes",
    "GPUs",
    "slices",
    "tenants",
    "capacity GPU-h",
    "reserved GPU-h",
    "used GPU-h",
    "unallocated GPU-h",
    "fleet utilization",
    "allocation rate",
    "cost (reserved)",
    "unallocated cost",
    "idle periods",
    "allocated-idle GPU-h",
    "allocated-idle cost",
    "enforcer",
    "caps sent",
    "out-of-memory kills",
)


@dataclass
class Run:
    rc: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    env.update(extra)
    return env


def gpuledger(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    p = subprocess.run(
        [sys.executable, "-m", "gpuledger.cli", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def summary(out: str) -> dict[str, str]:
    """The demo's closing table: 'key<spaces>value' per line."""
    lines = {}
    for line in out.splitlines():
        m = re.fullmatch(r"(.+?)\s{2,}(\S.*)", line)
        assert m, f"unexpected summary line {line!r}"
        lines[m.group(1)] = m.group(2)
    return lines


def pct(text: str) -> float:
    m = re.fullmatch(r"(\d+\.\d) %", text)
    assert m, text
    return float(m.group(1))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def first_demo(demo_dir: Path) -> Run:
    return gpuledger(demo_dir, "demo", "--until", "1h", "--no-serve", "--lake", str(demo_dir / "lake"))


def check_demo_summary(run: Run) -> dict[str, str]:
    assert run.rc == 0, run.err
    s = summary(run.out)
    assert tuple(s) == SUMMARY_KEYS
    produced, nodes = int(s["ticks produced"]), int(s["nodes"])
    # 1 h at the default 10 s interval is 360 ticks per node, less the few a rebooting node skips
    assert 0.9 * 360 * nodes <= produced <= 360 * nodes
    assert int(s["ticks ingested"]) == produced
    assert int(s["rejected to DLQ"]) == 0
    assert nodes > 0
    assert int(s["GPUs"]) >= nodes
    assert int(s["slices"]) > 0
    assert int(s["tenants"]) >= 5
    capacity = float(s["capacity GPU-h"])
    reserved, used = float(s["reserved GPU-h"]), float(s["used GPU-h"])
    unalloc = float(s["unallocated GPU-h"])
    # GPUs observed for (nearly) the whole hour: capacity ≈ GPUs · 1 h; reserved + unallocated = capacity
    assert capacity == pytest.approx(int(s["GPUs"]), rel=0.05)
    assert reserved + unalloc == pytest.approx(capacity, abs=0.011)
    assert 0 < used < capacity
    assert 0 < pct(s["fleet utilization"]) < 100
    assert 0 < pct(s["allocation rate"]) <= 100
    assert pct(s["fleet utilization"]) == pytest.approx(100 * used / capacity, abs=0.2)
    assert pct(s["allocation rate"]) == pytest.approx(100 * reserved / capacity, abs=0.2)
    # the enforcer ran against the fleet in enforce mode, a cycle per 15 fleet minutes, and killed nothing
    assert re.fullmatch(r"enforce: 4 cycles, \d+ decisions", s["enforcer"]), s["enforcer"]
    assert s["out-of-memory kills"] == "0"
    return s


def test_demo_prints_the_summary(first_demo: Run, demo_dir: Path) -> None:
    check_demo_summary(first_demo)
    # the gpuledger.toml it leaves holds the enforcer settings it ran with (enforce, shortened guards)
    from gpuledger.config import load_config

    e = load_config(demo_dir / "gpuledger.toml", env={}).enforcer
    assert (e.mode, e.shrink_min_history_hours, e.shrink_min_age_hours) == ("enforce", 2.0, 2.0)
    assert (demo_dir / "lake" / ".gpuledger-demo").exists()
    assert list((demo_dir / "lake" / "samples" / "tick").rglob("*.parquet"))


def test_demo_twice_on_its_own_lake_replaces_it(first_demo: Run, demo_dir: Path) -> None:
    before = check_demo_summary(first_demo)
    again = gpuledger(demo_dir, "demo", "--until", "1h", "--no-serve", "--lake", str(demo_dir / "lake"))
    after = check_demo_summary(again)
    # the second run starts from an empty lake: nothing of the first run is counted again
    assert after["ticks ingested"] == after["ticks produced"] == before["ticks produced"]
    assert after["GPUs"] == before["GPUs"]


def test_demo_refuses_a_lake_it_did_not_create(tmp_path: Path) -> None:
    lake = tmp_path / "precious"
    lake.mkdir()
    (lake / "ledger.parquet").write_text("not mine")
    r = gpuledger(tmp_path, "demo", "--until", "1m", "--no-serve", "--lake", str(lake))
    assert r.rc == 2
    assert str(lake) in r.err
    assert r.out == ""
    assert (lake / "ledger.parquet").read_text() == "not mine"
    assert not (lake / ".gpuledger-demo").exists()


def test_demo_accepts_an_existing_empty_dir(tmp_path: Path) -> None:
    lake = tmp_path / "empty"
    lake.mkdir()
    r = gpuledger(tmp_path, "demo", "--until", "1m", "--no-serve", "--lake", str(lake))
    assert r.rc == 0, r.err
    s = summary(r.out)
    # 1 min at 10 s = 6 ticks per node (fewer for a node that is down)
    assert int(s["ticks ingested"]) == int(s["ticks produced"])
    assert 0 < int(s["ticks produced"]) <= 6 * int(s["nodes"])
    assert int(s["rejected to DLQ"]) == 0


def test_bad_env_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    r = gpuledger(
        tmp_path,
        "demo",
        "--until",
        "1m",
        "--no-serve",
        "--lake",
        str(lake),
        env=clean_env(GPULEDGER_DASHBOARD_PORT="abc"),
    )
    assert r.rc == 2
    assert "dashboard.port" in r.err
    assert "'abc'" in r.err
    assert "GPULEDGER_DASHBOARD_PORT" in r.err
    assert "Traceback" not in r.err
    assert r.out == ""
    assert not lake.exists()


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "gpuledger.toml").write_text('[collector]\nbackend = "gpu"\n')
    r = gpuledger(tmp_path, "demo", "--until", "1m", "--no-serve", "--lake", str(tmp_path / "lake"))
    assert r.rc == 2
    assert "collector.backend" in r.err and "'gpu'" in r.err and "one of nvml, simulate, replay" in r.err
    assert "Traceback" not in r.err


@pytest.mark.parametrize("until", ["soon", "0", "-5m", "1x"])
def test_bad_until_exits_2(tmp_path: Path, until: str) -> None:
    lake = tmp_path / "lake"
    r = gpuledger(tmp_path, "demo", f"--until={until}", "--no-serve", "--lake", str(lake))
    assert r.rc == 2
    assert "bad duration" in r.err
    assert "Traceback" not in r.err
    assert r.out == ""
    assert not lake.exists()  # nothing touched before the arguments were checked


def test_demo_prints_the_money_of_the_replay(tmp_path: Path) -> None:
    """The demo's cost is the fleet's capacity at the embedded prices (conservation), recomputed
    here from the raw GPU samples of its lake."""
    from decimal import Decimal

    from collector.catalog import MODELS
    from gpuledger.demo import DEMO_PRICES

    run = gpuledger(tmp_path, "demo", "--until", "1h", "--no-serve", "--lake", str(tmp_path / "lake"))
    s = check_demo_summary(run)
    price = {MODELS[k].name: Decimal(p) for k, p in DEMO_PRICES.items()}
    wh = Warehouse(tmp_path / "lake")
    try:
        rows = wh.sql(
            "SELECT model, sum(CAST(capacity_s AS DECIMAL(38, 6))) FROM gpu_acct GROUP BY model"
        ).fetchall()
    finally:
        wh.close()
    want = sum(Decimal(cap) * price[model] / 3600 for model, cap in rows)
    assert s["cost (reserved)"] == f"USD {want:,.2f}"
    unallocated = Decimal(s["unallocated cost"].split()[1].replace(",", ""))
    idle = Decimal(s["allocated-idle cost"].split()[1].replace(",", ""))
    assert 0 < unallocated < want and 0 <= idle < want
    assert int(s["idle periods"]) >= 0
