"""`gpuledger alerts export-rules`: the alert rules as a Prometheus rules file, for teams that run one.

The expressions read what the node agent's exporter serves (``collector/exporter.py``):
``gpuledger_slice_reserved_share`` and ``gpuledger_slice_util_percent`` (labels ``slice_id``,
``kind``, ``UUID``, ``Hostname``, ``namespace``, ``pod`` ...), the dcgm-exporter names
(``DCGM_FI_DEV_GPU_UTIL``, ``DCGM_FI_DEV_FB_USED`` with ``modelName``) and
``gpuledger_collector_last_tick_timestamp_seconds``; ingest lag needs kafka_exporter's
``kafka_consumergroup_lag``. The thresholds and durations are the config's, so both evaluators
agree on what idle means. What the lake-side evaluator does and Prometheus cannot: tenants (they are
resolved from rules at query time; route on ``namespace`` instead), idle cost (needs the price
book), and MIG slices are judged by the instance's own activity (the compute fraction is not
exported), which flags a MIG slice at most as often as the lake-side rule.

Not exported: ``GpuCapRolledBack`` (the enforcer rolled back a shrink). A rollback is a decision in
the enforcer's audit in the lake; the exporter serves caps only as they are now, and a cap going up
there cannot be told from a grow, so no expression over exporter metrics says "rolled back". It is
evaluated lake-side only, by the built-in engine, and the rules file says so in its header.

Flapping: ``keep_firing_for`` (Prometheus >= 2.42) holds a firing alert through ``resolve_ticks``
collector intervals without the condition, as the lake-side rule does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpuledger.config import Config
from pipeline.alert_rules import ALERTNAMES, LAKE_ONLY

GROUP = "gpuledger"


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration ("30m", "90s", "1500ms")."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def build_rules(cfg: Config, evaluation_interval_s: float | None = None) -> dict[str, Any]:
    """The rules file as a dict (``groups``: recording rules, then alerts)."""
    a = cfg.alerts
    step = cfg.collector.interval_s
    ratio = a.idle_util_ratio
    keep = duration(a.resolve_ticks * step)
    static = {k: str(v) for k, v in sorted(a.labels.items())}

    def labels(rule: str) -> dict[str, str]:
        return {"severity": getattr(a, f"{rule}_severity"), **static}

    gpus = "group by (cluster, Hostname, UUID, modelName) (DCGM_FI_DEV_FB_USED)"
    records = [
        {
            # DESIGN §6 reserved: share / max(1, Σ shares on the GPU): over-committed GPUs normalised
            "record": "gpuledger:slice_reserved_fraction",
            "expr": "gpuledger_slice_reserved_share\n"
            "  / on (Hostname, UUID) group_left ()\n"
            "  clamp_min(sum by (Hostname, UUID) (gpuledger_slice_reserved_share), 1)",
        },
        {
            # busy fraction of the whole GPU; MIG: own activity x reserved (compute fraction not exported)
            "record": "gpuledger:slice_used_fraction",
            "expr": 'gpuledger_slice_util_percent{kind!="mig"} / 100\n'
            'or gpuledger_slice_util_percent{kind="mig"} / 100 * gpuledger:slice_reserved_fraction',
        },
        {
            "record": "gpuledger:gpu_allocated_fraction",
            "expr": "clamp_max(sum by (cluster, Hostname, UUID) (gpuledger_slice_reserved_share), 1)",
        },
        {
            "record": "gpuledger:pool_unallocated_ratio",
            "expr": "1 - (\n"
            "    sum by (cluster, modelName) (\n"
            "      gpuledger:gpu_allocated_fraction\n"
            f"        * on (cluster, Hostname, UUID) group_left (modelName) {gpus})\n"
            f"    or 0 * count by (cluster, modelName) ({gpus})\n"
            f"  ) / count by (cluster, modelName) ({gpus})",
        },
    ]
    alerts: list[dict[str, Any]] = []
    if "idle_slice" in a.rules:
        alerts.append(
            {
                "alert": ALERTNAMES["idle_slice"],
                "expr": f"gpuledger:slice_used_fraction < {ratio!r} * gpuledger:slice_reserved_fraction",
                "for": duration(a.idle_min_minutes * 60),
                "keep_firing_for": keep,
                "labels": labels("idle_slice"),
                "annotations": {
                    "summary": "Idle GPU slice {{ $labels.namespace }}/{{ $labels.pod }} on "
                    "{{ $labels.Hostname }} GPU {{ $labels.UUID }}",
                    "description": "Slice {{ $labels.slice_id }} ({{ $labels.kind }}) has used under "
                    f"{ratio:.0%} of what it reserves for {a.idle_min_minutes:g} minutes or more "
                    "(now {{ $value | humanizePercentage }} of the GPU).",
                },
            }
        )
    if "idle_gpu" in a.rules:
        alerts.append(
            {
                "alert": ALERTNAMES["idle_gpu"],
                "expr": f"DCGM_FI_DEV_GPU_UTIL < {ratio * 100!r}\n"
                "and on (Hostname, UUID) (sum by (Hostname, UUID) (gpuledger_slice_reserved_share) > 0)",
                "for": duration(a.idle_min_minutes * 60),
                "keep_firing_for": keep,
                "labels": labels("idle_gpu"),
                "annotations": {
                    "summary": "Allocated GPU {{ $labels.UUID }} ({{ $labels.modelName }}) on "
                    "{{ $labels.Hostname }} is idle",
                    "description": f"The GPU is allocated but busy under {ratio:.0%} "
                    f"for {a.idle_min_minutes:g} minutes or more (now {{{{ $value }}}} %).",
                },
            }
        )
    if "pool_unallocated" in a.rules:
        alerts.append(
            {
                "alert": ALERTNAMES["pool_unallocated"],
                "expr": f"gpuledger:pool_unallocated_ratio > {a.pool_unallocated_pct / 100!r}",
                "for": duration(a.pool_unallocated_minutes * 60),
                "keep_firing_for": duration(a.resolve_ticks * (evaluation_interval_s or step)),
                "labels": labels("pool_unallocated"),
                "annotations": {
                    "summary": "{{ $value | humanizePercentage }} of the {{ $labels.modelName }} GPUs "
                    "in cluster {{ $labels.cluster }} are unallocated",
                    "description": f"More than {a.pool_unallocated_pct:g} % of the pool unallocated for "
                    f"{a.pool_unallocated_minutes:g} minutes.",
                },
            }
        )
    if "collector_silent" in a.rules:
        alerts.append(
            {
                "alert": ALERTNAMES["collector_silent"],
                "expr": "time() - max by (Hostname) "
                "(max_over_time(gpuledger_collector_last_tick_timestamp_seconds[1h]))\n"
                f"> {a.silent_intervals * step!r}",
                "labels": labels("collector_silent"),
                "annotations": {
                    "summary": "No ticks from node {{ $labels.Hostname }} for "
                    "{{ $value | humanizeDuration }}",
                    "description": f"No tick for more than {a.silent_intervals:g} collector intervals "
                    f"({a.silent_intervals * step:g} s); its GPU time is unobserved.",
                },
            }
        )
    if "ingest_lag" in a.rules:
        k = cfg.kafka
        alerts.append(
            {
                "alert": ALERTNAMES["ingest_lag"],
                "expr": f"sum by (consumergroup, topic) "
                f'(kafka_consumergroup_lag{{consumergroup="{k.group_id}", topic="{k.topic}"}})\n'
                f"> {a.ingest_lag_messages}",
                "for": duration(a.ingest_lag_minutes * 60),
                "labels": labels("ingest_lag"),
                "annotations": {
                    "summary": "Ingest is {{ $value }} messages behind on {{ $labels.topic }}",
                    "description": f"Consumer group {k.group_id} lags more than {a.ingest_lag_messages} "
                    "messages (kafka_exporter's kafka_consumergroup_lag).",
                },
            }
        )
    group: dict[str, Any] = {"name": GROUP, "rules": records + alerts}
    if evaluation_interval_s:
        group = {"name": GROUP, "interval": duration(evaluation_interval_s), "rules": records + alerts}
    return {"groups": [group]}


class _RulesDumper(yaml.SafeDumper):
    """PyYAML, with multi-line strings (PromQL expressions) as ``|`` blocks so the file reads like a
    hand-written rules file, and keys in the order the rules give them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and all(ln == ln.rstrip() for ln in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RulesDumper.add_representer(str, _str)


def to_yaml(obj: Any) -> str:
    """The rules as YAML (PyYAML's safe dumper, insertion order, block literals for expressions)."""
    return yaml.dump(obj, Dumper=_RulesDumper, sort_keys=False, allow_unicode=True, width=1000)


def render_rules(cfg: Config, evaluation_interval_s: float | None = None) -> str:
    head = (
        "# Generated by `gpuledger alerts export-rules` from the [alerts] config; regenerate, do not edit.\n"
        "# Check with: promtool check rules <this file>\n"
    )
    lake_only = [ALERTNAMES[r] for r in cfg.alerts.rules if r in LAKE_ONLY]
    if lake_only:
        head += (
            f"# Not here, evaluated by gpuledger's own alert engine only: {', '.join(lake_only)} "
            "(it reads the enforcer's audit in the lake, which no exporter metric carries).\n"
        )
    return head + to_yaml(build_rules(cfg, evaluation_interval_s))


def write_rules(cfg: Config, path: str | Path, evaluation_interval_s: float | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_rules(cfg, evaluation_interval_s))
    tmp.replace(path)
    return path
