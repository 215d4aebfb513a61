"""The NVML backend driven through the fake NVML (tests/fake_nvml.py): real collector code, no GPU."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pynvml
import pytest
from fake_nvml import (
    GIB,
    FakeGpu,
    FakeMig,
    FakeNvml,
    FakeProcess,
    ProcSample,
    Sample,
    err,
    write_proc_entry,
)

from collector.agent import run_collector
from collector.hami import HamiProcess, SharedRegion, write_shared_region
from collector.nvml import NvmlBackend, build_nvml_backend
from collector.pod_resolvers import StaticFileResolver
from collector.proc_identity import ProcAttributor, ProcessIdentity
from collector.readings import integrate_process_util, integrate_samples
from collector.transport import MemoryTransport
from gpuledger.batch_decode import fast_decode
from gpuledger.bus import MemoryBus
from gpuledger.config import CollectorConfig
from gpuledger.decode import decode_batch
from gpuledger.lake_tables import HEALTH_FIELDS
from gpuledger.schema import reference_errors

START = 1_800_000_000.0
START_US = int(START * 1_000_000)
POD_A = "11111111-2222-4333-8444-555555555555"
POD_B = "66666666-7777-4888-9999-000000000000"
CID_A = "a" * 64
CID_B = "b" * 64


def ident(
    pid: int,
    pod: str | None = None,
    *,
    cid: str | None = None,
    job: str | None = None,
    account: str | None = None,
    user: str | None = "alice",
    start: int = 1,
) -> ProcessIdentity:
    return ProcessIdentity(pid, start, cid, pod, job, account, user)


class StubAttributor:
    """Follows ProcAttributor's interface; counts lookups."""

    def __init__(self, idents: dict[int, ProcessIdentity]) -> None:
        self.idents = idents
        self.calls: Counter[int] = Counter()
        self.pruned: list[set[int]] = []

    def identify(self, pid: int) -> ProcessIdentity | None:
        self.calls[pid] += 1
        return self.idents.get(pid)

    def prune(self, live: set[int]) -> int:
        self.pruned.append(set(live))
        return 0


def assert_valid(msg: dict[str, Any]) -> None:
    assert reference_errors(msg) == []
    raw = orjson.dumps(msg)
    for fast in (True, False):
        d = decode_batch([raw], batch=1, max_message_bytes=1 << 20, fast=fast)
        assert d.rejects == [] and d.ticks == 1


def no_nulls(x: Any) -> Any:
    """The message as a reader sees it: an optional field that is null and one left out are the same."""
    if isinstance(x, dict):
        return {k: no_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [no_nulls(v) for v in x]
    return x


def make(gpus: list[FakeGpu], **kw: Any) -> tuple[FakeNvml, NvmlBackend]:
    fake_kw = {k: kw.pop(k) for k in ("missing", "hidden") if k in kw}
    fake = FakeNvml(gpus, start_s=START, **fake_kw)
    return fake, NvmlBackend("c1", "n1", 10.0, nvml=fake, clock=fake.clock, **kw)


def tick(fake: FakeNvml, b: NvmlBackend, dt: float = 10.0) -> dict[str, Any]:
    fake.advance(dt)
    out = b.next_tick()
    assert len(out) == 1
    assert_valid(out[0])
    return out[0]


def workload(
    pod_uid: str | None = None,
    *,
    user: str | None = "alice",
    job: str | None = None,
    account: str | None = None,
    **names: Any,
) -> dict[str, Any]:
    return {
        "namespace": names.get("namespace"),
        "pod": names.get("pod"),
        "container": names.get("container"),
        "pod_uid": pod_uid,
        "labels": names.get("labels"),
        "job_id": job,
        "account": account,
        "user": user,
    }


# -- one GPU, sampling maths -----------------------------------------------------------------------


def test_whole_gpu_tick_exact() -> None:
    g = FakeGpu(
        0,
        "GPU-0",
        util_pct=50,
        power_mw=250_000,
        energy_mj=5_000_000,
        temp_c=61,
        mem_used_mib=6000,
        prof=PROF,
        clocks_event_reasons=pynvml.nvmlClocksEventReasonSwPowerCap,
    )
    g.procs = [FakeProcess(100, 2 * GIB, 40), FakeProcess(101, GIB, 10)]
    att = StubAttributor({100: ident(100, POD_A, cid=CID_A), 101: ident(101, POD_A, cid=CID_A)})
    fake, b = make([g], attributor=att)
    msg = tick(fake, b)
    assert msg["schema"] == "gpuledger.sample/v1" and msg["cluster"] == "c1" and msg["node"] == "n1"
    assert msg["seq"] == 0 and msg["interval_s"] == 10.0
    assert msg["ts"] == "2027-01-15T08:00:10Z"  # the schema's one form: microseconds only when there are any
    assert msg["gpus"] == [
        {
            "uuid": "GPU-0",
            "index": 0,
            "model": "NVIDIA H100 80GB HBM3",
            "mem_total_mib": 81559,
            "mem_used_mib": 6000,
            "util_pct": 50.0,
            "power_w": 250.0,
            "energy_j": 2500.0,  # 250 W for 10 s since the agent started
            "temp_c": 61,
            "mig_mode": False,
            "state": "ok",
            # GPM over the tick: SMs far less busy than the 50 % "some kernel ran" utilization
            "sm_active_pct": 30.0,
            "sm_occupancy_pct": 12.5,
            "tensor_active_pct": 20.0,
            "dram_active_pct": 40.0,
            "sm_clock_mhz": 1980,
            "mem_clock_mhz": 2619,
            "clocks_event_reasons": 4,  # SW power cap
            "xid_count": 0,  # Xid events readable, none this tick
            "xid_last": None,
            "xid_critical": None,
            **HOPPER_HEALTH,
        }
    ]
    sid = f"GPU-0:{POD_A}"
    assert no_nulls(msg["slices"]) == no_nulls(
        [
            {
                "slice_id": sid,
                "gpu_uuid": "GPU-0",
                "kind": "whole",
                "mem_cap_mib": 81559,
                "mem_used_mib": 3072,
                "util_pct": 50.0,
                # the slice is the whole GPU: its SM activity is the GPU's
                "sm_active_pct": 30.0,
                "sm_occupancy_pct": 12.5,
                "tensor_active_pct": 20.0,
                "dram_active_pct": 40.0,
                "workload": workload(POD_A),
            }
        ]
    )
    assert msg["processes"] == [
        {
            "pid": 100,
            "gpu_uuid": "GPU-0",
            "slice_id": sid,
            "mem_used_mib": 2048,
            "sm_util_pct": 40.0,
            "container_id": CID_A,
            "pod_uid": POD_A,
            "job_id": None,
            "user": "alice",
        },
        {
            "pid": 101,
            "gpu_uuid": "GPU-0",
            "slice_id": sid,
            "mem_used_mib": 1024,
            "sm_util_pct": 10.0,
            "container_id": CID_A,
            "pod_uid": POD_A,
            "job_id": None,
            "user": "alice",
        },
    ]
    assert att.pruned == [{100, 101}]
    msg2 = tick(fake, b)
    assert msg2["seq"] == 1 and msg2["boot_id"] == msg["boot_id"] and msg2["slices"][0]["slice_id"] == sid


def test_integrate_samples_time_weighted() -> None:
    base = 1000
    samples = [
        Sample(base, 99),
        Sample(base + 1_000_000, 50),
        Sample(base + 10_000_000, 20),
        Sample(base + 3_000_000, 100),
    ]
    # the sample at exactly last_seen belongs to the previous tick; each weighs the time since the one before
    assert integrate_samples(samples, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, base) == (39.0, base + 10_000_000)
    assert integrate_samples([Sample(base, 5)], 1, base) == (None, base)

    class D:
        def __init__(self, ts: int, v: float) -> None:
            self.timeStamp = ts
            self.sampleValue = type("V", (), {"dVal": v})()

    assert integrate_samples([D(10, 12.5), D(30, 50.0)], pynvml.NVML_VALUE_TYPE_DOUBLE, 0) == (37.5, 30)


def test_gpu_util_from_the_sample_buffer_then_gauge_fallback() -> None:
    g = FakeGpu(0, "GPU-0")
    g.auto_samples = False
    fake, b = make([g])
    fake.advance(10)
    g.add_samples(
        [
            (START_US - 5_000_000, 100),
            (START_US + 1_000_000, 50),
            (START_US + 3_000_000, 100),
            (START_US + 10_000_000, 20),
        ]
    )
    assert b.next_tick()[0]["gpus"][0]["util_pct"] == 39.0  # (50·1 + 100·2 + 20·7) / 10
    fake.advance(10)
    g.add_samples([(START_US + 12_000_000, 80), (START_US + 20_000_000, 10)])
    assert b.next_tick()[0]["gpus"][0]["util_pct"] == 24.0  # (80·2 + 10·8) / 10, since the last one seen
    g.util_gauge = 7
    calls = fake.calls["nvmlDeviceGetUtilizationRates"]
    assert tick(fake, b)["gpus"][0]["util_pct"] == 7.0  # no new samples (NotFound): one gauge read
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == calls + 1


def test_gpu_util_gauge_when_samples_not_supported() -> None:
    g = FakeGpu(0, "GPU-0", not_supported={"nvmlDeviceGetSamples"})
    g.util_gauge = 33
    fake, b = make([g])
    assert tick(fake, b)["gpus"][0]["util_pct"] == 33.0


def test_integrate_process_util_exact() -> None:
    lo = 0
    s = [ProcSample(1, lo + t * 1_000_000, v) for t, v in ((1, 60), (2, 60), (3, 60), (4, 30))]
    s += [ProcSample(2, lo + 2_000_000, 20), ProcSample(3, lo, 99)]  # pid 3: before the window
    # period from pid 1's gaps (3 gaps of 1 s): busy time Σ smUtil × 1 s over a 10 s window
    assert integrate_process_util(s, lo, 10_000_000, None) == ({1: 21.0, 2: 2.0}, 4_000_000)
    two = [ProcSample(1, 1_000_000, 60), ProcSample(1, 2_000_000, 60)]
    # one gap is enough: the process's own sampling period (1 s), not the GPU's (0.5 s)
    assert integrate_process_util(two, 0, 10_000_000, 500_000) == ({1: 12.0}, 2_000_000)
    lone = [ProcSample(1, 1_000_000, 60), ProcSample(2, 3_000_000, 40)]
    # no process has two samples: the GPU's sampling period
    assert integrate_process_util(lone, 0, 10_000_000, 500_000) == ({1: 3.0, 2: 2.0}, 3_000_000)
    # nothing to tell the period from: the lone samples are the best estimate
    assert integrate_process_util(lone, 0, 10_000_000, None) == ({1: 60.0, 2: 40.0}, 3_000_000)
    assert integrate_process_util([], 0, 10_000_000, None) == ({}, 0)


def test_process_util_not_found_means_nobody_busy() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=0)
    g.procs = [FakeProcess(100, GIB, 0.0), FakeProcess(200, GIB, 0.0)]
    att = StubAttributor({100: ident(100, POD_A), 200: ident(200, POD_B)})
    fake, b = make([g], attributor=att)
    msg = tick(fake, b)
    assert [p["sm_util_pct"] for p in msg["processes"]] == [0.0, 0.0]
    assert [s["util_pct"] for s in msg["slices"]] == [0.0, 0.0]
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1


