"""Ingest against a broker of its own that goes away exactly while a batch's offsets are committed.

The stop is synchronous inside the fault hook that runs right before the commit (the point the
fault run found fatal: `consumer.commit()` timing out, uncaught), and the broker comes back
`OUTAGE_S` later in a thread. Ingest must wait it out, commit, and go on; at the end the lake
holds every tick sent exactly once (ground truth: the ticks this test produced), and the
group's committed offset is the topic's end, read back by a fresh consumer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest
from broker import Broker
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from test_ingest_kafka import env_for, lake_ids, produce_fleet

from gpuledger.config import load_config
from pipeline.ingest import KafkaIngester

pytestmark = pytest.mark.kafka
OUTAGE_S = 35.0  # longer than one commit attempt of kafka-python (request_timeout_ms 30 s)
DEADLINE_S = 150.0


def test_ingest_waits_out_a_broker_outage_during_commit(private_broker: Broker, tmp_path: Path, caplog):
    t0 = time.monotonic()
    b = private_broker
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=b.bootstrap, client_id="outage-test")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    fleet, ids, _ = produce_fleet(b.bootstrap, topic, ticks=6, seed=3)
    group = f"g-{uuid.uuid4().hex[:8]}"
    lake = tmp_path / "lake"
    cfg = load_config(env=env_for(b.bootstrap, topic, lake, group, GPULEDGER_LAKE_DECODE_WORKERS="0"))
    ing = KafkaIngester(cfg, workers=0)

    outage: dict[str, float] = {}
    restarted = threading.Event()
    errors: list[BaseException] = []
    real_hook = ing.fault.before_commit

    def restart_later() -> None:
        try:
            time.sleep(OUTAGE_S)
            b.env["KAFKA_KEEP_DATA"] = "1"
            b.run("start")
            outage["up_at"] = time.monotonic()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            restarted.set()

    def stop_broker_first_time(batch: int) -> None:
        real_hook(batch)
        if "down_at" not in outage:
            b.run("stop")  # returns once the broker process is gone
            outage["down_at"] = time.monotonic()
            threading.Thread(target=restart_later, daemon=True).start()

    ing.fault.before_commit = stop_broker_first_time  # type: ignore[method-assign]

    # More ticks arrive once the broker is back: ingest must still be there to read them.
    def produce_after_outage() -> None:
        restarted.wait(DEADLINE_S)
        if not errors:
            _, more, _ = produce_fleet(b.bootstrap, topic, ticks=4, fleet=fleet)
            ids.update(more)
            produced.set()

    produced = threading.Event()
    threading.Thread(target=produce_after_outage, daemon=True).start()

    def stop_when_done() -> None:
        produced.wait(DEADLINE_S)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ing.stats.ticks < len(ids):
            time.sleep(0.2)
        ing.stop.set()

    threading.Thread(target=stop_when_done, daemon=True).start()
    with caplog.at_level(logging.INFO, logger="gpuledger.ingest"):
        stats = ing.run(max_seconds=DEADLINE_S - (time.monotonic() - t0) - 5)
    assert restarted.is_set() and not errors, errors
    assert outage["up_at"] - outage["down_at"] >= OUTAGE_S

    got, rows, _ = lake_ids(lake)
    assert got == ids and rows == len(ids)  # nothing lost, nothing counted twice by queries
    assert stats.rejected == 0

    consumer = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        end = consumer.end_offsets([tp])[tp]
        assert consumer.committed(tp) == end == len(ids)
    finally:
        consumer.close()

    lines = [r.getMessage() for r in caplog.records]
    warnings = [m for m in lines if "broker unreachable while committing" in m]
    assert len(warnings) == 1, warnings  # said once, not once per attempt
    assert any("committing offsets succeeded again after" in r.getMessage() for r in caplog.records)
