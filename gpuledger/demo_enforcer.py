"""The demo's enforcer: `enforce` mode against the simulated fleet, in process, without a broker.

Every `every_s` of fleet time (after the ticks so far are in the lake) one policy cycle runs at the
fleet's clock; its decisions go through pipeline/enforcer.py's `memory_sender` to a
`SimulatedCapAgent` (collector/caps.py), which applies them to the fleet's vGPU slices
(`SimulatedFleet.apply_cap`), and the acks land in the audit. From the next tick the fleet reports
the new caps, and a simulated process whose memory passes its cap fails as under HAMi-core, which
the enforcer sees as a suspected out-of-memory. Wiring only (like gpuledger/demo.py): it joins
collector, pipeline and warehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from collector.caps import SimulatedCapAgent
from collector.fleet import SimulatedFleet
from gpuledger.config import Config, EnforcerConfig
from pipeline.enforcer import Enforcer, memory_sender
from warehouse.lake import Lake

DEMO_ENFORCER_EVERY_S = 900.0  # fleet time between the demo's policy cycles


def demo_enforcer_settings(cfg: Config, span_s: float | None = None) -> str | None:
    """`enforce` everywhere, unless the config chose modes itself; for a replay shorter than two
    days, the shrink guards' history and age requirements (left at their defaults) cut to half the
    span (at least 2 h), so caps move within the demo. Returns a line saying so, or None."""
    e, d = cfg.enforcer, EnforcerConfig()
    if e.mode == "off" and not e.pools and not e.tenants:
        e.mode = "enforce"
    if span_s is None or span_s >= 2 * 86400:
        return None
    if (e.shrink_min_history_hours, e.shrink_min_age_hours) != (
        d.shrink_min_history_hours,
        d.shrink_min_age_hours,
    ):
        return None
    hours = max(2.0, span_s / 3600 / 2)
    e.shrink_min_history_hours = min(d.shrink_min_history_hours, hours)
    e.shrink_min_age_hours = min(d.shrink_min_age_hours, hours)
    return (
        f"enforcer: demo shrink guards {e.shrink_min_history_hours:g} h of history, slice age "
        f"{e.shrink_min_age_hours:g} h "
        f"(defaults {d.shrink_min_history_hours:g} h, {d.shrink_min_age_hours:g} h)"
    )


class DemoEnforcer:
    """Runs the policy cycle against a SimulatedFleet; `after_tick(flush)` after each fleet tick,
    where `flush()` puts every tick produced so far into the lake."""

    def __init__(self, cfg: Config, fleet: SimulatedFleet, every_s: float = DEMO_ENFORCER_EVERY_S) -> None:
        self.fleet, self.every_s = fleet, float(every_s)
        self.agent = SimulatedCapAgent(
            fleet, floor_mib=cfg.enforcer.floor_mib, floor_frac=cfg.enforcer.floor_frac
        )
        lake = Lake(cfg.lake.path, cfg.lake.zstd_level)
        send = memory_sender(lake, self.agent.handle, cfg.kafka.cap_acks_topic, lambda: fleet.now)
        self.enforcer = Enforcer(cfg, send)
        self.next_at: datetime | None = None
        self.cycles: list[dict[str, Any]] = []

    def after_tick(self, flush: Callable[[], Any]) -> dict[str, Any] | None:
        now = self.fleet.now
        if self.next_at is None:
            self.next_at = now
        if now < self.next_at:
            return None
        flush()
        res = self.enforcer.cycle(now)
        self.cycles.append(res)
        while self.next_at <= now:
            self.next_at += timedelta(seconds=self.every_s)
        return res