def test_process_util_not_supported_is_null() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=40, not_supported={"nvmlDeviceGetProcessUtilization"})
    g.procs = [FakeProcess(100, GIB, 30.0), FakeProcess(200, GIB, 10.0)]
    att = StubAttributor({100: ident(100, POD_A), 200: ident(200, POD_B)})
    fake, b = make([g], attributor=att)
    for _ in range(3):
        msg = tick(fake, b)
        assert [p["sm_util_pct"] for p in msg["processes"]] == [None, None]
        assert [s["util_pct"] for s in msg["slices"]] == [None, None]  # timeslice: sum of unknowns
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1  # NotSupported remembered


# -- tolerant query layer ----------------------------------------------------------------------------


def test_not_supported_values_are_null_and_reprobed_after_rescan() -> None:
    names = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature", "nvmlDeviceGetTotalEnergyConsumption"}
    g = FakeGpu(0, "GPU-RTX", name="NVIDIA GeForce RTX 4090", mem_total_mib=24564, not_supported=names)
    fake, b = make([g])
    for _ in range(5):
        gpu = tick(fake, b)["gpus"][0]
        assert (gpu["power_w"], gpu["temp_c"], gpu["energy_j"], gpu["state"]) == (None, None, None, "ok")
    assert [fake.calls[n] for n in sorted(names)] == [1, 1, 1]
    tick(fake, b)  # 60 s after start: rescan_s has passed, NotSupported is asked once more
    assert [fake.calls[n] for n in sorted(names)] == [2, 2, 2]


def test_absent_functions_are_probed_once() -> None:
    gpus = [FakeGpu(i, f"GPU-{i}", util_pct=10) for i in range(2)]
    for g in gpus:
        g.procs = [FakeProcess(100 + g.index, GIB, 5.0)]
    gpus[0].util_gauge = gpus[1].util_gauge = 12
    missing = {"nvmlDeviceGetSamples", "nvmlDeviceGetComputeRunningProcesses_v3"}
    fake, b = make(gpus, missing=missing)
    for _ in range(3):
        msg = tick(fake, b)
        assert [x["util_pct"] for x in msg["gpus"]] == [12.0, 12.0]
        assert [p["pid"] for p in msg["processes"]] == [100, 101]
    assert fake.calls["nvmlDeviceGetSamples"] == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 6  # the next binding, every tick
    assert missing <= b.q.absent


def test_functions_missing_from_an_old_binding_are_not_called() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=10, mig_mode=True, migs=[FakeMig("MIG-a", 1, 0, "3g.40gb", 3, 40448)])
    g.procs = [FakeProcess(100, GIB, 0, gi=1, ci=0)]
    hidden = {
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlGpmQueryDeviceSupport",
    }
    fake, b = make([g], hidden=hidden)
    msg = tick(fake, b)
    assert [p["pid"] for p in msg["processes"]] == [100]
    assert msg["slices"][0]["util_pct"] is None  # no GPM in this binding
    assert all(fake.calls[n] == 0 for n in hidden)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1
    assert fake.calls["nvmlGpmMigSampleGet"] == 0


def test_process_appearing_between_count_and_read() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(100, GIB, 5.0)]
    fake, b = make([g])
    tick(fake, b)
    g.appear_on_read = [FakeProcess(150, 3 * GIB, 0.0)]
    before = fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"]
    msg = tick(fake, b)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == before + 2  # InsufficientSize, retry
    assert [(p["pid"], p["mem_used_mib"]) for p in msg["processes"]] == [(100, 1024), (150, 3072)]


def test_process_list_that_keeps_growing_is_skipped_for_one_tick(caplog: pytest.LogCaptureFixture) -> None:
    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(100, GIB, 5.0)]
    fake, b = make([g])
    g.insufficient_times = 3
    with caplog.at_level(logging.WARNING, "gpuledger.collector.nvml"):
        msg = tick(fake, b)
    assert msg["processes"] == [] and msg["slices"] == [] and msg["gpus"][0]["state"] == "ok"
    assert "process list kept growing" in caplog.text
    assert [p["pid"] for p in tick(fake, b)["processes"]] == [100]


def test_energy_counter_reset_gives_zero_and_is_counted() -> None:
    g = FakeGpu(0, "GPU-0", power_mw=250_000, energy_mj=5_000_000)
    fake, b = make([g])
    assert tick(fake, b)["gpus"][0]["energy_j"] == 2500.0
    g.energy_mj = 100  # driver reload / GPU reset
    assert tick(fake, b)["gpus"][0]["energy_j"] == 0.0
    assert b.energy_resets == 1
    assert tick(fake, b)["gpus"][0]["energy_j"] == 2500.0
    assert b.energy_resets == 1


