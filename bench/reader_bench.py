"""Issue 12: the native batch reader against arrow-rs's `arrow-json`, on the same batches, same run.

    python bench/reader_bench.py [--messages 2000] [--rounds 7]

`bench/arrow_json_reader/` is a small Rust crate around arrow-rs's `arrow-json` decoder; it
hands its struct array to pyarrow through the Arrow C data interface (built here with cargo on
first use, `CARGO_BUILD_JOBS=1`, into bench/out/). Each reader is timed alone (bytes -> Arrow
columns) and inside the whole-batch path (`decode_batch_fast`: read, every rule on columns,
the four lake tables), alternating round by round. Both must give identical tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from decode_bench import fleet_messages  # noqa: E402  (the same messages as the decode bench)

CRATE = REPO / "bench" / "arrow_json_reader"
TARGET = REPO / "bench" / "out" / "arrow_json_target"


@cache
def arrow_json_module() -> Any:
    """Build (once) and load the arrow-json reader extension."""
    lib = TARGET / "release" / "lib_arrow_json_reader.so"
    if not lib.exists():
        env = {**os.environ, "CARGO_BUILD_JOBS": "1", "CARGO_TARGET_DIR": str(TARGET)}
        subprocess.run(["cargo", "build", "--release"], cwd=CRATE, env=env, check=True)
    spec = importlib.util.spec_from_file_location("_arrow_json_reader", lib)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@cache
def arrow_json_schema() -> Any:
    """The message as Arrow types, compiled from the schema's rules (labels as the lake's map)."""
    import pyarrow as pa

    from gpuledger.lake_tables import LABELS_TYPE
    from gpuledger.schema import ITEM_LISTS, rules

    r = rules()

    def struct(kind: str) -> pa.StructType:
        out = []
        for name, rule in r[kind].fields.items():
            if rule.arrow is not None:
                out.append(pa.field(name, rule.arrow))
            else:
                out.append(pa.field(name, struct("workload") if name == "workload" else LABELS_TYPE))
        return pa.struct(out)

    return pa.schema(
        [
            pa.field(n, rule.arrow if rule.arrow is not None else pa.list_(struct(ITEM_LISTS[n])))
            for n, rule in r["message"].fields.items()
        ]
    )


def read_arrow_json(blob: bytes, raws: Any) -> Any:
    """bytes -> the whole-batch path's columns (`batch_decode._Read`) through arrow-json + C data."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow.cffi import ffi

    mod = arrow_json_module()
    c_schema_in = ffi.new("struct ArrowSchema*")
    arrow_json_schema()._export_to_c(int(ffi.cast("uintptr_t", c_schema_in)))
    c_array, c_schema = ffi.new("struct ArrowArray*"), ffi.new("struct ArrowSchema*")
    try:
        mod.read(
            blob,
            int(ffi.cast("uintptr_t", c_schema_in)),
            int(ffi.cast("uintptr_t", c_array)),
            int(ffi.cast("uintptr_t", c_schema)),
            True,
        )
    except ValueError:
        return None
    finally:
        pa.Schema._import_from_c(int(ffi.cast("uintptr_t", c_schema_in)))  # releases it
    arr = pa.Array._import_from_c(int(ffi.cast("uintptr_t", c_array)), int(ffi.cast("uintptr_t", c_schema)))
    if len(arr) != len(raws):
        return None
    top = dict(zip([f.name for f in arr.type], arr.flatten(), strict=True))
    lists = {"gpus": "gpu", "slices": "slice", "processes": "process"}
    cols, owners, counts = {}, {}, {}
    for name, kind in lists.items():
        lst = top[name]
        if lst.null_count:
            return None
        counts[kind] = pc.list_value_length(lst)
        items = pc.list_flatten(lst)
        owners[kind] = pc.list_parent_indices(lst)
        cols[kind] = dict(zip([f.name for f in items.type], items.flatten(), strict=True))
    workload = cols["slice"].pop("workload")
    wl = dict(zip([f.name for f in workload.type], workload.flatten(), strict=True))
    return top, cols, owners, counts, wl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    import gpuledger.batch_decode as bd

    native = bd.native_reader()
    assert native is not None, "the native reader is not built (pip install -e .)"
    native_read = bd._read_native
    raws = fleet_messages(args.messages)
    n, blob = len(raws), b"\n".join(raws)
    kw: dict[str, Any] = {"batch": 1, "max_message_bytes": 1 << 20, "partitions": [0] * n}
    kw["offsets"] = list(range(n))

    def with_reader(read: Callable[..., Any]) -> Any:
        bd._read_native = read
        try:
            return bd.fast_decode(raws, **kw)
        finally:
            bd._read_native = native_read

    a, b = with_reader(native_read), with_reader(read_arrow_json)
    assert a is not None and b is not None, "both readers must take the whole-batch path"
    for k in a.tables:
        assert a.tables[k].equals(b.tables[k]), f"readers disagree on the {k} table"

    cases: dict[str, Callable[[], Any]] = {
        "native read alone": lambda: native_read(blob, raws),
        "arrow-json read alone": lambda: read_arrow_json(blob, raws),
        "whole-batch path, native": lambda: with_reader(native_read),
        "whole-batch path, arrow-json": lambda: with_reader(read_arrow_json),
    }
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    wall: dict[str, list[float]] = {k: [] for k in cases}
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in cases.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - w) / n * 1e6)
            cpu[name].append((time.process_time() - c) / n * 1e6)
    load1 = os.getloadavg()[0]
    size = sum(map(len, raws)) / n / 1024
    print(f"{n} fleet ticks ({size:.1f} KiB/msg), {args.rounds} rounds, load {load0:.2f} -> {load1:.2f}")
    print(f"{'reader':30s} {'wall us/msg':>12s} {'CPU us/msg':>11s} {'CPU min':>8s} {'vs native':>10s}")
    for name in cases:
        base = "native read alone" if "alone" in name else "whole-batch path, native"
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        ratio = c / statistics.median(cpu[base])
        print(f"{name:30s} {w:12.1f} {c:11.1f} {min(cpu[name]):8.1f} {ratio:10.2f}")


if __name__ == "__main__":
    main()
