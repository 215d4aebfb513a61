"""A new user's first hour, run as a user runs it (subprocesses in a temp folder): the demo leaves a
config beside its lake so close, report, jobs and dashboard reproduce its numbers there, and every
mistake ends in one line that names it, a non-zero exit and nothing written."""

from __future__ import annotations

import csv
import re
import tomllib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from test_cli import clean_env, gpuledger, summary

from gpuledger.cli import collect_line, validation_line
from gpuledger.config import load_config
from gpuledger.demo import DEMO_PRICES
from gpuledger.serve import rollups_line


def last_month(today: date | None = None) -> str:
    first = (today or datetime.now(UTC).date()).replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


def month_end_start(month: str, hours_before: int = 1) -> str:
    """YYYY-MM-DDTHH:MM that many hours before the end of `month` (the replay then crosses it)."""
    y, m = (int(x) for x in month.split("-"))
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    return (end - timedelta(hours=hours_before)).strftime("%Y-%m-%dT%H:%M")


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """demo over the end of last month (2 h: the last hour of it and the first of this month)."""
    d = tmp_path_factory.mktemp("first-hour")
    month = last_month()
    run = gpuledger(d, "demo", "--no-serve", "--until", "2h", "--start", month_end_start(month))
    return {"dir": d, "month": month, "run": run}


def test_demo_writes_a_config_beside_its_lake(walk: dict) -> None:
    d, run = walk["dir"], walk["run"]
    assert run.rc == 0, run.err
    cfg_file = d / "gpuledger.toml"
    assert f"config: {cfg_file} (report, close, jobs and dashboard in {d} use the demo's settings)" in run.err
    raw = tomllib.loads(cfg_file.read_text())
    assert raw["lake"]["path"] == "./gpuledger-data"
    assert raw["dashboard"]["users_file"] == "./gpuledger-data/demo-users.toml"
    assert (d / "gpuledger-data" / "demo-users.toml").exists()
    cfg = load_config(cfg_file, env={})  # the program accepts what the demo wrote
    assert {e["gpu_hour"] for e in cfg.pricing.book} == set(DEMO_PRICES.values())
    assert len(cfg.tenants.rules) >= 5 and cfg.tenants.rules[0]["tenant"] == "vision"
    assert "ingest_lag" not in cfg.alerts.rules  # no broker in the demo: no lag to watch
    assert "password for all" not in run.err


def test_demo_gives_each_user_its_own_password(walk: dict) -> None:
    """admin and every viewer-<tenant> get a password of their own, printed once; the users file
    keeps its format (name, argon2 hash, role, tenants) and only the hashes."""
    from dashboards.auth import load_users, verify_password

    d, run = walk["dir"], walk["run"]
    assert run.rc == 0, run.err
    users_file = d / "gpuledger-data" / "demo-users.toml"
    printed = dict(re.findall(r"^  dashboard user (\S+): password (\S+)$", run.err, re.M))
    raw = tomllib.loads(users_file.read_text())["users"]
    tenants = sorted({r["tenant"] for r in load_config(d / "gpuledger.toml", env={}).tenants.rules})
    assert [u["name"] for u in raw] == ["admin"] + [f"viewer-{t}" for t in tenants]
    assert set(printed) == {u["name"] for u in raw}
    assert len(set(printed.values())) == len(printed)  # no two users share a password
    assert all(len(pw) >= 16 for pw in printed.values())
    assert raw[0]["role"] == "admin" and "tenants" not in raw[0]
    for u in raw[1:]:
        assert u["role"] == "tenant-viewer" and u["tenants"] == [u["name"].removeprefix("viewer-")]
    users = load_users(users_file)  # the dashboards read what the demo wrote
    assert set(users) == set(printed)
    text = users_file.read_text()
    hashes = {u["name"]: u["password_hash"] for u in raw}
    for name, pw in printed.items():
        assert pw not in text  # only the hash is stored
        assert verify_password(hashes[name], pw)
        other = next(n for n in printed if n != name)
        assert not verify_password(hashes[other], pw)  # one user's password opens no other account
    assert run.err.count(printed["admin"]) == 1  # printed once


