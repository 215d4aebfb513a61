"""The janitor: old *.tmp and uncommitted row files go, committed and young files stay."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from gpuledger.config import Config, ConfigError, load_config
from pipeline.jobs import JobRunner, build_scheduler, job_log_sql
from warehouse.janitor import sweep

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = 86400.0


def _file(root: Path, rel: str, age_s: float, data: bytes = b"x" * 10) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    t = NOW.timestamp() - age_s
    os.utime(p, (t, t))
    return p


def _hand_made_lake(root: Path) -> tuple[list[Path], list[Path]]:
    """(files the janitor must remove, files it must keep)."""
    a, b, c = (f"part-{n:020d}.parquet" for n in (1, 2, 3))
    gone = [
        _file(root, "samples/gpu/date=2026-11-18/" + a + ".tmp", 2 * DAY),  # crashed write
        _file(root, "rollups/slice_hour/date=2026-11-18/x.parquet.tmp", 3 * DAY),
        _file(root, "ledger/month=2026-10/manifest.json.tmp", 30 * DAY),
        # batch b never committed: no tick file anywhere
        _file(root, "samples/gpu/date=2026-11-18/" + b, 2 * DAY),
        _file(root, "samples/slice/date=2026-11-18/" + b, 2 * DAY),
        _file(root, "samples/process/date=2026-11-18/" + b, 2 * DAY),
    ]
    keep = [
        # batch a committed: its tick file exists (written last)
        _file(root, "samples/tick/date=2026-11-18/" + a, 2 * DAY),
        _file(root, "samples/gpu/date=2026-11-18/" + a, 2 * DAY),
        _file(root, "samples/slice/date=2026-11-18/" + a, 2 * DAY),
        _file(root, "samples/process/date=2026-11-18/" + a, 2 * DAY),
        # a batch across midnight whose tick file is in the other date: referenced, kept
        _file(root, "samples/slice/date=2026-11-17/" + a, 2 * DAY),
        # batch c is being written now (or crashed an hour ago): too young
        _file(root, "samples/gpu/date=2026-11-20/" + c, 3600),
        _file(root, "samples/gpu/date=2026-11-20/" + c + ".tmp", 3600),
        # just under a day
        _file(root, "samples/slice/date=2026-11-19/" + b, DAY - 60),
        # ordinary old files that are neither tmp nor row files
        _file(root, "dlq/date=2026-11-01/dlq-00000000000000000009.parquet", 19 * DAY),
        _file(root, "rollups/slice_hour/date=2026-11-18/x.parquet", 3 * DAY),
    ]
    return gone, keep


def test_sweep_removes_old_tmp_and_orphans_only(tmp_path: Path) -> None:
    gone, keep = _hand_made_lake(tmp_path)
    res = sweep(tmp_path, DAY, now=NOW.timestamp())
    assert [p for p in gone if p.exists()] == []
    assert [p for p in keep if not p.exists()] == []
    assert (res.tmp_removed, res.orphans_removed, res.bytes_freed, res.kept_young) == (3, 3, 60, 3)
    assert res.errors == []
    # a second sweep finds nothing more
    again = sweep(tmp_path, DAY, now=NOW.timestamp())
    assert (again.tmp_removed, again.orphans_removed, again.kept_young) == (0, 0, 3)


def test_sweep_min_age_is_configurable(tmp_path: Path) -> None:
    _gone, keep = _hand_made_lake(tmp_path)
    young_orphan = tmp_path / "samples/slice/date=2026-11-19" / f"part-{2:020d}.parquet"
    young_tmp = tmp_path / "samples/gpu/date=2026-11-20" / f"part-{3:020d}.parquet.tmp"
    res = sweep(tmp_path, 1800.0, now=NOW.timestamp())  # half an hour
    assert not young_orphan.exists() and not young_tmp.exists()
    # batch c's row file is an hour old and uncommitted: it goes too at this age
    assert not (tmp_path / "samples/gpu/date=2026-11-20" / f"part-{3:020d}.parquet").exists()
    assert (res.tmp_removed, res.orphans_removed, res.kept_young) == (4, 5, 0)
    committed = [p for p in keep if "part-" in p.name and p.name.endswith(f"{1:020d}.parquet")]
    assert len(committed) == 5 and all(p.exists() for p in committed)


def test_sweep_of_missing_lake_is_a_no_op(tmp_path: Path) -> None:
    res = sweep(tmp_path / "nope", DAY)
    assert (res.tmp_removed, res.orphans_removed, res.kept_young) == (0, 0, 0)


def test_janitor_job_counts_what_it_removed_in_the_job_log(tmp_path: Path) -> None:
    _hand_made_lake(tmp_path)
    cfg = Config()
    cfg.lake.path = str(tmp_path)
    cfg.alerts.rules = ["idle_slice"]
    cfg.jobs.metrics_port = 0
    runner = JobRunner(cfg, clock=lambda: NOW)
    run = runner.run("janitor")
    assert run.result == "success", run.error
    rows = duckdb.sql(f"SELECT job, result, detail FROM ({job_log_sql(tmp_path)})").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("janitor", "success")
    assert json.loads(rows[0][2]) == {
        "tmp_removed": 3,
        "orphans_removed": 3,
        "bytes_freed": 60,
        "kept_young": 3,
        "errors": [],
    }
    # the job log's own file was written whole: no tmp left by the run itself
    assert list(tmp_path.rglob("*.tmp")) == [
        tmp_path / "samples/gpu/date=2026-11-20" / f"part-{3:020d}.parquet.tmp"
    ]


def test_janitor_is_scheduled_hourly_by_default(tmp_path: Path) -> None:
    cfg = Config()
    cfg.lake.path = str(tmp_path)
    cfg.alerts.rules = ["idle_slice"]
    runner = JobRunner(cfg, clock=lambda: NOW)
    sched = build_scheduler(runner, ["janitor"])
    (job,) = sched.get_jobs()
    assert job.id == "janitor"
    assert job.trigger.interval.total_seconds() == 3600.0


def test_janitor_is_enabled_by_default_and_its_settings_are_checked(tmp_path: Path) -> None:
    cfg = Config()
    cfg.lake.path = str(tmp_path)
    cfg.alerts.rules = ["idle_slice"]
    sched = build_scheduler(JobRunner(cfg, clock=lambda: NOW))
    assert sorted(j.id for j in sched.get_jobs()) == [
        "accrual",
        "alerts",
        "close",
        "enforcer",
        "janitor",
        "rollups",
    ]
    for env, expected in [
        ({"GPULEDGER_LAKE_JANITOR_MIN_AGE_HOURS": "0.5"}, "expected a number of hours >= 1"),
        ({"GPULEDGER_JOBS_JANITOR_MINUTES": "0"}, "expected a number of minutes from 1 to 10080"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(env=env)
        assert str(err.value).endswith(expected), err.value
    assert load_config(env={"GPULEDGER_LAKE_JANITOR_MIN_AGE_HOURS": "48"}).lake.janitor_min_age_hours == 48.0
