"""Whole-batch decode for clean batches: JSON straight to Arrow in C++, every rule checked on columns.

`gpuledger.decode.decode_batch` builds one Python object per value (msgspec) and converts them
to Arrow again, which is most of ingest's CPU. Here the newline-joined batch goes through
Arrow's JSON reader with an explicit schema compiled from `sample.schema.json`, and the schema
and semantic rules run as Arrow compute kernels over whole columns. Only workload labels (a
string map, which Arrow's reader cannot build and whose key order the lake keeps) are read
by a msgspec skeleton with the same label type the typed path uses.

This path never decides anything on its own: it either proves that every message of the batch
is accepted, distinct and reads to the same values `decode_batch` would produce, or it hands
the whole batch to `decode_batch`. Anything unusual (a parse error, any rule failing, a
duplicate tick, an oversized or non-UTF-8 message, whitespace around a message, NaN, -0) is a
fallback, never a reject; rejects and their reasons always come from `decode_batch`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import accumulate
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from gpuledger import typed
from gpuledger.decode import DecodedBatch, TsWindow, decode_batch
from gpuledger.exact import KIND_REQUIRES, FieldRule, rules
from gpuledger.lake_tables import LABELS_TYPE, TS_TYPE, WORKLOAD_FIELDS, table_schema
from gpuledger.schema import load_schema, parse_ts

log = logging.getLogger("gpuledger.batch_decode")

_LISTS = {"gpus": "gpu", "slices": "slice", "processes": "process"}
_LABELS_PATH = ("slices", "workload", "labels")
_OPEN, _CLOSE = ord("{"), ord("}")
READ_BLOCK_BYTES = 1 << 20  # cache-sized blocks parse faster than one big one; a block holds whole lines


# -- what Arrow reads ------------------------------------------------------------------------


@cache
def read_schema() -> pa.Schema:
    """The message as Arrow's JSON reader should type it, compiled from the schema's rules.

    Labels are an empty struct: the reader infers their keys (the batch falls back if any
    other field is unknown), and their values are taken from the msgspec skeleton.
    """
    r = rules()

    def struct(kind: str) -> pa.StructType:
        out = []
        for name, rule in r[kind].fields.items():
            if rule.arrow is not None:
                out.append(pa.field(name, rule.arrow))
            elif (kind, name) == ("slice", "workload"):
                out.append(pa.field(name, struct("workload")))
            elif (kind, name) == ("workload", "labels"):
                out.append(pa.field(name, pa.struct([])))
            else:
                raise ValueError(f"schema field {kind}.{name}: no Arrow reading for {rule.json_types}")
        return pa.struct(out)

    top = []
    for name, rule in r["message"].fields.items():
        if rule.arrow is not None:
            top.append(pa.field(name, rule.arrow))
        elif name in _LISTS:
            top.append(pa.field(name, pa.list_(struct(_LISTS[name]))))
        else:
            raise ValueError(f"schema field {name}: no Arrow reading for {rule.json_types}")
    return pa.schema(top)


def _same_shape(actual: pa.DataType, expected: pa.DataType, path: tuple[str, ...] = ()) -> bool:
    """True when the read types are the declared ones: no inferred (unknown) field anywhere.

    Only the labels struct may differ (its keys are data); it must still be a struct.
    """
    if path == _LABELS_PATH:
        return pa.types.is_struct(actual)
    if pa.types.is_struct(expected):
        if not pa.types.is_struct(actual) or actual.num_fields != expected.num_fields:
            return False
        for i in range(expected.num_fields):
            a, e = actual.field(i), expected.field(i)
            if a.name != e.name or not _same_shape(a.type, e.type, (*path, e.name)):
                return False
        return True
    if pa.types.is_list(expected):
        return pa.types.is_list(actual) and _same_shape(actual.value_type, expected.value_type, path)
    return actual == expected


def _field_type(cls: type, name: str) -> Any:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}[name]


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X (for walking the typed message's nesting)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


@cache
def _labels_decoder() -> msgspec.json.Decoder:
    """A msgspec skeleton that reads only slices[].workload.labels, typed as `gpuledger.typed` does.

    It skips every other value without building it, and validates labels (string values, length
    and count limits) with the very same type as the typed decode, so its dicts are the ones
    `decode_batch` would put in the lake.
    """
    tick = typed.message_type()
    slice_t = get_args(_strip(_field_type(tick, "slices")))[0]
    workload_t = _strip(_field_type(slice_t, "workload"))
    labels_t = _field_type(workload_t, "labels")
    wl = msgspec.defstruct("WorkloadLabels", [("labels", labels_t, None)], gc=False)
    sl = msgspec.defstruct("SliceLabels", [("workload", wl | None, None)], gc=False)
    tk = msgspec.defstruct("TickLabels", [("slices", list[sl], [])], gc=False)
    return msgspec.json.Decoder(tk)


@cache
def _max_items() -> dict[str, int]:
    props = load_schema()["properties"]
    return {k: props[k]["maxItems"] for k in _LISTS}


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


def _tick_keys(owner: pa.Array, values: pa.Array, dictionary: pa.Array) -> pa.Array | None:
    """(tick, value) pairs as one int64 per row; None if a value is not in `dictionary`."""
    codes = pc.index_in(values, value_set=dictionary)
    if codes.null_count:
        return None
    return pc.add(pc.multiply(owner, len(dictionary)), codes.cast(pa.int64()))


def _distinct(keys: pa.Array) -> bool:
    return pc.count_distinct(keys).as_py() == len(keys)


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
    longest = 0
    for raw in raws:
        longest = max(longest, len(raw))
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
    read = _read_native(blob, raws) if native_reader() is not None else _read_arrow(blob, n, longest)
    if read is None:
        return None
    top, cols, owners, counts, wl, labels = read
    if _columns_break(top, "message"):
        return None
    limits = _max_items()
    for name, kind in _LISTS.items():
        if _any(pc.greater(counts[kind], limits[name])):
            return None
        if _columns_break(cols[kind], kind):
            return None
    if _columns_break(wl, "workload"):
        return None
    s = cols["slice"]
    for k, needed in KIND_REQUIRES.items():
        is_k = pc.equal(s["kind"], k)
        if _any(is_k) and any(_any(pc.and_(is_k, pc.is_null(s[f]))) for f in needed):
            return None

    # Semantic rules: unique GPU uuids and slice ids per tick, slices and processes on a GPU of
    # their own tick (which also finds each slice's GPU row for its model and memory total).
    g = cols["gpu"]
    gpu_dict = pc.unique(g["uuid"])
    gpu_keys = _tick_keys(owners["gpu"], g["uuid"], gpu_dict)
    if gpu_keys is None or not _distinct(gpu_keys):
        return None
    gpu_row: dict[str, pa.Array] = {}
    for kind in ("slice", "process"):
        keys = _tick_keys(owners[kind], cols[kind]["gpu_uuid"], gpu_dict)
        if keys is None:
            return None
        gpu_row[kind] = pc.index_in(keys, value_set=gpu_keys)
        if gpu_row[kind].null_count:
            return None
    slice_keys = _tick_keys(owners["slice"], s["slice_id"], pc.unique(s["slice_id"]))
    if slice_keys is None or not _distinct(slice_keys):
        return None
    ts_text = top["ts"]
    ts_unique = pc.unique(ts_text)
    times = []
    for text in ts_unique.to_pylist():
        try:
            times.append(parse_ts(text).astimezone(UTC))
        except ValueError:
            return None
    if ts_window is not None:
        now = now or datetime.now(UTC)
        if any(ts_window.reason(t, now) is not None for t in times):
            return None
    ts = pa.array(times, TS_TYPE).take(pc.index_in(ts_text, value_set=ts_unique))
    ident_table = pa.table({"node": top["node"], "boot_id": top["boot_id"], "seq": top["seq"]})
    if ident_table.group_by(["node", "boot_id", "seq"]).aggregate([]).num_rows != n:
        return None  # a tick twice in one batch: decode_batch keeps the first

    if labels is None:
        labels = _labels(raws, counts["slice"], owners["slice"], wl["labels"])
        if labels is None:
            return None

    ident = {
        "batch": pa.array([batch] * n, pa.int64()),
        "cluster": top["cluster"],
        "node": top["node"],
        "boot_id": top["boot_id"],
        "seq": top["seq"],
        "ts": ts,
        "interval_s": top["interval_s"],
    }
    wl["labels"] = labels
    s.update({f: wl[f] for f in WORKLOAD_FIELDS})
    s["model"] = g["model"].take(gpu_row["slice"])
    s["gpu_mem_total_mib"] = g["mem_total_mib"].take(gpu_row["slice"])
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
    dict[str, pa.Array],  # workload columns, one row per slice
    pa.Array | None,  # labels, when the reader has read them already
]


def _read_arrow(blob: bytes, n: int, longest: int) -> _Read | None:
    """Columns through Arrow's JSON reader (labels are read later, by `_labels`)."""
    try:
        table = pj.read_json(
            pa.BufferReader(blob),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(READ_BLOCK_BYTES, longest + 1)),
            parse_options=pj.ParseOptions(explicit_schema=read_schema(), unexpected_field_behavior="infer"),
        )
    except (pa.ArrowException, ValueError):  # parse errors, bad UTF-8, duplicate keys, wrong types
        return None
    if table.num_rows != n or not _same_shape(pa.struct(list(table.schema)), pa.struct(list(read_schema()))):
        return None
    top = {name: table.column(name).combine_chunks() for name in table.column_names}
    cols: dict[str, dict[str, pa.Array]] = {}
    owners: dict[str, pa.Array] = {}
    counts: dict[str, pa.Array] = {}
    for name, kind in _LISTS.items():
        lists = top[name]
        if lists.null_count:
            return None
        counts[kind] = pc.list_value_length(lists)
        items = pc.list_flatten(lists)
        if items.null_count:
            return None
        owners[kind] = pc.list_parent_indices(lists)
        cols[kind] = dict(zip([f.name for f in items.type], items.flatten(), strict=True))
    workload = cols["slice"].pop("workload")
    wl = dict(zip([f.name for f in workload.type], workload.flatten(), strict=True))
    return top, cols, owners, counts, wl, None


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
        log.info("native batch reader not built; using Arrow's JSON reader")
        return None
    return BatchReader(_native_spec())


