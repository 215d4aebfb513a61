"""The HAMi cap actuator (collector/caps.py) on region files laid out as HAMi-core writes them.

Region files come from test_hami.raw_region (literal DESIGN §7 offsets), and a C program compiled
with the machine's `cc` declares shared_region_t from DESIGN §7 and prints every offset the Python
code reads or writes, so a wrong constant fails against a real C compiler's layout.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_hami import GPU0, GPU1, MIB, POD, TWO_GPU, container_dir, raw_region

from collector import hami
from collector.caps import ACK_VALIDATOR, CapAgent, Refused, apply_cap

C_LAYOUT = r"""
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <semaphore.h>
#define MAX_DEVS 16
#define MAX_PROCS 1024
typedef struct { uint64_t context_size, module_size, data_size, offset, total; uint64_t unused[3]; }
  device_memory_t;
typedef struct { uint64_t dec_util, enc_util, sm_util; uint64_t unused[3]; } device_util_t;
typedef struct {
  int32_t pid; int32_t hostpid; device_memory_t used[MAX_DEVS]; uint64_t monitorused[MAX_DEVS];
  device_util_t device_util[MAX_DEVS]; int32_t status; uint64_t seqlock; uint64_t unused[2];
} shrreg_proc_slot_t;
typedef struct {
  int32_t initialized_flag; uint32_t major_version; uint32_t minor_version; int32_t sm_init_flag;
  size_t owner_pid; sem_t sem; uint64_t device_num; char uuids[MAX_DEVS][96];
  uint64_t limit[MAX_DEVS]; uint64_t sm_limit[MAX_DEVS]; shrreg_proc_slot_t procs[MAX_PROCS];
  int proc_num; int utilization_switch; int recent_kernel; int priority; uint64_t last_kernel_time;
  sem_t sem_postinit;
} shared_region_t;
#define P(name, expr) printf("\"%s\": %zu,\n", name, (size_t)(expr))
int main(void) {
  printf("{\n");
  P("sizeof", sizeof(shared_region_t));
  P("device_num", offsetof(shared_region_t, device_num));
  P("uuids", offsetof(shared_region_t, uuids));
  P("limit", offsetof(shared_region_t, limit));
  P("sm_limit", offsetof(shared_region_t, sm_limit));
  P("procs", offsetof(shared_region_t, procs));
  P("proc_num", offsetof(shared_region_t, proc_num));
  P("last_kernel_time", offsetof(shared_region_t, last_kernel_time));
  P("slot", sizeof(shrreg_proc_slot_t));
  P("slot_used", offsetof(shrreg_proc_slot_t, used));
  P("used_total", offsetof(device_memory_t, total));
  P("slot_status", offsetof(shrreg_proc_slot_t, status));
  P("slot_seqlock", offsetof(shrreg_proc_slot_t, seqlock));
  printf("\"end\": 0}\n");
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_offsets_match_a_c_compilers_layout(tmp_path: Path) -> None:
    src = tmp_path / "layout.c"
    src.write_text(C_LAYOUT)
    subprocess.run(
        ["cc", "-O0", "-o", str(tmp_path / "layout"), str(src), "-pthread"], check=True, timeout=60
    )
    out = json.loads(
        subprocess.run([str(tmp_path / "layout")], capture_output=True, check=True, timeout=10).stdout
    )
    assert out["sizeof"] == hami.REGION_SIZE == 2_008_952
    assert (out["device_num"], out["uuids"], out["limit"], out["sm_limit"]) == (
        hami.OFF_DEVICE_NUM,
        hami.OFF_UUIDS,
        hami.OFF_LIMIT,
        hami.OFF_SM_LIMIT,
    )
    assert (out["procs"], out["proc_num"], out["last_kernel_time"]) == (
        hami.OFF_PROCS,
        hami.OFF_PROC_NUM,
        hami.OFF_LAST_KERNEL_TIME,
    )
    assert (out["slot"], out["slot_used"], out["used_total"]) == (
        hami.PROC_SIZE,
        hami.P_USED,
        hami.USED_TOTAL,
    )
    assert (out["slot_status"], out["slot_seqlock"]) == (hami.P_STATUS, hami.P_SEQLOCK)


def region(tmp_path: Path, **kw) -> Path:
    path = container_dir(tmp_path) / f"{GPU0}.cache"
    path.write_bytes(bytes(raw_region(**{**TWO_GPU, **kw})) + b"\0")  # HAMi-core's sizing byte
    return path


def limits(path: Path) -> tuple[list[int], list[int]]:
    b = path.read_bytes()
    return list(struct.unpack_from("<2Q", b, 1600)), list(struct.unpack_from("<2Q", b, 1728))


def test_memory_cap_written_in_place_for_the_right_device(tmp_path: Path) -> None:
    path = region(tmp_path)
    ino = path.stat().st_ino
    before = path.read_bytes()
    # GPU1: used 2048 MiB (pid 57): floor = 2048 + 512 = 2560
    res = apply_cap(path, GPU1, "memory", 10_240, 4_096)
    assert (res.status, res.used_mib, res.cap_before, res.cap_after) == ("applied", 2048, 10_240, 4_096)
    assert limits(path) == ([20480 * MIB, 4096 * MIB], [30, 100])
    after = path.read_bytes()
    assert path.stat().st_ino == ino  # in place: HAMi-core keeps the file mapped
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff and min(diff) >= 1608 and max(diff) < 1616  # only limit[1] changed


def test_memory_cap_refused_below_use_plus_floor(tmp_path: Path) -> None:
    path = region(tmp_path)
    before = path.read_bytes()
    # GPU0: used 9000 + 512 MiB (pids 41 and 57): floor 9512 + 951.2 = 10463.2
    with pytest.raises(Refused, match=r"new cap 10240 MiB below use 9512 MiB \+ floor \(10463 MiB\)"):
        apply_cap(path, GPU0, "memory", 20_480, 10_240)
    assert path.read_bytes() == before
    assert apply_cap(path, GPU0, "memory", 20_480, 10_496).status == "applied"


def test_core_cap_applies_at_restart(tmp_path: Path) -> None:
    path = region(tmp_path)
    res = apply_cap(path, GPU0, "core", 30, 45)
    assert res.status == "applies-at-restart"
    assert limits(path) == ([20480 * MIB, 10240 * MIB], [45, 100])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"major": 2}, "ABI version 2.2"),
        ({"flag": 0}, "not an initialized region"),
    ],
)
def test_other_abi_refused_with_nothing_written(tmp_path: Path, kw: dict, match: str) -> None:
    path = region(tmp_path, **kw)
    before = path.read_bytes()
    with pytest.raises(Refused, match=match):
        apply_cap(path, GPU0, "memory", 20_480, 16_384)
    assert path.read_bytes() == before


