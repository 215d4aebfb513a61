"""The ingest consumer group's lag, read from the broker (what the GpuledgerIngestLag rule watches)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LagReading:
    """Consumer-group lag of the ingest: messages not yet committed, per partition."""

    group: str
    topic: str
    per_partition: Mapping[int, int]

    @property
    def total(self) -> int:
        return sum(self.per_partition.values())


def kafka_lag(bootstrap: str, group: str, topic: str, client_id: str = "gpuledger-jobs") -> LagReading:
    """Lag of a consumer group on a topic: end offset - committed offset per partition (kafka-python).

    A partition the group never committed counts from its beginning offset (all of it is unread).
    """
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.structs import TopicPartition

    # short timeouts: an unreachable broker must not hold up the idle alerts evaluated with it
    kw = {"request_timeout_ms": 10000, "bootstrap_timeout_ms": 5000}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, **kw)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id=client_id, **kw)
    try:
        committed = {
            tp.partition: om.offset for tp, om in _group_offsets(admin, group).items() if tp.topic == topic
        }
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = consumer.end_offsets(tps) if tps else {}
        begins = consumer.beginning_offsets(tps) if tps else {}
        lag = {}
        for tp in tps:
            done = committed.get(tp.partition)
            if done is None or done < 0:
                done = begins[tp]
            lag[tp.partition] = max(0, ends[tp] - done)
        return LagReading(group=group, topic=topic, per_partition=lag)
    finally:
        consumer.close()
        admin.close()


def _group_offsets(admin: Any, group: str, tries: int = 20, wait_s: float = 0.5) -> dict[Any, Any]:
    """Committed offsets of a group, retried while the group's coordinator is not ready.

    A fresh broker creates its offsets topic on the first lookup and answers
    COORDINATOR_NOT_AVAILABLE, then COORDINATOR_LOAD_IN_PROGRESS while it loads the partition;
    NOT_COORDINATOR follows a move. All are retriable and pass within seconds, so a bounded retry
    (tries x wait_s) beats failing the evaluation that asked.
    """
    import time

    from kafka.errors import KafkaError

    for i in range(tries):
        try:
            return dict(admin.list_group_offsets({group: None}).get(group, {}))
        except KafkaError as e:
            if not getattr(e, "retriable", False) or i == tries - 1:
                raise
            time.sleep(wait_s)
    return {}
