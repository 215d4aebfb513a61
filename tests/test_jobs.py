"""The job runner: each job on the golden lake, locks, job log, metrics, APScheduler, the CLI."""

from __future__ import annotations

import fcntl
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
import scenario

from gpuledger.cli import main
from gpuledger.config import Config
from pipeline.jobs import (
    JobRunner,
    build_scheduler,
    compact_job_log,
    job_log_glob,
    job_log_sql,
    previous_month,
    run_jobs,
)
from warehouse.lake import Lake


def _cfg(lake: Path, **alerts: Any) -> Config:
    cfg = Config()
    cfg.lake.path = str(lake)
    cfg.tenants.rules = list(scenario.RULES)
    cfg.pricing.book = list(scenario.BOOK)
    cfg.alerts.rules = ["idle_slice"]
    cfg.jobs.metrics_port = 0
    for k, v in alerts.items():
        setattr(cfg.alerts, k, v)
    return cfg


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    scenario.write(Lake(tmp_path), scenario.messages())
    return tmp_path


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def log_rows(lake: Path) -> list[tuple]:
    return duckdb.sql(
        f"SELECT job, result, error IS NULL, detail FROM ({job_log_sql(lake)}) ORDER BY run_id"
    ).fetchall()


def test_rollups_alerts_accrual_close(lake: Path) -> None:
    clock = {"now": at("2026-10-16 00:30:00")}
    runner = JobRunner(_cfg(lake), clock=lambda: clock["now"])
    r1, r2 = runner.run("rollups"), runner.run("rollups")
    assert (r1.result, r1.detail["rebuilt"], r2.detail["rebuilt"]) == ("success", 2, 0)
    a = runner.run("alerts")
    assert (a.result, a.detail["firing"], a.detail["transitions"][0].split()[:2]) == (
        "success",
        1,
        ["firing", "GpuSliceIdle"],
    )
    acc = runner.run("accrual")  # yesterday (the 15th) is in 2026-10: its month-to-date charges
    path = lake / "ledger" / "accrual" / "month=2026-10" / "date=2026-10-16.parquet"
    assert acc.result == "success" and acc.detail["path"] == str(path)
    table = pq.read_table(path)
    assert table.num_rows == acc.detail["lines"] > 0
    assert str(sum(table.column("cost").to_pylist())) == acc.detail["total"]

    clock["now"] = at("2026-11-01 02:00:00")
    c1, c2 = runner.run("close"), runner.run("close")
    assert (c1.result, c1.detail["month"], c1.detail["unchanged"]) == ("success", "2026-10", False)
    assert (c2.result, c2.detail["unchanged"]) == ("success", True)  # same inputs: a no-op
    assert (lake / "ledger" / "month=2026-10" / "manifest.json").exists()
    assert runner.run("accrual").detail == {"month": "2026-10", "skipped": "month already closed"}

    # other settings for a closed month: CloseError, logged and counted, no crash
    other = _cfg(lake)
    other.pricing.mode = "used"
    bad = JobRunner(other, clock=lambda: clock["now"], metrics=runner.metrics).run("close")
    assert bad.result == "error" and bad.error.startswith("CloseError: month 2026-10 is already closed")
    rows = log_rows(lake)
    assert [(j, r, ok) for j, r, ok, _d in rows] == [
        ("rollups", "success", True),
        ("rollups", "success", True),
        ("alerts", "success", True),
        ("accrual", "success", True),
        ("close", "success", True),
        ("close", "success", True),
        ("accrual", "success", True),
        ("close", "error", False),
    ]
    m = runner.metrics
    assert m.runs.labels("close", "success")._value.get() == 2
    assert m.runs.labels("close", "error")._value.get() == 1
    assert m.last_success.labels("close")._value.get() > 0
    runner.engine.close()


