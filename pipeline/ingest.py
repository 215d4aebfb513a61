"""Kafka consumer group -> Parquet lake, exactly once as seen by queries.

The order of a flush is what makes it safe: decode the batch, write its row files, then its
tick file (the batch's commit record), publish rejects to the DLQ topic, and only then
commit the Kafka offsets. A crash anywhere before the commit re-delivers the batch; the
views keep one batch per tick, so a tick written twice is still counted once. Bad messages
never stop ingest: each goes to the DLQ topic and the lake's dlq/ with its reason.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gpuledger.config import Config
from gpuledger.decode import decode_batch
from warehouse.lake import Lake, new_batch_id

log = logging.getLogger("gpuledger.ingest")

FAULT_ENV = "GPULEDGER_FAULT_CRASH_BEFORE_COMMIT"  # test hook: exit hard after N batches' files


@dataclass(frozen=True)
class Record:
    """One consumed message, transport-neutral (Kafka or the in-process bus)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class IngestStats:
    batches: int = 0
    messages: int = 0
    ticks: int = 0
    gpu_rows: int = 0
    slice_rows: int = 0
    process_rows: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: IngestStats) -> None:
        for name in ("batches", "messages", "ticks", "gpu_rows", "slice_rows", "process_rows", "rejected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class BatchSink:
    """Decode + write one batch into the lake; publishing rejects is delegated to the caller."""

    def __init__(self, lake: Lake, max_message_bytes: int,
                 publish_dlq: Callable[[list[tuple[Record, str]]], None] | None = None) -> None:
        self.lake = lake
        self.max_message_bytes = max_message_bytes
        self.publish_dlq = publish_dlq
        self._fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)
        self._flushes = 0

    def write(self, records: Sequence[Record]) -> IngestStats:
        batch = new_batch_id()
        decoded = decode_batch([r.value for r in records], batch=batch, max_message_bytes=self.max_message_bytes,
                               partitions=[r.partition for r in records], offsets=[r.offset for r in records])
        self.lake.write_batch(decoded, batch)
        stats = IngestStats(batches=1, messages=len(records), ticks=decoded.ticks,
                            gpu_rows=decoded.tables["gpu"].num_rows, slice_rows=decoded.tables["slice"].num_rows,
                            process_rows=decoded.tables["process"].num_rows, rejected=len(decoded.rejects))
        if decoded.rejects:
            now = datetime.now(UTC)
            bad = [(records[r.index], r.reason) for r in decoded.rejects]
            self.lake.write_dlq(({"received_at": now, "topic": rec.topic, "partition": rec.partition,
                                  "offset": rec.offset, "key": rec.key, "reason": reason, "size": len(rec.value),
                                  "payload": rec.value} for rec, reason in bad), batch)
            if self.publish_dlq is not None:
                self.publish_dlq(bad)
            for _, reason in bad:
                head = reason.split(":", 1)[0]
                stats.reasons[head] = stats.reasons.get(head, 0) + 1
        self._flushes += 1
        if self._fault_after and self._flushes >= self._fault_after:
            log.error("fault injection: exiting after writing batch %d, before committing offsets", batch)
            os._exit(99)
        return stats


