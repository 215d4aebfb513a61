"""The message rules JSON Schema cannot express, checked once, on columns, for both decode paths.

The whole-batch path (`gpuledger.batch_decode`) runs them on the columns it read; the explaining
fallback (`gpuledger.decode`) on columns gathered from the typed ticks it accepted, and the
reference validator (`gpuledger.schema.semantic_errors`) on a batch of one. The rules:
`schema.SEMANTIC_RULES`, plus the per-kind slice fields that must be non-null (the schema's
allOf/if/then, which the typed decode cannot express).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpuledger.lake_tables import TS_TYPE
from gpuledger.schema import kind_requires, parse_ts


@dataclass
class Checked:
    reasons: dict[int, str]  # tick -> its first violation, naming the field path
    times: pa.Array  # each tick's ts as a UTC timestamp (null where it is no real date)
    slice_gpu: pa.Array  # each slice row's GPU row (null where it names no GPU of its tick)


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask).as_py())


def _rows(mask: pa.Array) -> list[int]:
    return pc.indices_nonzero(mask.fill_null(False)).to_pylist()


class _Reasons(dict):
    """First reason per tick; builds a row's place in its tick's list only when needed."""

    def __init__(self, owners: dict[str, pa.Array]) -> None:
        super().__init__()
        self.owners = owners

    def add(self, kind: str, j: int, text: str) -> None:
        owner = self.owners[kind]
        tick = owner[j].as_py()
        pos = j - pc.index(owner, tick).as_py()  # rows of one tick are contiguous
        name = {"gpu": "gpus", "slice": "slices", "process": "processes"}[kind]
        self.setdefault(tick, f"{name}[{pos}].{text}")


def _tick_keys(owner: pa.Array, values: pa.Array, dictionary: pa.Array) -> pa.Array:
    """(tick, value) as one int64 per row; null where the value is not in `dictionary`."""
    codes = pc.index_in(values, value_set=dictionary).cast(pa.int64())
    return pc.add(pc.multiply(owner.cast(pa.int64()), len(dictionary)), codes)


def _first_again(kind: str, field: str, what: str, keys: pa.Array, values: pa.Array, out: _Reasons) -> None:
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    seen: set[int] = set()
    for j, k in enumerate(keys.to_pylist()):
        if k in seen:
            out.add(kind, j, f"{field}: duplicate {what} {values[j].as_py()!r}")
        seen.add(k)


def check_columns(ts: pa.Array, cols: dict[str, dict[str, pa.Array]], owners: dict[str, pa.Array]) -> Checked:
    """Every semantic rule over a batch: `ts` per tick; gpu/slice/process columns with each row's tick.

    Needs the columns the schema already guarantees non-null (uuid, slice_id, gpu_uuid, kind).
    """
    out = _Reasons(owners)
    uniq = pc.unique(ts)
    times = []
    for text in uniq.to_pylist():
        try:
            times.append(parse_ts(text).astimezone(UTC))
        except ValueError:
            times.append(None)
    tick_times = pa.array(times, TS_TYPE).take(pc.index_in(ts, value_set=uniq))
    if tick_times.null_count:
        for i in _rows(pc.is_null(tick_times)):
            out.setdefault(i, f"ts: {ts[i].as_py()!r} is not a real date and time")

    s = cols["slice"]
    for k, needed in kind_requires().items():
        is_k = pc.equal(s["kind"], k)
        if not _any(is_k):
            continue
        for f in needed:
            for j in _rows(pc.and_(is_k, pc.is_null(s[f]))):
                out.add("slice", j, f"{f}: required (non-null) for kind {k}")

    g = cols["gpu"]
    gpu_dict = pc.unique(g["uuid"])
    gpu_keys = _tick_keys(owners["gpu"], g["uuid"], gpu_dict)
    _first_again("gpu", "uuid", "GPU uuid", gpu_keys, g["uuid"], out)
    slice_gpu = None
    for kind in ("slice", "process"):
        row = pc.index_in(_tick_keys(owners[kind], cols[kind]["gpu_uuid"], gpu_dict), value_set=gpu_keys)
        for j in _rows(pc.is_null(row)):
            out.add(kind, j, f"gpu_uuid: {cols[kind]['gpu_uuid'][j].as_py()!r} is not a GPU of this tick")
        if kind == "slice":
            slice_gpu = row
    ids = s["slice_id"]
    _first_again("slice", "slice_id", "slice_id", _tick_keys(owners["slice"], ids, pc.unique(ids)), ids, out)
    return Checked(dict(out), tick_times, slice_gpu)


def check(ticks: Sequence[Any]) -> tuple[dict[int, str], pa.Array]:
    """`check_columns` over typed ticks (`gpuledger.typed`): (reasons by tick, each tick's time).

    The per-kind fields are nullable in the typed slice (None when absent), so they convert as is.
    """
    need = sorted({f for fields in kind_requires().values() for f in fields})
    owners: dict[str, list[int]] = {"gpu": [], "slice": [], "process": []}
    gpus, slices, procs = [], [], []
    for k, t in enumerate(ticks):
        gpus.extend(t.gpus)
        slices.extend(t.slices)
        procs.extend(t.processes)
        owners["gpu"].extend([k] * len(t.gpus))
        owners["slice"].extend([k] * len(t.slices))
        owners["process"].extend([k] * len(t.processes))
    names = ("slice_id", "gpu_uuid", "kind", *need)
    values = zip(*map(attrgetter(*names), slices), strict=True) if slices else [()] * len(names)
    cols = {
        "gpu": {"uuid": pa.array([x.uuid for x in gpus], pa.string())},
        "slice": {
            f: pa.array(v, pa.string() if i < 3 else None)
            for i, (f, v) in enumerate(zip(names, values, strict=True))
        },
        "process": {"gpu_uuid": pa.array([x.gpu_uuid for x in procs], pa.string())},
    }
    checked = check_columns(
        pa.array([t.ts for t in ticks], pa.string()),
        cols,
        {k: pa.array(v, pa.int64()) for k, v in owners.items()},
    )
    return checked.reasons, checked.times