def test_a_held_lock_skips_the_run(lake: Path) -> None:
    runner = JobRunner(_cfg(lake))
    (lake / "jobs" / "_locks").mkdir(parents=True)
    with open(lake / "jobs" / "_locks" / "rollups.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another runner, elsewhere, is in the middle of it
        run = runner.run("rollups")
    assert (run.result, run.detail) == ("skipped", {"reason": "another run of this job holds its lock"})
    assert runner.run("rollups").result == "success"
    assert runner.metrics.runs.labels("rollups", "skipped")._value.get() == 1


def test_metrics_endpoint(lake: Path) -> None:
    runner = JobRunner(_cfg(lake))
    port = runner.metrics.serve(0)
    try:
        runner.run("rollups")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        runner.metrics.close()
    assert 'gpuledger_job_runs_total{job="rollups",result="success"} 1.0' in text
    assert 'gpuledger_job_runs_total{job="close",result="error"} 0.0' in text
    assert 'gpuledger_job_duration_seconds_count{job="rollups"} 1.0' in text
    assert 'gpuledger_job_last_success_timestamp_seconds{job="rollups"}' in text


def test_scheduler_never_runs_one_job_twice_at_once(lake: Path) -> None:
    cfg = _cfg(lake)
    cfg.jobs.alerts_seconds = 1.0
    runner = JobRunner(cfg)
    running, peak, calls = [0], [0], [0]
    lock = threading.Lock()

    def slow(now: datetime) -> dict[str, Any]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls[0] += 1
        time.sleep(2.2)
        with lock:
            running[0] -= 1
        return {}

    runner.jobs["alerts"] = slow
    sched = build_scheduler(runner, ["alerts"])
    sched.start()
    job = sched.get_job("alerts")
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 300)
    time.sleep(4.5)
    sched.shutdown(wait=True)
    assert peak[0] == 1
    assert 2 <= calls[0] <= 3
    assert runner.metrics.runs.labels("alerts", "skipped")._value.get() >= 1  # due while still running


def test_schedules_are_the_configured_ones(lake: Path) -> None:
    cfg = _cfg(lake)
    cfg.jobs.close_day, cfg.jobs.close_time, cfg.jobs.accrual_time = 2, "03:15", "01:05"
    now = at("2026-10-20 12:00:00")
    runner = JobRunner(cfg, clock=lambda: now)
    sched = build_scheduler(runner)
    sched.start(paused=True)
    try:
        nxt = {j.id: j.next_run_time.astimezone(UTC) for j in sched.get_jobs()}
        assert nxt["rollups"] == nxt["alerts"] == now  # at start, then on their intervals
        cron = {j: sched.get_job(j).trigger.get_next_fire_time(None, now) for j in ("close", "accrual")}
        assert cron == {"close": at("2026-11-02 03:15:00"), "accrual": at("2026-10-21 01:05:00")}
        assert sched.get_job("rollups").trigger.interval.total_seconds() == 300
        assert sched.get_job("alerts").trigger.interval.total_seconds() == 60
    finally:
        sched.shutdown(wait=False)
    # a close missed while the runner was down runs at start (October has data and is open)
    late = at("2026-11-05 08:00:00")
    sched = build_scheduler(JobRunner(cfg, clock=lambda: late))
    sched.start(paused=True)
    try:
        assert sched.get_job("close").next_run_time.astimezone(UTC) == late
    finally:
        sched.shutdown(wait=False)


def test_bounded_runs(lake: Path) -> None:
    cfg = _cfg(lake)
    t0 = time.monotonic()
    assert run_jobs(cfg, for_s=2.0, jobs=["rollups", "alerts"]) == []
    assert time.monotonic() - t0 < 10
    assert sorted({(j, r) for j, r, _ok, _d in log_rows(lake)}) == [
        ("alerts", "success"),
        ("rollups", "success"),
    ]
    runs = run_jobs(cfg, once=True, jobs=["alerts", "rollups"])
    assert [(r.job, r.result) for r in runs] == [("rollups", "success"), ("alerts", "success")]
    with pytest.raises(ValueError, match=r"unknown job\(s\) \['nope'\]"):
        run_jobs(cfg, once=True, jobs=["nope"])


def test_previous_month() -> None:
    assert previous_month(at("2026-01-01 02:00:00")) == "2025-12"
    assert previous_month(at("2026-03-31 23:59:59")) == "2026-02"


