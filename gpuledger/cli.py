"""`gpuledger` entry point: parses arguments and wires the parts together.

This is the only module of the kernel that imports collector, pipeline, warehouse and
dashboards; each part stays importable on its own.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from gpuledger.cli_args import (
    REPORT_FORMATS,
    _check_price_book,
    _lake_to_read,
    _load,
    _month,
    _settings,
    _start,
)
from gpuledger.config import Config, ConfigError
from gpuledger.demo import DEMO_TOPIC, cmd_demo
from gpuledger.progress import parse_duration
from gpuledger.serve import DASHBOARD_ROLLUP_EVERY_S, _serve_dashboards
from warehouse.errors import MONEY_ERRORS, LakeError

# -- demo ---------------------------------------------------------------------------------------


# -- parts --------------------------------------------------------------------------------------


class _Exported:
    """A backend whose ticks also go to the Prometheus exporter, timed (agent.py stays unaware)."""

    def __init__(self, inner: Any, exporter: Any) -> None:
        self.inner, self.exporter = inner, exporter

    def sample(self) -> list[Any]:
        t0 = time.perf_counter()
        msgs = self.inner.sample()
        self.exporter.update_all(msgs, tick_seconds=time.perf_counter() - t0)
        return msgs


def cmd_collect(args: argparse.Namespace) -> int:
    cfg = _load(args)
    backend = args.backend or cfg.collector.backend
    if backend == "replay" and not args.trace:
        print(
            "gpuledger collect --backend replay: give the trace directory (GenTD26 layout)", file=sys.stderr
        )
        return 2
    from collector.agent import run_collector
    from collector.exporter import AgentExporter
    from collector.spool import SpoolingTransport
    from collector.transport import KafkaTransport

    if args.metrics_port is not None:
        cfg.collector.metrics_port = args.metrics_port
    interval = cfg.collector.interval_s
    n_ticks = int(parse_duration(args.until) // interval) if args.until else None
    past_start = None
    if args.start is not None:
        if backend == "nvml":
            raise ConfigError(
                "gpuledger collect --backend nvml: --start needs a simulated clock; NVML is real time"
            )
        if n_ticks is None:
            raise ConfigError("gpuledger collect: --start needs --until: the length of the window to replay")
        past_start = _start("collect", args.start, n_ticks * interval)
        args.fast = True  # a past window is replayed as fast as it can be: its time is over
    if backend == "nvml":
        if args.fast:
            raise ConfigError("collect --backend nvml: --fast needs a simulated clock; NVML is real time")
        from collector.nvml import build_nvml_backend

        try:
            source: Any = build_nvml_backend(cfg.collector)
        except RuntimeError as exc:
            print(f"gpuledger collect: {exc}", file=sys.stderr)
            return 1
        what = f"node {cfg.collector.node}"
    elif backend == "replay":
        from collector.replay import TraceReplay

        start = past_start or datetime.now(UTC).replace(microsecond=0)
        try:
            source = TraceReplay(args.trace, start=start, interval_s=interval)
        except ValueError as exc:
            raise ConfigError(f"gpuledger collect: {exc}") from exc
        n_ticks = min(n_ticks or source.ticks_total, source.ticks_total)
        if args.fast and past_start is None:  # the replayed span ends now
            source.start = start - timedelta(seconds=n_ticks * interval)
        what = f"{len(source.nodes)} replay nodes ({len(source.trace.pods)} pods of {args.trace})"
    else:
        from collector.fleet import SimulatedFleet

        start = past_start or datetime.now(UTC).replace(microsecond=0)
        if n_ticks and args.fast and past_start is None:
            start -= timedelta(seconds=n_ticks * interval)
        source = SimulatedFleet(
            seed=cfg.collector.seed, start=start, interval_s=interval, scale=cfg.collector.scale
        )
        what = f"{len(source.nodes)} simulated nodes"
    from gpuledger.topics import ensure_topics_or_warn

    ensure_topics_or_warn(cfg.kafka, [cfg.kafka.topic], timeout_s=5.0)  # broker down: spool, start anyway
    # Kafka unreachable -> bounded fsync'd spool, replayed in order when it is back (DESIGN §7).
    transport = SpoolingTransport(
        lambda: KafkaTransport(cfg.kafka.bootstrap_servers, cfg.kafka.topic, client_id=cfg.kafka.client_id),
        cfg.collector.spool_dir,
        cfg.collector.spool_max_bytes,
    )
    exporter = AgentExporter(cfg.collector.metrics_port)
    port = exporter.start()
    exporter.watch_spool(transport.stats)
    print(f"collect: metrics on :{port}/metrics", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from collector.caps import start_cap_agent

    cap_agent = start_cap_agent(cfg, stop)  # [enforcer] not off: this node applies its caps
    try:
        stats = run_collector(
            _Exported(source, exporter),
            transport,
            interval,
            ticks=n_ticks,
            realtime=backend == "nvml" or not args.fast,
            stop=stop,
        )
    finally:
        stop.set()
        if cap_agent is not None:
            cap_agent.join(timeout=10)
        transport.close()
        exporter.close()
        if hasattr(source, "close"):
            source.close()
    spool = transport.stats()
    print(
        collect_line(stats.messages, what, cfg.kafka.bootstrap_servers, cfg.collector.spool_dir, spool),
        file=sys.stderr,
    )
    return 0


def collect_line(produced: int, what: str, kafka: str, spool_dir: str, spool: Any) -> str:
    """What became of the ticks: acknowledged by Kafka, or still waiting in the spool (never
    "sent" for ticks that only reached the disk)."""
    acked = spool.sent_direct + spool.replayed
    line = f"collect: {produced} ticks from {what}; {acked} acknowledged by Kafka at {kafka}"
    if spool.spooled or spool.pending_records:
        line += (
            f"; {spool.spooled} spooled to {spool_dir} ({spool.replayed} of them replayed since, "
            f"{spool.pending_records} waiting for Kafka)"
        )
    if spool.dropped:
        line += f"; {spool.dropped} dropped (spool full)"
    return line


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest import run_ingest

    cfg = _load(args)
    run_ingest(cfg, idle_exit_s=args.idle_exit)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from pipeline.jobs import run_jobs

    cfg = _load(args)
    from gpuledger.config import JOB_NAMES

    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    bad = [j for j in only or [] if j not in JOB_NAMES]
    if bad:
        raise ConfigError(
            f"gpuledger jobs: --only {args.only!r}: unknown job(s) {bad}: "
            f"expected among {', '.join(JOB_NAMES)}"
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runs = run_jobs(
        cfg, once=args.once, for_s=args.for_s, jobs=only, metrics_port=args.metrics_port, stop=stop
    )
    for run in runs:
        print(f"{run.job:8} {run.result:8} {run.duration_s:7.3f} s  {run.error or ''}".rstrip())
    return 1 if any(r.result == "error" for r in runs) else 0


def cmd_enforcer(args: argparse.Namespace) -> int:
    """`gpuledger enforcer status|recommend`: the enforcer's state, or one cycle that sends nothing."""
    import json as _json
    from datetime import UTC, datetime

    from pipeline.enforcer import Enforcer, status

    cfg = _load(args)
    now = datetime.now(UTC)
    if args.enforcer_command == "evaluate":
        return _enforcer_evaluate(args, cfg)
    if args.enforcer_command == "status":
        print(_json.dumps(status(cfg, now), indent=2, sort_keys=True))
        return 0
    cfg.enforcer.mode = "recommend"  # whatever is configured: this command never sends
    cfg.enforcer.pools = {k: "off" if v == "off" else "recommend" for k, v in cfg.enforcer.pools.items()}
    print(_json.dumps(Enforcer(cfg, None).cycle(now), sort_keys=True))
    return 0