# -- lost GPUs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state"), [(pynvml.NVML_ERROR_GPU_IS_LOST, "lost"), (pynvml.NVML_ERROR_UNKNOWN, "unknown")]
)
def test_lost_gpu_sets_state_and_others_keep_reporting(
    code: int, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = [FakeGpu(i, f"GPU-{i}", util_pct=20, power_mw=100_000) for i in range(2)]
    gpus[0].procs = [FakeProcess(100, GIB, 5.0)]
    gpus[1].procs = [FakeProcess(200, GIB, 5.0)]
    fake, b = make(gpus)
    assert len(tick(fake, b)["slices"]) == 2
    gpus[1].fault = code
    with caplog.at_level(logging.WARNING, "gpuledger.collector.nvml"):
        for _ in range(2):
            msg = tick(fake, b)
            assert msg["gpus"][1] == {
                "uuid": "GPU-1",
                "index": 1,
                "model": "NVIDIA H100 80GB HBM3",
                "mem_total_mib": 81559,
                "mem_used_mib": None,
                "util_pct": None,
                "power_w": None,
                "energy_j": None,
                "temp_c": None,
                "mig_mode": False,
                "state": state,
                **NO_PROF,
            }
            assert msg["gpus"][0]["state"] == "ok" and msg["gpus"][0]["energy_j"] == 1000.0
            assert [s["gpu_uuid"] for s in msg["slices"]] == ["GPU-0"]
            assert [p["pid"] for p in msg["processes"]] == [100]
    assert caplog.text.count(f"(index 1) is {state}") == 1  # logged on the change, not every tick
    gpus[1].fault = None
    back = tick(fake, b)
    assert back["gpus"][1]["state"] == "ok" and back["gpus"][1]["energy_j"] is None  # new baseline
    assert [p["pid"] for p in back["processes"]] == [100, 200]
    assert tick(fake, b)["gpus"][1]["energy_j"] == 1000.0


def test_gpu_unreadable_at_start_joins_when_it_can_be_read() -> None:
    gpus = [FakeGpu(i, f"GPU-{i}") for i in range(2)]
    gpus[1].fault = pynvml.NVML_ERROR_GPU_IS_LOST
    fake, b = make(gpus)
    assert [x["uuid"] for x in tick(fake, b)["gpus"]] == ["GPU-0"]
    gpus[1].fault = None
    msg = tick(fake, b)
    assert [(x["uuid"], x["state"], x["energy_j"]) for x in msg["gpus"]] == [
        ("GPU-0", "ok", 700.0),
        ("GPU-1", "ok", None),
    ]
    assert tick(fake, b)["gpus"][1]["energy_j"] == 700.0


# -- MIG -------------------------------------------------------------------------------------------


# A healthy Ampere-or-newer GPU: ECC on with no errors, rows remapped (none), no page retirement.
HOPPER_HEALTH = {
    "ecc_corrected": 0,
    "ecc_uncorrected": 0,
    "retired_pages_sbe": None,
    "retired_pages_dbe": None,
    "retired_pages_pending": None,
    "remapped_rows_correctable": 0,
    "remapped_rows_uncorrectable": 0,
    "row_remap_pending": False,
    "row_remap_failed": False,
}
PROF = {"sm_active_pct": 30.0, "sm_occupancy_pct": 12.5, "tensor_active_pct": 20.0, "dram_active_pct": 40.0}
NO_PROF: dict[str, None] = {
    **dict.fromkeys(PROF),
    "sm_clock_mhz": None,
    "mem_clock_mhz": None,
    "clocks_event_reasons": None,
    "xid_count": None,
    "xid_last": None,
    "xid_critical": None,
    **dict.fromkeys(HEALTH_FIELDS),
}
MIG_PROF = {
    "sm_active_pct": 15.0,
    "sm_occupancy_pct": 6.25,
    "tensor_active_pct": 10.0,
    "dram_active_pct": 20.0,
}


def mig_gpu(*, gpm: bool = True, name: str = "NVIDIA H100 80GB HBM3") -> FakeGpu:
    migs = [
        FakeMig("MIG-a", 2, 0, "3g.40gb", 3, 40448, mem_used_mib=5000, activity_pct=25.0, prof=MIG_PROF),
        FakeMig("MIG-b", 3, 0, "2g.20gb", 2, 20096, mem_used_mib=100),
        None,
        FakeMig("MIG-c", 9, 0, "1g.10gb", 1, 9984, mem_used_mib=2000, activity_pct=62.5),
        FakeMig("MIG-d", 10, 0, "1g.10gb", 1, 9984),
    ]
    g = FakeGpu(0, "GPU-M", name=name, mig_mode=True, migs=migs, gpm=gpm, mem_used_mib=9000)
    g.procs = [
        FakeProcess(300, 3 * GIB, gi=2, ci=0),
        FakeProcess(301, GIB, gi=2, ci=0),
        FakeProcess(400, 1536 * 1024 * 1024, gi=9, ci=0),
    ]
    return g


MIG_IDENTS = {
    300: ident(300, POD_A),
    301: ident(301, POD_A),
    400: ident(400, None, job="777", account="physics", user="bob"),
}


def mig_slice(
    sid: str,
    uuid: str,
    gi: int,
    profile: str,
    compute: int,
    memory: int,
    cap: int,
    used: int,
    util: float | None,
    wl: dict[str, Any],
    prof: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    return {
        "slice_id": sid,
        "gpu_uuid": "GPU-M",
        "kind": "mig",
        "mem_cap_mib": cap,
        "mem_used_mib": used,
        "util_pct": util,
        "mig_profile": profile,
        "gi_id": gi,
        "ci_id": 0,
        "mig_uuid": uuid,
        "compute_slices": compute,
        "memory_slices": memory,
        "gpu_compute_slices": 7,
        "gpu_memory_slices": 8,
        **(prof or {}),
        "workload": wl,
    }


def test_mig_instances_are_slices_with_gpm_activity() -> None:
    fake, b = make([mig_gpu()], attributor=StubAttributor(MIG_IDENTS))
    msg = tick(fake, b)
    gpu = msg["gpus"][0]
    assert (gpu["mig_mode"], gpu["util_pct"], gpu["mem_used_mib"]) == (True, None, 9000)
    assert no_nulls(msg["slices"]) == no_nulls(
        [
            mig_slice(
                f"MIG-a:{POD_A}", "MIG-a", 2, "3g.40gb", 3, 4, 40448, 5000, 25.0, workload(POD_A), MIG_PROF
            ),
            mig_slice(
                "MIG-c:slurm:777",
                "MIG-c",
                9,
                "1g.10gb",
                1,
                1,
                9984,
                2000,
                62.5,
                workload(None, user="bob", job="777", account="physics"),
                dict.fromkeys(MIG_PROF, 0.0),  # measured: no SM activity, which is 0, not unknown
            ),
        ]
    )  # MIG-b and MIG-d hold no process: capacity, not slices
    assert [(p["pid"], p["slice_id"], p["mem_used_mib"], p["sm_util_pct"]) for p in msg["processes"]] == [
        (300, f"MIG-a:{POD_A}", 3072, None),
        (301, f"MIG-a:{POD_A}", 1024, None),
        (400, "MIG-c:slurm:777", 1536, None),
    ]
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1  # one call on the parent for all
    fake.calls.clear()
    tick(fake, b)
    assert fake.calls["nvmlDeviceGetMaxMigDeviceCount"] == 0  # layout cached between rescans
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 0  # unsupported on MIG: not asked


def test_mig_without_gpm_has_null_activity() -> None:
    fake, b = make([mig_gpu(gpm=False, name="NVIDIA A100-SXM4-80GB")], attributor=StubAttributor(MIG_IDENTS))
    msg = tick(fake, b)
    assert [(s["mig_uuid"], s["util_pct"]) for s in msg["slices"]] == [("MIG-a", None), ("MIG-c", None)]
    assert fake.calls["nvmlGpmMigSampleGet"] == 0


def test_mig_without_gpm_has_null_profiling_and_still_reads_clocks() -> None:
    g = mig_gpu(gpm=False, name="NVIDIA A100-SXM4-80GB")
    fake, b = make([g], attributor=StubAttributor(MIG_IDENTS))
    msg = tick(fake, b)
    gpu = msg["gpus"][0]
    assert {k: gpu[k] for k in NO_PROF} == {
        **NO_PROF,
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 2619,
        "clocks_event_reasons": 0,
        "xid_count": 0,
        **HOPPER_HEALTH,  # Ampere remaps rows as Hopper does
    }
    assert [[s[k] for k in PROF] for s in msg["slices"]] == [[None] * 4, [None] * 4]
    assert fake.calls["nvmlGpmSampleGet"] == 0 and fake.calls["nvmlGpmMetricsGet"] == 0


# -- GPM profiling and clocks on whole GPUs ------------------------------------------------------


def test_gpm_profiling_is_the_mean_over_each_tick_from_two_samples() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=90, prof=PROF)
    fake, b = make([g])
    first = tick(fake, b)["gpus"][0]
    assert {k: first[k] for k in PROF} == PROF  # primed at start: the first tick is measured too
    fake.advance(5.0)
    g.sm_active_pct = 50.0  # half of the next tick at 30 %, half at 50 %: the tick says 40 %
    msg = tick(fake, b, dt=5.0)["gpus"][0]
    assert msg["sm_active_pct"] == pytest.approx(40.0)
    assert msg["sm_active_pct"] < msg["util_pct"] == 90.0  # SM activity below kernel-busy
    assert fake.calls["nvmlGpmMetricsGet"] == 2  # one request per tick for every metric
    assert fake.calls["nvmlGpmSampleAlloc"] == 2  # two buffers, swapped each tick, never re-allocated


def test_a_gpm_metric_the_gpu_lacks_is_null_and_the_others_are_read() -> None:
    g = FakeGpu(0, "GPU-0", prof=PROF)
    g.gpm_unsupported = {pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL}
    fake, b = make([g])
    gpu = tick(fake, b)["gpus"][0]
    assert {k: gpu[k] for k in PROF} == {**PROF, "tensor_active_pct": None}


@pytest.mark.parametrize(
    "missing",
    [
        ("nvmlGpmQueryDeviceSupport", "nvmlDeviceGetClockInfo", "nvmlDeviceGetCurrentClocksEventReasons"),
        ("nvmlGpmSampleGet",),
    ],
)
def test_profiling_and_clocks_an_old_driver_lacks_are_null_never_zero(missing: tuple[str, ...]) -> None:
    g = FakeGpu(0, "GPU-0", util_pct=40, prof=PROF)
    fake, b = make([g], missing=missing)
    for _ in range(2):
        gpu = tick(fake, b)["gpus"][0]
        assert gpu["util_pct"] == 40.0
        assert {k: gpu[k] for k in PROF} == dict.fromkeys(PROF)
    clocks = (gpu["sm_clock_mhz"], gpu["mem_clock_mhz"], gpu["clocks_event_reasons"])
    assert clocks == ((None, None, None) if "nvmlDeviceGetClockInfo" in missing else (1980, 2619, 0))
    assert all(fake.calls[n] == 1 for n in missing)  # probed once, remembered absent


def test_clocks_not_supported_are_null_and_gpm_restarts_after_a_lost_gpu() -> None:
    g = FakeGpu(0, "GPU-0", prof=PROF, not_supported=("nvmlDeviceGetCurrentClocksEventReasons",))
    fake, b = make([g])
    gpu = tick(fake, b)["gpus"][0]
    assert (gpu["sm_clock_mhz"], gpu["clocks_event_reasons"]) == (1980, None)
    g.fault = pynvml.NVML_ERROR_GPU_IS_LOST
    assert {k: tick(fake, b)["gpus"][0][k] for k in PROF} == dict.fromkeys(PROF)
    g.fault = None
    back = tick(fake, b)["gpus"][0]  # no profile across the outage: the first sample is this tick's
    assert back["state"] == "ok" and {k: back[k] for k in PROF} == dict.fromkeys(PROF)
    assert {k: tick(fake, b)["gpus"][0][k] for k in PROF} == PROF
    b.close()
    assert fake.gpm_samples and all(s.freed for s in fake.gpm_samples)  # every buffer freed


def test_xid_events_are_drained_each_tick_without_waiting() -> None:
    gpus = [FakeGpu(0, "GPU-0"), FakeGpu(1, "GPU-1")]
    fake, b = make(gpus)
    fake.advance(5.0)
    fake.xid(gpus[1], 13)
    fake.xid(gpus[1], 79)  # fell off the bus: the last code is the one that matters
    msg = tick(fake, b, dt=5.0)
    assert [(g["xid_count"], g["xid_last"]) for g in msg["gpus"]] == [(0, None), (2, 79)]
    assert [(g["xid_count"], g["xid_last"]) for g in tick(fake, b)["gpus"]] == [(0, None), (0, None)]
    assert fake.calls["nvmlDeviceRegisterEvents"] == 2 and fake.calls["nvmlEventSetCreate"] == 1
    b.close()
    assert fake.event_sets[0].freed


@pytest.mark.parametrize(
    "missing,not_supported",
    [(("nvmlEventSetWait_v2",), ()), ((), ("nvmlDeviceRegisterEvents",)), (("nvmlEventSetCreate",), ())],
)
def test_xid_fields_are_null_where_events_cannot_be_read(
    missing: tuple[str, ...], not_supported: tuple[str, ...]
) -> None:
    g = FakeGpu(0, "GPU-0", not_supported=not_supported)
    fake, b = make([g], missing=missing)
    fake.xid(g, 48)
    for _ in range(2):
        gpu = tick(fake, b)["gpus"][0]
        assert (gpu["xid_count"], gpu["xid_last"], gpu["state"]) == (None, None, "ok")


def test_a_critical_xid_followed_by_a_benign_one_is_kept() -> None:
    g = FakeGpu(0, "GPU-0")
    fake, b = make([g])
    fake.advance(5.0)
    for code in (13, 79, 43, 48):  # an app fault, the GPU falls off the bus, then more noise
        fake.xid(g, code)
    gpu = tick(fake, b, dt=5.0)["gpus"][0]
    assert (gpu["xid_count"], gpu["xid_last"], gpu["xid_critical"]) == (4, 48, 79)  # the first critical
    fake.xid(g, 13)
    gpu = tick(fake, b)["gpus"][0]
    assert (gpu["xid_count"], gpu["xid_last"], gpu["xid_critical"]) == (1, 13, None)  # an app's own


HEALTH_FNS = (
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRetiredPages",
    "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetRemappedRows",
)
RETIRE_FIELDS = ("retired_pages_sbe", "retired_pages_dbe", "retired_pages_pending")
REMAP_FIELDS = (
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "row_remap_pending",
    "row_remap_failed",
)


def health(gpu: dict[str, Any]) -> dict[str, Any]:
    return {k: gpu[k] for k in HEALTH_FIELDS if k != "xid_critical"}


def test_memory_health_by_generation_and_not_supported_asked_once_per_rescan() -> None:
    gpus = [
        FakeGpu(0, "GPU-0"),  # Hopper: ECC, row remapping
        FakeGpu(1, "GPU-1", "Tesla V100-SXM2-32GB", 32768),  # Volta: ECC, page retirement
        FakeGpu(2, "GPU-2", "NVIDIA GeForce RTX 4090", 24564, ecc=None, memory_repair="none"),
    ]
    gpus[0].ecc = (7, 1)
    gpus[0].remapped_rows = (2, 1, True, False)
    gpus[1].retired_sbe, gpus[1].retired_dbe, gpus[1].retired_pending = [0x1000, 0x2000], [0x3000], True
    fake, b = make(gpus)
    got = [health(g) for g in tick(fake, b)["gpus"]]
    assert got[0] == {
        **HOPPER_HEALTH,
        "ecc_corrected": 7,
        "ecc_uncorrected": 1,
        "remapped_rows_correctable": 2,
        "remapped_rows_uncorrectable": 1,
        "row_remap_pending": True,
    }
    assert got[1] == {
        "ecc_corrected": 0,
        "ecc_uncorrected": 0,
        "retired_pages_sbe": 2,
        "retired_pages_dbe": 1,
        "retired_pages_pending": True,
        "remapped_rows_correctable": None,
        "remapped_rows_uncorrectable": None,
        "row_remap_pending": None,
        "row_remap_failed": None,
    }
    assert got[2] == dict.fromkeys(got[2])  # a consumer GPU: nothing known, never 0
    before = Counter(fake.calls)
    tick(fake, b)
    # NotSupported is remembered per GPU (re-asked at the 60 s rescan): each GPU asks only what it
    # answered: ECC twice on GPUs 0 and 1, retired pages and their pending state on the V100 only,
    # remapped rows on the H100 only.
    assert {n: fake.calls[n] - before[n] for n in HEALTH_FNS} == {
        "nvmlDeviceGetTotalEccErrors": 4,
        "nvmlDeviceGetRetiredPages": 2,
        "nvmlDeviceGetRetiredPagesPendingStatus": 1,
        "nvmlDeviceGetRemappedRows": 1,
    }


def test_memory_health_lands_in_the_lake_alike_through_both_decode_paths() -> None:
    gpus = [FakeGpu(0, "GPU-0"), FakeGpu(1, "GPU-1", "Tesla V100-SXM2-32GB", 32768)]
    gpus[0].ecc, gpus[0].remapped_rows = (5, 2), (1, 2, False, True)
    gpus[1].retired_dbe, gpus[1].retired_pending = [0x40], True
    fake, b = make(gpus)
    fake.advance(5.0)
    fake.xid(gpus[0], 64)  # row remap failure, then an application's fault
    fake.xid(gpus[0], 13)
    msg = tick(fake, b, dt=5.0)
    raw = orjson.dumps(msg)
    cols = ("uuid", *HEALTH_FIELDS)
    native = fast_decode([raw], batch=1, max_message_bytes=1 << 20)  # the native whole-batch reader
    assert native is not None, "a clean tick must take the whole-batch path"
    decoded = [
        native,
        *(decode_batch([raw], batch=1, max_message_bytes=1 << 20, fast=f) for f in (True, False)),
    ]
    rows = [sorted(tuple(r[k] for k in cols) for r in d.tables["gpu"].to_pylist()) for d in decoded]
    assert rows[1] == rows[2] == rows[0]
    assert rows[0] == [
        ("GPU-0", 64, 5, 2, None, None, None, 1, 2, False, True),
        ("GPU-1", None, 0, 0, 0, 1, True, None, None, None, None),
    ]


@pytest.mark.parametrize(
    "fn,fields",
    [
        ("nvmlDeviceGetTotalEccErrors", ("ecc_corrected", "ecc_uncorrected")),
        ("nvmlDeviceGetRetiredPages", RETIRE_FIELDS[:2]),
        ("nvmlDeviceGetRetiredPagesPendingStatus", RETIRE_FIELDS[2:]),
        ("nvmlDeviceGetRemappedRows", REMAP_FIELDS),
    ],
)
@pytest.mark.parametrize("how", ["not_supported", "no_permission", "missing", "hidden"])
def test_each_health_function_unreadable_is_null_never_zero(
    fn: str, fields: tuple[str, ...], how: str
) -> None:
    # A Volta GPU answers page retirement, a Hopper one row remapping: each function is tried where
    # it would otherwise answer, so the null comes from the refusal, not from the generation.
    name = "Tesla V100-SXM2-32GB" if "Retired" in fn else "NVIDIA H100 80GB HBM3"
    g = FakeGpu(0, "GPU-0", name, not_supported=(fn,) if how == "not_supported" else ())
    if how == "no_permission":
        g.errors[fn] = pynvml.NVML_ERROR_NO_PERMISSION
    fake, b = make([g], missing=(fn,) if how == "missing" else (), hidden=(fn,) if how == "hidden" else ())
    readable = RETIRE_FIELDS if "Retired" in fn else REMAP_FIELDS
    for _ in range(2):
        gpu = tick(fake, b)["gpus"][0]
        assert gpu["state"] == "ok"
        assert {k: gpu[k] for k in fields} == dict.fromkeys(fields)
        assert all(
            gpu[k] is not None for k in ("ecc_corrected", "ecc_uncorrected", *readable) if k not in fields
        )


def test_a_gpu_lost_while_reading_memory_health_is_lost_and_comes_back() -> None:
    gpus = [FakeGpu(0, "GPU-0"), FakeGpu(1, "GPU-1")]
    fake, b = make(gpus)
    gpus[1].errors["nvmlDeviceGetRemappedRows"] = pynvml.NVML_ERROR_GPU_IS_LOST
    msg = tick(fake, b)
    assert [(g["state"], g["row_remap_failed"]) for g in msg["gpus"]] == [("ok", False), ("lost", None)]
    del gpus[1].errors["nvmlDeviceGetRemappedRows"]
    gpus[1].remapped_rows = (0, 3, False, True)  # out of spare rows
    msg = tick(fake, b)
    assert [(g["state"], g["row_remap_failed"]) for g in msg["gpus"]] == [("ok", False), ("ok", True)]


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_NOT_SUPPORTED])
def test_mig_processes_per_instance_when_the_aggregate_is_refused(code: int) -> None:
    g = mig_gpu()
    g.parent_procs_error = code
    fake, b = make([g], attributor=StubAttributor(MIG_IDENTS))
    for _ in range(2):
        msg = tick(fake, b)
        assert [(p["pid"], p["slice_id"]) for p in msg["processes"]] == [
            (300, f"MIG-a:{POD_A}"),
            (301, f"MIG-a:{POD_A}"),
            (400, "MIG-c:slurm:777"),
        ]
    # the parent refused (NotSupported is remembered for the parent only), then 4 instances each tick
    parent = 1 if code == pynvml.NVML_ERROR_NOT_SUPPORTED else 2
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == parent + 8


