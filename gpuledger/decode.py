"""Decode a batch of raw v1 tick messages into validated Arrow tables.

Two paths decide together. The typed fast path (`gpuledger.typed`, msgspec in C) validates
while it parses; the exact checker (`gpuledger.exact`) sees only what the fast path refused,
decides as JSON Schema would and names the problem. A message with any bad value is rejected
whole (a tick is never half-ingested); the good messages of the same batch are kept.

Rows then go to Arrow as tuples (`msgspec.structs.astuple`) converted into struct arrays
with their types known, both in C, so no value is touched twice in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import msgspec
import pyarrow as pa
from msgspec.structs import astuple

from gpuledger import typed
from gpuledger.exact import KIND_REQUIRES, exact_check, first_duplicate_key
from gpuledger.lake_tables import (
    TS_TYPE,
    WORKLOAD_FIELDS,
    table_schema,
)
from gpuledger.schema import parse_ts


@dataclass
class Reject:
    index: int
    reason: str


@dataclass(frozen=True)
class TsWindow:
    """How far a tick's `ts` may be from the time ingest receives it; outside it goes to the DLQ.

    Why: a tick dated 2199 moves every dashboard's "now" past the real fleet, and ticks with
    random dates make one date folder each (1,984 folders from 2,000 ticks, ingest 40x slower).
    The future bound allows clock skew between nodes and ingest; the past bound is the longest a
    tick can honestly wait in a node agent's spool (and in Kafka) before it is delivered. 0 turns
    a bound off (backfills of old history).
    """

    future_s: float = 300.0  # lake.max_tick_future_s
    past_s: float = 7 * 86400.0  # lake.max_tick_age_s

    def reason(self, ts: datetime, now: datetime) -> str | None:
        """Why `ts` is outside the window around receive time `now`, or None when it is inside."""
        ahead = (ts - now).total_seconds()
        if self.future_s and ahead > self.future_s:
            return (
                f"ts: {ts:%Y-%m-%dT%H:%M:%SZ} is {ahead:.0f} s after receive time {now:%Y-%m-%dT%H:%M:%SZ}"
                f" (more than lake.max_tick_future_s = {self.future_s:g} s in the future)"
            )
        if self.past_s and -ahead > self.past_s:
            return (
                f"ts: {ts:%Y-%m-%dT%H:%M:%SZ} is {-ahead:.0f} s before receive time "
                f"{now:%Y-%m-%dT%H:%M:%SZ} (older than lake.max_tick_age_s = {self.past_s:g} s)"
            )
        return None


@dataclass
class DecodedBatch:
    tables: dict[str, pa.Table]
    accepted: list[int]
    rejects: list[Reject] = field(default_factory=list)
    duplicates: int = 0  # ticks that appeared again within the batch (dropped, not rejected)

    @property
    def ticks(self) -> int:
        return len(self.accepted)


def _semantics_ok(t: Any) -> datetime | None:
    """The rules JSON Schema cannot say (see schema.SEMANTIC_RULES); the tick's time if all hold."""
    try:
        ts = parse_ts(t.ts)
    except ValueError:
        return None
    gpus = {g.uuid for g in t.gpus}
    if len(gpus) != len(t.gpus):
        return None
    slices = t.slices
    if len({s.slice_id for s in slices}) != len(slices):
        return None
    for s in slices:
        if s.gpu_uuid not in gpus:
            return None
        need = KIND_REQUIRES.get(s.kind)
        if need:
            for f in need:
                v = getattr(s, f)
                if v is None or v is typed.UNSET:
                    return None
    for p in t.processes:
        if p.gpu_uuid not in gpus:
            return None
    return ts.astimezone(UTC)


def decode_batch(
    raws: Sequence[bytes],
    *,
    batch: int,
    max_message_bytes: int,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    fast: bool = True,
    ts_window: TsWindow | None = None,
    now: datetime | None = None,
) -> DecodedBatch:
    """Validate and flatten a batch of raw messages.

    `batch` is the ingest batch id stamped on every row: queries pick one batch per tick, which
    is how a tick delivered twice is still counted once. `fast=False` sends every message
    through the exact checker (tests use it to hold the two paths to the same answers).
    With `ts_window`, a tick whose ts is outside it around `now` (default: the clock now, i.e.
    receive time) is rejected with the reason.
    """
    n = len(raws)
    ticks: list[Any] = [None] * n
    times: list[datetime | None] = [None] * n
    slow: list[int] = []
    dec = typed.decoder()
    for i, raw in enumerate(raws):
        if fast and len(raw) <= max_message_bytes:
            try:
                t = dec.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
                slow.append(i)
                continue
            ts = _semantics_ok(t)
            # msgspec keeps the last of two values for one key: such a message goes to the
            # exact checker, which rejects it naming the key.
            if ts is not None and first_duplicate_key(raw) is None:
                ticks[i], times[i] = t, ts
                continue
        slow.append(i)
    reasons: dict[int, str] = {}
    if slow:
        bad, good = exact_check([raws[i] for i in slow], max_message_bytes)
        for local, reason in bad.items():
            reasons[slow[local]] = reason
        for local, doc in good.items():
            i = slow[local]
            ticks[i] = typed.from_builtins(doc)
            times[i] = parse_ts(doc["ts"]).astimezone(UTC)
    if ts_window is not None:
        now = now or datetime.now(UTC)
        for i, ts in enumerate(times):
            if ts is not None and (why := ts_window.reason(ts, now)) is not None:
                reasons[i], ticks[i], times[i] = why, None, None
    # At-least-once delivery can put the same tick twice into one batch (a spool replay of a
    # tick whose first send did land); keep the first so the batch holds each tick once.
    accepted, seen, duplicates = [], set(), 0
    for i in range(n):
        t = ticks[i]
        if t is None:
            continue
        ident = (t.node, t.boot_id, t.seq)
        if ident in seen:
            duplicates += 1
            continue
        seen.add(ident)
        accepted.append(i)
    tables = build_tables(
        [ticks[i] for i in accepted],
        [times[i] for i in accepted],
        batch,
        [partitions[i] for i in accepted] if partitions is not None else None,
        [offsets[i] for i in accepted] if offsets is not None else None,
    )
    return DecodedBatch(tables, accepted, [Reject(i, reasons[i]) for i in sorted(reasons)], duplicates)