def _enforcer_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    """`gpuledger enforcer evaluate TRACE`: offline causal replay (pipeline/enforcer_eval.py)."""
    import json as _json

    from pipeline.enforcer_eval import report

    try:
        out = report(
            args.trace,
            cfg.enforcer,
            cycle_s=args.cycle_s,
            pods=args.pods,
            hours=args.hours,
            do_sweep=args.sweep,
            plot=args.plot,
        )
    except ValueError as e:
        print(f"gpuledger enforcer {e}", file=sys.stderr)
        return 2
    if args.json:
        print(_json.dumps({k: v for k, v in out.items() if not k.endswith("table")}, sort_keys=True))
        return 0
    print(f"{out['trace']}: {out['pods']} pods, {out['hours']} h, policy cycle {out['cycle_s']:g} s")
    print(out["table"])
    if "sweep_table" in out:
        print()
        print(out["sweep_table"])
    if "plot" in out:
        print(f"frontier plot: {out['plot']}")
    return 0


def cmd_alerts_export_rules(args: argparse.Namespace) -> int:
    from pipeline.prom_rules import render_rules, write_rules

    cfg = _load(args)
    if args.out:
        print(write_rules(cfg, args.out, args.evaluation_interval))
    else:
        sys.stdout.write(render_rules(cfg, args.evaluation_interval))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    cfg = _load(args)
    lake = _lake_to_read(cfg, "dashboard")
    _check_price_book(cfg, lake, None)
    _serve_dashboards(cfg, args.port or cfg.dashboard.port, DASHBOARD_ROLLUP_EVERY_S)
    return 0