def test_walkthrough_close_then_report_reproduces_the_demo(walk: dict) -> None:
    """The demo's cost of the window = last month's closed ledger + this month's accrual."""
    d, month, run = walk["dir"], walk["month"], walk["run"]
    s = summary(run.out)
    assert 0.9 * 720 * int(s["nodes"]) <= int(s["ticks ingested"]) <= 720 * int(s["nodes"])
    demo_cost = Decimal(s["cost (reserved)"].split()[1].replace(",", ""))
    closed = gpuledger(d, "close", "--month", month)
    assert closed.rc == 0, closed.err
    assert closed.out.splitlines()[0] == f"{month}: closed"
    total = Decimal(re.search(r"^total\s+USD (\S+)$", closed.out, re.M).group(1))
    assert (d / "gpuledger-data" / "ledger" / f"month={month}" / "manifest.json").exists()
    # one hour of the 148-GPU fleet in the closed month: half the window's cost, give or take the cents
    assert abs(total * 2 - demo_cost) <= Decimal("0.02")
    rep = gpuledger(d, "report", "--month", month, "--format", "html,csv")
    assert rep.rc == 0, rep.err
    out = d / "gpuledger-data" / "reports" / f"month={month}"
    rows = list(csv.DictReader((out / f"{month}-fleet-charges.csv").open()))
    assert sum(Decimal(r["cost"]) for r in rows) == total
    html = (out / f"{month}-fleet.html").read_text()
    assert f"USD {total:,.2f}" in html
    this = datetime.now(UTC).strftime("%Y-%m")
    acc = gpuledger(d, "report", "--month", this, "--format", "csv", "--out", str(d / "acc"))
    assert acc.rc == 0, acc.err
    rows = list(csv.DictReader((d / "acc" / f"{this}-fleet-charges.csv").open()))
    assert sum(Decimal(r["cost"]) for r in rows) + total == demo_cost


def test_jobs_run_on_the_demo_folder(walk: dict) -> None:
    d = walk["dir"]
    r = gpuledger(d, "jobs", "--once", "--only", "rollups,alerts,accrual", "--metrics-port", "0")
    assert r.rc == 0, r.err + r.out
    assert [ln.split()[:2] for ln in r.out.splitlines()] == [
        ["rollups", "success"],
        ["alerts", "success"],
        ["accrual", "success"],
    ]


def test_demo_again_keeps_its_config_and_never_overwrites_another(walk: dict, tmp_path: Path) -> None:
    d = walk["dir"]
    before = (d / "gpuledger.toml").read_text()
    other = tmp_path / "gpuledger.toml"
    other.write_text('[lake]\npath = "./elsewhere"\n')
    r = gpuledger(tmp_path, "demo", "--no-serve", "--until", "1m", "--lake", str(tmp_path / "lake"))
    assert r.rc == 0, r.err
    assert other.read_text() == '[lake]\npath = "./elsewhere"\n'
    inside = tmp_path / "lake" / "gpuledger.toml"
    assert (
        f"config: kept the existing {other}; the demo's settings are in {inside} "
        f"(use them with gpuledger --config {inside} ...)"
    ) in r.err
    assert tomllib.loads(inside.read_text())["lake"]["path"] == str(tmp_path / "lake")
    assert (d / "gpuledger.toml").read_text() == before


# -- one clear line, non-zero exit, nothing written ---------------------------------------------


@pytest.mark.parametrize("command", ["close", "report"])
@pytest.mark.parametrize("month", ["2025-13", "foo", "2025-1", "2025-00"])
def test_malformed_month(walk: dict, command: str, month: str) -> None:
    d = walk["dir"]
    before = files_under(d)
    r = gpuledger(d, command, "--month", month)
    assert r.rc == 2 and r.out == ""
    assert r.err.splitlines() == [
        f"gpuledger {command}: --month {month!r}: expected YYYY-MM with a month from 01 to 12 (e.g. 2025-11)"
    ]
    assert files_under(d) == before