def test_processes_without_a_usable_pid_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(0, GIB, 1.0), FakeProcess(100, GIB, 1.0)]
    fake, b = make([g])
    with caplog.at_level(logging.WARNING, "gpuledger.collector.nvml"):
        assert [p["pid"] for p in tick(fake, b)["processes"]] == [100]
        tick(fake, b)
    assert caplog.text.count("pid 0") == 1


def test_mig_layout_change_is_read_at_once() -> None:
    g = mig_gpu()
    fake, b = make([g], attributor=StubAttributor(MIG_IDENTS))
    tick(fake, b)
    new = FakeMig("MIG-e", 11, 0, "1g.10gb", 1, 9984, mem_used_mib=700, activity_pct=50.0)
    new.parent = g
    g.migs[2] = new
    g.procs.append(FakeProcess(500, 512 * 1024 * 1024, gi=11, ci=0))
    msg = tick(fake, b)
    e = [s for s in msg["slices"] if s["mig_uuid"] == "MIG-e"]
    assert [(s["slice_id"], s["mem_used_mib"], s["util_pct"]) for s in e] == [("MIG-e:unknown", 700, None)]
    assert [s["util_pct"] for s in tick(fake, b)["slices"] if s["mig_uuid"] == "MIG-e"] == [50.0]
    g.procs = [p for p in g.procs if p.gi != 9]
    g.migs[3] = None  # MIG-c destroyed
    fake.advance(60)  # the periodic rescan notices
    assert "MIG-c" not in {s["mig_uuid"] for s in b.next_tick()[0]["slices"]}