# -- close and report -----------------------------------------------------------------------------


def cmd_close(args: argparse.Namespace) -> int:
    from warehouse.close import close_month
    from warehouse.preflight import holdings, month_sample_dates
    from warehouse.pricing import month_bounds

    month = _month("close", args.month)
    cfg = _load(args)
    lake = _lake_to_read(cfg, "close")
    settings = _settings(cfg)
    over = datetime.combine(month_bounds(month)[1], datetime.min.time(), UTC) <= datetime.now(UTC)
    dates = month_sample_dates(lake, month)
    if over and not dates and not args.allow_empty:  # (a month not over is refused by close_month)
        print(
            f"gpuledger close: no samples for {month} in lake {lake} (it holds {holdings(lake)}); "
            f"nothing closed (--allow-empty closes it as a ledger of no lines)",
            file=sys.stderr,
        )
        return 1
    if over:
        _check_price_book(cfg, lake, dates)
    res = close_month(lake, month, settings)
    totals = res.manifest["totals"]
    state = "already closed with these exact inputs (unchanged)" if res.unchanged else "closed"
    print(f"{args.month}: {state}")
    print(f"ledger       {res.path}")
    print(f"lines        {len(res.lines)}")
    print(f"total        {totals['currency']} {totals['cost']}")
    print(f"capacity     {totals['capacity_gpu_hours']} GPU-h")
    if res.manifest["corrects"]:
        months = ", ".join(res.manifest["corrects"])
        print(f"corrections  {totals['currency']} {totals['corrections']} for {months}")
    print("conservation ok")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from warehouse.charges_csv import write_charges_csv
    from warehouse.focus import write_focus
    from warehouse.monthly import build_reports
    from warehouse.preflight import holdings, month_sample_dates
    from warehouse.pricing import month_bounds
    from warehouse.reports import report_filename, write_reports

    month = _month("report", args.month)
    cfg = _load(args)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in REPORT_FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format {args.format!r}: expected a comma list of {', '.join(REPORT_FORMATS)}")
    if args.validate and "focus" not in formats:
        raise ConfigError("gpuledger report: --validate checks the FOCUS files: add focus to --format")
    lake = _lake_to_read(cfg, "report")
    if args.validate:
        _check_validator()
    settings = _settings(cfg)
    begins = month_bounds(month)[0]
    if begins > datetime.now(UTC).date():
        print(
            f"gpuledger report: {month} has not begun (it starts {begins.isoformat()} 00:00 UTC); "
            f"no report written",
            file=sys.stderr,
        )
        return 1
    dates = month_sample_dates(lake, month)
    if not dates:
        print(
            f"gpuledger report: no samples for {month} in lake {lake} (it holds {holdings(lake)}); "
            f"no report written",
            file=sys.stderr,
        )
        return 1
    _check_price_book(cfg, lake, dates)
    if args.out is None and isinstance(lake, str):
        raise ConfigError(
            f"gpuledger report: lake {lake} is on object storage; report files are written to a local "
            f"folder: give --out DIR"
        )
    out = Path(args.out or Path(lake) / "reports" / f"month={month}")
    written: list[Path] = []
    reports = build_reports(lake, month, settings, tenant=args.tenant)
    if args.tenant and not reports[0].lines and not reports[0].daily:
        print(f"gpuledger report: no data for tenant {args.tenant!r} in {month}", file=sys.stderr)
        return 1
    for rep in reports:
        written += write_reports(rep, out, [f for f in formats if f in ("html", "pdf")])
        stem = report_filename(rep, "x")[:-2]
        if "csv" in formats:
            written.append(write_charges_csv(rep.lines, out / f"{stem}-charges.csv"))
        if "focus" in formats:
            written += list(write_focus(rep.lines, out, f"{stem}-focus"))
    for p in written:
        print(p)
    if args.validate and "focus" in formats:
        from warehouse.focus import run_validator

        for p in written:
            if p.suffix == ".parquet" and p.stem.endswith("-focus"):
                rep = run_validator(p, p.with_suffix(".validator.xml"))
                if not rep.ok:
                    print(f"gpuledger report: {p} fails FOCUS validation:\n{rep.summary()}", file=sys.stderr)
                    return 1
                print(f"{p}: {validation_line(rep)}", file=sys.stderr)
    return 0


