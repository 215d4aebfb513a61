"""`gpuledger` entry point: parses arguments and wires the parts together.

This is the only module of the kernel that imports collector, pipeline, warehouse and
dashboards; each part stays importable on its own.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from gpuledger.config import Config, ConfigError, load_config
from gpuledger.progress import Progress, parse_duration
from warehouse.errors import MONEY_ERRORS

DEMO_MARKER = ".gpuledger-demo"
SUMMARY_WIDTH = 20  # the demo summary's key column


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    if getattr(args, "kafka", None):
        cfg.kafka.bootstrap_servers = args.kafka
    if getattr(args, "lake", None):
        cfg.lake.path = args.lake
    args.bootstrap_used = cfg.kafka.bootstrap_servers  # what a Kafka error message names
    return cfg


MONTH_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
START_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _month(command: str, value: str) -> str:
    """--month checked before anything runs: a typo must name itself, not end in a traceback."""
    if not MONTH_RE.fullmatch(value):
        raise ConfigError(
            f"gpuledger {command}: --month {value!r}: "
            f"expected YYYY-MM with a month from 01 to 12 (e.g. 2025-11)"
        )
    return value


def _start(command: str, value: str | None, span_s: float) -> datetime | None:
    """--start YYYY-MM-DDTHH:MM (UTC): the first tick of a replayed window that must lie in the past,
    so that what it writes never overlaps the live clock (and a past month can be closed)."""
    if value is None:
        return None
    try:
        if not START_RE.fullmatch(value):
            raise ValueError(value)
        start = datetime.strptime(value, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(
            f"gpuledger {command}: --start {value!r}: "
            f"expected a UTC time YYYY-MM-DDTHH:MM (e.g. 2025-11-30T18:00)"
        ) from None
    end = start + timedelta(seconds=span_s)
    now = datetime.now(UTC)
    if end > now:
        raise ConfigError(
            f"gpuledger {command}: --start {value} with --until {span_s / 3600:g}h ends "
            f"{end:%Y-%m-%dT%H:%M} UTC, after now ({now:%Y-%m-%dT%H:%M} UTC): expected a window in the past"
        )
    return start


def _lake_to_read(cfg: Config, command: str) -> Path:
    """The lake a reading command works on; a missing one is a mistake, never created empty."""
    path = Path(cfg.lake.path)
    if not path.is_dir():
        raise ConfigError(
            f"gpuledger {command}: lake {path} does not exist: give --lake DIR or set lake.path "
            f"(gpuledger demo and gpuledger ingest create one)"
        )
    return path


def _check_price_book(cfg: Config, lake: Path, dates: list[str] | None) -> None:
    """An empty price book names the models it would have to price (the book's own check names
    a model it lacks only when it meets one, and not at all when it is empty)."""
    from warehouse.errors import PriceError
    from warehouse.preflight import unpriced_models

    if cfg.pricing.book:
        return
    missing = unpriced_models(lake, cfg.pricing.book, dates)
    if missing:
        raise PriceError(
            f"no price book: pricing.book is empty, so GPU model(s) {', '.join(repr(m) for m in missing)} "
            f'have no price; add [pricing] book = [{{ model = ..., gpu_hour = "2.50", from = "2025-01-01" }}]'
        )


# -- demo ---------------------------------------------------------------------------------------


def _prepare_demo_lake(path: Path) -> None:
    """Start the demo on a clean lake, but never wipe a lake the demo did not create."""
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            raise ConfigError(
                f"lake {path} already holds data that the demo did not write; "
                f"point the demo elsewhere with --lake DIR"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / DEMO_MARKER).write_text("created by gpuledger demo; the next demo run replaces this lake\n")


def _print_summary(s: dict[str, Any], produced: int, rejected: int, out: Any = sys.stdout) -> None:
    pct = lambda v: f"{100 * (v or 0):.1f} %"  # noqa: E731
    lines = [
        ("ticks produced", f"{produced}"),
        ("ticks ingested", f"{s['ticks']}"),
        ("rejected to DLQ", f"{rejected}"),
        ("nodes", f"{s['nodes']}"),
        ("GPUs", f"{s['gpus']}"),
        ("slices", f"{s['slices']}"),
        ("tenants", f"{s['tenants']}"),
        ("capacity GPU-h", f"{s['capacity_gpu_h'] or 0:.2f}"),
        ("reserved GPU-h", f"{s['reserved_gpu_h'] or 0:.2f}"),
        ("used GPU-h", f"{s['used_gpu_h'] or 0:.2f}"),
        ("unallocated GPU-h", f"{s['unallocated_gpu_h'] or 0:.2f}"),
        ("fleet utilization", pct(s["utilization"])),
        ("allocation rate", pct(s["allocation_rate"])),
    ]
    for k, v in lines:
        print(f"{k:<{SUMMARY_WIDTH}}  {v}", file=out)


def _print_money(cfg: Config, lake: Path, start: datetime, end: datetime, out: Any = sys.stdout) -> None:
    """Cost of the replayed span (rollups, then the open months' charges) and its idle waste."""
    settings = _settings(cfg)
    acct = settings.accounting(lake)
    try:
        acct.update()
        months = sorted({start.strftime("%Y-%m"), end.strftime("%Y-%m")})
        charges = [settings.charges(acct, m) for m in months]
        idle = acct.idle_periods(start, end)
    finally:
        acct.close()
    cur = settings.currency
    lines = [
        (f"cost ({settings.mode})", f"{cur} {sum(c.total for c in charges):,.2f}"),
        (
            "unallocated cost",
            f"{cur} {sum(ln.cost for c in charges for ln in c.lines if ln.line_type == 'unallocated'):,.2f}",
        ),
        ("idle periods", f"{len(idle)}"),
        ("allocated-idle GPU-h", f"{sum(r['gpu_hours'] for r in idle):.2f}"),
        ("allocated-idle cost", f"{cur} {sum(r['cost'] or 0 for r in idle):,.2f}"),
    ]
    for k, v in lines:
        print(f"{k:<{SUMMARY_WIDTH}}  {v}", file=out)


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> next offset of a topic now ({} when the topic does not exist yet)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts]) if parts else {}
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        consumer.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from collector.agent import CollectStats, run_collector
    from collector.fleet import SimulatedFleet
    from collector.transport import KafkaTransport, MemoryTransport
    from gpuledger.bus import MemoryBus
    from pipeline.ingest import KafkaIngester, MemoryIngester
    from warehouse.lake import Lake

    cfg = _load(args)
    # Arguments checked before touching the lake: a typo must not wipe the last demo.
    span = parse_duration(args.until)
    cfg.lake.max_tick_age_s = 0  # the demo replays its history on purpose: no age bound on its ticks
    interval = cfg.collector.interval_s
    n_ticks = int(span // interval)
    past_start = _start("demo", args.start, n_ticks * interval)
    if args.kafka:
        _demo_topics(cfg, args.topic)
    lake_path = Path(cfg.lake.path)
    _prepare_demo_lake(lake_path)
    lake = Lake(lake_path, cfg.lake.zstd_level)
    now = datetime.now(UTC).replace(microsecond=0)
    start = past_start or now - timedelta(seconds=n_ticks * interval)
    fleet = SimulatedFleet(
        seed=cfg.collector.seed, start=start, interval_s=interval, scale=cfg.collector.scale
    )
    print(
        f"gpuledger demo: {len(fleet.nodes)} nodes, {len(fleet.gpus)} GPUs "
        f"in {len(fleet.clusters)} clusters; "
        f"replaying {args.until} ({n_ticks} ticks of {interval:g} s from {start:%Y-%m-%d %H:%M} UTC) "
        f"into {lake_path}"
        + (f" through {cfg.kafka.bootstrap_servers} topic {cfg.kafka.topic}" if args.kafka else ""),
        file=sys.stderr,
    )

    if args.kafka:
        transport: Any = KafkaTransport(cfg.kafka.bootstrap_servers, cfg.kafka.topic)
        stop = threading.Event()
        # A group of its own that starts at the topic's current end: the demo lake gets this run's ticks.
        ingester: Any = KafkaIngester(
            cfg,
            lake,
            stop=stop,
            group_id=f"{cfg.kafka.group_id}-demo-{uuid.uuid4().hex[:8]}",
            start_offsets=_end_offsets(cfg.kafka.bootstrap_servers, cfg.kafka.topic),
        )
        thread = threading.Thread(target=ingester.run, name="ingest", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while ingester.assigned_at is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if ingester.assigned_at is None:
            raise RuntimeError(f"no partitions of {cfg.kafka.topic} assigned within 60 s from {args.kafka}")
    else:
        bus = MemoryBus()
        transport = MemoryTransport(bus, cfg.kafka.topic)
        ingester = MemoryIngester(bus, lake, cfg)

    progress = Progress(n_ticks, "replay")
    drain_every = max(1, cfg.lake.batch_max_messages // max(1, len(fleet.nodes)))

    def after_replay_tick(s: CollectStats) -> None:
        if not args.kafka and s.ticks % drain_every == 0:
            ingester.poll()
        progress.update()

    replay = run_collector(
        fleet, transport, interval, ticks=n_ticks, realtime=False, after_tick=after_replay_tick
    )
    progress.close()
    produced = replay.messages
    if args.kafka:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ingester.stats.messages < produced:
            time.sleep(0.5)
        stats = ingester.stats
    else:
        ingester.drain()
        stats = ingester.stats
    cfg.tenants.rules = cfg.tenants.rules or fleet.tenant_rules()
    if not cfg.pricing.book:  # the demo fleet's models get embedded prices, so costs show
        cfg.pricing.book = _demo_price_book()
    # The summary from the same rollups and measures as the dashboards and the ledger.
    acct = _settings(cfg).accounting(lake_path)
    try:
        acct.update()
        _print_summary(acct.summary(), produced, stats.rejected)
    finally:
        acct.close()
    if not args.kafka:  # no consumer group to measure the lag of
        cfg.alerts.rules = [r for r in cfg.alerts.rules if r != "ingest_lag"]
    end = start + timedelta(seconds=n_ticks * interval)
    _print_money(cfg, lake_path, start, end)
    # Users and a config beside the lake: report, close, jobs and dashboard then run there on
    # the demo's data with the demo's prices, rules and logins (nothing of it lives only in memory).
    if cfg.dashboard.auth == "password" and _is_demo_users(cfg, lake_path):
        tenants = sorted({r["tenant"] for r in cfg.tenants.rules})
        cfg.dashboard.users_file = str(_demo_users(lake_path, tenants))
    _write_demo_config(cfg, lake_path, kafka=bool(args.kafka))

    if args.no_serve:
        if args.kafka:
            stop.set()
            thread.join(timeout=30)
        else:
            ingester.close()
        transport.close()
        return 0

    # Live: keep producing in real time and serve the dashboards (a replayed past window is
    # served as it is: live ticks would leave a gap from its end to now).
    if args.port is not None:
        cfg.dashboard.port = args.port
    stop_live = threading.Event()

    def after_live_tick(_s: CollectStats) -> None:
        transport.flush()
        if not args.kafka:
            ingester.poll()
            bus.trim(cfg.kafka.topic)

    if past_start is None:
        threading.Thread(
            target=run_collector,
            args=(fleet, transport, interval),
            kwargs={"stop": stop_live, "after_tick": after_live_tick},
            name="live-fleet",
            daemon=True,
        ).start()
    else:
        print(
            f"serving the replayed window ({start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC); no live fleet",
            file=sys.stderr,
        )
    # The jobs the demo needs beside the dashboards' own rollup timer: idle detection and alerts
    # (recorded in the lake's alerts/, sent to [alerts] webhooks when configured).
    from pipeline.jobs import run_jobs

    threading.Thread(
        target=run_jobs,
        args=(cfg,),
        kwargs={"jobs": ["alerts"], "metrics_port": 0, "stop": stop_live},
        name="demo-jobs",
        daemon=True,
    ).start()
    try:
        _serve_dashboards(cfg, cfg.dashboard.port, DEMO_ROLLUP_EVERY_S)
    finally:
        stop_live.set()
    return 0


DEMO_ROLLUP_EVERY_S = 60.0
DASHBOARD_ROLLUP_EVERY_S = 300.0
# $ per GPU-hour for the simulated fleet's models (illustrative on-demand-like prices).
DEMO_PRICES = {"H200": "4.20", "H100": "3.10", "A100": "1.90", "V100": "0.70", "RTX4090": "0.50"}


def _demo_price_book() -> list[dict[str, str]]:
    from collector.fleet import MODELS

    return [{"model": MODELS[k].name, "gpu_hour": p, "from": "2020-01-01"} for k, p in DEMO_PRICES.items()]


DEMO_TOPIC = "gpu.samples.demo.v1"
DEMO_DLQ_TOPIC = "gpu.samples.demo.dlq.v1"
DEMO_USERS = "demo-users.toml"
DEMO_CONFIG_HEADER = "# Written by `gpuledger demo`"


def _demo_topics(cfg: Config, topic: str | None) -> None:
    """The demo's ticks go to a topic of their own, so a production `ingest` never bills them;
    `--topic`, or a topic set in the config, says otherwise."""
    from gpuledger.config import KafkaConfig

    default = KafkaConfig()
    if topic:
        cfg.kafka.topic = topic
    elif cfg.kafka.topic == default.topic:
        cfg.kafka.topic = DEMO_TOPIC
    if cfg.kafka.dlq_topic == default.dlq_topic:
        cfg.kafka.dlq_topic = DEMO_DLQ_TOPIC


def _is_demo_users(cfg: Config, lake_path: Path) -> bool:
    """No users file configured, or the one an earlier demo wrote into this lake (made again)."""
    users = cfg.dashboard.users_file
    return not users or Path(users).resolve() == (lake_path / DEMO_USERS).resolve()


def _toml(value: Any) -> str:
    """A TOML literal for the config the demo writes (strings, numbers, lists, inline tables)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + "".join(f"  {_toml(v)},\n" for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def _shown_path(path: Path, cfg_dir: Path) -> str:
    """A path as the written config holds it: relative when the config sits in the working
    directory (the folder can then be moved), absolute otherwise (relative paths are read from
    the working directory, not from the config file's folder)."""
    here = Path.cwd().resolve()
    full = path.resolve()
    if cfg_dir.resolve() == here and full.is_relative_to(here):
        return "./" + str(full.relative_to(here))
    return str(full)


def demo_config_text(cfg: Config, lake_path: Path, cfg_dir: Path, kafka: bool) -> str:
    """The demo's settings as a gpuledger.toml: whatever money, tenants, alerts and logins
    depend on, so later commands on the demo's lake reproduce the demo's numbers."""
    sections: list[tuple[str, dict[str, Any]]] = [("lake", {"path": _shown_path(lake_path, cfg_dir)})]
    if kafka:
        sections.append(
            (
                "kafka",
                {
                    "bootstrap_servers": cfg.kafka.bootstrap_servers,
                    "topic": cfg.kafka.topic,
                    "dlq_topic": cfg.kafka.dlq_topic,
                },
            )
        )
    sections += [
        ("tenants", {"default": cfg.tenants.default, "rules": cfg.tenants.rules}),
        (
            "pricing",
            {
                "currency": cfg.pricing.currency,
                "mode": cfg.pricing.mode,
                "idle_policy": cfg.pricing.idle_policy,
                "kwh": cfg.pricing.kwh,
                "book": cfg.pricing.book,
            },
        ),
        (
            "alerts",
            {
                "idle_util_ratio": cfg.alerts.idle_util_ratio,
                "idle_min_minutes": cfg.alerts.idle_min_minutes,
                "rules": cfg.alerts.rules,
            },
        ),
    ]
    dash: dict[str, Any] = {"auth": cfg.dashboard.auth}
    if cfg.dashboard.users_file:
        dash["users_file"] = _shown_path(Path(cfg.dashboard.users_file), cfg_dir)
    sections.append(("dashboard", dash))
    out = [
        f"{DEMO_CONFIG_HEADER} for the lake it made: its prices, tenant rules and dashboard",
        "# users (the demo printed their passwords), so that report, close, jobs and dashboard run",
        "# here on the demo's data with the demo's numbers. The demo never overwrites this file.",
    ]
    for name, values in sections:
        out.append(f"\n[{name}]")
        out += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def _write_demo_config(cfg: Config, lake_path: Path, kafka: bool) -> Path:
    """gpuledger.toml beside the lake; one that exists there is kept, and the demo's then goes
    into the lake (the demo's own folder) with a line saying how to use it."""
    cfg_dir = lake_path.resolve().parent
    target = cfg_dir / "gpuledger.toml"
    text = demo_config_text(cfg, lake_path, cfg_dir, kafka)
    if target.exists():
        if target.read_text() == text:
            print(f"config: {target} (unchanged)", file=sys.stderr)
            return target
        inside = lake_path / "gpuledger.toml"
        inside.write_text(demo_config_text(cfg, lake_path, lake_path, kafka))
        print(
            f"config: kept the existing {target}; the demo's settings are in {inside} "
            f"(use them with gpuledger --config {inside} ...)",
            file=sys.stderr,
        )
        return inside
    target.write_text(text)
    print(
        f"config: {target} (report, close, jobs and dashboard in {cfg_dir} use the demo's settings)",
        file=sys.stderr,
    )
    return target


def _demo_users(lake_path: Path, tenants: list[str]) -> Path:
    """A users file for the demo: admin plus one viewer per tenant, each with its own random
    password, printed once here (the file keeps only their hashes)."""
    import secrets

    from dashboards.auth import hash_password

    users = [("admin", None)] + [(f"viewer-{t}", t) for t in tenants]
    passwords = {name: secrets.token_urlsafe(12) for name, _ in users}
    entries = []
    for name, tenant in users:
        h = hash_password(passwords[name])
        role = "admin" if tenant is None else "tenant-viewer"
        entry = f'[[users]]\nname = "{name}"\npassword_hash = "{h}"\nrole = "{role}"\n'
        if tenant is not None:
            entry += f'tenants = ["{tenant}"]\n'
        entries.append(entry)
    path = lake_path / DEMO_USERS
    path.write_text("\n".join(entries))
    lines = [f"dashboard users ({path}; each has its own password, shown only now):"]
    lines += [f"  dashboard user {name}: password {passwords[name]}" for name, _ in users]
    print("\n".join(lines), file=sys.stderr)
    return path


def rollups_line(dates: int, rebuilt: int) -> str:
    """'rollups: 2 dates up to date (1 rebuilt now)': 0 rebuilt on a new lake is not a failure."""
    noun = "date" if dates == 1 else "dates"
    return f"rollups: {dates} {noun} up to date ({rebuilt} rebuilt now, {dates - rebuilt} already current)"


def _serve_dashboards(cfg: Config, port: int, rollup_every_s: float) -> None:
    """Rollups brought up to date, then the dashboards served while a timer keeps the rollups current."""
    from dashboards.app import create_app, dashboard_data
    from dashboards.auth import AuthConfigError
    from warehouse.rollups import keep_current

    settings = _settings(cfg)
    acct = settings.accounting(cfg.lake.path)
    try:
        stats = acct.update()
        print(rollups_line(stats.dates, stats.rebuilt), file=sys.stderr)
    finally:
        acct.close()
    try:
        app = create_app(cfg)
    except (AuthConfigError, ValueError) as exc:
        raise ConfigError(f"config error: {exc}") from exc
    data = dashboard_data(app)
    stop = threading.Event()

    def refresh_rollups() -> None:
        # Rollups of changed dates only; then the page caches are filled again (a quick next load).
        first = True
        while first or not stop.wait(rollup_every_s):
            first = False
            a = settings.accounting(cfg.lake.path)
            try:
                keep_current(a, 2 * max(rollup_every_s, cfg.jobs.rollups_minutes * 60))
                data.warm()
            except Exception as exc:  # a bad file must not stop the dashboards; say it and go on
                logging.getLogger("gpuledger.dashboard").warning("rollup update failed: %s", exc)
            finally:
                a.close()

    threading.Thread(target=refresh_rollups, name="rollups", daemon=True).start()
    server = wsgi_server(app.server, cfg.dashboard.host, port, threads=cfg.dashboard.connections)
    print(
        f"dashboard on http://{cfg.dashboard.host}:{server.effective_port}/ (Ctrl-C stops)", file=sys.stderr
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.close()


def wsgi_server(wsgi_app: Any, host: str, port: int, threads: int) -> Any:
    """The dashboards behind waitress, a production WSGI server (not Flask's development server).

    Why waitress: pure Python (nothing to compile, installs wherever the rest does), runs on
    Linux, macOS and Windows, and serves from a thread pool, which suits the dashboards: their
    work happens in DuckDB, which releases the GIL, and they share per-process caches and
    connections that forked workers (gunicorn) would each hold a copy of. One thread per DuckDB
    connection (dashboard.connections): a request never waits for a connection another holds.
    Port 0 takes any free port; `effective_port` says which.
    """
    from waitress import create_server

    return create_server(wsgi_app, host=host, port=port, threads=threads, ident="gpuledger")


# -- parts --------------------------------------------------------------------------------------


class _Exported:
    """A backend whose ticks also go to the Prometheus exporter, timed (agent.py stays unaware)."""

    def __init__(self, inner: Any, exporter: Any) -> None:
        self.inner, self.exporter = inner, exporter

    def next_tick(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        msgs = self.inner.next_tick()
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

REPORT_FORMATS = ("html", "pdf", "csv", "focus")


def _settings(cfg: Config) -> Any:
    from warehouse.close import CloseSettings
    from warehouse.pricing import PriceError

    try:
        return CloseSettings.from_config(cfg)
    except PriceError as exc:
        raise ConfigError(f"config error: {exc}") from exc


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
    out = Path(args.out or lake / "reports" / f"month={month}")
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
    except ValueError as exc:
        if "bad duration" in str(exc):
            print(f"gpuledger: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
