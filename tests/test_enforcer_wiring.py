"""Wiring through the real broker: `gpuledger collect`'s cap agent thread (start_cap_agent) applies a
decision from gpu.caps.v1 to the node's HAMi region and answers on gpu.cap-acks.v1; the enforcer
job's AckLander lands the ack in the audit (DuckDB)."""

from __future__ import annotations

import json
import struct
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from test_enforcer_actuator import decision, region
from test_hami import MIB

from collector.caps import cap_agent_wanted, start_cap_agent
from gpuledger.config import Config
from pipeline.enforcer import AckLander
from warehouse.enforcer_audit import audit_sql
from warehouse.lake import Lake


def _cfg(tmp_path: Path, bootstrap: str, caps: str, acks: str, dlq: str) -> Config:
    cfg = Config()
    cfg.kafka.bootstrap_servers = bootstrap
    cfg.kafka.caps_topic, cfg.kafka.cap_acks_topic, cfg.kafka.caps_dlq_topic = caps, acks, dlq
    cfg.kafka.client_id = f"wiring-{caps}"
    cfg.collector.node = "n1"
    cfg.collector.hami_hook_dir = str(tmp_path)
    cfg.collector.spool_dir = str(tmp_path / "spool")
    cfg.lake.path = str(tmp_path / "lake")
    cfg.enforcer.mode = "grow-only"
    return cfg


def test_cap_agent_wanted_only_when_some_mode_is_on() -> None:
    cfg = Config()
    assert cfg.enforcer.mode == "off" and not cap_agent_wanted(cfg)
    assert start_cap_agent(cfg, threading.Event()) is None
    cfg.enforcer.pools = {"c1/H100": "recommend"}  # rollbacks go out in recommend
    assert cap_agent_wanted(cfg)
    cfg.kafka.bootstrap_servers = ""
    assert not cap_agent_wanted(cfg)


def test_collect_agent_applies_and_ack_lands_in_the_audit(
    tmp_path: Path, kafka_bootstrap: str, make_topic
) -> None:
    caps, acks, dlq = make_topic("caps"), make_topic("acks"), make_topic("capsdlq")
    cfg = _cfg(tmp_path, kafka_bootstrap, caps, acks, dlq)
    path = region(tmp_path)  # limit[0] 20,480 MiB, using 9,512 MiB
    now = datetime.now(UTC)
    z = "%Y-%m-%dT%H:%M:%SZ"
    d = decision(
        issued_at=now.strftime(z),
        expires_at=datetime.fromtimestamp(now.timestamp() + 300, UTC).strftime(z),
    )
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    p.send(caps, key=b"n2", value=json.dumps({**d, "node": "n2", "decision_id": "f" * 32}).encode())
    p.send(caps, key=b"n1", value=json.dumps(d).encode())
    p.flush()
    p.close()

    stop = threading.Event()
    t = start_cap_agent(cfg, stop, poll_ms=200)
    assert t is not None and t.name == "gpuledger-cap-agent"
    lander = AckLander(cfg, Lake(cfg.lake.path))
    try:
        got = {"acks": 0, "bad_acks": 0}
        deadline = time.monotonic() + 60
        while got["acks"] == 0 and time.monotonic() < deadline:
            got = lander.land(now, max_polls=3, poll_ms=500)
        assert got == {"acks": 1, "bad_acks": 0}
    finally:
        stop.set()
        t.join(timeout=15)
        lander.close()
    assert not t.is_alive()
    assert struct.unpack_from("<Q", path.read_bytes(), 1600)[0] == 16_384 * MIB
    rows = duckdb.sql(
        "SELECT decision_id, node, status, used_mib, cap_before, cap_after "
        f"FROM {audit_sql(Lake(cfg.lake.path), 'acks')}"
    ).fetchall()
    assert rows == [("0" * 31 + "1", "n1", "applied", 9512, 20_480, 16_384)]
    log = (tmp_path / "spool" / "caps-applied.log").read_text().splitlines()
    assert log[-1] == "0" * 31 + "1\tsent"  # the ack reached the broker before the offset commit
    # the landed ack's offset is committed for the enforcer's group: a restart lands nothing twice
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        group = f"{cfg.kafka.client_id}-enforcer-acks"
        offs = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert {(tp.topic, tp.partition): o.offset for tp, o in offs.items()} == {(acks, 0): 1}


