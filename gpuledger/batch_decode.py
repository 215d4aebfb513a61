"""Whole-batch decode for clean batches: JSON straight to Arrow columns, every rule checked on columns.

`gpuledger.decode.decode_batch` builds one Python object per value (msgspec) and converts them
to Arrow again, which is most of ingest's CPU. Here the newline-joined batch goes through the
native reader (gpuledger/native, Rust) with a field layout compiled from `sample.schema.json`,
the schema's rules run as Arrow compute kernels over whole columns, and the semantic rules
through `gpuledger.semantics`, the same column checks the explaining path runs.

This path never decides anything on its own: it either proves that every message of the batch
is accepted, distinct and reads to the same values `decode_batch` would produce, or it hands
the whole batch to `decode_batch`. Anything unusual (a parse error, any rule failing, a
duplicate tick, an oversized or non-UTF-8 message, whitespace around a message, NaN, -0) is a
fallback, never a reject; rejects and their reasons always come from `decode_batch`. Where the
native reader is not built, every batch takes `decode_batch`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import accumulate
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpuledger import semantics
from gpuledger.decode import DecodedBatch, TsWindow, decode_batch
from gpuledger.lake_tables import LABELS_TYPE, WORKLOAD_FIELDS, table_schema
from gpuledger.schema import ITEM_LISTS, FieldRule, array_limits, label_limits, rules

log = logging.getLogger("gpuledger.batch_decode")

_LISTS = ITEM_LISTS
_OPEN, _CLOSE = ord("{"), ord("}")


# -- rule checks on columns ------------------------------------------------------------------


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask).as_py())


def _breaks(arr: pa.Array, rule: FieldRule) -> bool:
    """True if any value of the column might fail the rule (nulls count as failing when not allowed).

    A null here may be an absent key or a JSON null; the check is strict for both, so it can
    only send a clean batch to the slow path, never let a bad one through.
    """
    if arr.null_count and (rule.required or "null" not in rule.json_types):
        return True
    if arr.null_count == len(arr):
        return False
    if pa.types.is_floating(arr.type):
        # NaN passes every range check and Arrow reads NaN/Infinity literals; -0 (an integer
        # literal) reads as -0.0 here but as 0.0 through msgspec.
        if not pc.all(pc.is_finite(arr)).as_py():
            return True
        if _any(pc.and_(pc.equal(arr, 0), pc.less(pc.divide(1.0, arr), 0))):
            return True
    if rule.minimum is not None and _any(pc.less(arr, rule.minimum)):
        return True
    if rule.exclusive_minimum is not None and _any(pc.less_equal(arr, rule.exclusive_minimum)):
        return True
    if rule.maximum is not None and _any(pc.greater(arr, rule.maximum)):
        return True
    if rule.min_length is not None or rule.max_length is not None:
        lengths = pc.utf8_length(arr)
        if rule.min_length is not None and _any(pc.less(lengths, rule.min_length)):
            return True
        if rule.max_length is not None and _any(pc.greater(lengths, rule.max_length)):
            return True
    if rule.pattern is not None and not pc.all(pc.match_substring_regex(arr, rule.pattern)).as_py():
        return True
    return rule.enum is not None and not pc.all(pc.is_in(arr, pa.array(rule.enum))).as_py()


def _columns_break(cols: dict[str, pa.Array], kind: str) -> bool:
    return any(_breaks(cols[name], rule) for name, rule in rules()[kind].fields.items() if rule.arrow)


# -- the fast path ---------------------------------------------------------------------------


def fast_decode(
    raws: Sequence[bytes | memoryview],
    *,
    batch: int,
    max_message_bytes: int,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    joined: bytes | None = None,
    ts_window: TsWindow | None = None,
    now: datetime | None = None,
) -> DecodedBatch | None:
    """The batch decoded in whole-batch form, or None when it is not provably clean.

    A tick outside `ts_window` around `now` makes the batch unclean: `decode_batch` rejects it
    with the reason.

    `joined` is `b"\\n".join(raws)` when the caller already holds it (ingest ships batches in
    that form), saving a copy of the batch.
    """
    n = len(raws)
    if n == 0:
        return None
    if native_reader() is None:
        return None
    for raw in raws:
        # Each message is '{'...'}' (nothing empty, no surrounding whitespace), so n rows read
        # means exactly one object per message.
        if not 0 < len(raw) <= max_message_bytes or raw[0] != _OPEN or raw[-1] != _CLOSE:
            return None
    # A message with a line break inside still reads as one object or fails: it starts with '{',
    # the one before it ends with '}', so no object can run across two messages.
    if joined is not None and len(joined) == sum(len(r) for r in raws) + n - 1:
        blob = joined
    else:
        blob = b"\n".join(raws)
    if not blob.isascii():
        try:
            blob.decode("utf-8")  # strict: no lone surrogates, as the JSON decoders require
        except UnicodeDecodeError:
            return None
    read = _read_native(blob, raws)
    if read is None:
        return None
    top, cols, owners, counts, wl = read
    if _columns_break(top, "message"):
        return None
    limits = array_limits()
    for name, kind in _LISTS.items():
        if _any(pc.greater(counts[kind], limits[name])):
            return None
        if _columns_break(cols[kind], kind):
            return None
    if _columns_break(wl, "workload"):
        return None
    checked = semantics.check_columns(top["ts"], cols, owners)
    if checked.reasons:
        return None
    if ts_window is not None:
        now = now or datetime.now(UTC)
        if any(ts_window.reason(t, now) is not None for t in pc.unique(checked.times).to_pylist()):
            return None
    ident_table = pa.table({"node": top["node"], "boot_id": top["boot_id"], "seq": top["seq"]})
    if ident_table.group_by(["node", "boot_id", "seq"]).aggregate([]).num_rows != n:
        return None  # a tick twice in one batch: decode_batch keeps the first

    ident = {
        "batch": pa.array([batch] * n, pa.int64()),
        "cluster": top["cluster"],
        "node": top["node"],
        "boot_id": top["boot_id"],
        "seq": top["seq"],
        "ts": checked.times,
        "interval_s": top["interval_s"],
    }
    s, g = cols["slice"], cols["gpu"]
    s.update({f: wl[f] for f in WORKLOAD_FIELDS})
    s["model"] = g["model"].take(checked.slice_gpu)
    s["gpu_mem_total_mib"] = g["mem_total_mib"].take(checked.slice_gpu)
    tables: dict[str, pa.Table] = {}
    for kind in ("gpu", "slice", "process"):
        schema = table_schema(kind)
        if len(owners[kind]) == 0:
            tables[kind] = schema.empty_table()
            continue
        data = {c: a.take(owners[kind]) for c, a in ident.items()} | cols[kind]
        tables[kind] = pa.table([data[f.name] for f in schema], schema=schema)
    tables["tick"] = pa.table(
        {
            **ident,
            "n_gpus": counts["gpu"],
            "n_slices": counts["slice"],
            "n_processes": counts["process"],
            "src_partition": pa.array(list(partitions) if partitions is not None else [None] * n, pa.int32()),
            "src_offset": pa.array(list(offsets) if offsets is not None else [None] * n, pa.int64()),
        },
        schema=table_schema("tick"),
    )
    return DecodedBatch(tables, list(range(n)), [], 0)


_Read = tuple[
    dict[str, pa.Array],  # message columns
    dict[str, dict[str, pa.Array]],  # gpu / slice / process columns
    dict[str, pa.Array],  # the message row of each item (int64)
    dict[str, pa.Array],  # items per message (int32)
    dict[str, pa.Array],  # workload columns (labels included), one row per slice
]


# -- the native reader (gpuledger/native, Rust) ----------------------------------------------

_NATIVE_TYPES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "double", pa.bool_(): "bool"}


@cache
def native_reader() -> Any | None:
    """The compiled reader for this schema, or None where the extension is not built.

    `GPULEDGER_NATIVE_DECODE=0` turns it off (to compare both readers, or to rule it out).
    """
    if os.environ.get("GPULEDGER_NATIVE_DECODE", "1") == "0":
        return None
    try:
        from gpuledger._native import BatchReader
    except ImportError:
        log.info("native batch reader not built; every batch takes the explaining decode")
        return None
    return BatchReader(_native_spec())


def _native_spec() -> list[tuple[str, list[tuple[str, str]]]]:
    """The message layout for the native reader, from the schema's compiled rules."""
    r = rules()
    spec = []
    for kind in ("message", "gpu", "slice", "workload", "process"):
        fields = []
        for name, rule in r[kind].fields.items():
            if rule.arrow is not None:
                fields.append((name, _NATIVE_TYPES[rule.arrow]))
            elif kind == "message" and name in _LISTS:
                fields.append((name, f"list:{_LISTS[name]}"))
            elif (kind, name) == ("slice", "workload"):
                fields.append((name, "struct:workload"))
            elif (kind, name) == ("workload", "labels"):
                fields.append((name, "map"))
            else:
                raise ValueError(f"schema field {kind}.{name}: no native reading for {rule.json_types}")
        spec.append((kind, fields))
    return spec


