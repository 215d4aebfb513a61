"""One configuration for every process: `gpuledger.toml` plus `GPULEDGER_<SECTION>_<KEY>` overrides.

Everything is checked at start so that a typo in a key or a value fails the process at once,
naming the key, the value and what was expected, instead of surfacing hours later as a
silently wrong bill.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "GPULEDGER_"
DEFAULT_FILE = "gpuledger.toml"


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names which and why."""


def _positive(v: Any) -> bool:
    return v > 0


def _port(v: Any) -> bool:
    return 0 <= v <= 65535


def _non_empty(v: Any) -> bool:
    return bool(v)


def _is_url(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"https?://[^\s/]+(/\S*)?", v) is not None


def _is_label(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", v) is not None


def _hhmm(v: str) -> tuple[int, int] | None:
    """'02:00' -> (2, 0); None when it is not a 24-hour HH:MM time."""
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", v)
    return (int(m.group(1)), int(m.group(2))) if m else None


_RESERVED_LABELS = ("alertname", "severity", "tenant")


def _label_ok(name: Any, value: Any) -> bool:
    return _is_label(name) and name not in _RESERVED_LABELS and isinstance(value, str)


def _header_name(v: str) -> bool:
    # RFC 9110 token characters, as a proxy would send them
    return bool(v) and all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in v)


