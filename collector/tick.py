"""The one tick builder: every backend (NVML, simulated fleet, trace replay) makes its v1 ticks here.

Why: the message contract lives in `gpuledger/sample.schema.json`; the Structs built from it
(`gpuledger.typed`) are the only way a producer writes a tick, so the schema name, the field
names and the limits a producer clamps to are never copied into collector code. `encode` is what
goes on the topic (msgspec, nulls of optional fields left out); the exporter reads the same
typed tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from gpuledger.schema import SCHEMA_NAME, format_ts, limits
from gpuledger.typed import encode, tick_types

TYPES = tick_types()
Tick, Gpu, Slice, Process, Workload = TYPES
LIMITS = limits()

__all__ = [
    "LIMITS",
    "Gpu",
    "Process",
    "Slice",
    "Tick",
    "TickSource",
    "Workload",
    "as_dicts",
    "build_tick",
    "check_interval",
    "clamp_labels",
    "encode",
    "format_ts",
    "gpu_of",
    "nullable_id",
    "prof_fields",
]


def build_tick(
    cluster: str,
    node: str,
    boot_id: str,
    seq: int,
    ts: str,
    interval_s: float,
    gpus: list[Any],
    slices: list[Any],
    processes: list[Any],
) -> Any:
    """One v1 tick of typed GPUs, slices and processes (`ts` already in the schema's form)."""
    return Tick(
        schema=SCHEMA_NAME,
        cluster=cluster,
        node=node,
        boot_id=boot_id,
        seq=seq,
        ts=ts,
        interval_s=interval_s,
        gpus=gpus,
        slices=slices,
        processes=processes,
    )


def check_interval(interval_s: Any) -> float:
    """A tick interval within the schema's bounds, as float; a clear error naming it otherwise."""
    if isinstance(interval_s, bool) or not isinstance(interval_s, int | float):
        interval_s = None
    if interval_s is None or not 0 < interval_s <= LIMITS.interval_max_s:
        raise ValueError(
            f"interval_s={interval_s!r}: expected seconds in (0, {LIMITS.interval_max_s:g}] (schema limit)"
        )
    return float(interval_s)


def nullable_id(v: Any) -> str | None:
    """A schema nullable id: non-empty, at most `id_max` characters (longer ids are cut, not dropped)."""
    if v is None:
        return None
    s = str(v)
    return s[: LIMITS.id_max] if s else None


def clamp_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    """At most `labels_max` labels (first by key), values cut to `label_value_max`; none -> None."""
    if not labels:
        return None
    items = sorted(labels.items())[: LIMITS.labels_max]
    return {str(k): str(v)[: LIMITS.label_value_max] for k, v in items}


def as_dicts(ticks: Sequence[Any]) -> list[dict[str, Any]]:
    """Typed ticks as JSON-ready dicts with every field (null where the message leaves it out).

    What a reader of the message sees (absent and null mean the same); for tests and tools.
    """
    return [_builtins(t) for t in ticks]


def _builtins(v: Any) -> Any:
    if isinstance(v, msgspec.Struct):
        return {k: _builtins(x) for k, x in msgspec.structs.asdict(v).items() if x is not msgspec.UNSET}
    if isinstance(v, list):
        return [_builtins(x) for x in v]
    if isinstance(v, dict):
        return dict(v)
    return v


class TickSource:
    """A backend: `sample()` gives one interval's typed ticks (one per node it speaks for).

    `next_tick()` is the same interval as plain dicts, for tests, benchmarks and tools that
    want to look inside or re-encode a message.
    """

    def sample(self) -> list[Any]:
        raise NotImplementedError

    def next_tick(self) -> list[dict[str, Any]]:
        return as_dicts(self.sample())


def gpu_of(r: Any) -> Any:
    """A GPU reading (`collector.readings.GpuReading`, or anything with its fields) -> the typed GPU."""
    return Gpu(
        uuid=r.uuid,
        index=r.index,
        model=r.model,
        mem_total_mib=r.mem_total_mib,
        mem_used_mib=r.mem_used_mib,
        util_pct=r.util_pct,
        power_w=r.power_w,
        energy_j=r.energy_j,
        temp_c=r.temp_c,
        mig_mode=r.mig_mode,
        state=r.state,
        **prof_fields(getattr(r, "prof", None)),
        **_clock_fields(getattr(r, "clocks", None)),
        **_xid_fields(getattr(r, "xids", None)),
        **health_fields(getattr(r, "health", None)),
    )


def prof_fields(p: Any) -> dict[str, Any]:
    """A `collector.readings.Prof` (or None) as the schema's four ``*_pct`` profiling fields."""
    if p is None:
        return {}
    return {
        "sm_active_pct": p.sm_active_pct,
        "sm_occupancy_pct": p.sm_occupancy_pct,
        "tensor_active_pct": p.tensor_active_pct,
        "dram_active_pct": p.dram_active_pct,
    }


def _xid_fields(x: Any) -> dict[str, Any]:
    return {} if x is None else {"xid_count": x.count, "xid_last": x.last, "xid_critical": x.critical}


def health_fields(h: Any) -> dict[str, Any]:
    """A `collector.readings.Health` (or None) as the schema's memory-health fields (same names)."""
    return {} if h is None else h._asdict()


def _clock_fields(c: Any) -> dict[str, Any]:
    if c is None:
        return {}
    return {"sm_clock_mhz": c.sm_mhz, "mem_clock_mhz": c.mem_mhz, "clocks_event_reasons": c.event_reasons}