def test_changed_under_the_agent_missing_and_wrong_gpu_refused(tmp_path: Path) -> None:
    path = region(tmp_path)
    before = path.read_bytes()
    with pytest.raises(
        Refused, match="cap changed under the agent: limit is 20480 MiB, decision expected 24576"
    ):
        apply_cap(path, GPU0, "memory", 24_576, 16_384)
    with pytest.raises(Refused, match="cap changed under the agent: sm_limit is 30 %, decision expected 50"):
        apply_cap(path, GPU0, "core", 50, 40)
    with pytest.raises(Refused, match="does not hold GPU-ffff"):
        apply_cap(path, "GPU-ffff", "memory", 20_480, 16_384)
    assert path.read_bytes() == before
    with pytest.raises(Refused, match="region missing"):
        apply_cap(tmp_path / "nope.cache", GPU0, "memory", 20_480, 16_384)
    short = tmp_path / "short.cache"
    short.write_bytes(before[:1000])
    with pytest.raises(Refused, match="size 1000 bytes"):
        apply_cap(short, GPU0, "memory", 20_480, 16_384)


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def decision(**kw) -> dict:
    d = {
        "schema": "gpuledger.cap-decision/v1",
        "decision_id": "0" * 31 + "1",
        "cluster": "c1",
        "node": "n1",
        "slice_id": f"{GPU0}:hami:{POD}/main",
        "gpu_uuid": GPU0,
        "pod_uid": POD,
        "container": "main",
        "tenant": "nlp",
        "pool": "c1/H100",
        "slice_kind": "vgpu",
        "resource": "memory",
        "action": "shrink",
        "old_cap": 20_480,
        "new_cap": 16_384,
        "reason": "test",
        "mode": "enforce",
        "issued_at": "2026-11-27T11:59:00Z",
        "expires_at": "2026-11-27T12:04:00Z",
        "note": "",
        "inputs": {},
    }
    return {**d, **kw}


def agent(tmp_path: Path) -> CapAgent:
    return CapAgent("n1", tmp_path, tmp_path / "applied.log", clock=lambda: NOW)