def _native_array(t: pa.DataType, col: tuple[Any, ...]) -> pa.Array:
    n, nulls, valid, data, offsets, _ = col
    vb = pa.py_buffer(valid) if valid is not None else None
    if t == pa.string():
        return pa.Array.from_buffers(t, n, [vb, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls)
    return pa.Array.from_buffers(t, n, [vb, pa.py_buffer(data)], null_count=nulls)


def _read_native(blob: bytes, raws: Sequence[bytes | memoryview]) -> _Read | None:
    """Columns through the native reader, labels included (as the typed decode reads them)."""
    ends = list(accumulate(len(r) + 1 for r in raws))
    out = native_reader().read(blob, [e - 1 for e in ends])
    if out is None:
        return None
    r = rules()
    msg = out["message"]
    top = {
        name: _native_array(rule.arrow, msg[name]) for name, rule in r["message"].fields.items() if rule.arrow
    }
    cols: dict[str, dict[str, pa.Array]] = {}
    owners: dict[str, pa.Array] = {}
    counts: dict[str, pa.Array] = {}
    for name, kind in _LISTS.items():
        k = out[kind]
        rows = k["rows"]
        counts[kind] = pa.Array.from_buffers(pa.int32(), len(raws), [None, pa.py_buffer(msg[name][3])])
        owners[kind] = (
            pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(k["owners"])])
            if rows
            else pa.array([], pa.int64())
        )
        cols[kind] = {f: _native_array(rule.arrow, k[f]) for f, rule in r[kind].fields.items() if rule.arrow}
    w = out["workload"]
    wl = {f: _native_array(rule.arrow, w[f]) for f, rule in r["workload"].fields.items() if rule.arrow}
    n, nulls, valid, _, offsets, (keys, values) = w["labels"]
    keys, values = _native_array(pa.string(), keys), _native_array(pa.string(), values)
    max_props, max_len = label_limits()
    off = pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(offsets)])
    if n and _any(pc.greater(pc.subtract(off[1:], off[:-1]), max_props)):
        return None
    if len(values) and _any(pc.greater(pc.utf8_length(values), max_len)):
        return None
    entries = pa.StructArray.from_arrays(
        [keys, values], fields=[LABELS_TYPE.key_field, LABELS_TYPE.item_field]
    )
    labels = pa.Array.from_buffers(
        LABELS_TYPE,
        n,
        [pa.py_buffer(valid) if valid is not None else None, pa.py_buffer(offsets)],
        null_count=nulls,
        children=[entries],
    )
    wl["labels"] = labels
    return top, cols, owners, counts, wl