# -- slices of non-MIG GPUs -------------------------------------------------------------------------


def ts_gpu() -> FakeGpu:
    g = FakeGpu(0, "GPU-0", util_pct=70)
    g.procs = [
        FakeProcess(100, 2 * GIB, 30.0),
        FakeProcess(101, GIB, 10.0),
        FakeProcess(200, 4 * GIB, 20.0),
        FakeProcess(300, 512 * 1024 * 1024, 0.0),
    ]
    return g


TS_IDENTS = {
    100: ident(100, POD_A),
    101: ident(101, POD_A),
    200: ident(200, POD_B, user="bob"),
    300: ident(300, None, user="carol"),
}


@pytest.mark.parametrize("replicas", [0, 4])
def test_several_workloads_on_one_gpu_are_timeslices(replicas: int) -> None:
    fake, b = make([ts_gpu()], attributor=StubAttributor(TS_IDENTS), timeslice_replicas=replicas)
    msg = tick(fake, b)
    n = replicas or 3
    assert no_nulls(msg["slices"]) == no_nulls(
        [
            {
                "slice_id": f"GPU-0:{POD_A}",
                "gpu_uuid": "GPU-0",
                "kind": "timeslice",
                "mem_cap_mib": None,
                "mem_used_mib": 3072,
                "util_pct": 40.0,
                "replicas": n,
                "workload": workload(POD_A),
            },
            {
                "slice_id": f"GPU-0:{POD_B}",
                "gpu_uuid": "GPU-0",
                "kind": "timeslice",
                "mem_cap_mib": None,
                "mem_used_mib": 4096,
                "util_pct": 20.0,
                "replicas": n,
                "workload": workload(POD_B, user="bob"),
            },
            {
                "slice_id": "GPU-0:user:carol",
                "gpu_uuid": "GPU-0",
                "kind": "timeslice",
                "mem_cap_mib": None,
                "mem_used_mib": 512,
                "util_pct": 0.0,
                "replicas": n,
                "workload": workload(None, user="carol"),
            },
        ]
    )
    assert [p["slice_id"] for p in msg["processes"]] == [f"GPU-0:{POD_A}"] * 2 + [
        f"GPU-0:{POD_B}",
        "GPU-0:user:carol",
    ]