@pytest.mark.parametrize(
    "command", [["close", "--month", "2025-11"], ["report", "--month", "2025-11"], ["dashboard"]]
)
def test_a_lake_that_does_not_exist_is_named_not_created(tmp_path: Path, command: list[str]) -> None:
    r = gpuledger(tmp_path, *command, "--lake", "nowhere")
    assert r.rc == 2 and r.out == ""
    assert r.err.splitlines() == [
        f"gpuledger {command[0]}: lake nowhere does not exist: give --lake DIR or set lake.path "
        f"(gpuledger demo and gpuledger ingest create one)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_close_refuses_a_month_with_no_data_unless_allowed(walk: dict) -> None:
    d = walk["dir"]
    y, m = (int(x) for x in walk["month"].split("-"))
    empty = f"{y - 1}-{m:02d}"
    before = files_under(d)
    r = gpuledger(d, "close", "--month", empty)
    assert r.rc == 1 and r.out == ""
    assert len(r.err.splitlines()) == 1
    assert r.err.startswith(
        f"gpuledger close: no samples for {empty} in lake gpuledger-data (it holds samples from "
    )
    assert r.err.rstrip().endswith("nothing closed (--allow-empty closes it as a ledger of no lines)")
    assert files_under(d) == before
    ok = gpuledger(d, "close", "--month", empty, "--allow-empty")
    assert ok.rc == 0, ok.err
    assert "lines        0" in ok.out and "total        USD 0.00" in ok.out


def test_report_of_an_empty_or_future_month_says_so(walk: dict) -> None:
    d = walk["dir"]
    before = files_under(d)
    r = gpuledger(d, "report", "--month", "2099-01")
    assert (r.rc, r.out) == (1, "")
    assert r.err.splitlines() == [
        "gpuledger report: 2099-01 has not begun (it starts 2099-01-01 00:00 UTC); no report written"
    ]
    r = gpuledger(d, "report", "--month", "2001-02")
    assert (r.rc, r.out) == (1, "")
    assert len(r.err.splitlines()) == 1
    assert r.err.startswith("gpuledger report: no samples for 2001-02 in lake gpuledger-data (it holds ")
    assert files_under(d) == before


def test_missing_price_book_names_the_models(walk: dict, tmp_path: Path) -> None:
    lake = walk["dir"] / "gpuledger-data"
    (tmp_path / "gpuledger.toml").write_text(f'[lake]\npath = "{lake}"\n')
    before = files_under(lake)
    want = (
        "no price book: pricing.book is empty, so GPU model(s) 'NVIDIA A100-SXM4-80GB', "
        "'NVIDIA GeForce RTX 4090', 'NVIDIA H100 80GB HBM3', 'NVIDIA H200', 'Tesla V100-SXM2-32GB' "
        'have no price; add [pricing] book = [{ model = ..., gpu_hour = "2.50", from = "2025-01-01" }]'
    )
    for command in (["report", "--month", walk["month"]], ["close", "--month", walk["month"]], ["dashboard"]):
        r = gpuledger(tmp_path, *command)
        assert (r.rc, r.out) == (1, ""), r.err
        assert r.err.splitlines() == [f"gpuledger {command[0]}: {want}"]
    assert files_under(lake) == before


def test_validate_without_the_validator_says_how_to_install(walk: dict, tmp_path: Path) -> None:
    d = walk["dir"]
    before = files_under(d)
    env = clean_env(FOCUS_VENV=str(tmp_path / "no-validator-here"))
    r = gpuledger(d, "report", "--month", walk["month"], "--format", "focus", "--validate", env=env)
    assert (r.rc, r.out) == (2, "")
    assert r.err.splitlines() == [
        "gpuledger report: --validate needs the official focus-validator, which is not installed: "
        "run `bash scripts/focus-validator.sh install` (it needs Python >= 3.12), or leave out --validate"
    ]
    r = gpuledger(d, "report", "--month", walk["month"], "--format", "html", "--validate")
    assert (r.rc, r.out) == (2, "")
    assert r.err.splitlines() == [
        "gpuledger report: --validate checks the FOCUS files: add focus to --format"
    ]
    assert files_under(d) == before


@pytest.mark.parametrize(
    ("start", "why"),
    [
        ("2025-11-30 18:00", "expected a UTC time YYYY-MM-DDTHH:MM (e.g. 2025-11-30T18:00)"),
        ("2025-02-30T10:00", "expected a UTC time YYYY-MM-DDTHH:MM (e.g. 2025-11-30T18:00)"),
        ("2099-01-01T00:00", "after now"),
    ],
)
def test_bad_start_exits_2_with_nothing_written(tmp_path: Path, start: str, why: str) -> None:
    r = gpuledger(tmp_path, "demo", "--no-serve", "--until", "1h", "--start", start)
    assert (r.rc, r.out) == (2, "")
    assert len(r.err.splitlines()) == 1 and why in r.err and start in r.err
    assert list(tmp_path.iterdir()) == []


def test_collect_simulate_replays_a_past_window(tmp_path: Path) -> None:
    """collect --start with no broker: every tick spooled, and the line says so (not "sent")."""
    env = clean_env(
        GPULEDGER_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",  # nothing listens on the discard port
        GPULEDGER_COLLECTOR_SPOOL_DIR=str(tmp_path / "spool"),
    )
    r = gpuledger(
        tmp_path,
        "collect",
        "--backend",
        "simulate",
        "--until",
        "1m",
        "--start",
        "2025-11-30T23:59",
        "--metrics-port",
        "0",
        env=env,
        timeout=300,
    )
    assert r.rc == 0, r.err
    last = r.err.strip().splitlines()[-1]
    m = re.fullmatch(
        r"collect: (\d+) ticks from 25 simulated nodes; 0 acknowledged by Kafka at 127\.0\.0\.1:9; "
        r"(\d+) spooled to \S+ \(0 of them replayed since, (\d+) waiting for Kafka\)",
        last,
    )
    assert m, last
    assert m.group(1) == m.group(2) == m.group(3) and int(m.group(1)) > 0
    assert "Connect attempt" not in r.err and "kafka.conn" not in r.err  # kafka-python's noise is off


def test_ingest_without_a_broker_names_the_address_once(tmp_path: Path) -> None:
    env = clean_env(GPULEDGER_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    r = gpuledger(
        tmp_path, "ingest", "--idle-exit", "1", "--lake", str(tmp_path / "lake"), env=env, timeout=300
    )
    assert r.rc == 1
    lines = r.err.strip().splitlines()
    assert lines[-1].startswith("gpuledger ingest: Kafka at 127.0.0.1:9 failed: ")
    assert sum("127.0.0.1:9" in ln for ln in lines) == 1, r.err


def test_default_kafka_port_is_the_one_scripts_kafka_sh_uses() -> None:
    script = (Path(__file__).resolve().parents[1] / "scripts" / "kafka.sh").read_text()
    port = re.search(r'KAFKA_PORT="\$\{KAFKA_PORT:-(\d+)\}"', script).group(1)
    assert load_config(None, env={}).kafka.bootstrap_servers == f"127.0.0.1:{port}"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f'bootstrap_servers = "127.0.0.1:{port}"' in readme


# -- wording ---------------------------------------------------------------------------------------


def test_rollups_line_does_not_read_as_a_failure() -> None:
    assert rollups_line(1, 0) == "rollups: 1 date up to date (0 rebuilt now, 1 already current)"
    assert rollups_line(3, 2) == "rollups: 3 dates up to date (2 rebuilt now, 1 already current)"


def test_collect_line_never_calls_spooled_ticks_sent() -> None:
    from collector.spool import SpoolStats

    def st(**kw: int) -> SpoolStats:
        base = dict(spooled=0, replayed=0, dropped=0, torn=0, sent_direct=0, pending_records=0)
        base.update(kw)
        return SpoolStats(**base, pending_bytes=0, segments=0, inflight=0, kafka_up=False)

    assert (
        collect_line(1500, "x", "k:1", "/s", st(sent_direct=1500))
        == "collect: 1500 ticks from x; 1500 acknowledged by Kafka at k:1"
    )
    assert collect_line(1500, "x", "k:1", "/s", st(spooled=1500, pending_records=1500)) == (
        "collect: 1500 ticks from x; 0 acknowledged by Kafka at k:1; 1500 spooled to /s "
        "(0 of them replayed since, 1500 waiting for Kafka)"
    )
    assert collect_line(10, "x", "k:1", "/s", st(spooled=10, replayed=4, dropped=6)) == (
        "collect: 10 ticks from x; 4 acknowledged by Kafka at k:1; 10 spooled to /s "
        "(4 of them replayed since, 0 waiting for Kafka); 6 dropped (spool full)"
    )


def test_validation_line_names_excused_defects() -> None:
    from warehouse.focus import ValidatorReport

    rep = ValidatorReport(tests=100, failures=1, errors=0, skipped=30, failed=(("InvoiceId-C-004-C", "m"),))
    assert validation_line(rep) == (
        "FOCUS validation ok: 69 of 100 rules passed, 30 not applicable, "
        "1 known validator defect(s) excused (InvoiceId-C-004-C)"
    )
    clean = ValidatorReport(tests=100, failures=0, errors=0, skipped=30, failed=())
    assert validation_line(clean) == "FOCUS validation ok: 70 of 100 rules passed, 30 not applicable"


def test_report_headings_are_not_repeated_and_models_do_not_wrap(walk: dict) -> None:
    d, month = walk["dir"], walk["month"]
    out = d / "headings"
    r = gpuledger(d, "report", "--month", month, "--format", "html", "--out", str(out))
    assert r.rc == 0, r.err
    page = (out / f"{month}-fleet.html").read_text()
    heads = re.findall(r"<h[23][^>]*>([^<]*)</h[23]>", page)
    assert len(heads) == len(set(heads)), heads
    assert "Charge lines" in heads and "Cost by cluster and GPU model" in heads
    assert '<td class="nw">NVIDIA A100-SXM4-80GB</td>' in page  # a model name is never broken at a hyphen
