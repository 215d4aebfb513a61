"""Decode a batch of raw v1 tick messages into validated Arrow tables: the explaining path.

The whole-batch path (`gpuledger.batch_decode`) takes clean batches; any other batch comes
here. Each message is decoded by the typed decoder (`gpuledger.typed`, msgspec in C), which
validates while it parses. A message it refuses is explained by the reference JSON Schema
validator (`gpuledger.schema.schema_error`), which also decides: msgspec is stricter in one
corner (an integer written as 3.0), and such a message is accepted. The semantic rules then
run once over the batch's columns (`gpuledger.semantics`). A message with any bad value is
rejected whole (a tick is never half-ingested); the good messages of the same batch are kept.

Rows then go to Arrow as tuples (`msgspec.structs.astuple`) converted into struct arrays
with their types known, both in C, so no value is touched twice in Python.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import msgspec
import orjson
import pyarrow as pa
from msgspec.structs import astuple

from gpuledger import semantics, typed
from gpuledger.lake_tables import (
    TS_TYPE,
    WORKLOAD_FIELDS,
    table_schema,
)
from gpuledger.schema import field_path, schema_error


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
    is how a tick delivered twice is still counted once. `fast=False` has every message decided
    by the reference validator (tests use it to hold the typed decode to the same answers).
    With `ts_window`, a tick whose ts is outside it around `now` (default: the clock now, i.e.
    receive time) is rejected with the reason.
    """
    n = len(raws)
    ticks: list[Any] = [None] * n
    reasons: dict[int, str] = {}
    dec = typed.decoder()
    for i, raw in enumerate(raws):
        if len(raw) > max_message_bytes:
            reasons[i] = f"payload too large: {len(raw)} bytes > max_message_bytes {max_message_bytes}"
            continue
        if fast:
            try:
                t = dec.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
                at = _error_path(str(exc)) if isinstance(exc, msgspec.ValidationError) else ()
                ticks[i], reasons_i = _explained(raw, at)
            else:
                # msgspec keeps the last of two values for one key: such a message is rejected.
                dup = first_duplicate_key(raw)
                ticks[i], reasons_i = (t, None) if dup is None else (None, _duplicate(dup))
        else:
            ticks[i], reasons_i = _explained(raw, None)
        if reasons_i is not None:
            reasons[i] = reasons_i
    live = [i for i in range(n) if ticks[i] is not None]
    bad, tick_times = semantics.check([ticks[i] for i in live])
    times: list[datetime | None] = [None] * n
    for k, (i, ts) in enumerate(zip(live, tick_times.to_pylist(), strict=True)):
        if k in bad:
            reasons[i], ticks[i] = bad[k], None
        else:
            times[i] = ts
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


# -- explaining a refused message --------------------------------------------------------------

_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _error_path(message: str) -> tuple[Any, ...] | None:
    """The place a msgspec ValidationError names (`... - at `$.slices[3].kind``), as path parts."""
    where = message.rpartition(" - at `$")[2].rstrip("`") if " - at `$" in message else ""
    parts: list[Any] = []
    pos = 0
    while pos < len(where):
        m = _PATH_PART.match(where, pos)
        if m is None:
            break  # a label key msgspec shows in another form: validate from the last part read
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tuple(parts)


def _duplicate(key: str) -> str:
    return f"invalid JSON: duplicate key {key!r} in an object (parsers disagree on which value wins)"


_JSON_WORDS = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def _explained(raw: bytes | memoryview, at: tuple[Any, ...] | None) -> tuple[Any, str | None]:
    """(typed tick, None) when the schema accepts `raw`, else (None, what is wrong and where).

    `at` is where the typed decode found the message wrong: the reference validator checks
    that part first (fast), then, if it finds nothing there, the parts around it up to the
    whole message. None: validate the whole message.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc}"
    dup = first_duplicate_key(raw)
    if dup is not None:
        return None, _duplicate(dup)
    if type(doc) is not dict:
        return None, f"{field_path(())}: expected a JSON object, got {_JSON_WORDS.get(type(doc), 'null')}"
    places = [()] if at is None else [at[:depth] for depth in range(len(at), -1, -1)]
    for place in places:
        why = schema_error(doc, place)
        if why is not None:
            return None, why
    return typed.from_builtins(doc), None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


@cache
def _native_duplicate_key() -> Any | None:
    if os.environ.get("GPULEDGER_NATIVE_DECODE", "1") == "0":
        return None
    try:
        from gpuledger._native import duplicate_key
    except ImportError:
        return None
    return duplicate_key


def first_duplicate_key(raw: bytes | memoryview) -> str | None:
    """The first key that some object of `raw` has twice, or None (also for text that is not JSON).

    Why: JSON parsers disagree on which of two values for one key wins (`{"seq":-1,"seq":7}` is
    seq 7 to orjson and msgspec, -1 to others), so such a message means different things to
    different consumers of the topic; ingest rejects it. The native walker (gpuledger/native)
    costs ~24 us per 12 KB tick (about the typed decode's own cost); Python's json with a pairs
    hook (~80 us) is the fallback where it is not built or cannot read the bytes.
    """
    native = _native_duplicate_key()
    data = raw if isinstance(raw, bytes) else bytes(raw)
    if native is not None:
        walked, key = native(data)
        if walked:
            return key
    try:
        json.loads(data, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        return dup.key
    except (ValueError, RecursionError):
        return None  # not JSON: the parsers reject it with their own reason
    return None


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