def validation_line(rep: Any) -> str:
    """A passing validator run in words that cannot read as a contradiction: the rules that failed
    are named as the validator's known defects (warehouse.focus.KNOWN_VALIDATOR_DEFECTS)."""
    passed = rep.tests - rep.failures - rep.errors - rep.skipped
    line = f"FOCUS validation ok: {passed} of {rep.tests} rules passed, {rep.skipped} not applicable"
    if rep.failed:
        line += f", {len(rep.failed)} known validator defect(s) excused ({', '.join(rep.failed_rules)})"
    return line


def _check_validator() -> None:
    """--validate needs the official validator in its own environment: say how to get it before
    anything is written."""
    from warehouse.focus import validator_installed

    if not validator_installed():
        raise ConfigError(
            "gpuledger report: --validate needs the official focus-validator, which is not installed: "
            "run `bash scripts/focus-validator.sh install` (it needs Python >= 3.12), or leave out --validate"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuledger", description="GPU observability and chargeback")
    p.add_argument("--config", help="config file (default: ./gpuledger.toml if present)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="simulated fleet -> ingest -> lake -> dashboard, on one machine")
    d.add_argument("--until", default="6h", help="fleet time to replay before going live (default 6h)")
    d.add_argument("--no-serve", action="store_true", help="print the summary and exit instead of serving")
    d.add_argument("--kafka", metavar="HOST:PORT", help="go through this Kafka broker instead of in-process")
    d.add_argument("--lake", help="lake directory (default from config: ./gpuledger-data)")
    d.add_argument(
        "--start",
        metavar="YYYY-MM-DDTHH:MM",
        help="replay a past window from this UTC time instead of the --until span that ends now",
    )
    d.add_argument("--port", type=int, help="dashboard port (default from config: 8050; 0: any free port)")
    d.add_argument("--topic", help=f"with --kafka: the topic to go through (default {DEMO_TOPIC})")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("collect", help="node agent")
    c.add_argument("--backend", choices=("nvml", "simulate", "replay"))
    c.add_argument("trace", nargs="?", help="replay: a trace directory in the GenTD26 layout (DESIGN §10)")
    c.add_argument("--kafka", metavar="HOST:PORT")
    c.add_argument("--metrics-port", type=int, help="Prometheus exporter port (0: any free port)")
    c.add_argument("--until", help="stop after this much fleet time (simulate, replay)")
    c.add_argument(
        "--fast", action="store_true", help="simulate or replay as fast as possible, not in real time"
    )
    c.add_argument(
        "--start",
        metavar="YYYY-MM-DDTHH:MM",
        help="simulate or replay the past window from this UTC time over --until (as fast as possible)",
    )
    c.set_defaults(func=cmd_collect)

    i = sub.add_parser("ingest", help="Kafka consumer group -> Parquet lake")
    i.add_argument("--kafka", metavar="HOST:PORT")
    i.add_argument("--lake")
    i.add_argument("--idle-exit", type=float, metavar="SECONDS", help="exit after this long with no messages")
    i.set_defaults(func=cmd_ingest)

    j = sub.add_parser("jobs", help="scheduled rollups, idle alerts, accrual, month close")
    j.add_argument("--lake")
    j.add_argument("--kafka", metavar="HOST:PORT", help="broker whose ingest lag is watched")
    j.add_argument("--once", action="store_true", help="run each selected job once now and exit")
    j.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="run the scheduler this long")
    j.add_argument(
        "--only", help="comma list of jobs among rollups, alerts, accrual, close, janitor (default: config)"
    )
    j.add_argument("--metrics-port", type=int, help="gpuledger_job_* metrics port (0: any free port)")
    j.set_defaults(func=cmd_jobs)

    en = sub.add_parser("enforcer", help="feedback enforcer: status, one recommend-only cycle")
    ensub = en.add_subparsers(dest="enforcer_command", required=True)
    for name, what in (
        ("status", "modes, demoted tenants, decisions and acks of the last 24 h"),
        ("recommend", "one policy cycle that writes decisions to the lake and sends nothing"),
    ):
        e = ensub.add_parser(name, help=what)
        e.add_argument("--lake")
        e.set_defaults(func=cmd_enforcer)
    ev = ensub.add_parser("evaluate", help="offline causal replay of a trace: policy vs static, VPA, oracle")
    ev.add_argument("trace", help="a GenTD26-layout trace directory")
    ev.add_argument("--cycle-s", type=float, default=300.0, help="policy cycle in trace seconds")
    ev.add_argument("--pods", type=int, help="only the first N pods")
    ev.add_argument("--hours", type=float, help="only the first H hours")
    ev.add_argument("--sweep", action="store_true", help="also sweep history and percentile/margin")
    ev.add_argument("--plot", help="write the frontier plot (PNG) here (implies --sweep)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_enforcer)

    al = sub.add_parser("alerts", help="alert rules")
    alsub = al.add_subparsers(dest="alerts_command", required=True)
    ex = alsub.add_parser("export-rules", help="the alert rules as a Prometheus rules file")
    ex.add_argument("--out", help="file to write (default: stdout)")
    ex.add_argument(
        "--evaluation-interval",
        type=float,
        metavar="SECONDS",
        help="the rule group's interval (default: global)",
    )
    ex.set_defaults(func=cmd_alerts_export_rules)

    db = sub.add_parser("dashboard", help="Dash server")
    db.add_argument("--lake")
    db.add_argument("--port", type=int)
    db.set_defaults(func=cmd_dashboard)

    cl = sub.add_parser("close", help="month close into the ledger")
    cl.add_argument("--month", required=True, metavar="YYYY-MM")
    cl.add_argument("--lake")
    cl.add_argument(
        "--allow-empty", action="store_true", help="close a month that has no samples (a ledger of no lines)"
    )
    cl.set_defaults(func=cmd_close)

    r = sub.add_parser("report", help="monthly reports")
    r.add_argument("--month", required=True, metavar="YYYY-MM")
    r.add_argument("--tenant")
    r.add_argument("--format", default="html", help="comma list of html, pdf, csv, focus")
    r.add_argument("--lake")
    r.add_argument("--out", help="output folder (default: <lake>/reports/month=YYYY-MM)")
    r.add_argument(
        "--validate", action="store_true", help="run the official focus-validator on the FOCUS files"
    )
    r.set_defaults(func=cmd_report)
    return p


def _bootstrap_hint(args: argparse.Namespace) -> str:
    return (
        getattr(args, "bootstrap_used", None)
        or getattr(args, "kafka", None)
        or "the configured bootstrap servers"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "ingest" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # kafka-python logs every failed connect attempt; the CLI says it once
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"gpuledger {args.command}: Kafka at {_bootstrap_hint(args)} failed: {exc!r}", file=sys.stderr)
        return 1
    except MONEY_ERRORS as exc:
        print(f"gpuledger {args.command}: {exc}", file=sys.stderr)
        return 1
    except LakeError as exc:
        print(f"gpuledger {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        if "bad duration" in str(exc):
            print(f"gpuledger: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
