"""Store-and-forward against a real broker that this test stops and restarts mid-run.

The broker is the test's own (own KAFKA_HOME, own ports, the repo's jars through a symlink), so
the shared broker other tests use is never disturbed. Ticks from three nodes keep coming while
the broker is stopped, the agent itself restarts during the outage (new boot ids, same spool),
and at the end every tick must be in the topic exactly once after dedup by (node, boot_id, seq),
in order per node.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from broker import Broker
from messages import valid_message

from collector.spool import SpoolingTransport
from collector.transport import KafkaTransport

NODES = ("n1", "n2", "n3")
DEADLINE_S = 110.0  # the whole test, broker start included

pytestmark = pytest.mark.kafka


@pytest.fixture
def broker(private_broker: Broker) -> Broker:
    return private_broker


class Agent:
    """One agent run: a boot id per node, seq from 0, ticks sent through the spool."""

    def __init__(self, transport: SpoolingTransport) -> None:
        self.transport = transport
        self.boot = {n: str(uuid.uuid4()) for n in NODES}
        self.seq = dict.fromkeys(NODES, 0)
        self.sent: list[tuple[str, str, int]] = []

    def round(self) -> None:
        for node in NODES:
            msg = valid_message(self.seq[node], node=node)
            msg["boot_id"] = self.boot[node]
            self.transport.send(node, orjson.dumps(msg))
            self.sent.append((node, self.boot[node], self.seq[node]))
            self.seq[node] += 1


def _spool(broker: Broker, topic: str, spool_dir: Path) -> SpoolingTransport:
    def factory() -> KafkaTransport:
        return KafkaTransport(
            broker.bootstrap,
            topic,
            linger_ms=5,
            request_timeout_ms=1500,
            delivery_timeout_ms=3000,
            max_block_ms=2000,
            bootstrap_timeout_ms=2000,
            flush_timeout_s=5.0,
        )

    return SpoolingTransport(
        factory, spool_dir, 64 * 1024 * 1024, retry_s=1.0, ack_timeout_s=4.0, replay_budget_s=2.0
    )


def test_every_tick_arrives_once_and_in_order_across_a_broker_outage(broker: Broker, tmp_path: Path) -> None:
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    t_start = time.monotonic()

    def left() -> float:
        return DEADLINE_S - (time.monotonic() - t_start)

    topic = f"spool-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="spool-test")
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    spool_dir = tmp_path / "spool"

    # Phase 1: broker up, straight through.
    agent1 = Agent(_spool(broker, topic, spool_dir))
    for _ in range(30):
        agent1.round()
        time.sleep(0.01)
    agent1.transport.flush()
    assert agent1.transport.stats().sent_direct == 90 and agent1.transport.stats().spooled == 0

    # Phase 2: the broker stops while ticks keep coming; the agent restarts during the outage.
    broker.run("stop")
    while agent1.transport.stats().spooled == 0 and left() > 60:
        agent1.round()
        time.sleep(0.05)
    for _ in range(10):
        agent1.round()
    agent1.transport.close()  # an agent restart: its spool stays on disk
    spooled_by_agent1 = agent1.transport.stats().pending_records
    assert spooled_by_agent1 > 0

    agent2 = Agent(_spool(broker, topic, spool_dir))
    assert agent2.transport.stats().pending_records == spooled_by_agent1
    restarted = threading.Event()
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            broker.run("restart-keep")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            restarted.set()

    threading.Thread(target=restart, daemon=True).start()
    while not restarted.is_set() and left() > 40:
        agent2.round()
        time.sleep(0.05)
    assert restarted.is_set() and not errors, errors

    # Phase 3: broker back; keep producing until the spool has drained, then a little more.
    while agent2.transport.stats().pending_records and left() > 20:
        agent2.round()
        time.sleep(0.05)
    for _ in range(10):
        agent2.round()
    agent2.transport.flush()
    st = agent2.transport.stats()
    assert st.pending_records == 0 and st.inflight == 0 and st.dropped == 0, st
    assert st.replayed >= spooled_by_agent1
    agent2.transport.close()

    sent = agent1.sent + agent2.sent
    expected = set(sent)
    assert len(expected) == len(sent)

    # Consume everything back.
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
    )
    got: list[tuple[str, str, int]] = []
    try:
        while set(got) < expected and left() > 0:
            for rec in consumer:
                msg = orjson.loads(rec.value)
                assert rec.key == msg["node"].encode()
                got.append((msg["node"], msg["boot_id"], msg["seq"]))
    finally:
        consumer.close()

    assert set(got) == expected  # nothing lost, nothing foreign
    # in order per node: after dropping repeats, (agent run, seq) only goes up
    boot_rank = {**{b: 0 for b in agent1.boot.values()}, **{b: 1 for b in agent2.boot.values()}}
    for node in NODES:
        seen: set[tuple[str, str, int]] = set()
        order = []
        for t in got:
            if t[0] == node and t not in seen:
                seen.add(t)
                order.append((boot_rank[t[1]], t[2]))
        assert order == sorted(order), f"{node}: ticks out of order"
        assert len(order) == sum(1 for t in sent if t[0] == node)
    duplicates = len(got) - len(expected)
    print(
        f"\nspool/kafka: sent {len(sent)} ticks, received {len(got)} ({duplicates} duplicates), "
        f"agent 1 spooled {spooled_by_agent1}, agent 2 replayed {st.replayed}, "
        f"{time.monotonic() - t_start:.1f} s"
    )