def test_one_workload_is_whole_and_its_slice_id_survives_a_neighbour() -> None:
    g = ts_gpu()
    everyone = g.procs
    g.procs = everyone[:2]
    fake, b = make([g], attributor=StubAttributor(TS_IDENTS))
    first = tick(fake, b)["slices"]
    assert [(s["slice_id"], s["kind"], s["util_pct"]) for s in first] == [(f"GPU-0:{POD_A}", "whole", 70.0)]
    g.procs = everyone[:3]
    second = tick(fake, b)["slices"]
    assert [(s["slice_id"], s["kind"]) for s in second] == [
        (f"GPU-0:{POD_A}", "timeslice"),
        (f"GPU-0:{POD_B}", "timeslice"),
    ]


def test_one_workload_on_a_time_sliced_gpu_holds_one_replica() -> None:
    g = ts_gpu()
    g.procs = g.procs[:2]
    fake, b = make([g], attributor=StubAttributor(TS_IDENTS), timeslice_replicas=4)
    (s,) = tick(fake, b)["slices"]
    assert (s["kind"], s["replicas"], s["util_pct"], s["mem_cap_mib"]) == ("timeslice", 4, 40.0, None)


def test_gpu_nobody_uses_has_no_slice_and_unattributed_processes_share_one() -> None:
    idle, busy = FakeGpu(0, "GPU-0"), FakeGpu(1, "GPU-1", util_pct=30)
    busy.procs = [FakeProcess(7, GIB, 1.0), FakeProcess(8, GIB, 1.0)]
    fake, b = make([idle, busy])  # no attributor at all
    msg = tick(fake, b)
    assert [(s["slice_id"], s["kind"], s["workload"]) for s in msg["slices"]] == [
        ("GPU-1:unknown", "whole", None)
    ]
    assert [(p["pid"], p["user"], p["pod_uid"]) for p in msg["processes"]] == [
        (7, None, None),
        (8, None, None),
    ]


# -- HAMi vGPU ---------------------------------------------------------------------------------------


def test_hami_regions_become_vgpu_slices(tmp_path: Path) -> None:
    hook = tmp_path / "vgpu"
    now = START + 10
    regions = [
        (
            f"{POD_A}_main",
            SharedRegion(
                "",
                POD_A,
                "main",
                1,
                2,
                ["GPU-0"],
                [10 * GIB],
                [30],
                [HamiProcess(12, 100, [3 * GIB], [20], 1)],
                int(now) - 5,
            ),
        ),
        (
            f"{POD_B}_side",
            SharedRegion(
                "",
                POD_B,
                "side",
                1,
                2,
                ["GPU-X", "GPU-0"],
                [GIB, 8 * GIB],
                [0, 0],
                [HamiProcess(7, 200, [0, 2 * GIB], [0, 15], 1)],
                0,
            ),
        ),
    ]
    for d, region in regions:
        (hook / "containers" / d).mkdir(parents=True)
        write_shared_region(hook / "containers" / d / "x.cache", region)
    g = FakeGpu(0, "GPU-0", util_pct=35)
    g.procs = [FakeProcess(100, 3 * GIB, 20.0), FakeProcess(200, 2 * GIB, 15.0), FakeProcess(300, GIB, 0.0)]
    att = StubAttributor(
        {
            100: ident(100, POD_A, cid=CID_A),
            200: ident(200, POD_B, cid=CID_B),
            300: ident(300, None, user="carol"),
        }
    )
    fake, b = make([g], attributor=att, hami_hook_dir=str(hook))
    msg = tick(fake, b)
    sa, sb = f"GPU-0:hami:{POD_A}/main", f"GPU-0:hami:{POD_B}/side"
    assert no_nulls(msg["slices"]) == no_nulls(
        [
            {
                "slice_id": sa,
                "gpu_uuid": "GPU-0",
                "kind": "vgpu",
                "mem_cap_mib": 10240,
                "core_cap_pct": 30.0,
                "mem_used_mib": 3072,
                "util_pct": 20.0,
                "last_kernel_age_s": 5.0,
                "workload": workload(POD_A, container="main"),
            },
            {
                "slice_id": sb,
                "gpu_uuid": "GPU-0",
                "kind": "vgpu",
                "mem_cap_mib": 8192,
                "core_cap_pct": 0.0,
                "mem_used_mib": 2048,
                "util_pct": 15.0,
                "last_kernel_age_s": None,
                "workload": workload(POD_B, container="side"),
            },
        ]
    )
    # a process in no region of a HAMi-shared GPU is shown but billed to no slice
    assert [(p["pid"], p["slice_id"]) for p in msg["processes"]] == [(100, sa), (200, sb), (300, None)]


# -- attribution -------------------------------------------------------------------------------------


def test_real_attribution_and_static_resolver(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    pod_path = POD_A.replace("-", "_")
    write_proc_entry(
        str(proc),
        100,
        start=5000,
        uid=1000,
        cgroup=(
            "0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{pod_path}.slice/cri-containerd-{CID_A}.scope\n"
        ),
    )
    write_proc_entry(
        str(proc),
        200,
        start=6000,
        uid=1001,
        environ=b"HOME=/x\0SLURM_JOB_ACCOUNT=physics\0",
        cgroup="0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n",
    )
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/bash\n")
    pods = tmp_path / "pods.json"
    pods.write_text(
        json.dumps(
            {
                POD_A: {
                    "namespace": "ml-a",
                    "pod": "train-0",
                    "labels": {"team": "vision"},
                    "containers": {CID_A: "main"},
                }
            }
        )
    )
    gpus = [FakeGpu(0, "GPU-0", util_pct=10), FakeGpu(1, "GPU-1", util_pct=20)]
    gpus[0].procs = [FakeProcess(100, GIB, 10.0)]
    gpus[1].procs = [FakeProcess(200, GIB, 20.0)]
    fake, b = make(
        gpus, attributor=ProcAttributor(str(proc), str(passwd)), resolver=StaticFileResolver(str(pods))
    )
    msg = tick(fake, b)
    assert [(s["slice_id"], s["workload"]) for s in msg["slices"]] == [
        (
            f"GPU-0:{POD_A}",
            workload(POD_A, namespace="ml-a", pod="train-0", container="main", labels={"team": "vision"}),
        ),
        ("GPU-1:slurm:4242", workload(None, user="bob", job="4242", account="physics")),
    ]
    assert [(p["container_id"], p["pod_uid"], p["job_id"], p["user"]) for p in msg["processes"]] == [
        (CID_A, POD_A, None, "alice"),
        (None, None, "4242", "bob"),
    ]


def test_known_pids_are_reverified_round_robin() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(pid, GIB, 1.0) for pid in (100, 101, 102)]
    att = StubAttributor({pid: ident(pid, POD_A) for pid in (100, 101, 102, 103)})
    fake = FakeNvml([g], start_s=START)
    b = NvmlBackend("c1", "n1", 10.0, nvml=fake, clock=fake.clock, attributor=att, reverify_s=30.0)
    for seq in range(6):
        if seq == 3:
            g.procs.append(FakeProcess(103, GIB, 1.0))
        tick(fake, b)
    # new PIDs at once; known ones every 3rd tick, spread by (pid + seq) % 3 so no tick reads them all
    assert dict(att.calls) == {100: 3, 101: 3, 102: 2, 103: 1 + 1}


def test_resolver_failure_does_not_stop_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def resolve(self, pod_uid: str, container_id: str | None = None) -> Any:
            raise ConnectionError("api server down")

    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(100, GIB, 1.0)]
    fake, b = make([g], attributor=StubAttributor({100: ident(100, POD_A)}), resolver=Broken())
    with caplog.at_level(logging.WARNING, "gpuledger.collector.nvml"):
        for _ in range(3):
            assert tick(fake, b)["slices"][0]["workload"] == workload(POD_A)
    assert caplog.text.count("api server down") == 1