@cache
def _struct_type(struct_cls: type, kind: str, exclude: tuple[str, ...] = ()) -> pa.StructType:
    """The Arrow struct matching a msgspec type's field order, typed as the lake table wants."""
    schema = table_schema(kind)
    return pa.struct([schema.field(f) for f in struct_cls.__struct_fields__ if f not in exclude])


def _columns(objs: list[Any], kind: str, exclude: str | None = None) -> dict[str, pa.Array]:
    """Typed objects (None = all-null row) -> one Arrow array per field, in one conversion.

    `astuple` and Arrow's struct conversion both run in C; `exclude` names a nested last field.
    """
    present = next((o for o in objs if o is not None), None)
    if present is None:
        schema = table_schema(kind)
        return {f: pa.nulls(len(objs), schema.field(f).type) for f in WORKLOAD_FIELDS}
    cls = type(present)
    if exclude:
        assert cls.__struct_fields__[-1] == exclude
        tuples = [astuple(o)[:-1] for o in objs]
        st = _struct_type(cls, kind, (exclude,))
    else:
        tuples = [astuple(o) if o is not None else None for o in objs]
        st = _struct_type(cls, kind)
    arr = pa.array(tuples, type=st)
    return dict(zip(st.names, arr.flatten(), strict=True))


def build_tables(
    ticks: list[Any],
    times: list[datetime | None],
    batch: int,
    partitions: list[int] | None,
    offsets: list[int] | None,
) -> dict[str, pa.Table]:
    """Typed ticks -> the four lake tables (tick, gpu, slice, process)."""
    nt = len(ticks)
    ident = {
        "batch": pa.array([batch] * nt, pa.int64()),
        "cluster": pa.array([t.cluster for t in ticks], pa.string()),
        "node": pa.array([t.node for t in ticks], pa.string()),
        "boot_id": pa.array([t.boot_id for t in ticks], pa.string()),
        "seq": pa.array([t.seq for t in ticks], pa.int64()),
        "ts": pa.array(times, TS_TYPE),
        "interval_s": pa.array([float(t.interval_s) for t in ticks], pa.float64()),
    }
    tables: dict[str, pa.Table] = {}
    counts: dict[str, list[int]] = {}
    for key, attr in (("gpu", "gpus"), ("slice", "slices"), ("process", "processes")):
        objs: list[Any] = []
        owner: list[int] = []
        per: list[int] = []
        for k, t in enumerate(ticks):
            items = getattr(t, attr)
            objs.extend(items)
            owner.extend([k] * len(items))
            per.append(len(items))
        counts[key] = per
        schema = table_schema(key)
        if not objs:
            tables[key] = schema.empty_table()
            continue
        idx = pa.array(owner, pa.int32())
        data = {c: a.take(idx) for c, a in ident.items()}
        if key == "slice":
            data.update(_gpu_facts(ticks, objs, owner))
            data.update(_columns(objs, key, exclude="workload"))
            data.update(_columns([s.workload for s in objs], key))
        else:
            data.update(_columns(objs, key))
        tables[key] = pa.table([data[f.name] for f in schema], schema=schema)
    tables["tick"] = pa.table(
        {
            **ident,
            "n_gpus": pa.array(counts["gpu"], pa.int32()),
            "n_slices": pa.array(counts["slice"], pa.int32()),
            "n_processes": pa.array(counts["process"], pa.int32()),
            "src_partition": pa.array(partitions if partitions is not None else [None] * nt, pa.int32()),
            "src_offset": pa.array(offsets if offsets is not None else [None] * nt, pa.int64()),
        },
        schema=table_schema("tick"),
    )
    return tables


def _gpu_facts(ticks: list[Any], slices: list[Any], owner: list[int]) -> dict[str, pa.Array]:
    """Model and memory total of each slice's GPU, copied onto the slice row (share needs them)."""
    facts = [{g.uuid: (g.model, g.mem_total_mib) for g in t.gpus} for t in ticks]
    pairs = [facts[k][s.gpu_uuid] for k, s in zip(owner, slices, strict=True)]
    return {
        "model": pa.array([p[0] for p in pairs], pa.string()),
        "gpu_mem_total_mib": pa.array([p[1] for p in pairs], pa.int64()),
    }