def _native_spec() -> list[tuple[str, list[tuple[str, str]]]]:
    """The message layout for the native reader, from the same compiled rules as `read_schema`."""
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


@cache
def _label_limits() -> tuple[int, int]:
    node = load_schema()["$defs"]["workload"]["properties"]["labels"]
    return node["maxProperties"], node["additionalProperties"]["maxLength"]


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
    max_props, max_len = _label_limits()
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
    return top, cols, owners, counts, wl, labels


def _labels(
    raws: Sequence[bytes | memoryview], counts: pa.Array, owner: pa.Array, read: pa.Array
) -> pa.Array | None:
    """Each slice's labels as the typed decode reads them (key order and all), or None to fall back.

    `read` is Arrow's labels column: null where labels (or the workload) are null or absent,
    so only messages with a labels object somewhere are decoded again.
    """
    out: list[Any] = [None] * len(read)
    if read.null_count == len(read):
        return pa.array(out, LABELS_TYPE)
    starts = [0, *accumulate(counts.to_pylist())]
    dec = _labels_decoder()
    try:
        for i in pc.unique(owner.filter(pc.is_valid(read))).to_pylist():
            slices = dec.decode(raws[i]).slices
            a, b = starts[i], starts[i + 1]
            if len(slices) != b - a:
                return None
            out[a:b] = [None if (w := sl.workload) is None else w.labels for sl in slices]
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    return pa.array(out, LABELS_TYPE)


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