# -- wiring ------------------------------------------------------------------------------------------


def test_runs_in_the_agent_loop_and_closes() -> None:
    fake, b = make([mig_gpu(), ts_gpu()])
    fake.gpus[1].index = 1
    bus = MemoryBus()
    stats = run_collector(
        b, MemoryTransport(bus, "t"), 10.0, ticks=3, realtime=False, after_tick=lambda s: fake.advance(10)
    )
    msgs = [orjson.loads(v) for _, _, v in bus.read_from("t", 0, 10)]
    assert stats.messages == 3 and [m["seq"] for m in msgs] == [0, 1, 2]
    assert decode_batch([orjson.dumps(m) for m in msgs], batch=1, max_message_bytes=1 << 20).ticks == 3
    samples = [m.gpm_prev for m in b.gpus[0].mig] + [m.gpm_spare for m in b.gpus[0].mig]
    b.close()
    assert fake.inits == 0 and all(s.freed for s in samples if s is not None)


def test_build_from_config(tmp_path: Path) -> None:
    cfg = CollectorConfig(
        cluster="c1",
        node="gpu-07",
        proc_root=str(tmp_path),
        passwd_file=str(tmp_path / "pw"),
        hami_hook_dir=str(tmp_path / "no-hami"),
        timeslice_replicas=2,
    )
    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(100, GIB, 1.0)]
    fake = FakeNvml([g], start_s=START)
    b = build_nvml_backend(cfg, nvml=fake)
    b.clock = fake.clock
    fake.advance(10)
    (msg,) = b.next_tick()
    assert_valid(msg)
    assert msg["node"] == "gpu-07"
    assert [(s["kind"], s["replicas"], s["slice_id"]) for s in msg["slices"]] == [
        ("timeslice", 2, "GPU-0:unknown")
    ]


def test_bad_arguments_and_nvml_that_cannot_start() -> None:
    fake = FakeNvml([], start_s=START)
    with pytest.raises(ValueError, match=r"node='bad node!'"):
        NvmlBackend("c1", "bad node!", 10.0, nvml=fake)
    with pytest.raises(ValueError, match=r"interval_s=0"):
        NvmlBackend("c1", "n1", 0, nvml=fake)

    def no_driver() -> None:
        raise err(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    fake.nvmlInit = no_driver  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match=r"NVML could not start \(Driver Not Loaded\)"):
        NvmlBackend("c1", "n1", 10.0, nvml=fake)


def test_fake_raises_pynvml_error_classes() -> None:
    g = FakeGpu(0, "GPU-0", not_supported={"nvmlDeviceGetPowerUsage"})
    fake = FakeNvml([g], start_s=START, missing={"nvmlDeviceGetTemperature"})
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetPowerUsage(g)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetTemperature(g, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetSamples(g, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    g.fault = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetMemoryInfo(g)
    g.fault, g.insufficient_times = None, 1
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        fake.nvmlDeviceGetComputeRunningProcesses(g)


# -- scripts/gpu_check.py's verdict, fed with ticks of the real backend over the fake -----------------


def _gpu_check() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _check_ticks(light_sm: float, heavy_sm: float, n: int = 5) -> list[dict[str, Any]]:
    g = FakeGpu(0, "GPU-0", util_pct=99)
    g.procs = [
        FakeProcess(100, (2048 + 500) * 1024 * 1024, light_sm),
        FakeProcess(200, (6144 + 500) * 1024 * 1024, heavy_sm),
    ]
    fake, b = make([g])
    return [tick(fake, b, 2.0) for _ in range(n)]


def test_gpu_check_passes_when_memory_and_load_match() -> None:
    gc = _gpu_check()
    assert gc.context_overhead(1000.0, 1884.0, 384.0) == 500.0
    light, heavy = gc.Expect("light", 100, 2548.0, 2048.0), gc.Expect("heavy", 200, 6644.0, 6144.0)
    v = gc.evaluate(_check_ticks(3.0, 97.0), "GPU-0", light, heavy, [1.5, 2.5, 2.0])
    assert v.failures == []
    assert "mean SM util: light 3.0 %, heavy 97.0 %" in v.lines
    assert v.lines[-1] == "collector cost per tick: median 2.00 ms CPU, max 2.50 ms over 3 ticks"


def test_gpu_check_fails_on_memory_off_load_misordered_and_missing_pid() -> None:
    gc = _gpu_check()
    light, heavy = gc.Expect("light", 100, 2548.0, 2048.0), gc.Expect("heavy", 200, 6144.0, 6144.0)
    v = gc.evaluate(_check_ticks(97.0, 3.0), "GPU-0", light, heavy, [])
    assert v.failures == [
        "heavy (pid 200): collector says 6644 MiB, expected 6144 MiB (torch reserved 6144 + context), "
        "8.1 % off > 5 %",
        "SM util not ordered as the load: heavy 3.0 % <= light 97.0 %",
    ]
    gone = gc.Expect("light", 999, 2548.0, 2048.0)
    v = gc.evaluate(_check_ticks(3.0, 97.0), "GPU-0", gone, gc.Expect("heavy", 200, 6644.0, 6144.0), [])
    assert v.failures == ["light (pid 999) missing from 4 of 4 ticks", "light (pid 999): no memory reported"]


def test_process_util_window_restarts_after_an_idle_gpu() -> None:
    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.auto_samples = False
    fake, b = make([g])
    g.procs = [FakeProcess(100, GIB, 0.0)]
    fake.advance(10)
    g.add_proc_samples([(100, START_US + 5_000_000, 40), (100, START_US + 6_000_000, 40)])
    assert b.next_tick()[0]["processes"][0]["sm_util_pct"] == 8.0  # 80 × 1 s over 10 s
    g.procs = []
    tick(fake, b)
    g.add_proc_samples([(100, START_US + 25_000_000, 50)])  # samples from before this window linger ...
    tick(fake, b)
    g.procs = [FakeProcess(100, GIB, 0.0)]
    fake.advance(10)
    g.add_proc_samples([(100, START_US + 35_000_000, 50), (100, START_US + 36_000_000, 50)])
    # ... but only this tick's window counts: 100 × 1 s over 10 s, not the buffer since t = 6 s
    assert b.next_tick()[0]["processes"][0]["sm_util_pct"] == 10.0


@pytest.mark.parametrize(("heavy_extra_mib", "rc"), [(0, 0), (700, 1)])
def test_gpu_check_end_to_end_on_the_fake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], heavy_extra_mib: int, rc: int
) -> None:
    """The whole check (probe, two workers, collector in the agent loop, verdict) without torch or a GPU."""
    gc = _gpu_check()
    g = FakeGpu(0, "GPU-0", util_pct=90, mem_used_mib=1000)
    fake = FakeNvml([g], start_s=START)
    mib = 1024 * 1024
    workers = {"light": (100, 2048, 3.0), "heavy": (200, 6144, 97.0)}

    def start(name: str, mem_gib: float, load: str, tmp: Path, deadline: float) -> tuple[str, dict[str, int]]:
        if name == "probe":  # context (500 MiB) + warm-up buffers (384 MiB) on the device
            g.mem_used += 884 * mib
            return name, {"pid": 1, "reserved": 384 * mib}
        pid, reserved, sm = workers[name]
        extra = heavy_extra_mib if name == "heavy" else 0
        g.procs.append(FakeProcess(pid, (reserved + 500 + extra) * mib, sm))
        return name, {"pid": pid, "reserved": reserved * mib}

    def stop(name: str, proc: str, tmp: Path) -> None:
        if name == "probe":
            g.mem_used -= 884 * mib

    def clock() -> float:  # each tick sees 2 s of driver samples
        fake.advance(2.0)
        return fake.now

    args = argparse.Namespace(seconds=0.2, interval=0.05, light_gib=2.0, heavy_gib=6.0, tmp=str(tmp_path))
    assert gc.main_check(args, nvml=fake, clock=clock, start=start, stop=stop, settle_s=0.0) == rc
    out = capsys.readouterr().out
    assert "-> CUDA context overhead 500 MiB" in out
    assert (
        "light: pid 100 collector 2548 MiB, torch reserved 2048 MiB + context = 2548 MiB expected (0.0 % off)"
        in out
    )
    assert "mean SM util: light 3.0 %, heavy 97.0 %" in out
    assert out.rstrip().endswith("gpu-check: PASS" if rc == 0 else "gpu-check: FAIL (1 failures)")