def test_cli_jobs_once(
    lake: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = lake / "g.toml"
    cfg_file.write_text(
        '[alerts]\nrules = ["idle_slice"]\n[jobs]\nmetrics_port = 0\n'
        '[pricing]\nbook = [{model = "NVIDIA A100-SXM4-80GB", gpu_hour = "2.00", from = "2026-01-01"},'
        ' {model = "NVIDIA H100 80GB HBM3", gpu_hour = "3.60", from = "2026-01-01"}]\n'
    )
    rc = main(["--config", str(cfg_file), "jobs", "--lake", str(lake), "--once", "--only", "rollups,alerts"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert [ln.split()[:2] for ln in out] == [["rollups", "success"], ["alerts", "success"]]
    assert main(["jobs", "--lake", str(lake), "--once", "--only", "rollups,bogus"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpuledger jobs: --only 'rollups,bogus': unknown job(s) ['bogus']: expected among rollups, alerts, "
        "accrual, close, enforcer, janitor"
    )


def test_finished_days_of_the_job_log_become_one_file(lake: Path) -> None:
    clock = {"now": at("2026-10-16 00:30:00")}
    runner = JobRunner(_cfg(lake), clock=lambda: clock["now"])
    for job in ("rollups", "alerts", "rollups", "alerts", "accrual"):
        runner.run(job)
    day = lake / "jobs" / "date=2026-10-16"
    assert len(list(day.glob("part-*.parquet"))) == 5
    before = log_rows(lake)
    clock["now"] = at("2026-10-17 00:05:00")
    r = runner.run("rollups")  # the first run of a new day merges the finished one
    assert r.detail["log_days"] == 1
    assert sorted(p.name for p in day.iterdir()) == ["log.parquet"]
    assert log_rows(lake)[:5] == before and len(log_rows(lake)) == 6
    assert len(list((lake / "jobs" / "date=2026-10-17").glob("part-*.parquet"))) == 1  # today stays open

    # A compaction that stopped before removing the run files: each run still counts once, and
    # the next compaction finishes the job.
    merged = pq.read_table(day / "log.parquet")
    pq.write_table(merged.slice(0, 2), day / "part-00000000000000000001.parquet")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{job_log_glob(lake)}')").fetchall()[0][0] == 8
    assert log_rows(lake)[:5] == before and len(log_rows(lake)) == 6
    assert compact_job_log(Lake(lake), before=at("2026-10-17 00:00:00").date()) == 1
    assert sorted(p.name for p in day.iterdir()) == ["log.parquet"]
    assert pq.read_table(day / "log.parquet").equals(merged)
    assert compact_job_log(Lake(lake), before=at("2026-10-17 00:00:00").date()) == 0  # nothing left to do


def test_dashboard_leaves_rollups_to_the_jobs_runner_that_keeps_them(lake: Path) -> None:
    from warehouse.accounting import Accounting
    from warehouse.rollups import Rollups
    from warehouse.rollups import keep_current as keep_rollups_current

    now = at("2026-10-16 00:30:00")
    acct = Accounting(Lake(lake))
    try:
        assert Rollups(Lake(lake)).kept_within(600, now) is None
        assert keep_rollups_current(acct, 600, now) is True  # nobody keeps them: the dashboard builds
        state = sorted((lake / "rollups" / "_state").glob("date=*.json"))
        assert state and all(Rollups(Lake(lake)).is_current(p.stem[5:]) for p in state)

        runner = JobRunner(_cfg(lake), clock=lambda: now)
        assert runner.run("rollups").result == "success"
        assert Rollups(Lake(lake)).kept_within(600, now) == "gpuledger jobs"
        # new samples arrive: the jobs runner will build them; the dashboard only re-reads
        scenario.write(Lake(lake), scenario.messages()[:3])
        stale = [d for d in Rollups(Lake(lake)).sample_dates() if not Rollups(Lake(lake)).is_current(d)]
        assert stale
        assert keep_rollups_current(acct, 600, now + timedelta(minutes=5)) is False
        assert [d for d in stale if Rollups(Lake(lake)).is_current(d)] == []
        # the keeper went quiet for longer than the window: the dashboard builds again
        assert keep_rollups_current(acct, 600, now + timedelta(minutes=11)) is True
        assert all(Rollups(Lake(lake)).is_current(d) for d in stale)
    finally:
        acct.close()