def decode_batch_fast(
    raws: Sequence[bytes | memoryview],
    *,
    batch: int,
    max_message_bytes: int,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    joined: bytes | None = None,
    ts_window: TsWindow | None = None,
    now: datetime | None = None,
) -> DecodedBatch:
    """`decode_batch`'s exact result; the whole-batch path when the batch is clean, else `decode_batch`.

    An error inside the whole-batch path is logged and the batch decoded the slow way: ingest
    must not stop on input that `decode_batch` handles.
    """
    now = now or datetime.now(UTC)  # one receive time for both paths
    try:
        out = fast_decode(
            raws,
            batch=batch,
            max_message_bytes=max_message_bytes,
            partitions=partitions,
            offsets=offsets,
            joined=joined,
            ts_window=ts_window,
            now=now,
        )
    except Exception:
        log.exception("whole-batch decode failed on batch %d; decoding it message by message", batch)
        out = None
    except BaseException as exc:  # a panic in the native reader is a BaseException (pyo3)
        if type(exc).__name__ != "PanicException":
            raise
        log.exception("native reader panicked on batch %d; decoding it message by message", batch)
        out = None
    if out is not None:
        return out
    return decode_batch(
        raws,
        batch=batch,
        max_message_bytes=max_message_bytes,
        partitions=partitions,
        offsets=offsets,
        ts_window=ts_window,
        now=now,
    )
