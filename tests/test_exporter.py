"""The agent's Prometheus exporter, scraped over loopback HTTP and parsed with prometheus_client."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from messages import G0, G1, valid_message, whole_slice
from prometheus_client.parser import text_string_to_metric_families

from collector.exporter import AgentExporter
from collector.fleet import SimulatedFleet
from collector.spool import SpoolStats
from gpuledger.decode import decode_batch

MIB = 1024 * 1024
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def exporter() -> Iterator[AgentExporter]:
    exp = AgentExporter(0, "127.0.0.1")
    exp.start()
    try:
        yield exp
    finally:
        exp.close()


def scrape(exp: AgentExporter) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def pick(samples: Samples, name: str, **labels: str) -> list[float]:
    """Values of `name` whose labels include `labels`."""
    return [v for lb, v in samples.get(name, []) if all(lb.get(k) == want for k, want in labels.items())]


def test_test_messages_are_schema_valid() -> None:
    msgs = [valid_message(), _with_whole_gpu(), _hami_two_devices()]
    for seq, m in enumerate(msgs):
        m["seq"] = seq
    result = decode_batch([orjson.dumps(m) for m in msgs], batch=1, max_message_bytes=1 << 20, fast=False)
    assert result.rejects == [] and result.accepted == [0, 1, 2]


def test_dcgm_gpu_series_exact_values_and_labels(exporter: AgentExporter) -> None:
    exporter.update(valid_message())
    s = scrape(exporter)
    labels = {
        "gpu": "1",
        "UUID": G1,
        "device": "nvidia1",
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": "n1",
        "hostname": "n1",
        "namespace": "",
        "pod": "",
        "container": "",
    }
    assert s["DCGM_FI_DEV_GPU_UTIL"] == [(labels, 37.5)]  # GPU 0 (MIG) has util null: absent
    assert pick(s, "DCGM_FI_DEV_FB_USED", UUID=G1) == [40960.0]
    assert pick(s, "DCGM_FI_DEV_FB_FREE", UUID=G1) == [81559.0 - 40960.0]
    assert pick(s, "DCGM_FI_DEV_FB_FREE", UUID=G0) == [81920.0 - 30000.0]
    assert pick(s, "DCGM_FI_DEV_POWER_USAGE", UUID=G0) == [210.5]
    assert pick(s, "DCGM_FI_DEV_GPU_TEMP", UUID=G1) == [55.0]
    assert pick(s, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=G1) == [3102.0 * 1000]
    assert pick(s, "gpuledger_gpu_state", UUID=G0, state="ok") == [1.0]
    assert pick(s, "gpuledger_collector_ticks_total") == [1.0]
    ts = datetime(2026, 11, 27, 10, 0, 10, tzinfo=UTC).timestamp()
    assert pick(s, "gpuledger_collector_last_tick_timestamp_seconds", Hostname="n1") == [ts]


def _with_whole_gpu() -> dict[str, Any]:
    msg = valid_message()
    msg["slices"] = [sl for sl in msg["slices"] if sl["gpu_uuid"] != G1]
    msg["processes"] = [p for p in msg["processes"] if p["gpu_uuid"] != G1]
    whole = whole_slice(G1)
    whole["workload"] = {"namespace": "ml-a", "pod": "train-7", "container": "main", "pod_uid": "u7"}
    msg["slices"].append(whole)
    return msg


def test_whole_gpu_series_carry_the_owning_pod_and_shared_gpus_do_not(exporter: AgentExporter) -> None:
    exporter.update(_with_whole_gpu())
    s = scrape(exporter)
    owned = {"namespace": "ml-a", "pod": "train-7", "container": "main"}
    assert pick(s, "DCGM_FI_DEV_FB_USED", UUID=G1, **owned) == [40960.0]
    assert pick(s, "DCGM_FI_DEV_FB_USED", UUID=G0, namespace="", pod="", container="") == [30000.0]
    assert pick(s, "gpuledger_slice_reserved_share", slice_id=f"{G1}:whole", kind="whole") == [1.0]


def _hami_two_devices() -> dict[str, Any]:
    """One container with vGPUs on two GPUs, plus a vGPU slice whose pod is unknown."""
    msg = valid_message()
    vg = next(sl for sl in msg["slices"] if sl["kind"] == "vgpu")
    second = copy.deepcopy(vg)
    second.update(slice_id=f"{G0}:hami:u2/main", gpu_uuid=G0, mem_used_mib=100, util_pct=1.5)
    second["last_kernel_age_s"] = None
    anon = copy.deepcopy(vg)
    anon.update(slice_id=f"{G1}:hami:u9/x", workload={"pod_uid": "u9"}, mem_used_mib=5)
    msg["slices"] += [second, anon]
    return msg


def test_hami_series_use_hami_names_labels_and_units(exporter: AgentExporter) -> None:
    exporter.update(_hami_two_devices())
    s = scrape(exporter)
    first = {"namespace": "shared", "pod": "infer-1", "container": "main", "vdevice_index": "0"}
    assert s["hami_vgpu_memory_used_bytes"][0] == ({**first, "device_uuid": G1}, 9000.0 * MIB)
    assert pick(s, "hami_vgpu_memory_limit_bytes", device_uuid=G1) == [20480.0 * MIB]
    assert pick(s, "hami_container_device_utilization_ratio", device_uuid=G1) == [12.0]
    assert pick(s, "hami_container_last_kernel_elapsed_seconds", device_uuid=G1) == [3.0]
    assert pick(s, "hami_vgpu_memory_used_bytes", device_uuid=G0, vdevice_index="1") == [100.0 * MIB]
    assert pick(s, "hami_container_device_utilization_ratio", device_uuid=G0) == [1.5]
    # null last kernel age: absent, not 0
    assert pick(s, "hami_container_last_kernel_elapsed_seconds", device_uuid=G0) == []
    # a vGPU slice with no known pod has no HAMi series (HAMi itself keys them by pod) ...
    assert len(s["hami_vgpu_memory_used_bytes"]) == 2
    # ... but keeps its gpuledger series
    assert pick(s, "gpuledger_slice_memory_used_bytes", slice_id=f"{G1}:hami:u9/x", pod="") == [5.0 * MIB]


def test_gpuledger_slice_and_process_series(exporter: AgentExporter) -> None:
    exporter.update(valid_message())
    s = scrape(exporter)
    # DESIGN §6 shares: MIG max(3/7, 4/8); vGPU max(20480/81559, 30/100); time-slice 1/4
    assert pick(s, "gpuledger_slice_reserved_share", kind="mig", mig_profile="3g.40gb") == [0.5]
    assert pick(s, "gpuledger_slice_reserved_share", kind="vgpu") == [0.3]
    assert pick(s, "gpuledger_slice_reserved_share", kind="timeslice", job_id="4242", user="bob") == [0.25]
    assert pick(s, "gpuledger_slice_memory_cap_bytes", kind="mig") == [40192.0 * MIB]
    assert pick(s, "gpuledger_slice_core_cap_percent", kind="vgpu") == [30.0]
    assert pick(s, "gpuledger_slice_util_percent", kind="timeslice", account="physics") == [20.0]
    # time-slice slice has no memory values: absent
    assert pick(s, "gpuledger_slice_memory_used_bytes", kind="timeslice") == []
    proc = {
        "pid": "4242",
        "UUID": G1,
        "slice_id": f"{G1}:hami:u2/main",
        "Hostname": "n1",
        "hostname": "n1",
        "namespace": "shared",
        "pod": "infer-1",
        "container": "main",
        "container_id": "c" * 64,
        "pod_uid": "u2",
        "job_id": "",
        "user": "alice",
    }
    assert s["gpuledger_process_memory_used_bytes"][0] == (proc, 8900.0 * MIB)
    assert s["gpuledger_process_sm_util_percent"] == [(proc, 12.0)]  # pid 5151 (MIG): null -> absent
    assert pick(s, "gpuledger_process_memory_used_bytes", pid="5151", pod="train-0") == [20000.0 * MIB]


def test_series_of_exited_processes_slices_and_gpus_are_removed(exporter: AgentExporter) -> None:
    exporter.update(valid_message(0))
    before = scrape(exporter)
    assert len(before["gpuledger_process_memory_used_bytes"]) == 2
    assert len(before["hami_vgpu_memory_used_bytes"]) == 1
    msg = valid_message(1)
    msg["processes"] = [p for p in msg["processes"] if p["pid"] != 4242]  # pid 4242 exited
    msg["slices"] = [sl for sl in msg["slices"] if sl["kind"] != "vgpu"]  # its vGPU slice is gone
    msg["gpus"] = [g for g in msg["gpus"] if g["uuid"] != G0]  # GPU 0 fell off the node
    msg["slices"] = [sl for sl in msg["slices"] if sl["gpu_uuid"] != G0]
    msg["processes"] = [p for p in msg["processes"] if p["gpu_uuid"] != G0]
    exporter.update(msg)
    s = scrape(exporter)
    assert "gpuledger_process_memory_used_bytes" not in s
    assert "hami_vgpu_memory_used_bytes" not in s and "hami_container_device_utilization_ratio" not in s
    assert [lb["kind"] for lb, _ in s["gpuledger_slice_util_percent"]] == ["timeslice"]
    assert {lb["UUID"] for lb, _ in s["DCGM_FI_DEV_FB_USED"]} == {G1}
    assert {lb["UUID"] for lb, _ in s["gpuledger_gpu_state"]} == {G1}


def test_null_values_remove_the_series_instead_of_reporting_zero(exporter: AgentExporter) -> None:
    exporter.update(valid_message(0))
    msg = valid_message(1)
    g1 = next(g for g in msg["gpus"] if g["uuid"] == G1)
    g1.update(util_pct=None, power_w=None, temp_c=None, mem_used_mib=None, energy_j=None, state="lost")
    msg["processes"][0]["mem_used_mib"] = None
    exporter.update(msg)
    s = scrape(exporter)
    for name in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    ):
        assert pick(s, name, UUID=G1) == [], name
    assert pick(s, "DCGM_FI_DEV_FB_USED", UUID=G0) == [30000.0]
    assert pick(s, "gpuledger_gpu_state", UUID=G1, state="lost") == [1.0]
    assert pick(s, "gpuledger_gpu_state", UUID=G1, state="ok") == []
    assert pick(s, "gpuledger_process_memory_used_bytes", pid="4242") == []
    assert pick(s, "gpuledger_process_sm_util_percent", pid="4242") == [12.0]


def test_energy_total_accumulates_deltas_and_counts_resets(exporter: AgentExporter) -> None:
    deltas = [2105.0, 2105.5, 0.0, None, 100.0]  # 0 while drawing power = counter reset
    for seq, delta in enumerate(deltas):
        msg = valid_message(seq)
        msg["gpus"][0]["energy_j"] = delta
        exporter.update(msg)
        if delta is None:
            assert pick(scrape(exporter), "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=G0) == []
    s = scrape(exporter)
    assert pick(s, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=G0) == [(2105.0 + 2105.5 + 100.0) * 1000]
    assert pick(s, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", UUID=G1) == [3102.0 * 1000 * 5]
    assert pick(s, "gpuledger_gpu_energy_counter_resets_total", UUID=G0) == [1.0]
    assert pick(s, "gpuledger_gpu_energy_counter_resets_total", UUID=G1) == [0.0]


def test_update_replaces_one_node_and_update_all_replaces_the_set(exporter: AgentExporter) -> None:
    exporter.update(valid_message(node="n1"))
    exporter.update(valid_message(node="n2"))
    assert {lb["Hostname"] for lb, _ in scrape(exporter)["DCGM_FI_DEV_FB_USED"]} == {"n1", "n2"}
    exporter.update_all([valid_message(node="n3")], tick_seconds=0.004)
    s = scrape(exporter)
    assert {lb["Hostname"] for lb, _ in s["DCGM_FI_DEV_FB_USED"]} == {"n3"}
    assert pick(s, "gpuledger_collector_ticks_total") == [3.0]
    assert pick(s, "gpuledger_collector_tick_duration_seconds_count") == [1.0]
    assert pick(s, "gpuledger_collector_tick_duration_seconds_sum") == [0.004]
    assert pick(s, "gpuledger_collector_tick_duration_seconds_bucket", le="0.005") == [1.0]
    assert pick(s, "gpuledger_collector_tick_duration_seconds_bucket", le="0.0025") == [0.0]


def test_spool_counters_are_read_at_scrape_time(exporter: AgentExporter) -> None:
    state = {"n": 0}

    def stats() -> SpoolStats:
        state["n"] += 1
        return SpoolStats(
            spooled=7 * state["n"],
            replayed=5,
            dropped=2,
            torn=1,
            sent_direct=40,
            pending_records=3,
            pending_bytes=4096,
            segments=1,
            inflight=0,
            kafka_up=False,
        )

    exporter.watch_spool(stats)
    s = scrape(exporter)
    assert pick(s, "gpuledger_spool_spooled_ticks_total") == [7.0]
    assert pick(s, "gpuledger_spool_replayed_ticks_total") == [5.0]
    assert pick(s, "gpuledger_spool_dropped_ticks_total") == [2.0]
    assert pick(s, "gpuledger_spool_torn_records_total") == [1.0]
    assert pick(s, "gpuledger_spool_direct_ticks_total") == [40.0]
    assert pick(s, "gpuledger_spool_pending_ticks") == [3.0]
    assert pick(s, "gpuledger_spool_bytes") == [4096.0]
    assert pick(s, "gpuledger_kafka_up") == [0.0]
    assert pick(scrape(exporter), "gpuledger_spool_spooled_ticks_total") == [14.0]


def test_simulated_fleet_exports_one_series_per_process_and_slice(exporter: AgentExporter) -> None:
    fleet = SimulatedFleet(seed=3, start=datetime(2026, 11, 1, tzinfo=UTC), interval_s=10.0)
    msgs = fleet.next_tick()
    exporter.update_all(msgs)
    s = scrape(exporter)
    procs = {(m["node"], p["pid"], p["gpu_uuid"]) for m in msgs for p in m["processes"]}
    got = {(lb["Hostname"], int(lb["pid"]), lb["UUID"]) for lb, _ in s["gpuledger_process_memory_used_bytes"]}
    assert got == procs
    n_slices = sum(len(m["slices"]) for m in msgs)
    assert len(s["gpuledger_slice_reserved_share"]) == n_slices
    assert len(s["DCGM_FI_DEV_FB_USED"]) == sum(len(m["gpus"]) for m in msgs)


def test_close_stops_the_server_and_several_exporters_coexist() -> None:
    a, b = AgentExporter(0, "127.0.0.1"), AgentExporter(0, "127.0.0.1")
    a.start(), b.start()
    try:
        assert a.port != b.port
        a.update(valid_message(node="na"))
        b.update(valid_message(node="nb"))
        assert {lb["Hostname"] for lb, _ in scrape(a)["DCGM_FI_DEV_FB_USED"]} == {"na"}
        assert {lb["Hostname"] for lb, _ in scrape(b)["DCGM_FI_DEV_FB_USED"]} == {"nb"}
    finally:
        a.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{a.port}/metrics", timeout=2)
    assert "DCGM_FI_DEV_FB_USED" in scrape(b)
    b.close()
    b.close()  # idempotent


def test_a_malformed_message_is_a_clear_error_and_keeps_the_last_good_tick(exporter: AgentExporter) -> None:
    exporter.update(valid_message())
    bad = valid_message(1)
    del bad["gpus"][1]["uuid"]
    with pytest.raises(
        ValueError,
        match=r"node 'n1' is not schema v1: Object missing required field `uuid` - at `\$.gpus\[1\]`",
    ):
        exporter.update(bad)
    assert pick(scrape(exporter), "DCGM_FI_DEV_FB_USED", UUID=G1) == [40960.0]


# -- issue 17: profiling, clocks, the hostname label ------------------------------------------------


def _profiled() -> dict[str, Any]:
    """valid_message with GPM profiling and clocks on GPU 1 (whole) and on the MIG slice of GPU 0."""
    msg = valid_message()
    msg["gpus"][1].update(
        sm_active_pct=25.0,
        sm_occupancy_pct=12.5,
        tensor_active_pct=10.0,
        dram_active_pct=40.0,
        sm_clock_mhz=1755,
        mem_clock_mhz=2619,
        clocks_event_reasons=4,
    )
    mig = next(sl for sl in msg["slices"] if sl["kind"] == "mig")
    mig.update(sm_active_pct=50.0, sm_occupancy_pct=20.0, tensor_active_pct=30.0, dram_active_pct=None)
    return msg


def _wl(sl: dict[str, Any], key: str) -> str:
    return (sl.get("workload") or {}).get(key) or ""


def test_profiling_and_clock_series_use_dcgm_exporter_names_and_units(exporter: AgentExporter) -> None:
    msg = _profiled()
    exporter.update(msg)
    s = scrape(exporter)
    assert pick(s, "DCGM_FI_DEV_SM_CLOCK", UUID=G1) == [1755.0]  # MHz
    assert pick(s, "DCGM_FI_DEV_MEM_CLOCK", UUID=G1) == [2619.0]
    assert pick(s, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", UUID=G1) == [4.0]  # SW power cap bit
    whole = {"UUID": G1, "gpu": "1", "hostname": "n1"}
    assert pick(s, "DCGM_FI_PROF_SM_ACTIVE", **whole) == [0.25]  # ratio 0-1, as dcgm-exporter
    assert pick(s, "DCGM_FI_PROF_SM_OCCUPANCY", **whole) == [0.125]
    assert pick(s, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", **whole) == [0.1]
    assert pick(s, "DCGM_FI_PROF_DRAM_ACTIVE", **whole) == [0.4]
    mig = next(sl for sl in msg["slices"] if sl["kind"] == "mig")
    inst = [(lb, v) for lb, v in s["DCGM_FI_PROF_SM_ACTIVE"] if "GPU_I_ID" in lb]
    assert inst == [
        (
            {
                "gpu": "0",
                "UUID": G0,
                "device": "nvidia0",
                "modelName": "NVIDIA A100-SXM4-80GB",
                "Hostname": "n1",
                "hostname": "n1",
                "namespace": _wl(mig, "namespace"),
                "pod": _wl(mig, "pod"),
                "container": _wl(mig, "container"),
                "GPU_I_PROFILE": mig["mig_profile"],
                "GPU_I_ID": str(mig["gi_id"]),
            },
            0.5,
        )
    ]
    assert [v for lb, v in s["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"] if "GPU_I_ID" in lb] == [0.3]
    # null is absent, never 0: the MIG slice's DRAM activity and GPU 0's own profiling and clocks
    assert [lb for lb, _ in s["DCGM_FI_PROF_DRAM_ACTIVE"] if lb["UUID"] == G0] == []
    assert pick(s, "DCGM_FI_DEV_SM_CLOCK", UUID=G0) == [] and "DCGM_FI_DEV_XID_ERRORS" not in s


def test_every_series_with_hostname_carries_the_new_lowercase_label_too(exporter: AgentExporter) -> None:
    fleet = SimulatedFleet(seed=3, start=datetime(2026, 11, 1, tzinfo=UTC), interval_s=10.0)
    exporter.update_all(fleet.next_tick())
    s = scrape(exporter)
    with_host = [(name, lb) for name, rows in s.items() for lb, _ in rows if "Hostname" in lb]
    assert len(with_host) > 100
    assert all(lb["hostname"] == lb["Hostname"] for _, lb in with_host)
    assert all("Hostname" in lb for rows in s.values() for lb, _ in rows if "hostname" in lb)


def test_xid_errors_hold_the_last_code_since_start_and_are_absent_where_unreadable(
    exporter: AgentExporter,
) -> None:
    msg = valid_message()
    msg["gpus"][1].update(xid_count=2, xid_last=79)
    exporter.update(msg)
    msg = valid_message()
    msg["gpus"][1].update(xid_count=0)  # a later tick without events: the last code stays
    exporter.update(msg)
    s = scrape(exporter)
    assert pick(s, "DCGM_FI_DEV_XID_ERRORS", UUID=G1, hostname="n1") == [79.0]
    assert pick(s, "gpuledger_gpu_xid_events_total", UUID=G1) == [2.0]
    assert pick(s, "DCGM_FI_DEV_XID_ERRORS", UUID=G0) == []  # GPU 0's events are not readable: null
    fresh = valid_message()
    fresh["gpus"][0].update(xid_count=0)
    exporter.update(fresh)
    assert pick(scrape(exporter), "DCGM_FI_DEV_XID_ERRORS", UUID=G0) == [0.0]  # readable, none yet


def test_memory_health_in_dcgm_names_only_where_known(exporter: AgentExporter) -> None:
    msg = valid_message()
    msg["gpus"][0].update(ecc_corrected=12, ecc_uncorrected=1, remapped_rows_correctable=3)
    msg["gpus"][0].update(remapped_rows_uncorrectable=1, row_remap_pending=True, row_remap_failed=False)
    msg["gpus"][1].update(retired_pages_sbe=2, retired_pages_dbe=0, retired_pages_pending=False)
    exporter.update(msg)
    s = scrape(exporter)
    expected = {
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ([12.0], []),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ([1.0], []),
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ([3.0], []),
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ([1.0], []),
        "DCGM_FI_DEV_ROW_REMAP_PENDING": ([1.0], []),  # booleans as 1/0
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": ([0.0], []),
        "DCGM_FI_DEV_RETIRED_SBE": ([], [2.0]),  # GPU 1 retires pages (pre-Ampere); GPU 0 remaps rows
        "DCGM_FI_DEV_RETIRED_DBE": ([], [0.0]),
        "DCGM_FI_DEV_RETIRED_PENDING": ([], [0.0]),
    }
    got = {
        name: (
            pick(s, name, UUID=G0, hostname="n1", modelName=msg["gpus"][0]["model"]),
            pick(s, name, UUID=G1),
        )
        for name in expected
    }
    assert got == expected
    exporter.update(valid_message())  # a tick without the fields (unknown): the series go, no 0 stays
    s = scrape(exporter)
    assert [name for name in expected if name in s] == []
