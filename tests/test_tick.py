"""The producer contract: typed ticks from the schema, one builder, pure slicing, the query layer."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pynvml
import pytest
from fake_nvml import err

from collector.fleet import SimulatedFleet
from collector.hami import HamiProcess, SharedRegion
from collector.proc_identity import ProcessIdentity
from collector.readings import GpuReading, NvmlQuery, ProcessListGrowing, ProcReading
from collector.slicing import Attribution, slice_gpu
from collector.tick import (
    LIMITS,
    Gpu,
    Workload,
    as_dicts,
    build_tick,
    check_interval,
    clamp_labels,
    encode,
    nullable_id,
)
from gpuledger.schema import SCHEMA_NAME, format_ts, load_schema, reference_errors
from gpuledger.typed import decoder

POD = "11111111-2222-4333-8444-555555555555"
BOOT = "00000000-0000-4000-8000-000000000000"


def test_limits_and_schema_name_are_the_schema_files() -> None:
    root = load_schema()
    d = root["$defs"]
    assert SCHEMA_NAME == root["properties"]["schema"]["const"] == "gpuledger.sample/v1"
    assert (LIMITS.id_max, LIMITS.name_max) == (d["id"]["maxLength"], d["name"]["maxLength"]) == (256, 253)
    assert (LIMITS.labels_max, LIMITS.label_value_max) == (64, 1024)
    assert (LIMITS.pid_max, LIMITS.energy_max_j, LIMITS.age_max_s) == (4_194_304, 36_000_000.0, 31_622_400.0)
    assert LIMITS.interval_max_s == root["properties"]["interval_s"]["maximum"] == 3600


def test_ids_and_labels_are_cut_to_the_schema_limits() -> None:
    assert nullable_id("x" * 300) == "x" * 256 and nullable_id("") is None and nullable_id(None) is None
    labels = clamp_labels({f"k{i:03d}": "v" * 2000 for i in range(70)})
    assert labels is not None and len(labels) == 64 and min(labels) == "k000" and max(labels) == "k063"
    assert {len(v) for v in labels.values()} == {1024}
    assert clamp_labels({}) is None


def test_interval_bounds_come_from_the_schema() -> None:
    assert check_interval(10) == 10.0 and check_interval(3600) == 3600.0
    for bad in (0, -1, 3600.5, True, "10"):
        with pytest.raises(ValueError, match=r"expected seconds in \(0, 3600\] \(schema limit\)"):
            check_interval(bad)


def test_ts_has_microseconds_only_when_there_are_any() -> None:
    from datetime import UTC, datetime

    assert format_ts(datetime(2026, 11, 1, 10, 0, 10, tzinfo=UTC)) == "2026-11-01T10:00:10Z"
    assert format_ts(datetime(2026, 11, 1, 10, 0, 10, 5000, tzinfo=UTC)) == "2026-11-01T10:00:10.005000Z"


def test_encoded_tick_leaves_nulls_out_and_decodes_back_to_the_same_tick() -> None:
    gpu = Gpu(uuid="GPU-0", index=0, model="m", mig_mode=False, state="ok", util_pct=None, mem_used_mib=5)
    t = build_tick("c1", "n1", BOOT, 3, "2026-11-01T10:00:10Z", 10.0, [gpu], [], [])
    raw = encode(t)
    assert raw == (
        b'{"schema":"gpuledger.sample/v1","cluster":"c1","node":"n1","boot_id":"' + BOOT.encode() + b'",'
        b'"seq":3,"ts":"2026-11-01T10:00:10Z","interval_s":10.0,'
        b'"gpus":[{"uuid":"GPU-0","index":0,"model":"m","mig_mode":false,"state":"ok","mem_used_mib":5}],'
        b'"slices":[],"processes":[]}'
    )
    assert decoder().decode(raw) == t
    assert as_dicts([t])[0]["gpus"][0]["util_pct"] is None  # the dict view names every field


def test_fleet_ticks_pass_the_reference_validator_as_encoded() -> None:
    ticks = SimulatedFleet(seed=3).sample()
    for t in ticks[:6]:
        assert reference_errors(json.loads(encode(t))) == []
    assert {type(t).__name__ for t in ticks} == {"Tick"}


def test_a_value_outside_the_schema_is_refused_by_the_typed_decoder() -> None:
    bad = as_dicts([build_tick("c1", "n1", BOOT, 0, "2026-11-01T10:00:10Z", 10.0, [], [], [])])[0]
    bad["processes"] = [{"pid": 0, "gpu_uuid": "G"}]
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` >= 1 - at `\$.processes\[0\].pid`"):
        decoder().decode(msgspec.json.encode(bad))


# -- slicing: a pure function of readings, identities and regions -------------------------------


def _ident(
    pid: int, pod: str | None = None, user: str | None = None, job: str | None = None
) -> ProcessIdentity:
    return ProcessIdentity(pid, 1, None, pod, job, None, user)


def _att(idents: dict[int, ProcessIdentity], grant: Any = None) -> Attribution:
    fields = {p: (None, i.pod_uid, i.job_id, i.user) for p, i in idents.items()}
    return Attribution(
        idents,
        fields,
        lambda ident, container=None, pod_uid=None: Workload(
            pod_uid=pod_uid or (ident.pod_uid if ident else None), container=container
        ),
        lambda pod_uid, gpu_uuid: grant,
    )


def _reading(*procs: ProcReading, util: float | None = 50.0) -> GpuReading:
    return GpuReading("GPU-0", 0, "m", 80_000, 10_000, util, None, None, None, False, "ok", tuple(procs))


def test_one_workload_is_whole_and_takes_the_gpu_busy_percent() -> None:
    r = _reading(ProcReading(7, 100, 0, 0, 30.0), ProcReading(5, 50, 0, 0, 10.0))
    slices, procs = slice_gpu(r, (), _att({5: _ident(5, POD), 7: _ident(7, POD)}), 0.0, 0)
    (s,) = slices
    assert (s.slice_id, s.kind, s.mem_cap_mib, s.mem_used_mib, s.util_pct) == (
        f"GPU-0:{POD}",
        "whole",
        80_000,
        150,
        50.0,
    )
    assert [(p.pid, p.slice_id, p.pod_uid) for p in procs] == [(5, s.slice_id, POD), (7, s.slice_id, POD)]


def test_two_workloads_are_timeslices_with_their_own_busy_percent() -> None:
    r = _reading(ProcReading(5, 100, 0, 0, 30.0), ProcReading(6, 50, 0, 0, 20.0))
    slices, _ = slice_gpu(r, (), _att({5: _ident(5, POD), 6: _ident(6, user="bob")}), 0.0, 0)
    assert [(s.slice_id, s.kind, s.replicas, s.util_pct, s.mem_cap_mib) for s in slices] == [
        (f"GPU-0:{POD}", "timeslice", 2, 30.0, None),
        ("GPU-0:user:bob", "timeslice", 2, 20.0, None),
    ]


def test_a_hami_region_is_a_vgpu_slice_and_a_process_outside_it_is_billed_to_nobody() -> None:
    region = SharedRegion(
        "/h/containers/x_main/GPU-0.cache",
        POD,
        "main",
        1,
        2,
        ["GPU-0"],
        [4 << 30],
        [25],
        [HamiProcess(1, 5, [1 << 30], [12], 1)],
        95,
    )
    r = _reading(ProcReading(5, 1024, 0, 0, 10.0), ProcReading(9, 10, 0, 0, 1.0))
    slices, procs = slice_gpu(r, [(region, 0)], _att({5: _ident(5, POD)}), 100.0, 0)
    (s,) = slices
    assert (s.kind, s.mem_cap_mib, s.core_cap_pct, s.mem_used_mib, s.util_pct, s.last_kernel_age_s) == (
        "vgpu",
        4096,
        25.0,
        1024,
        12.0,
        5.0,
    )
    assert s.workload == Workload(pod_uid=POD, container="main")
    assert [(p.pid, p.slice_id) for p in procs] == [(5, f"GPU-0:hami:{POD}/main"), (9, None)]


def test_a_gpu_nobody_uses_has_no_slice() -> None:
    assert slice_gpu(_reading(), (), _att({}), 0.0, 0) == ([], [])


# -- the query layer: function versions fall back in one place ------------------------------------


class _Lib:
    """Just enough of pynvml for NvmlQuery: error codes and the process-list functions given."""

    def __init__(self, **fns: Any) -> None:
        for k in dir(pynvml):
            if k.startswith("NVML_ERROR_"):
                setattr(self, k, getattr(pynvml, k))
        self.NVMLError = pynvml.NVMLError
        for name, fn in fns.items():
            setattr(self, name, fn)


def _raise(code: int) -> Any:
    def fn(*_: Any) -> Any:
        raise err(code)

    return fn


def test_process_list_falls_back_from_v3_the_driver_lacks_to_v2_and_remembers() -> None:
    calls: list[str] = []

    def v2(h: Any) -> list[str]:
        calls.append("v2")
        return ["p"]

    q = NvmlQuery(
        _Lib(
            nvmlDeviceGetComputeRunningProcesses_v3=_raise(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND),
            nvmlDeviceGetComputeRunningProcesses_v2=v2,
        )
    )
    assert q.compute_processes("h") == ["p"] and q.compute_processes("h") == ["p"]
    assert q.absent == {"nvmlDeviceGetComputeRunningProcesses_v3"}
    assert calls == ["v2", "v2"] and q.calls == 3  # v3 asked once, then never again


def test_process_list_that_keeps_growing_is_reported_not_looped_on() -> None:
    q = NvmlQuery(_Lib(nvmlDeviceGetComputeRunningProcesses_v3=_raise(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)))
    with pytest.raises(ProcessListGrowing):
        q.compute_processes("h")
    assert q.calls == 3


def test_no_process_function_at_all_is_none() -> None:
    assert NvmlQuery(_Lib()).compute_processes("h") is None