def test_agent_applies_once_refuses_expired_unknown_and_dlqs_malformed(tmp_path: Path) -> None:
    path = region(tmp_path)
    a = agent(tmp_path)
    kind, ack = a.handle(json.dumps(decision()).encode())
    assert kind == "ack" and not list(ACK_VALIDATOR.iter_errors(ack))
    assert (ack["status"], ack["used_mib"], ack["cap_after"], ack["reason"]) == (
        "applied",
        9512,
        16_384,
        None,
    )
    assert limits(path)[0][0] == 16_384 * MIB
    first = ack
    assert a.handle(json.dumps(decision()).encode()) is None  # redelivered: applied once
    # after a restart, before the ack was confirmed sent: the same ack again, nothing re-applied
    # (else it would be refused: the cap is no longer old_cap)
    assert agent(tmp_path).handle(json.dumps(decision()).encode()) == ("ack", first)
    a.log.mark_sent([first["decision_id"]])
    assert agent(tmp_path).handle(json.dumps(decision()).encode()) is None  # ... across restarts too
    kind, ack = a.handle(
        json.dumps(decision(decision_id="0" * 31 + "2", expires_at="2026-11-27T11:59:59Z")).encode()
    )
    assert (ack["status"], ack["reason"]) == ("refused", "expired at 2026-11-27T11:59:59Z")
    kind, ack = a.handle(json.dumps(decision(decision_id="0" * 31 + "3", pod_uid="other")).encode())
    assert ack["status"] == "refused" and ack["reason"].startswith(
        f"unknown slice {GPU0}:hami:{POD}/main: no HAMi"
    )
    assert a.handle(json.dumps(decision(decision_id="0" * 31 + "4", node="n2")).encode()) is None
    assert a.handle(b"{not json")[0] == "dlq"
    kind, reason = a.handle(json.dumps(decision(decision_id="x")).encode())
    assert (kind, reason) == ("dlq", "decision_id: 'x' does not match '^[0-9a-f]{32}$'")
    kind, reason = a.handle(json.dumps({k: v for k, v in decision().items() if k != "new_cap"}).encode())
    assert (kind, reason) == ("dlq", "(root): 'new_cap' is a required property")
    assert limits(path)[0][0] == 16_384 * MIB  # nothing else written
    kind, ack = a.handle(
        json.dumps(decision(decision_id="0" * 31 + "5", resource="core", old_cap=30, new_cap=40)).encode()
    )
    assert (ack["status"], ack["cap_after"]) == ("applies-at-restart", 40)


def test_crash_between_log_and_send_resends_the_stored_ack(tmp_path: Path) -> None:
    """The agent logged the decision id and applied the cap, then died before the ack was sent:
    the redelivered decision is answered with the stored ack after the restart, never re-applied."""
    path = region(tmp_path)
    raw = json.dumps(decision()).encode()
    kind, ack = agent(tmp_path).handle(raw)  # ... and the process dies here, nothing sent
    assert kind == "ack" and ack["status"] == "applied"
    log = (tmp_path / "applied.log").read_text().splitlines()
    assert log == ["0" * 31 + "1\t" + json.dumps(ack, sort_keys=True)]
    restarted = agent(tmp_path)
    assert restarted.handle(raw) == ("ack", ack)
    assert limits(path)[0][0] == 16_384 * MIB
    restarted.log.mark_sent([ack["decision_id"]])
    assert (tmp_path / "applied.log").read_text().splitlines()[-1] == "0" * 31 + "1\tsent"
    assert agent(tmp_path).handle(raw) is None
    # a torn last line (crash mid-write) counts as answered, with no ack to repeat
    with open(tmp_path / "applied.log", "a") as fh:
        fh.write("0" * 31 + '9\t{"schema": "gpul')
    torn = agent(tmp_path)
    assert "0" * 31 + "9" in torn.log and torn.log.pending_ack("0" * 31 + "9") is None
    torn.log.add("0" * 31 + "8")  # the torn line was ended first
    assert (tmp_path / "applied.log").read_text().endswith("gpul\n" + "0" * 31 + "8\n")
    # a log of bare ids (before acks were stored) still means answered
    (tmp_path / "old.log").write_text("0" * 31 + "1\n")
    old = CapAgent("n1", tmp_path, tmp_path / "old.log", clock=lambda: NOW)
    assert old.handle(raw) is None