def _network(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        return False
    return True


@dataclass
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:19092"  # scripts/kafka.sh starts its broker here
    topic: str = "gpu.samples.v1"
    dlq_topic: str = "gpu.samples.dlq.v1"
    caps_topic: str = "gpu.caps.v1"
    cap_acks_topic: str = "gpu.cap-acks.v1"
    caps_dlq_topic: str = "gpu.caps.dlq.v1"  # malformed decisions (original bytes, header "reason")
    group_id: str = "gpuledger-ingest"
    client_id: str = "gpuledger"
    max_message_bytes: int = 1_048_576
    dlq_max_payload_bytes: int = 900_000
    # Ingest (and collect, for the samples topic) create missing topics at start with these;
    # existing topics are left as they are. Use 3 replicas on a production cluster.
    create_topics: bool = True
    partitions: int = 6
    replication_factor: int = 1


@dataclass
class LakeConfig:
    path: str = "./gpuledger-data"
    batch_max_messages: int = 2000
    batch_max_bytes: int = 8 * 1024 * 1024
    batch_max_seconds: float = 5.0
    zstd_level: int = 3
    # Worker processes that decode and write (0: in the consuming process). Each adds ~40 % throughput
    # on two cores and ~240 MB of memory; one keeps ingest under 500 MB.
    decode_workers: int = 1
    # Ticks whose ts is further than this ahead of ingest's clock, or older than max_tick_age_s,
    # go to the DLQ with the reason (0: no bound). The age bound is a week: the longest a tick
    # should wait in a node agent's spool or in Kafka (default retention) before it lands.
    max_tick_future_s: float = 300.0
    max_tick_age_s: float = 7 * 86400.0
    # The janitor job removes *.tmp files and uncommitted row files (crashed writes) this old.
    janitor_min_age_hours: float = 24.0
    # Ingest touches this file every few seconds while its loop runs (also while it waits for the
    # broker): a liveness probe checks its age. Empty: no heartbeat file.
    ingest_heartbeat_file: str = ""


@dataclass
class CollectorConfig:
    backend: str = "simulate"
    interval_s: float = 10.0
    cluster: str = "default"
    node: str = field(default_factory=socket.gethostname)
    seed: int = 7
    scale: int = 1
    metrics_port: int = 9400
    proc_root: str = "/proc"
    spool_dir: str = "./gpuledger-spool"
    spool_max_bytes: int = 256 * 1024 * 1024
    passwd_file: str = "/etc/passwd"  # uid -> unix user (the host's, e.g. /host/etc/passwd in a pod)
    hami_hook_dir: str = "/usr/local/vgpu"  # HAMi's hook dir; shared regions under containers/
    # Pod UID -> namespace/pod/container/labels: "kubernetes" (in-cluster API), "file" (static JSON), "none".
    resolver: str = "none"
    resolver_file: str = ""
    # Replicas advertised per GPU by the time-slicing device plugin (0: not time-sliced; several
    # workloads on one GPU are then shown as that many replicas).
    timeslice_replicas: int = 0


@dataclass
class TenantsConfig:
    # Ordered rules, first match wins: {"tenant": T, <one of namespace|label|account|user>: value}.
    rules: list[dict[str, Any]] = field(default_factory=list)
    default: str = "unassigned"


@dataclass
class PricingConfig:
    currency: str = "USD"
    # Effective-dated prices: {"model": M, "gpu_hour": "2.10", "from": "2026-01-01"}; used by chargeback.
    book: list[dict[str, Any]] = field(default_factory=list)
    kwh: str = ""  # $ per kWh for energy lines; empty: no energy charges
    mode: str = "reserved"  # chargeback: reserved | used | hybrid (max of the two)
    idle_policy: str = "platform"  # unallocated capacity: platform | weighted | even
    # Slice time on unhealthy GPU ticks (warehouse.rules.UNHEALTHY_REASON_SQL): false (default)
    # bills it to the platform's own line with the reason, not to the tenants; true bills it as usual.
    bill_unhealthy: bool = False
    # What `used` and `hybrid` bill as used: busy (kernel running, util_pct) or sm_active (GPM SM
    # activity, falling back to busy where a tick has none); warehouse.rules.used_frac_sql.
    used_basis: str = "busy"


ALERT_RULES = (
    "idle_slice",
    "idle_gpu",
    "pool_unallocated",
    "collector_silent",
    "ingest_lag",
    "cap_rolled_back",
)
SEVERITIES = ("critical", "warning", "info")
JOB_NAMES = ("rollups", "alerts", "accrual", "close", "enforcer", "janitor")


@dataclass
class AlertsConfig:
    idle_util_ratio: float = 0.05
    idle_min_minutes: float = 30.0
    # A node with no tick for this long, and none after, is retired: its capacity leaves the fleet
    # and its silence stops counting as unobserved GPU time (DESIGN §6 coverage).
    node_retire_hours: float = 24.0
    webhooks: list[str] = field(default_factory=list)  # Alertmanager-style webhook receivers (payload v4)
    rules: list[str] = field(default_factory=lambda: list(ALERT_RULES))  # enabled rules
    receiver: str = "gpuledger"  # receiver name in webhook payloads for alerts no route claims
    # Per-tenant routing, first match wins: {"tenant": T, "receiver": R, "webhooks": [URL, ...],
    # "continue": false}; "continue": true also sends to the default receiver.
    routes: list[dict[str, Any]] = field(default_factory=list)
    alertmanager_url: str = ""  # e.g. http://alertmanager:9093: alerts also go to its v2 API
    external_url: str = ""  # the link receivers show (the dashboard); payload externalURL/generatorURL
    labels: dict[str, Any] = field(default_factory=dict)  # static labels on every alert, e.g. env=prod
    idle_slice_severity: str = "warning"
    idle_gpu_severity: str = "warning"
    pool_unallocated_pct: float = 50.0  # a pool (cluster + GPU model) with more unallocated than this
    pool_unallocated_minutes: float = 60.0  # ... for this long
    pool_unallocated_severity: str = "info"
    silent_intervals: float = 3.0  # a node with no tick for this many of its intervals is silent
    collector_silent_severity: str = "critical"
    ingest_lag_messages: int = 10000  # consumer-group lag (messages, all partitions) above this
    ingest_lag_minutes: float = 5.0  # ... for this long
    ingest_lag_severity: str = "warning"
    cap_rolled_back_severity: str = "warning"  # the enforcer rolled a shrink or lowering back
    cap_rolled_back_hold_minutes: float = 60.0  # ... fires once, resolves after this long
    resolve_ticks: int = 3  # a firing alert resolves after this many consecutive non-idle ticks
    repeat_interval_minutes: float = 240.0  # a still-firing alert is sent again this often
    lookback_minutes: float = 120.0  # how far back the first evaluation (no saved state) reads
    reorder_slack_s: float = 120.0  # ticks arriving up to this late are still evaluated
    send_timeout_s: float = 5.0
    send_attempts: int = 5  # per notification and evaluation; failed ones are retried next evaluation
    backoff_s: float = 0.5  # first retry delay, doubled per attempt ...
    backoff_max_s: float = 8.0  # ... up to this
    outbox_max_hours: float = 24.0  # undeliverable notifications are dropped (and counted) after this


@dataclass
class JobsConfig:
    rollups_minutes: float = 5.0
    alerts_seconds: float = 60.0  # idle detection + alert evaluation
    accrual_time: str = "00:30"  # HH:MM UTC, daily: month-to-date charges of the open month
    close_day: int = 1  # the month close of the previous month: day of month ...
    close_time: str = "02:00"  # ... and HH:MM UTC
    janitor_minutes: float = 60.0  # *.tmp and orphan row files older than lake.janitor_min_age_hours
    misfire_grace_s: float = 300.0  # a run this late (process paused, clock jump) still runs; later: skipped
    metrics_port: int = 9402  # gpuledger_job_* metrics (0: any free port)
    metrics_addr: str = "127.0.0.1"
    enabled: list[str] = field(default_factory=lambda: list(JOB_NAMES))


ENFORCER_MODES = ("off", "recommend", "grow-only", "enforce")


@dataclass
class EnforcerConfig:
    """DESIGN §8 constants; the policy (pipeline/enforcer_policy.py) reads nothing else."""

    mode: str = "off"  # default for every pool: off | recommend | grow-only | enforce
    pools: dict[str, Any] = field(default_factory=dict)  # "cluster/GPU model" -> mode
    tenants: dict[str, Any] = field(default_factory=dict)  # tenant -> mode (the stricter of pool/tenant wins)
    opt_out: list[str] = field(default_factory=list)  # tenants never touched (mode off)
    guarantees_mib: dict[str, Any] = field(default_factory=dict)  # tenant -> guaranteed memory MiB
    interval_s: float = 60.0  # policy cycle (`gpuledger jobs`)
    peak_minutes: float = 5.0  # memory peaks and core features per window
    half_life_hours: float = 24.0
    window_days: float = 8.0
    bucket_pct: float = 5.0  # histogram buckets grow by this much each
    percentile: float = 98.0
    margin: float = 0.15
    round_mib: int = 256
    floor_mib: int = 512  # never below used + max(floor_mib, floor_frac x used) ...
    floor_frac: float = 0.10
    min_cap_mib: int = 1024  # ... nor this
    shrink_min_history_hours: float = 24.0
    shrink_min_age_hours: float = 12.0
    shrink_min_change: float = 0.10
    shrink_max_step: float = 0.25
    shrink_every_hours: float = 6.0
    shrink_lookback_hours: float = 6.0
    grow_use_frac: float = 0.90
    oom_factor: float = 1.2
    oom_extra_mib: int = 512
    oom_no_shrink_hours: float = 24.0
    oom_near_cap_frac: float = 0.95  # a suspected OOM: use at >= this x cap, then a process gone / use fell
    core_pinned_points: float = 5.0
    core_pinned_frac: float = 0.05
    core_window_minutes: float = 15.0
    core_raise_points: float = 10.0
    core_raise_factor: float = 1.5
    core_lower_p95_frac: float = 0.6
    core_lower_max_points: float = 10.0
    core_lower_every_hours: float = 6.0
    core_min_pct: float = 5.0
    budget_frac: float = 0.10  # shrinks per pool per hour, as a fraction of its slices (at least 1)
    rollback_hours: float = 1.0
    regressions_max: int = 2  # this many rollbacks of a tenant ...
    regressions_days: float = 7.0  # ... within this many days put it back to recommend
    decision_ttl_s: float = 300.0  # a decision not applied by then is refused as expired
    stale_ticks: float = 2.0  # never write a cap for a slice whose last sample is older than this many ticks


@dataclass
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 8050
    # Login: "password" (users_file with argon2/bcrypt hashes) or "trusted-header" (a reverse proxy
    # doing single sign-on passes the user and groups in headers; only from trusted_proxies).
    auth: str = "password"
    users_file: str = ""  # TOML or JSON: [[users]] name, password_hash, role admin|tenant-viewer, tenants
    # Signs the session cookie; empty: read from secret_key_file, else a random key per process
    # (sessions then end when the server restarts). GPULEDGER_DASHBOARD_SECRET_KEY overrides.
    secret_key: str = ""
    secret_key_file: str = ""
    # Absolute lifetime of a session from its sign-in; requests never extend it.
    session_hours: float = 12.0
    # Per-user session generations (logout ends every session of the user), shared by every
    # dashboard process that sees this file; empty: <lake.path>/_dashboard/sessions.json.
    session_state_file: str = ""
    cookie_secure: bool = False  # set true behind HTTPS: the session cookie is then never sent in clear
    user_header: str = "X-Forwarded-User"
    groups_header: str = "X-Forwarded-Groups"
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    admin_group: str = "gpuledger-admins"
    tenant_group_prefix: str = "gpuledger-tenant-"  # group gpuledger-tenant-vision: viewer of "vision"
    # Bad logins per user and address: this many go through at once, then each waits
    # login_backoff_s x 2^(n - free), at most login_backoff_max_s.
    login_free_attempts: int = 3
    login_backoff_s: float = 1.0
    login_backoff_max_s: float = 300.0
    connections: int = 4  # DuckDB connections over the rollups (one per concurrent request)


@dataclass
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    tenants: TenantsConfig = field(default_factory=TenantsConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    enforcer: EnforcerConfig = field(default_factory=EnforcerConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)


# Extra constraints beyond the type: (predicate, what is expected).
_CHECKS: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("kafka", "bootstrap_servers"): (_non_empty, "a non-empty HOST:PORT list"),
    ("kafka", "topic"): (_non_empty, "a topic name"),
    ("kafka", "max_message_bytes"): (_positive, "an integer > 0"),
    ("kafka", "dlq_max_payload_bytes"): (_positive, "an integer > 0"),
    ("kafka", "partitions"): (lambda v: 1 <= v <= 10000, "an integer from 1 to 10000"),
    ("kafka", "replication_factor"): (lambda v: 1 <= v <= 32767, "an integer from 1 to 32767"),
    ("lake", "path"): (_non_empty, "a directory path"),
    ("lake", "batch_max_messages"): (_positive, "an integer > 0"),
    ("lake", "batch_max_bytes"): (_positive, "an integer > 0"),
    ("lake", "batch_max_seconds"): (_positive, "a number of seconds > 0"),
    ("lake", "zstd_level"): (lambda v: 1 <= v <= 22, "an integer from 1 to 22"),
    ("lake", "decode_workers"): (lambda v: 0 <= v <= 8, "an integer from 0 (inline) to 8"),
    ("lake", "max_tick_future_s"): (lambda v: v >= 0, "a number of seconds >= 0 (0: no bound)"),
    ("lake", "max_tick_age_s"): (lambda v: v >= 0, "a number of seconds >= 0 (0: no bound)"),
    ("lake", "janitor_min_age_hours"): (lambda v: v >= 1, "a number of hours >= 1"),
    ("collector", "backend"): (
        lambda v: v in ("nvml", "simulate", "replay"),
        "one of nvml, simulate, replay",
    ),
    ("collector", "interval_s"): (lambda v: 0 < v <= 3600, "a number of seconds in (0, 3600]"),
    ("collector", "scale"): (_positive, "an integer > 0"),
    ("collector", "metrics_port"): (_port, "a port number 0-65535"),
    ("collector", "spool_max_bytes"): (_positive, "a number of bytes > 0"),
    ("collector", "resolver"): (
        lambda v: v in ("kubernetes", "file", "none"),
        "one of kubernetes, file, none",
    ),
    ("collector", "timeslice_replicas"): (lambda v: 0 <= v <= 64, "an integer from 0 to 64"),
    ("pricing", "mode"): (lambda v: v in ("reserved", "used", "hybrid"), "one of reserved, used, hybrid"),
    ("pricing", "idle_policy"): (
        lambda v: v in ("platform", "weighted", "even"),
        "one of platform, weighted, even",
    ),
    ("pricing", "used_basis"): (lambda v: v in ("busy", "sm_active"), "one of busy, sm_active"),
    ("pricing", "currency"): (
        lambda v: len(v) == 3 and v.isalpha() and v.isupper(),
        "an ISO 4217 code like USD",
    ),
    ("alerts", "idle_util_ratio"): (lambda v: 0 <= v <= 1, "a ratio from 0 to 1"),
    ("alerts", "idle_min_minutes"): (_positive, "a number of minutes > 0"),
    ("alerts", "node_retire_hours"): (_positive, "a number of hours > 0"),
    # non-strings are left to the list item check ("a list of strings")
    ("alerts", "webhooks"): (
        lambda v: all(_is_url(u) for u in v if isinstance(u, str)),
        "a list of http:// or https:// URLs",
    ),
    ("alerts", "rules"): (
        lambda v: all(r in ALERT_RULES for r in v) and len(set(v)) == len(v),
        f"a list of distinct rule names among {', '.join(ALERT_RULES)}",
    ),
    ("alerts", "receiver"): (_non_empty, "a receiver name"),
    ("alerts", "alertmanager_url"): (lambda v: v == "" or _is_url(v), "empty or an http(s):// URL"),
    ("alerts", "external_url"): (lambda v: v == "" or _is_url(v), "empty or an http(s):// URL"),
    ("alerts", "labels"): (
        lambda v: all(_label_ok(k, x) for k, x in v.items()),
        "a table of label names ([a-zA-Z_][a-zA-Z0-9_]*, not alertname/severity/tenant) to strings",
    ),
    **{
        ("alerts", f"{r}_severity"): (lambda v: v in SEVERITIES, f"one of {', '.join(SEVERITIES)}")
        for r in ALERT_RULES
    },
    ("alerts", "pool_unallocated_pct"): (lambda v: 0 <= v < 100, "a percentage from 0 to below 100"),
    ("alerts", "pool_unallocated_minutes"): (lambda v: v >= 0, "a number of minutes >= 0"),
    ("alerts", "silent_intervals"): (lambda v: v >= 1, "a number of intervals >= 1"),
    ("alerts", "ingest_lag_messages"): (lambda v: v >= 0, "a number of messages >= 0"),
    ("alerts", "ingest_lag_minutes"): (lambda v: v >= 0, "a number of minutes >= 0"),
    ("alerts", "cap_rolled_back_hold_minutes"): (_positive, "a number of minutes > 0"),
    ("alerts", "resolve_ticks"): (lambda v: 1 <= v <= 1000, "an integer from 1 to 1000"),
    ("alerts", "repeat_interval_minutes"): (_positive, "a number of minutes > 0"),
    ("alerts", "lookback_minutes"): (_positive, "a number of minutes > 0"),
    ("alerts", "reorder_slack_s"): (lambda v: v >= 0, "a number of seconds >= 0"),
    ("alerts", "send_timeout_s"): (_positive, "a number of seconds > 0"),
    ("alerts", "send_attempts"): (lambda v: 1 <= v <= 20, "an integer from 1 to 20"),
    ("alerts", "backoff_s"): (lambda v: 0 <= v <= 60, "a number of seconds from 0 to 60"),
    ("alerts", "backoff_max_s"): (lambda v: 0 <= v <= 600, "a number of seconds from 0 to 600"),
    ("alerts", "outbox_max_hours"): (_positive, "a number of hours > 0"),
    ("jobs", "rollups_minutes"): (lambda v: 0 < v <= 1440, "a number of minutes in (0, 1440]"),
    ("jobs", "alerts_seconds"): (lambda v: 1 <= v <= 3600, "a number of seconds from 1 to 3600"),
    ("jobs", "accrual_time"): (lambda v: _hhmm(v) is not None, "a UTC time HH:MM"),
    ("jobs", "close_day"): (lambda v: 1 <= v <= 28, "a day of month from 1 to 28"),
    ("jobs", "close_time"): (lambda v: _hhmm(v) is not None, "a UTC time HH:MM"),
    ("jobs", "janitor_minutes"): (lambda v: 1 <= v <= 10080, "a number of minutes from 1 to 10080"),
    ("jobs", "misfire_grace_s"): (_positive, "a number of seconds > 0"),
    ("jobs", "metrics_port"): (_port, "a port number 0-65535"),
    ("jobs", "metrics_addr"): (_non_empty, "an address to listen on"),
    ("jobs", "enabled"): (
        lambda v: all(j in JOB_NAMES for j in v) and len(set(v)) == len(v),
        f"a list of distinct job names among {', '.join(JOB_NAMES)}",
    ),
    ("enforcer", "mode"): (lambda v: v in ENFORCER_MODES, "one of off, recommend, grow-only, enforce"),
    ("enforcer", "pools"): (
        lambda v: all(isinstance(x, str) and x in ENFORCER_MODES for x in v.values()),
        'a table of "cluster/GPU model" to one of off, recommend, grow-only, enforce',
    ),
    ("enforcer", "tenants"): (
        lambda v: all(isinstance(x, str) and x in ENFORCER_MODES for x in v.values()),
        "a table of tenant to one of off, recommend, grow-only, enforce",
    ),
    ("enforcer", "guarantees_mib"): (
        lambda v: all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v.values()),
        "a table of tenant to a whole number of MiB >= 0",
    ),
    ("enforcer", "interval_s"): (lambda v: 1 <= v <= 3600, "a number of seconds from 1 to 3600"),
    ("enforcer", "peak_minutes"): (lambda v: 1 <= v <= 60, "a number of minutes from 1 to 60"),
    ("enforcer", "half_life_hours"): (_positive, "a number of hours > 0"),
    ("enforcer", "window_days"): (_positive, "a number of days > 0"),
    ("enforcer", "bucket_pct"): (lambda v: 0 < v <= 100, "a percentage in (0, 100]"),
    ("enforcer", "percentile"): (lambda v: 0 < v <= 100, "a percentile in (0, 100]"),
    ("enforcer", "margin"): (lambda v: v >= 0, "a margin >= 0 (0.15 = 15 %)"),
    ("enforcer", "round_mib"): (_positive, "a number of MiB > 0"),
    ("enforcer", "floor_mib"): (lambda v: v >= 0, "a number of MiB >= 0"),
    ("enforcer", "floor_frac"): (lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    ("enforcer", "min_cap_mib"): (lambda v: v >= 0, "a number of MiB >= 0"),
    ("enforcer", "shrink_min_history_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "shrink_min_age_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "shrink_min_change"): (lambda v: 0 <= v < 1, "a fraction from 0 to below 1"),
    ("enforcer", "shrink_max_step"): (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    ("enforcer", "shrink_every_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "shrink_lookback_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "grow_use_frac"): (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("enforcer", "oom_factor"): (lambda v: v >= 1, "a factor >= 1"),
    ("enforcer", "oom_extra_mib"): (lambda v: v >= 0, "a number of MiB >= 0"),
    ("enforcer", "oom_no_shrink_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "oom_near_cap_frac"): (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("enforcer", "core_pinned_points"): (lambda v: 0 <= v <= 100, "a number of points from 0 to 100"),
    ("enforcer", "core_pinned_frac"): (lambda v: 0 <= v < 1, "a fraction from 0 to below 1"),
    ("enforcer", "core_window_minutes"): (_positive, "a number of minutes > 0"),
    ("enforcer", "core_raise_points"): (lambda v: v >= 0, "a number of points >= 0"),
    ("enforcer", "core_raise_factor"): (lambda v: v >= 1, "a factor >= 1"),
    ("enforcer", "core_lower_p95_frac"): (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("enforcer", "core_lower_max_points"): (lambda v: v >= 0, "a number of points >= 0"),
    ("enforcer", "core_lower_every_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "core_min_pct"): (lambda v: 0 <= v <= 100, "a percentage from 0 to 100"),
    ("enforcer", "budget_frac"): (lambda v: 0 <= v <= 1, "a fraction from 0 to 1"),
    ("enforcer", "rollback_hours"): (lambda v: v >= 0, "a number of hours >= 0"),
    ("enforcer", "regressions_max"): (lambda v: v >= 1, "an integer >= 1"),
    ("enforcer", "regressions_days"): (_positive, "a number of days > 0"),
    ("enforcer", "decision_ttl_s"): (_positive, "a number of seconds > 0"),
    ("enforcer", "stale_ticks"): (lambda v: v >= 1, "a number of ticks >= 1"),
    ("dashboard", "port"): (_port, "a port number 0-65535"),
    ("dashboard", "auth"): (lambda v: v in ("password", "trusted-header"), "one of password, trusted-header"),
    ("dashboard", "session_hours"): (lambda v: 0 < v <= 24 * 31, "a number of hours in (0, 744]"),
    ("dashboard", "user_header"): (_header_name, "an HTTP header name like X-Forwarded-User"),
    ("dashboard", "groups_header"): (_header_name, "an HTTP header name like X-Forwarded-Groups"),
    ("dashboard", "trusted_proxies"): (
        lambda v: all(isinstance(x, str) and _network(x) for x in v),
        "a list of IP addresses or networks like 10.0.0.0/8",
    ),
    ("dashboard", "admin_group"): (_non_empty, "a group name"),
    ("dashboard", "tenant_group_prefix"): (_non_empty, "a group name prefix"),
    ("dashboard", "login_free_attempts"): (lambda v: 0 <= v <= 100, "an integer from 0 to 100"),
    ("dashboard", "login_backoff_s"): (lambda v: 0 < v <= 3600, "a number of seconds in (0, 3600]"),
    ("dashboard", "login_backoff_max_s"): (lambda v: 0 < v <= 86400, "a number of seconds in (0, 86400]"),
    ("dashboard", "connections"): (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
}

_TENANT_MATCHERS = ("namespace", "label", "account", "user")
_ITEM_NAMES = {str: "strings", dict: "tables"}


def _type_name(tp: Any) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(tp, str(tp))


def _base_type(annotation: Any) -> type:
    text = str(annotation)
    for name, tp in (
        ("list", list),
        ("dict", dict),
        ("int", int),
        ("float", float),
        ("str", str),
        ("bool", bool),
    ):
        if text.startswith(name):
            return tp
    raise TypeError(f"unsupported config annotation {annotation!r}")


def _coerce(section: str, key: str, value: Any, tp: type, source: str) -> Any:
    where = f"{section}.{key} = {value!r} (from {source})"
    if isinstance(value, str) and tp is not str and source.startswith("environment "):
        # Environment values arrive as text; parse them as TOML/JSON literals (file values are typed).
        text = value.strip()
        try:
            if tp is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1", "yes")
            elif tp is int:
                value = int(text)
            elif tp is float:
                value = float(text)
            else:
                value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"config error: {where}: expected {_type_name(tp)}") from exc
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config error: {where}: expected {_type_name(tp)}")
    check = _CHECKS.get((section, key))
    if check and not check[0](value):
        raise ConfigError(f"config error: {where}: expected {check[1]}")
    return value


def _check_tenant_rules(rules: list[Any], source: str) -> None:
    for i, rule in enumerate(rules):
        where = f"tenants.rules[{i}] = {rule!r} (from {source})"
        if not isinstance(rule, dict) or not isinstance(rule.get("tenant"), str) or not rule["tenant"]:
            raise ConfigError(f"config error: {where}: expected a table with a non-empty 'tenant'")
        matchers = [k for k in rule if k != "tenant"]
        if len(matchers) != 1 or matchers[0] not in _TENANT_MATCHERS:
            raise ConfigError(
                f"config error: {where}: expected exactly one matcher among {', '.join(_TENANT_MATCHERS)}"
            )
        value = rule[matchers[0]]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config error: {where}: expected a non-empty string to match")
        if matchers[0] == "label" and "=" not in value:
            raise ConfigError(f"config error: {where}: expected label as 'key=value'")


def _check_alert_routes(routes: list[Any], source: str) -> None:
    allowed = {"tenant", "receiver", "webhooks", "continue"}
    for i, route in enumerate(routes):
        where = f"alerts.routes[{i}] = {route!r} (from {source})"
        if not isinstance(route, dict):
            raise ConfigError(f"config error: {where}: expected a table")
        extra = sorted(set(route) - allowed)
        if extra:
            raise ConfigError(f"config error: {where}: unknown key(s) {extra}: expected {sorted(allowed)}")
        for key in ("tenant", "receiver"):
            if not isinstance(route.get(key), str) or not route[key]:
                raise ConfigError(f"config error: {where}: expected a non-empty string '{key}'")
        hooks = route.get("webhooks")
        if not isinstance(hooks, list) or not hooks or not all(_is_url(u) for u in hooks):
            raise ConfigError(
                f"config error: {where}: expected 'webhooks' as a non-empty list of http(s) URLs"
            )
        if not isinstance(route.get("continue", False), bool):
            raise ConfigError(f"config error: {where}: expected 'continue' as true or false")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if any) and apply environment overrides, validating every key.

    With no path, `gpuledger.toml` in the working directory is used when present; the
    embedded defaults otherwise, so `gpuledger demo` runs with nothing configured.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source_file = "defaults"
    if path is None and Path(DEFAULT_FILE).exists():
        path = DEFAULT_FILE
    if path is not None:
        source_file = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"config error: file {path} does not exist: expected a TOML config file"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"config error: file {path} cannot be read ({exc.strerror}): "
                f"expected a readable TOML config file"
            ) from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config error: {path} is not valid TOML: {exc}") from exc

    cfg = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(
                f"config error: unknown section [{section}] in {source_file}: expected one of "
                f"{', '.join(sections)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config error: [{section}] = {values!r} in {source_file}: expected a table")
        _apply(cfg, section, values, source_file)

    overrides: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue  # other GPULEDGER_* variables (test hooks, paths) are not config keys
        overrides.setdefault(section, {})[rest[len(section) + 1 :]] = (value, name)
    for section, values in overrides.items():
        for key, (value, name) in values.items():
            _apply(cfg, section, {key: value}, f"environment {name}")
    return cfg


def _apply(cfg: Config, section: str, values: dict[str, Any], source: str) -> None:
    obj = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"config error: unknown key {section}.{key} = {value!r} (from {source}): "
                f"expected one of {', '.join(fields)}"
            )
        tp = _base_type(fields[key].type)
        value = _coerce(section, key, value, tp, source)
        if tp is list:
            item = _base_type(str(fields[key].type)[len("list[") :])
            if not all(isinstance(v, item) for v in value):
                raise ConfigError(
                    f"config error: {section}.{key} = {value!r} (from {source}): "
                    f"expected a list of {_ITEM_NAMES.get(item, item.__name__)}"
                )
        if (section, key) == ("tenants", "rules"):
            _check_tenant_rules(value, source)
        if (section, key) == ("alerts", "routes"):
            _check_alert_routes(value, source)
        setattr(obj, key, value)


def config_hash(cfg: Config) -> str:
    """A stable hash of the effective configuration, for manifests that must be reproducible."""
    import hashlib

    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
