"""The control path end to end through the real broker: lake -> policy -> decision on gpu.caps.v1 ->
node agent -> HAMi region changed in place -> ack on gpu.cap-acks.v1 -> audit in the lake (DuckDB),
with a redelivered decision applied once, an expired one refused and a malformed one in the DLQ."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
from kafka import KafkaConsumer, KafkaProducer
from test_hami import GPU0, MIB, POD, container_dir, raw_region

from collector.caps import CapAgent, run_cap_agent
from gpuledger.config import Config
from gpuledger.decode import decode_batch
from pipeline.enforcer import DECISION_VALIDATOR, Enforcer, land_acks
from warehouse.enforcer_audit import audit_sql
from warehouse.lake import Lake, new_batch_id

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SID = f"{GPU0}:hami:{POD}/main"


def tick(k: int) -> dict[str, Any]:
    """Tick k of node n1 (5-minute interval, ending at NOW for k = 575): one vGPU slice, cap 40 GiB,
    core 50 %, using 10,000 MiB and 20 % busy: far below both caps for two days."""
    ts = NOW - timedelta(minutes=5 * (575 - k))
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": "c1",
        "node": "n1",
        "boot_id": "b0000000-0000-4000-8000-000000000000",
        "seq": k,
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "interval_s": 300.0,
        "gpus": [
            {
                "uuid": GPU0,
                "index": 0,
                "model": "NVIDIA H100 80GB HBM3",
                "mem_total_mib": 81920,
                "mem_used_mib": 10000,
                "util_pct": 20.0,
                "power_w": 100.0,
                "energy_j": 30000.0,
                "temp_c": 40,
                "mig_mode": False,
                "state": "ok",
            }
        ],
        "slices": [
            {
                "slice_id": SID,
                "gpu_uuid": GPU0,
                "kind": "vgpu",
                "mem_cap_mib": 40960,
                "core_cap_pct": 50,
                "mem_used_mib": 10000,
                "util_pct": 20.0,
                "last_kernel_age_s": 1,
                "workload": {"namespace": "nlp", "pod": "llm-0", "container": "main", "pod_uid": POD},
            }
        ],
        "processes": [],
    }


def consume_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    c = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=15000
    )
    out = []
    try:
        for rec in c:
            out.append(rec)
            if len(out) >= n:
                break
    finally:
        c.close()
    return out


def test_decision_to_region_to_ack_to_lake(tmp_path: Path, kafka_bootstrap: str, make_topic) -> None:
    caps, acks, dlq = make_topic("caps"), make_topic("acks"), make_topic("capsdlq")
    lake = Lake(tmp_path / "lake")
    msgs = [tick(k) for k in range(576)]
    batch = new_batch_id()
    lake.write_batch(
        decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20), batch
    )
    hook = tmp_path / "hook"
    region = container_dir(hook) / f"{GPU0}.cache"
    region.write_bytes(
        bytes(
            raw_region(
                uuids=[GPU0],
                limits=[40960 * MIB],
                sm_limits=[50],
                procs=[{"pid": 7, "hostpid": 1007, "used": [10000 * MIB], "sm": [20], "status": 1}],
            )
        )
        + b"\0"
    )

    cfg = Config()
    cfg.lake.path = str(lake.root)
    cfg.enforcer.mode = "enforce"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent: list[dict[str, Any]] = []

    def send(node: str, msg: dict[str, Any]) -> None:
        sent.append(msg)
        producer.send(caps, key=node.encode(), value=json.dumps(msg).encode())

    res = Enforcer(cfg, send).cycle(NOW)
    assert res == {"decisions": 2, "sent": 2, "held": 0, "demoted": []}
    assert [(m["resource"], m["action"], m["old_cap"], m["new_cap"]) for m in sent] == [
        ("memory", "shrink", 40960, 30720),
        ("core", "lower", 50, 40),
    ]
    mem, core = sent
    assert all(not list(DECISION_VALIDATOR.iter_errors(m)) for m in sent)
    # the same memory decision again (redelivery), an expired copy, and a malformed message
    redelivered = mem
    expired = {**mem, "decision_id": "e" * 32, "expires_at": "2026-11-27T11:00:00.000000Z"}
    for raw in (json.dumps(redelivered).encode(), json.dumps(expired).encode(), b'{"schema": "x"'):
        producer.send(caps, key=b"n1", value=raw)
    producer.flush()
    producer.close()

    agent = CapAgent("n1", hook, tmp_path / "spool" / "applied.log", clock=lambda: NOW + timedelta(seconds=5))
    handled = 0
    for _ in range(20):
        handled += run_cap_agent(agent, kafka_bootstrap, caps, acks, dlq, max_polls=3, poll_ms=1000)
        if handled >= 5:
            break
    assert handled == 5

    b = region.read_bytes()
    assert struct.unpack_from("<Q", b, 1600)[0] == 30720 * MIB  # limit[0], written once
    assert struct.unpack_from("<Q", b, 1728)[0] == 40  # sm_limit[0]

    got = consume_all(kafka_bootstrap, acks, 3)
    assert len(got) == 3 and all(r.key == b"n1" for r in got)
    (bad,) = consume_all(kafka_bootstrap, dlq, 1)
    assert bad.value == b'{"schema": "x"' and dict(bad.headers)["reason"].startswith(b"not valid JSON")

    assert land_acks(lake, [(acks, r.value) for r in got] + [(acks, b"[]")], NOW) == (3, 1)
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT decision_id, resource, status, used_mib, cap_after, reason FROM {audit_sql(lake, 'acks')} "
        "ORDER BY resource, status"
    ).fetchall()
    assert rows == [
        (
            core["decision_id"],
            "core",
            "applies-at-restart",
            10000,
            40,
            "HAMi-core reads sm_limit when a process starts",
        ),
        (mem["decision_id"], "memory", "applied", 10000, 30720, None),
        ("e" * 32, "memory", "refused", None, 40960, "expired at 2026-11-27T11:00:00.000000Z"),
    ]
    dec = con.sql(
        f"SELECT decision_id, action, sent, held, json_extract(inputs, '$.history_hours')::DOUBLE "
        f"FROM {audit_sql(lake, 'decisions')} ORDER BY resource"
    ).fetchall()
    assert dec == [
        (core["decision_id"], "lower", True, None, None),
        (mem["decision_id"], "shrink", True, None, 47.917),
    ]
    (dlq_row,) = con.sql(f"SELECT reason FROM {audit_sql(lake, 'dlq')}").fetchall()
    assert dlq_row[0] == "(root): [] is not of type 'object'"

    # the next cycle sends nothing: both decisions are in flight until they expire or show up
    assert Enforcer(cfg, send).cycle(NOW + timedelta(minutes=1))["sent"] == 0


def test_recommend_mode_writes_decisions_and_sends_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    batch = new_batch_id()
    msgs = [tick(k) for k in range(576)]
    lake.write_batch(
        decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20), batch
    )
    cfg = Config()
    cfg.lake.path = str(lake.root)
    cfg.enforcer.mode = "recommend"
    sent: list[Any] = []
    assert Enforcer(cfg, lambda n, m: sent.append(m)).cycle(NOW) == {
        "decisions": 2,
        "sent": 0,
        "held": 0,
        "demoted": [],
    }
    assert sent == []
    rows = duckdb.sql(
        f"SELECT resource, mode, sent FROM {audit_sql(lake, 'decisions')} ORDER BY 1"
    ).fetchall()
    assert rows == [("core", "recommend", False), ("memory", "recommend", False)]
    # the same recommendation is not written again next cycle
    assert Enforcer(cfg, lambda n, m: sent.append(m)).cycle(NOW + timedelta(minutes=1))["decisions"] == 0


def test_cli_recommend_then_status(tmp_path: Path, capsys) -> None:
    from gpuledger.cli import main

    lake = Lake(tmp_path / "lake")
    batch = new_batch_id()
    msgs = [tick(k) for k in range(570, 576)]  # the last half hour: no shrink yet, nothing to say
    now_msgs = [
        {
            **m,
            "ts": (datetime.now(UTC) - timedelta(minutes=5 * (575 - m["seq"]))).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }
        for m in msgs
    ]
    for m in now_msgs:
        m["slices"][0]["mem_cap_mib"] = 40960
        m["slices"][0]["mem_used_mib"] = 39000  # above 90 % of the cap: grow (to the allocation: none)
    lake.write_batch(
        decode_batch([orjson.dumps(m) for m in now_msgs], batch=batch, max_message_bytes=1 << 20), batch
    )
    assert main(["enforcer", "recommend", "--lake", str(lake.root)]) == 0
    assert json.loads(capsys.readouterr().out) == {"decisions": 0, "demoted": [], "held": 0, "sent": 0}
    assert main(["enforcer", "status", "--lake", str(lake.root)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["mode"], st["decisions_24h"], st["acks_24h"], st["demoted"]) == ("off", {}, {}, {})
