"""`gpuledger jobs`: the scheduled work over the lake, on APScheduler 3.

Jobs (schedules in config ``[jobs]``, UTC):

- ``rollups`` (every 5 min): brings the per-date rollups up to date (only the hours that new
  batches touched are recomputed).
- ``alerts`` (every minute): idle detection and the other alert rules from the freshest samples,
  then delivery of what the outbox holds (``pipeline.alerts``, ``pipeline.alert_delivery``).
- ``accrual`` (daily, 00:30): the month-to-date charges of the month yesterday belongs to, as
  ``ledger/accrual/month=M/date=D.parquet`` (ledger schema; replaced when re-run the same day), so
  finance sees the open month without waiting for the close. A closed month is not accrued.
- ``close`` (1st of the month, 02:00): closes the previous month (``warehouse.close.close_month``);
  closing a month already closed with the same inputs changes nothing; a CloseError (e.g. the month
  was closed with other inputs) is logged and counted, never a crash. At start, a close missed while
  the runner was down (previous month open, close time passed) runs at once.
- ``janitor`` (hourly): removes ``*.tmp`` files and row files of batches that never committed (no
  tick file) older than ``lake.janitor_min_age_hours`` (``warehouse.janitor``); the run's log row
  says how many of each went.

Every job runs with coalesce (missed runs collapse into one), a misfire grace time, at most one
instance in this process (APScheduler's max_instances=1) and at most one in the whole installation
(a non-blocking ``flock`` on ``<lake>/jobs/_locks/<job>.lock``, on an object-store lake a file of this
host's temp folder, ``Lake.lock_file``; a run that finds it held is counted as
``skipped``). Health is exported as ``gpuledger_job_runs_total{job,result}``,
``gpuledger_job_duration_seconds{job}`` and ``gpuledger_job_last_success_timestamp_seconds{job}``;
every run is also one row in the lake's job log, ``jobs/date=D/part-<batch>.parquet``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gpuledger.config import JOB_NAMES, Config
from pipeline.alert_delivery import Deliverer, Router, Sender
from pipeline.alert_rules import AlertRules
from pipeline.alerts import AlertEngine
from pipeline.kafka_lag import LagReading, kafka_lag
from warehouse.checks import QUERIES as CHECK_QUERIES
from warehouse.errors import LakeError
from warehouse.lake import Lake, new_batch_id

log = logging.getLogger(__name__)
CHECK_NAMES = tuple(CHECK_QUERIES)

JOBS = "jobs"
ACCRUAL = "accrual"
RESULTS = ("success", "error", "skipped", "missed")

JOB_LOG_SCHEMA = pa.schema(
    [
        ("job", pa.string()),
        ("run_id", pa.int64()),
        ("scheduled_for", pa.timestamp("us", tz="UTC")),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("duration_s", pa.float64()),
        ("result", pa.string()),  # success | error | skipped | missed
        ("error", pa.string()),
        ("detail", pa.string()),  # JSON: what the run did
        ("host", pa.string()),
    ]
)


@dataclass
class JobRun:
    job: str
    result: str
    started_at: datetime
    duration_s: float
    detail: dict[str, Any]
    error: str = ""


def _hhmm(text: str) -> tuple[int, int]:
    h, m = text.split(":")
    return int(h), int(m)


def previous_month(now: datetime) -> str:
    first = now.date().replace(day=1)
    last = first - timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


class JobMetrics:
    """The runner's Prometheus metrics on their own registry (tests make many runners)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("gpuledger_job_runs", "Job runs by result.", ["job", "result"], registry=r)
        self.duration = Histogram(
            "gpuledger_job_duration_seconds",
            "Wall time of a job run.",
            ["job"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.last_success = Gauge(
            "gpuledger_job_last_success_timestamp_seconds",
            "End of the job's last successful run (unix seconds).",
            ["job"],
            registry=r,
        )
        self.alerts = Gauge("gpuledger_alerts", "Alerts now, by state.", ["state"], registry=r)
        self.check_failures = Gauge(
            "gpuledger_data_check_failures",
            "Dates whose last rollup build failed the data check (warehouse/checks.py).",
            ["check"],
            registry=r,
        )
        self.notifications = Counter(
            "gpuledger_alert_notifications",
            "Alert notifications by receiver and result (sent, failed, deferred).",
            ["receiver", "result"],
            registry=r,
        )
        for job in JOB_NAMES:
            for result in RESULTS:
                self.runs.labels(job, result)
        self._server: Any = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class JobRunner:
    """The jobs over one lake, their locks, log and metrics; scheduling is separate."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lag_probe: Callable[[], LagReading | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        metrics: JobMetrics | None = None,
    ) -> None:
        from warehouse.close import CloseSettings

        self.cfg = cfg
        self.lake = Lake(cfg.lake.path, cfg.lake.zstd_level)
        self.clock = clock
        self.metrics = metrics or JobMetrics()
        self.settings = CloseSettings.from_config(cfg)  # validates the price book at start
        if lag_probe is None and "ingest_lag" in cfg.alerts.rules:
            k = cfg.kafka
            lag_probe = lambda: kafka_lag(k.bootstrap_servers, k.group_id, k.topic, k.client_id + "-jobs")  # noqa: E731
        from warehouse.pricing import PriceBook

        self.router = Router.from_config(cfg)
        self.engine = AlertEngine(
            self.lake,
            AlertRules.from_config(cfg),
            tenant_rules=cfg.tenants.rules,
            default_tenant=cfg.tenants.default,
            price_book=PriceBook(cfg.pricing.book, cfg.pricing.currency) if cfg.pricing.book else None,
            lag_probe=lag_probe,
            route=self.router,
        )
        self.deliverer = Deliverer(
            Sender.from_config(cfg, sleep=sleep),
            cfg.alerts.external_url,
            am_valid_s=4 * cfg.jobs.alerts_seconds,
        )
        self.jobs: dict[str, Callable[[datetime], dict[str, Any]]] = {
            "rollups": self.rollups,
            "alerts": self.alerts,
            "accrual": self.accrual,
            "close": self.close,
            "enforcer": self.enforcer,
            "janitor": self.janitor,
        }
        self._enforcer: Any = None
        self._acks: Any = None

    # -- the jobs -------------------------------------------------------------------------------

    def rollups(self, now: datetime) -> dict[str, Any]:
        from warehouse.rollups import Rollups

        rollups = Rollups(self.lake, idle_util_ratio=self.cfg.alerts.idle_util_ratio)
        t0 = time.perf_counter()
        st = rollups.update()
        update_s = time.perf_counter() - t0
        acct = self.settings.accounting(self.lake)
        try:
            idle = acct.save_idle()  # stitched here once, read by every dashboard process
        finally:
            acct.close()
        rollups.mark_kept("gpuledger jobs", now)
        compacted = compact_job_log(self.lake, before=now.date())
        failing = rollups.failed_checks()
        for name in CHECK_NAMES:
            self.metrics.check_failures.labels(name).set(sum(1 for c in failing if c.check == name))
        return {
            "checks_failed": [f"{c.check} {c.date}: {c.failures} row(s), e.g. {c.example}" for c in failing],
            "dates": st.dates,
            "rebuilt": st.rebuilt,
            "hours": st.hours,
            "slice_rows": st.slice_rows,
            "update_s": round(update_s, 3),
            "idle_periods": idle.name,
            "log_days": compacted,
        }

    def alerts(self, now: datetime) -> dict[str, Any]:
        ev = self.engine.evaluate(now)
        rep = self.deliverer.deliver(self.engine, now)
        self.metrics.alerts.labels("pending").set(ev.pending)
        self.metrics.alerts.labels("firing").set(ev.firing)
        for (receiver, result), n in rep.by_receiver.items():
            self.metrics.notifications.labels(receiver, result).inc(n)
        return {
            "ticks_read": ev.ticks_read,
            "pending": ev.pending,
            "firing": ev.firing,
            "transitions": [
                f"{n['event']} {n['labels']['alertname']} {n['fingerprint']}" for n in ev.notifications
            ],
            "sent": rep.sent,
            "deferred": rep.deferred,
            "failed": rep.failed,
            "posts": rep.posts,
        }

    def accrual(self, now: datetime) -> dict[str, Any]:
        from warehouse.close import closed_months
        from warehouse.ledger_model import lines_to_table
        from warehouse.monthly import month_lines

        day = (now - timedelta(days=1)).date()
        month = f"{day.year:04d}-{day.month:02d}"
        if month in closed_months(self.lake):
            return {"month": month, "skipped": "month already closed"}
        lines, _note, _closed = month_lines(self.lake, month, self.settings)
        path = (
            self.lake.root / "ledger" / ACCRUAL / f"month={month}" / f"date={now.date().isoformat()}.parquet"
        )
        self.lake.write_file(lines_to_table(lines), path)
        total = sum((ln.cost for ln in lines), start=0)
        return {"month": month, "lines": len(lines), "total": str(total), "path": str(path)}

    def close(self, now: datetime) -> dict[str, Any]:
        from warehouse.close import close_month
        from warehouse.rollups import Rollups

        month = previous_month(now)
        if not any(d.startswith(month) for d in Rollups(self.lake).sample_dates()):
            # `gpuledger close` refuses an empty month unless told (--allow-empty); so does the job
            return {"month": month, "skipped": "no samples in the month"}
        res = close_month(self.lake, month, self.settings, now=now)
        return {"month": month, "unchanged": res.unchanged, "lines": len(res.lines), **res.manifest["totals"]}

    def enforcer(self, now: datetime) -> dict[str, Any]:
        """One enforcer cycle (pipeline/enforcer.py); decisions go to gpu.caps.v1 unless recommend."""
        from pipeline.enforcer import Enforcer, kafka_sender

        if self._enforcer is None:
            self._enforcer = Enforcer(self.cfg, kafka_sender(self.cfg))
        out = self._enforcer.cycle(now)
        if kafka_sender(self.cfg) is not None:  # something may be sent: the nodes' acks come back
            from pipeline.enforcer import AckLander

            if self._acks is None:
                self._acks = AckLander(self.cfg, self.lake)
            out.update(self._acks.land(now))
        return out

    def janitor(self, now: datetime) -> dict[str, Any]:
        from warehouse.janitor import sweep

        res = sweep(self.lake, self.cfg.lake.janitor_min_age_hours * 3600.0, now=now.timestamp())
        return res.as_detail()

    def close_due(self, now: datetime) -> bool:
        """The previous month has data, is open, and this month's close time has passed (a missed close)."""
        from warehouse.close import closed_months
        from warehouse.rollups import Rollups

        h, m = _hhmm(self.cfg.jobs.close_time)
        due = datetime(now.year, now.month, self.cfg.jobs.close_day, h, m, tzinfo=UTC)
        month = previous_month(now)
        has_data = any(d.startswith(month) for d in Rollups(self.lake).sample_dates())
        return now >= due and has_data and month not in closed_months(self.lake)

    # -- running one job ------------------------------------------------------------------------

    @contextmanager
    def _lock(self, job: str) -> Iterator[bool]:
        with open(self.lake.lock_file(self.lake.root / JOBS / "_locks" / f"{job}.lock"), "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def run(self, job: str, scheduled_for: datetime | None = None) -> JobRun:
        """Run one job now: lock, time, catch, count, log. Never raises for a failing job."""
        if job not in self.jobs:
            raise ValueError(f"unknown job {job!r}: expected one of {', '.join(self.jobs)}")
        now = self.clock().astimezone(UTC)
        t0 = time.perf_counter()
        detail: dict[str, Any] = {}
        error = ""
        with self._lock(job) as got:
            if not got:
                result = "skipped"
                detail = {"reason": "another run of this job holds its lock"}
            else:
                try:
                    detail = self.jobs[job](now)
                    result = "success"
                except LakeError as exc:  # a part that cannot run on this lake: one line, no trace
                    result = "error"
                    error = f"{type(exc).__name__}: {exc}"
                    log.error("job %s failed: %s", job, exc)
                except Exception as exc:  # a job failing is data for the log, not a crash
                    result = "error"
                    error = f"{type(exc).__name__}: {exc}"
                    log.error("job %s failed: %s\n%s", job, error, traceback.format_exc())
        dt = time.perf_counter() - t0
        run = JobRun(job, result, now, dt, detail, error)
        self.metrics.runs.labels(job, result).inc()
        self.metrics.duration.labels(job).observe(dt)
        if result == "success":
            self.metrics.last_success.labels(job).set(time.time())
        self._log(run, scheduled_for or now)
        log.info("job %s: %s in %.3f s %s", job, result, dt, error or "")
        return run

    def record_missed(self, job: str, scheduled_for: datetime) -> None:
        now = self.clock().astimezone(UTC)
        self.metrics.runs.labels(job, "missed").inc()
        self._log(JobRun(job, "missed", now, 0.0, {"reason": "past the misfire grace time"}), scheduled_for)

    def _log(self, run: JobRun, scheduled_for: datetime) -> Path:
        import socket

        batch = new_batch_id()
        row = {
            "job": run.job,
            "run_id": batch,
            "scheduled_for": scheduled_for,
            "started_at": run.started_at,
            "finished_at": run.started_at + timedelta(seconds=run.duration_s),
            "duration_s": run.duration_s,
            "result": run.result,
            "error": run.error or None,
            "detail": json.dumps(run.detail, sort_keys=True, default=str),
            "host": socket.gethostname(),
        }
        day = run.started_at.date().isoformat()
        path = self.lake.root / JOBS / f"date={day}" / f"part-{batch:020d}.parquet"
        return self.lake.write_file(pa.Table.from_pylist([row], schema=JOB_LOG_SCHEMA), path)


def job_log_glob(lake: str | Path) -> str:
    return str(Path(lake) / JOBS / "date=*" / "*.parquet")


def job_log_sql(lake: str | Path) -> str:
    """The job log as a query: one row per run.

    A compaction stopped between writing a day's file and removing that day's run files leaves
    a run in both for a moment (the next compaction cleans up); counting by `run_id` keeps it once.
    """
    from warehouse.sql import lit

    return f"""SELECT * FROM read_parquet({lit(job_log_glob(lake))})
               QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY run_id) = 1"""


def compact_job_log(lake: Lake, before: date) -> int:
    """Merge each finished day's one-file-per-run log into `log.parquet`; returns the days merged.

    Every run writes its own small file (durable the moment the run ends), ~1,500 a day with the
    default schedule. A day before `before` is over: its files become one, written atomically
    before the run files are removed, so a crash loses nothing (see `job_log_sql`).
    """
    root = lake.root / JOBS
    merged = 0
    for name in lake.list_dirs(root):
        if not name.startswith("date="):
            continue
        day_dir = root / name
        day = date.fromisoformat(name.removeprefix("date="))
        parts = lake.find(day_dir, "part-*.parquet")
        if day >= before or not parts:
            continue
        target = day_dir / "log.parquet"
        tables = [lake.read_table(f, schema=JOB_LOG_SCHEMA) for f in [*parts, target] if lake.exists(f)]
        rows = pa.concat_tables(tables).sort_by("run_id")
        ids = rows["run_id"].to_pylist()
        first = [i for i, r in enumerate(ids) if i == 0 or r != ids[i - 1]]
        lake.write_file(rows.take(first), target)
        for f in parts:
            lake.delete(f)
        merged += 1
    return merged


# -- scheduling -------------------------------------------------------------------------------


def build_scheduler(runner: JobRunner, jobs: list[str] | None = None, blocking: bool = False) -> Any:
    """An APScheduler 3 scheduler with the configured jobs (UTC), coalescing, misfire grace, one instance."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    jc = runner.cfg.jobs
    cls = BlockingScheduler if blocking else BackgroundScheduler
    sched = cls(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": int(jc.misfire_grace_s)},
    )
    now = runner.clock()
    ah, am = _hhmm(jc.accrual_time)
    ch, cm = _hhmm(jc.close_time)
    triggers = {
        "rollups": (IntervalTrigger(minutes=jc.rollups_minutes, timezone=UTC), now),
        "alerts": (IntervalTrigger(seconds=jc.alerts_seconds, timezone=UTC), now),
        "accrual": (CronTrigger(hour=ah, minute=am, timezone=UTC), None),
        "close": (CronTrigger(day=jc.close_day, hour=ch, minute=cm, timezone=UTC), None),
        "enforcer": (IntervalTrigger(seconds=runner.cfg.enforcer.interval_s, timezone=UTC), now),
        "janitor": (IntervalTrigger(minutes=jc.janitor_minutes, timezone=UTC), None),
    }
    selected = [j for j in (jobs or jc.enabled) if j in triggers]
    for job in selected:
        trigger, first = triggers[job]
        if job == "close" and runner.close_due(now):
            first = now  # a close missed while the runner was down
        kw = {"next_run_time": first} if first is not None else {}
        sched.add_job(runner.run, trigger, args=[job], id=job, name=job, **kw)

    def on_event(event: Any) -> None:
        if event.code == EVENT_JOB_MISSED:
            runner.record_missed(event.job_id, event.scheduled_run_time)
        else:  # a run still going when the next was due: not started twice
            runner.metrics.runs.labels(event.job_id, "skipped").inc()

    sched.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return sched


def run_jobs(
    cfg: Config,
    *,
    once: bool = False,
    for_s: float | None = None,
    jobs: list[str] | None = None,
    metrics_port: int | None = None,
    stop: threading.Event | None = None,
    runner: JobRunner | None = None,
) -> list[JobRun]:
    """`gpuledger jobs`: every job once (`once`), for `for_s` seconds, or until `stop` is set."""
    runner = runner or JobRunner(cfg)
    selected = jobs or list(cfg.jobs.enabled)
    bad = [j for j in selected if j not in JOB_NAMES]
    if bad:
        raise ValueError(f"unknown job(s) {bad}: expected among {', '.join(JOB_NAMES)}")
    port = runner.metrics.serve(
        cfg.jobs.metrics_port if metrics_port is None else metrics_port, cfg.jobs.metrics_addr
    )
    log.info("jobs: metrics on %s:%d/metrics", cfg.jobs.metrics_addr, port)
    try:
        if once:
            return [runner.run(j) for j in JOB_NAMES if j in selected]
        stop = stop or threading.Event()
        sched = build_scheduler(runner, selected)
        sched.start()
        try:
            deadline = None if for_s is None else time.monotonic() + for_s
            while not stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                stop.wait(1.0 if left is None else min(1.0, left))
        finally:
            sched.shutdown(wait=True)
        return []
    finally:
        runner.metrics.close()
