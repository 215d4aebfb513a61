"""`gpuledger demo`: the whole pipeline on one machine on embedded defaults, and what it leaves
behind (a lake, a `gpuledger.toml` beside it, dashboard users) so every command after it runs on
the demo's data with the demo's numbers.

Part of the command line: like gpuledger/cli.py, it wires collector, pipeline, warehouse and
dashboards together.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpuledger.cli_args import _load, _settings, _start
from gpuledger.config import Config, ConfigError, EnforcerConfig
from gpuledger.progress import Progress, parse_duration
from gpuledger.serve import _serve_dashboards

DEMO_MARKER = ".gpuledger-demo"


SUMMARY_WIDTH = 20  # the demo summary's key column


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
    # The enforcer against the fleet, in process (no broker): decisions to the fleet's slices, acks
    # into the audit (gpuledger/demo_enforcer.py). With --kafka the lake lags the fleet: not run.
    demo_enf = None
    if not args.kafka:
        from gpuledger.demo_enforcer import DemoEnforcer, demo_enforcer_settings

        note = demo_enforcer_settings(cfg, n_ticks * interval)
        if note:
            print(note, file=sys.stderr)
        cfg.tenants.rules = cfg.tenants.rules or fleet.tenant_rules()
        demo_enf = DemoEnforcer(cfg, fleet)

    def after_replay_tick(s: CollectStats) -> None:
        if not args.kafka and s.ticks % drain_every == 0:
            ingester.poll()
        if demo_enf is not None:
            demo_enf.after_tick(ingester.drain)
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
    if demo_enf is not None:
        _print_enforcer(demo_enf)
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
            if demo_enf is not None:
                demo_enf.after_tick(ingester.drain)
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


def _print_enforcer(de: Any, out: Any = sys.stdout) -> None:
    """What the demo's enforcer did to the fleet over the replay."""
    sent = sum(c.get("sent", 0) for c in de.cycles)
    decisions = sum(c.get("decisions", 0) for c in de.cycles)
    lines = [
        ("enforcer", f"{de.enforcer.cfg.enforcer.mode}: {len(de.cycles)} cycles, {decisions} decisions"),
        ("caps sent", f"{sent}"),
        ("out-of-memory kills", f"{len(de.fleet.oom_events)}"),
    ]
    for k, v in lines:
        print(f"{k:<{SUMMARY_WIDTH}}  {v}", file=out)


DEMO_PRICES = {"H200": "4.20", "H100": "3.10", "A100": "1.90", "V100": "0.70", "RTX4090": "0.50"}


def _demo_price_book() -> list[dict[str, str]]:
    from collector.catalog import MODELS

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
    # The enforcer settings the demo ran with (its mode and shortened guards; only what differs from
    # the defaults), so `gpuledger enforcer status|recommend` and `jobs` here decide as the demo did.
    base = EnforcerConfig()
    enf = {f.name: getattr(cfg.enforcer, f.name) for f in fields(EnforcerConfig)}
    changed = {k: v for k, v in enf.items() if v != getattr(base, k)}
    if changed:
        sections.append(("enforcer", changed))
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