def test_gpu_check_matches_host_pids_by_memory_in_a_pid_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    gc = _gpu_check()
    ticks = _check_ticks(3.0, 97.0)
    light, heavy = gc.Expect("light", 7, 2548.0, 2048.0), gc.Expect("heavy", 8, 6644.0, 6144.0)
    assert gc.remap_host_pids(ticks, "GPU-0", light, heavy) is True
    assert (light.pid, heavy.pid) == (100, 200)
    assert "matched by memory: light = 100, heavy = 200" in capsys.readouterr().out
    assert gc.evaluate(ticks, "GPU-0", light, heavy, []).failures == []
    assert gc.remap_host_pids(ticks, "GPU-0", light, heavy) is False  # the PIDs are seen: nothing to do


def test_hami_scan_failure_does_not_stop_the_agent(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()

    def broken(hook_dir: str) -> list[Any]:
        raise PermissionError(13, "Permission denied")

    g = FakeGpu(0, "GPU-0", util_pct=10)
    g.procs = [FakeProcess(100, GIB, 1.0)]
    fake, b = make([g], hami_hook_dir=str(tmp_path), hami_scan=broken)
    with caplog.at_level(logging.WARNING, "gpuledger.collector.nvml"):
        for _ in range(2):
            assert [s["kind"] for s in tick(fake, b)["slices"]] == ["whole"]
    assert caplog.text.count("cannot be scanned") == 1


def mixed_node(tmp_path: Path) -> tuple[Any, Any, FakeGpu, FakeGpu]:
    """A node with a MIG GPU (with GPM), a HAMi GPU holding two pods' regions and a time-sliced GPU:
    (fake NVML, backend, the HAMi GPU, the time-sliced GPU), for churn and loss tests."""
    hook = tmp_path / "vgpu"
    for pod, pid in ((POD_A, 100), (POD_B, 102)):
        (hook / "containers" / f"{pod}_main").mkdir(parents=True)
        region = SharedRegion(
            "",
            pod,
            "main",
            1,
            2,
            ["GPU-H"],
            [4 * GIB],
            [25],
            [HamiProcess(1, pid, [GIB], [10], 1)],
            int(START),
        )
        write_shared_region(hook / "containers" / f"{pod}_main" / "GPU-H.cache", region)
    mig = mig_gpu()
    hami = FakeGpu(1, "GPU-H", util_pct=20)
    hami.procs = [FakeProcess(100, GIB, 10.0), FakeProcess(102, GIB, 10.0)]
    ts = ts_gpu()
    ts.index, ts.uuid = 2, "GPU-T"
    idents = {**MIG_IDENTS, **TS_IDENTS, 102: ident(102, POD_B)}
    fake, b = make([mig, hami, ts], attributor=StubAttributor(idents), hami_hook_dir=str(hook))
    return fake, b, hami, ts


def test_mixed_node_with_churn_stays_valid_every_tick(tmp_path: Path) -> None:
    fake, b, hami, ts = mixed_node(tmp_path)
    kinds: list[list[str]] = []
    for k in range(8):
        if k == 3:
            ts.procs = ts.procs[:2]  # pod B and carol leave: pod A has the GPU to itself
        if k == 5:
            hami.fault = pynvml.NVML_ERROR_GPU_IS_LOST
        msg = tick(fake, b)  # schema + ingest decoder, both paths, on every tick
        kinds.append(sorted(s["kind"] for s in msg["slices"]))
    assert kinds[0] == ["mig", "mig", "timeslice", "timeslice", "timeslice", "vgpu", "vgpu"]
    assert kinds[4] == ["mig", "mig", "vgpu", "vgpu", "whole"]
    assert kinds[7] == ["mig", "mig", "whole"]


def test_hami_caps_come_from_the_allocation_annotation_and_sm_limit_100_is_no_core_reservation(
    tmp_path: Path,
) -> None:
    """HAMi-core writes sm_limit 100 when a container set no core limit: that is not a 100 % core
    reservation (billed as a whole GPU) but none. The pod's allocation annotation, when the resolver
    has it, is the durable record and wins over the region."""
    hook = tmp_path / "vgpu"
    for pod, ctr, mem, sm in ((POD_A, "main", 10 * GIB, 100), (POD_B, "side", 8 * GIB, 100)):
        (hook / "containers" / f"{pod}_{ctr}").mkdir(parents=True)
        write_shared_region(
            hook / "containers" / f"{pod}_{ctr}" / "x.cache",
            SharedRegion("", pod, ctr, 1, 2, ["GPU-0"], [mem], [sm], [], 0),
        )
    pods = tmp_path / "pods.json"
    pods.write_text(
        json.dumps(
            {
                POD_A: {
                    "namespace": "ml-a",
                    "pod": "a",
                    "annotations": {"hami.io/vgpu-devices-allocated": "GPU-0,NVIDIA,12000,40:;"},
                },
                POD_B: {"namespace": "ml-b", "pod": "b"},
            }
        )
    )
    g = FakeGpu(0, "GPU-0", util_pct=5)
    fake, b = make([g], hami_hook_dir=str(hook), resolver=StaticFileResolver(str(pods)))
    caps = {
        s["slice_id"].split(":hami:")[1]: (s["mem_cap_mib"], s["core_cap_pct"])
        for s in tick(fake, b)["slices"]
    }
    assert caps == {f"{POD_A}/main": (12000, 40.0), f"{POD_B}/side": (8192, 0.0)}


@pytest.mark.parametrize(
    ("small_sm", "gpm", "rc", "last"),
    [
        (6.0, True, 0, "gpu-check truth: PASS"),
        (90.0, True, 1, "gpu-check truth: FAIL (2 failures)"),  # small kernels filling the SMs: wrong
        (6.0, False, 0, "gpu-check truth: PASS"),  # no GPM: kernel-busy only, said so
    ],
)
def test_gpu_truth_on_the_fake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_sm: float, gpm: bool, rc: int, last: str
) -> None:
    """`gpu_check.py truth`: small then large kernels, the collector beside each, kernel-busy beside SM
    activity; the verdict holds the collector to what the GPU did."""
    gc = _gpu_check()
    g = FakeGpu(0, "GPU-0", util_pct=0, gpm=gpm)
    fake = FakeNvml([g], start_s=START)
    loads = {"small": (97.0, small_sm, 0.0), "large": (99.0, 85.0, 70.0)}  # busy, SM active, tensor

    def start(name: str, mem_gib: float, load: str, tmp: Path, deadline: float) -> tuple[str, dict[str, int]]:
        busy, sm, tensor = loads[load]
        g.util_pct, g.sm_active_pct, g.tensor_active_pct = busy, sm, tensor
        g.procs = [FakeProcess(300, GIB, busy)]
        return name, {"pid": 300, "reserved": GIB}

    def stop(name: str, proc: str, tmp: Path) -> None:
        g.util_pct, g.sm_active_pct, g.tensor_active_pct, g.procs = 0.0, 0.0, 0.0, []

    def clock() -> float:
        fake.advance(2.0)
        return fake.now

    args = argparse.Namespace(seconds=0.2, interval=0.05, tmp=str(tmp_path))
    assert gc.main_truth(args, nvml=fake, clock=clock, start=start, stop=stop, settle_s=0.0) == rc
    out = capsys.readouterr().out
    if gpm:
        assert f"| small kernels | 97.0 | {small_sm:.1f} |" in out
        assert "| large kernels | 99.0 | 85.0 |" in out
    else:
        assert "| small kernels | 97.0 | null |" in out
        assert "SM activity not reported (no GPM on this GPU): kernel-busy only" in out
    if rc:
        assert "FAIL: small kernels: SM active 90.0 % is not 20 points below kernel-busy 97.0 %" in out
        assert "FAIL: SM active not ordered as the kernels: large 85.0 % <= small 90.0 %" in out
    assert out.rstrip().endswith(last)