class KafkaIngester:
    """A member of the ingest consumer group."""

    def __init__(self, cfg: Config, lake: Lake | None = None, stop: threading.Event | None = None) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        self.cfg = cfg
        k = cfg.kafka
        self.lake = lake or Lake(cfg.lake.path, cfg.lake.zstd_level)
        self.stop = stop or threading.Event()
        self.stats = IngestStats()
        self.pending: list[Record] = []
        self.pending_bytes = 0
        self.pending_since = 0.0
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-dlq",
                                      acks="all", max_request_size=k.dlq_max_payload_bytes + 65536,
                                      linger_ms=5)
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, group_id=k.group_id, client_id=f"{k.client_id}-ingest",
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=cfg.lake.batch_max_messages,
            max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024,
            max_poll_interval_ms=300_000, session_timeout_ms=10_000, heartbeat_interval_ms=2_000,
        )
        self.sink = BatchSink(self.lake, k.max_message_bytes, self._publish_dlq)
        ingester = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                # Flush what we hold while we still own it, so the next owner starts after it.
                if ingester.pending:
                    log.info("partitions revoked (%s): flushing %d pending messages", revoked,
                             len(ingester.pending))
                    ingester.flush()

            def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

        self.consumer.subscribe([k.topic], listener=_Listener())

    def _publish_dlq(self, bad: list[tuple[Record, str]]) -> None:
        limit = self.cfg.kafka.dlq_max_payload_bytes
        futures = []
        for rec, reason in bad:
            value = rec.value
            headers = [("reason", reason.encode()[:4096]), ("src-topic", rec.topic.encode()),
                       ("src-partition", str(rec.partition).encode()), ("src-offset", str(rec.offset).encode()),
                       ("original-size", str(len(value)).encode())]
            if len(value) > limit:
                # The lake's dlq/ keeps the full bytes; the topic gets a bounded prefix.
                value = value[:limit]
                headers.append(("truncated", b"true"))
            futures.append(self.producer.send(self.cfg.kafka.dlq_topic, key=rec.key, value=value, headers=headers))
        self.producer.flush()
        for f in futures:
            f.get(timeout=30)

    def flush(self) -> None:
        if not self.pending:
            return
        from kafka.structs import OffsetAndMetadata, TopicPartition

        records = self.pending
        self.pending, self.pending_bytes = [], 0
        stats = self.sink.write(records)
        offsets: dict[Any, Any] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset < r.offset + 1:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        self.consumer.commit(offsets)
        self.stats.add(stats)
        log.info("batch: %d msgs, %d ticks, %d slice rows, %d rejected (total %d ticks)", stats.messages,
                 stats.ticks, stats.slice_rows, stats.rejected, self.stats.ticks)

    def run(self, idle_exit_s: float | None = None, max_messages: int | None = None) -> IngestStats:
        """Consume until stopped (or idle for idle_exit_s, or max_messages read); flush on the way out."""
        lake_cfg = self.cfg.lake
        last_data = time.monotonic()
        seen = 0
        try:
            while not self.stop.is_set():
                room = max(1, lake_cfg.batch_max_messages - len(self.pending))
                polled = self.consumer.poll(timeout_ms=200, max_records=room)
                now = time.monotonic()
                for tp_records in polled.values():
                    for m in tp_records:
                        if not self.pending:
                            self.pending_since = now
                        self.pending.append(Record(m.topic, m.partition, m.offset, m.key, m.value or b""))
                        self.pending_bytes += len(m.value or b"")
                        seen += 1
                if polled:
                    last_data = now
                if self.pending and (len(self.pending) >= lake_cfg.batch_max_messages
                                     or self.pending_bytes >= lake_cfg.batch_max_bytes
                                     or now - self.pending_since >= lake_cfg.batch_max_seconds
                                     or (max_messages is not None and seen >= max_messages)):
                    self.flush()
                if max_messages is not None and seen >= max_messages and not self.pending:
                    break
                if idle_exit_s is not None and now - last_data >= idle_exit_s and not self.pending:
                    break
            self.flush()
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)


def run_ingest(cfg: Config, idle_exit_s: float | None = None) -> IngestStats:
    """`gpuledger ingest`: run one group member until SIGTERM/SIGINT, then flush and leave cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ing = KafkaIngester(cfg, stop=stop)
    log.info("ingest: topic %s group %s -> lake %s", cfg.kafka.topic, cfg.kafka.group_id, cfg.lake.path)
    stats = ing.run(idle_exit_s=idle_exit_s)
    log.info("ingest stopped: %d ticks, %d slice rows, %d rejected", stats.ticks, stats.slice_rows, stats.rejected)
    return stats


class MemoryIngester:
    """The same BatchSink over the in-process bus (demo, unit tests)."""

    def __init__(self, bus: Any, lake: Lake, cfg: Config, group: str = "gpuledger-ingest") -> None:
        self.bus, self.cfg, self.group = bus, cfg, group
        self.topic = cfg.kafka.topic
        self.sink = BatchSink(lake, cfg.kafka.max_message_bytes)
        self.stats = IngestStats()

    def drain(self, timeout_s: float = 0.0) -> IngestStats:
        """Ingest everything currently on the bus, in batches of the configured size."""
        out = IngestStats()
        while True:
            chunk = self.bus.read(self.topic, self.group, self.cfg.lake.batch_max_messages, timeout_s)
            timeout_s = 0.0
            if not chunk:
                break
            records = [Record(self.topic, 0, off, k, v) for off, k, v in chunk]
            stats = self.sink.write(records)
            self.bus.commit(self.topic, self.group, chunk[-1][0] + 1)
            out.add(stats)
        self.stats.add(out)
        return out
