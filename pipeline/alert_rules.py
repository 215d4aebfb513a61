"""The alert rules: their names and settings, the one source that both the built-in engine
(pipeline/alerts.py) and the Prometheus rules export (pipeline/prom_rules.py) render.

Rules (names are the ``alertname`` label):

- ``GpuSliceIdle``: a slice whose used/reserved GPU-seconds stay under ``idle_util_ratio`` for at
  least ``idle_min_minutes`` (DESIGN §6: the same tick test and the same period length as the
  accounting, so the alert fires exactly when an idle period starts to qualify).
- ``GpuIdle``: a physical GPU that is allocated (some slice holds it) but busy under the ratio as a
  whole (its own utilization; the sum of its slices' where the GPU reports none, e.g. MIG).
- ``GpuPoolUnallocated``: a pool (cluster + GPU model) with more than ``pool_unallocated_pct`` %
  of its GPUs unallocated for ``pool_unallocated_minutes``.
- ``GpuCollectorSilent``: a node whose last tick is older than ``silent_intervals`` of its interval.
- ``GpuledgerIngestLag``: the ingest consumer group's lag (end offsets - committed offsets, summed
  over partitions) above ``ingest_lag_messages`` for ``ingest_lag_minutes``.
- ``GpuCapRolledBack``: the enforcer rolled back one of its own shrinks (or core lowerings) because an
  out-of-memory or pinning followed it (docs/enforcer.md): one alert per rollback in the enforcer's
  audit (labels tenant, cluster, node, pool, slice_id, resource), firing at once and resolved after
  ``cap_rolled_back_hold_minutes`` (the rollback itself restored the cap). Lake-side only: it reads
  the enforcer's decision audit, which no exporter metric carries (see pipeline/prom_rules.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpuledger.config import Config

ALERTNAMES = {
    "idle_slice": "GpuSliceIdle",
    "idle_gpu": "GpuIdle",
    "pool_unallocated": "GpuPoolUnallocated",
    "collector_silent": "GpuCollectorSilent",
    "ingest_lag": "GpuledgerIngestLag",
    "cap_rolled_back": "GpuCapRolledBack",
}

LAKE_ONLY = frozenset({"cap_rolled_back"})  # rules with no Prometheus expression over exporter metrics


@dataclass(frozen=True)
class AlertRules:
    """The alert settings of the config in the units the evaluation uses."""

    enabled: frozenset[str]
    idle_util_ratio: float
    idle_min_s: float
    severity: Mapping[str, str]
    labels: Mapping[str, str]
    pool_unallocated_ratio: float
    pool_for_s: float
    silent_intervals: float
    lag_messages: int
    lag_for_s: float
    resolve_ticks: int
    repeat_s: float
    lookback_s: float
    reorder_slack_s: float
    outbox_max_s: float
    external_url: str = ""
    rollback_hold_s: float = 3600.0  # a GpuCapRolledBack alert resolves this long after it fired
    silent_forget_s: float = 86400.0  # a node silent this long is forgotten (its alert resolves)

    @classmethod
    def from_config(cls, cfg: Config) -> AlertRules:
        a = cfg.alerts
        return cls(
            enabled=frozenset(a.rules),
            idle_util_ratio=a.idle_util_ratio,
            idle_min_s=a.idle_min_minutes * 60.0,
            severity={r: getattr(a, f"{r}_severity") for r in ALERTNAMES},
            labels=dict(a.labels),
            pool_unallocated_ratio=a.pool_unallocated_pct / 100.0,
            pool_for_s=a.pool_unallocated_minutes * 60.0,
            silent_intervals=a.silent_intervals,
            lag_messages=a.ingest_lag_messages,
            lag_for_s=a.ingest_lag_minutes * 60.0,
            resolve_ticks=a.resolve_ticks,
            repeat_s=a.repeat_interval_minutes * 60.0,
            lookback_s=a.lookback_minutes * 60.0,
            reorder_slack_s=a.reorder_slack_s,
            outbox_max_s=a.outbox_max_hours * 3600.0,
            external_url=a.external_url,
            rollback_hold_s=a.cap_rolled_back_hold_minutes * 60.0,
        )