def test_gpuledger_collect_runs_the_cap_agent(tmp_path: Path, kafka_bootstrap: str, make_topic) -> None:
    """`gpuledger collect` as a user runs it, with [enforcer] mode on: the decision for its node
    waiting on gpu.caps.v1 is applied to the region and acknowledged while it collects."""
    from test_cli import gpuledger
    from test_enforcer_control import consume_all
    from test_ingest_kafka import env_for

    caps, acks, dlq, ticks = make_topic("caps"), make_topic("acks"), make_topic("capsdlq"), make_topic("t")
    path = region(tmp_path)
    now = datetime.now(UTC)
    z = "%Y-%m-%dT%H:%M:%SZ"
    d = decision(
        issued_at=now.strftime(z), expires_at=datetime.fromtimestamp(now.timestamp() + 600, UTC).strftime(z)
    )
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    p.send(caps, key=b"n1", value=json.dumps(d).encode())
    p.flush()
    p.close()
    env = env_for(
        kafka_bootstrap,
        ticks,
        tmp_path / "lake",
        f"g-{caps}",
        GPULEDGER_KAFKA_CAPS_TOPIC=caps,
        GPULEDGER_KAFKA_CAP_ACKS_TOPIC=acks,
        GPULEDGER_KAFKA_CAPS_DLQ_TOPIC=dlq,
        GPULEDGER_KAFKA_CLIENT_ID=f"cli-{caps}",
        GPULEDGER_ENFORCER_MODE="enforce",
        GPULEDGER_COLLECTOR_NODE="n1",
        GPULEDGER_COLLECTOR_HAMI_HOOK_DIR=str(tmp_path),
    )
    r = gpuledger(tmp_path, "collect", "--backend", "simulate", "--until", "20s", env=env, timeout=120)
    assert r.rc == 0, r.err[-2000:]
    assert struct.unpack_from("<Q", path.read_bytes(), 1600)[0] == 16_384 * MIB, r.err[-3000:]
    (got,) = consume_all(kafka_bootstrap, acks, 1)
    ack = json.loads(got.value)
    assert (got.key, ack["decision_id"], ack["status"], ack["cap_after"]) == (
        b"n1",
        "0" * 31 + "1",
        "applied",
        16_384,
    )


def test_enforcer_job_lands_acks(tmp_path: Path, kafka_bootstrap: str, make_topic) -> None:
    """`gpuledger jobs`' enforcer job: one cycle (nothing to decide on an empty lake), then the
    acks waiting on gpu.cap-acks.v1 into the audit; a recommend-only enforcer reads no acks."""
    from pipeline.jobs import JobRunner

    caps, acks, dlq = make_topic("caps"), make_topic("acks"), make_topic("capsdlq")
    cfg = _cfg(tmp_path, kafka_bootstrap, caps, acks, dlq)
    ack = {
        "schema": "gpuledger.cap-ack/v1",
        "decision_id": "c" * 32,
        "cluster": "c1",
        "node": "n1",
        "slice_id": "GPU-x:hami:pod/main",
        "resource": "core",
        "status": "applies-at-restart",
        "reason": "HAMi-core reads sm_limit when a process starts",
        "used_mib": None,
        "cap_before": 50,
        "cap_after": 40,
        "acked_at": "2026-11-27T12:00:05.000000Z",
    }
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    p.send(acks, key=b"n1", value=json.dumps(ack).encode())
    p.send(acks, key=b"n1", value=b"not json")
    p.flush()
    p.close()
    now = datetime(2026, 11, 27, 12, 1, tzinfo=UTC)
    runner = JobRunner(cfg, clock=lambda: now)
    got: dict = {}
    try:
        for _ in range(10):  # the first polls may only join the group
            got = runner.enforcer(now)
            if got.get("acks"):
                break
    finally:
        if runner._acks is not None:
            runner._acks.close()
    assert (got["acks"], got["bad_acks"]) == (1, 1)
    rows = duckdb.sql(f"SELECT decision_id, status FROM {audit_sql(Lake(cfg.lake.path), 'acks')}").fetchall()
    assert rows == [("c" * 32, "applies-at-restart")]
    cfg.enforcer.mode = "recommend"
    quiet = JobRunner(cfg, clock=lambda: now)
    assert "acks" not in quiet.enforcer(now) and quiet._acks is None
