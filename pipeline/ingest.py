"""Kafka consumer group -> Parquet lake, exactly once as seen by queries.

The order of a batch is what makes it safe: decode it, write its row files, then its tick
file (the batch's commit record), publish its rejects to the DLQ topic, and only then commit
its Kafka offsets. A crash anywhere before the commit re-delivers the batch; the views keep
one batch per tick, so a tick written twice is still counted once. Bad messages never stop
ingest: each goes to the DLQ topic and the lake's dlq/ with its reason.

Decoding runs in a worker process (see `pipeline.ingest_worker`) while this process keeps
fetching; at most `MAX_INFLIGHT` batches are out at once, which bounds memory whatever the
backlog.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from gpuledger.config import Config
from gpuledger.decode import TsWindow
from gpuledger.topics import ensure_topics_or_warn
from pipeline.ingest_worker import Batch, BatchBuilder, BatchResult, make_decoder
from warehouse.lake import Lake, new_batch_id

log = logging.getLogger("gpuledger.ingest")

FAULT_ENV = "GPULEDGER_FAULT_CRASH_BEFORE_COMMIT"  # test hook: exit hard after N batches' files
MAX_INFLIGHT = 2
REJOIN_AFTER_S = 15.0  # a member with no partitions this long rejoins (see _watch_assignment)
COMMIT_ATTEMPT_MS = 10_000  # one offset-commit attempt; retried with backoff while the broker is away
HEARTBEAT_S = 5.0  # lake.ingest_heartbeat_file is touched at most this often
RETRY_BACKOFF_S = (0.5, 10.0)  # first and longest wait between attempts of a retriable broker call

__all__ = ["IngestStats", "KafkaIngester", "MemoryIngester", "run_ingest"]


@dataclass
class IngestStats:
    batches: int = 0
    messages: int = 0
    ticks: int = 0
    gpu_rows: int = 0
    slice_rows: int = 0
    process_rows: int = 0
    rejected: int = 0
    duplicates: int = 0
    uncommitted_batches: int = 0  # finished after a rebalance took their partitions away
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, r: BatchResult) -> None:
        self.batches += 1
        self.messages += r.messages
        self.ticks += r.ticks
        self.gpu_rows += r.gpu_rows
        self.slice_rows += r.slice_rows
        self.process_rows += r.process_rows
        self.rejected += len(r.rejects)
        self.duplicates += r.duplicates
        for _, reason in r.rejects:
            head = reason.split(":", 1)[0]
            self.reasons[head] = self.reasons.get(head, 0) + 1


class _Pipeline:
    """Batches in flight between the consumer and the decoders, finished strictly in order.

    With several worker processes, batches go round-robin; each worker answers in order, so
    reading the answers in submission order keeps offsets committed in order.
    """

    def __init__(
        self, cfg: Config, lake: Lake, finish: Callable[[Batch, BatchResult, int], None], workers: int
    ) -> None:
        n = max(1, workers)
        window = TsWindow(cfg.lake.max_tick_future_s, cfg.lake.max_tick_age_s)
        self.decoders = [make_decoder(lake, cfg.kafka.max_message_bytes, workers, window) for _ in range(n)]
        self.finish = finish
        self.inflight: deque[tuple[Batch, int, Any, int]] = deque()
        self.max_inflight = MAX_INFLIGHT * n
        self.worker_cpu_s: list[float] = []
        self._rr = 0

    def submit(self, records: Batch, tag: int = 0) -> None:
        while len(self.inflight) >= self.max_inflight:
            self.reap(block=True, limit=1)
        batch = new_batch_id()
        decoder = self.decoders[self._rr % len(self.decoders)]
        self._rr += 1
        decoder.submit(records, batch)
        records.drop_payload()  # the decoder has it; rejects come back with their bytes
        self.inflight.append((records, batch, decoder, tag))

    def reap(self, block: bool, limit: int | None = None) -> None:
        done = 0
        while self.inflight and (limit is None or done < limit):
            records, batch, decoder, tag = self.inflight[0]
            if not block and not decoder.ready():
                break
            result = decoder.result()
            self.inflight.popleft()
            assert result.batch == batch, (result.batch, batch)
            self.finish(records, result, tag)
            done += 1

    def drain(self) -> None:
        self.reap(block=True)

    def close(self) -> list[float]:
        """Stop the decoders; returns each worker's peak memory in MiB (empty when inline)."""
        peaks = []
        for d in self.decoders:
            d.close()
            if d.peak_rss_mb is not None:
                peaks.append(d.peak_rss_mb)
                self.worker_cpu_s.append(d.cpu_s or 0.0)
        return peaks


class _GroupMovedOn(Exception):
    """The group rebalanced while a commit was retried: these offsets are no longer ours to commit."""


def _retriable(exc: BaseException) -> bool:
    """A broker call failure that waiting can cure (broker away, coordinator moving, timeouts)."""
    from kafka.errors import KafkaError

    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


class _FaultHook:
    def __init__(self) -> None:
        self.after = int(os.environ.get(FAULT_ENV, "0") or 0)
        self.count = 0

    def before_commit(self, batch: int) -> None:
        self.count += 1
        if self.after and self.count >= self.after:
            log.error("fault injection: exiting after writing batch %d, before committing offsets", batch)
            logging.shutdown()
            os._exit(99)


class KafkaIngester:
    """A member of the ingest consumer group."""

    def __init__(
        self,
        cfg: Config,
        lake: Lake | None = None,
        stop: threading.Event | None = None,
        workers: int | None = None,
        group_id: str | None = None,
        start_offsets: dict[int, int] | None = None,
    ) -> None:
        """`start_offsets` (partition -> offset) makes a new group start there instead of earliest."""
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        self.cfg = cfg
        k = cfg.kafka
        self.lake = lake or Lake(cfg.lake.path, cfg.lake.zstd_level)
        self.lake.check()  # an object store that refuses writes stops here, in one line
        self.stop = stop or threading.Event()
        self.stats = IngestStats()
        self.pending = BatchBuilder()
        self.pending_since = 0.0
        self.fault = _FaultHook()
        self.epoch = 0  # bumped on every partition revocation
        self.resync = False
        self.unseen = 0  # records read, then dropped by a revoke (read again after the rewind)
        self.start_offsets = start_offsets or {}
        self.worker_peaks_mb: list[float] = []
        self.worker_cpu_s: list[float] = []
        # Monotonic times of the first record and of the last batch committed (for benchmarks).
        self.first_data_at: float | None = None
        self.finished_at: float | None = None
        self.assigned_at: float | None = None  # idle time only counts once the group gave us work
        # The worker process starts before the Kafka client's threads exist.
        self.pipe = _Pipeline(
            cfg, self.lake, self._finish, cfg.lake.decode_workers if workers is None else workers
        )
        self.producer = KafkaProducer(
            bootstrap_servers=k.bootstrap_servers,
            client_id=f"{k.client_id}-dlq",
            acks="all",
            max_request_size=k.dlq_max_payload_bytes + 65536,
            linger_ms=5,
        )
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=group_id or k.group_id,
            client_id=f"{k.client_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.lake.batch_max_messages,
            max_partition_fetch_bytes=2 * 1024 * 1024,
            fetch_max_bytes=8 * 1024 * 1024,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        ingester = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                # kafka-python 3 forbids blocking calls (commit) in this callback, so nothing is
                # committed here: what was read and not yet committed will be delivered again to
                # whoever gets the partitions. Batches already in flight still write their files
                # (the views count each tick once) but their offsets are never committed.
                ingester.epoch += 1
                if ingester.pending or ingester.pipe.inflight:
                    log.info(
                        "partitions revoked: dropping %d pending messages; %d batches in flight won't commit",
                        len(ingester.pending),
                        len(ingester.pipe.inflight),
                    )
                # Those records come again after the rewind: they were read but are not "seen".
                ingester.unseen += len(ingester.pending) + sum(len(f[0]) for f in ingester.pipe.inflight)
                ingester.pending = BatchBuilder()
                ingester.resync = True  # the main loop rewinds to the committed offsets

            def on_partitions_assigned(self, assigned: Any) -> None:
                if not assigned:
                    log.info("partitions assigned: []")
                    return  # nothing to do yet; idle time counts only once we hold partitions
                for tp in assigned:
                    if start_offsets and tp.partition in start_offsets:
                        ingester.consumer.seek(tp, start_offsets[tp.partition])
                ingester.assigned_at = time.monotonic()
                log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

        # Fetch the topic's metadata before joining: kafka-python 3.0.12 can lose the result of the
        # second join that a metadata-less first join triggers, leaving the member with no
        # partitions for good (seen in ~1-2 % of fresh joins).
        self._listener = _Listener()
        self._beat_at = float("-inf")
        self._beat_failed = False
        self._empty_since: float | None = None
        self._subscribe()

    def _subscribe(self) -> None:
        # Subscribe, then fetch the topic's metadata, both before the first poll joins: the
        # coordinator builds its snapshot of the subscribed topics' partitions from metadata that
        # arrives after `subscribe`. Fetched before, the snapshot stayed empty until a later
        # update, which then differed from the first assignment's and forced a second rebalance
        # right after the join (the first batch redone).
        self.consumer.subscribe([self.cfg.kafka.topic], listener=self._listener)
        self.consumer.partitions_for_topic(self.cfg.kafka.topic)

    def _send_dlq(self, records: Batch, i: int, reason: str, value: bytes) -> Any:
        limit = self.cfg.kafka.dlq_max_payload_bytes
        headers = [
            ("reason", reason.encode()[:4096]),
            ("src-topic", records.topics[i].encode()),
            ("src-partition", str(records.partitions[i]).encode()),
            ("src-offset", str(records.offsets[i]).encode()),
            ("original-size", str(len(value)).encode()),
        ]
        if len(value) > limit:
            # The lake's dlq/ keeps the full bytes; the topic gets a bounded prefix.
            value = value[:limit]
            headers.append(("truncated", b"true"))
        return self.producer.send(self.cfg.kafka.dlq_topic, key=records.keys[i], value=value, headers=headers)

    def _publish_dlq(self, records: Batch, result: BatchResult) -> None:
        """Every reject of the batch acknowledged by the DLQ topic, however long the broker is away.

        The batch's offsets are committed only after this returns, so a reject is never lost. A
        reject the producer gave up on (broker away past its delivery timeout) is sent again:
        the DLQ topic is at least once, like the samples topic.
        """
        todo = list(zip(result.rejects, result.reject_values, strict=True))
        waits = self._backoff("publishing rejects to the DLQ topic")
        next(waits)
        while todo:
            futures = [
                (self._send_dlq(records, i, reason, value), (i, reason), value) for (i, reason), value in todo
            ]
            self.producer.flush()
            todo, error = [], None
            for fut, rej, value in futures:
                try:
                    fut.get(timeout=30)
                except Exception as exc:
                    if not _retriable(exc):
                        raise
                    todo.append((rej, value))
                    error = exc
            if error is not None:
                if self.stop.is_set():
                    waits.close()
                    raise _GroupMovedOn(f"stop requested while the broker is away ({error!r})") from error
                waits.send(error)
        waits.close()

    def _backoff(self, what: str) -> Generator[None, BaseException, None]:
        """Waits between attempts of a broker call: `send(exc)` sleeps (doubling, capped).

        The first failure is logged once as a warning and the recovery once as info, so an outage
        of an hour is two log lines, not one per attempt.
        """
        first, longest = RETRY_BACKOFF_S
        delay, attempts, since = first, 0, time.monotonic()
        try:
            while True:
                exc = yield
                attempts += 1
                if attempts == 1:
                    log.warning(
                        "ingest: broker unreachable while %s (%r); retrying with backoff until it is back",
                        what,
                        exc,
                    )
                self._beat()  # waiting on purpose is alive
                self.stop.wait(delay)  # a stop request ends the wait early; the caller decides
                delay = min(longest, delay * 2)
        finally:
            if attempts:
                log.info(
                    "ingest: %s succeeded again after %d retries (%.0f s)",
                    what,
                    attempts,
                    time.monotonic() - since,
                )

    def _beat(self) -> None:
        """Touch `lake.ingest_heartbeat_file` (at most every HEARTBEAT_S) for a liveness probe."""
        path = self.cfg.lake.ingest_heartbeat_file
        now = time.monotonic()
        if not path or now - self._beat_at < HEARTBEAT_S:
            return
        self._beat_at = now
        try:
            with open(path, "a"):
                os.utime(path)
        except OSError as exc:
            if not self._beat_failed:  # once, not every few seconds
                log.warning("ingest: cannot touch heartbeat file %s: %s", path, exc.strerror)
            self._beat_failed = True

    def _commit(self, offsets: dict[Any, Any]) -> None:
        """Commit offsets, retrying retriable failures (broker or coordinator away) until they work.

        Never exits on a retriable error: the batch's files are in place, so the only cost of
        waiting is delay. When the group moved on meanwhile (our membership expired during the
        outage: CommitFailedError, unknown member, illegal generation, rebalance in progress)
        the offsets are no longer ours; `_GroupMovedOn` tells the caller to drop them and
        re-read from the committed offsets. A stop request during an outage gives up the same
        way: the next member reads the batch again and the views count each tick once.
        """
        waits = self._backoff("committing offsets")
        next(waits)
        while True:
            try:
                self.consumer.commit(offsets, timeout_ms=COMMIT_ATTEMPT_MS)
                waits.close()
                return
            except Exception as exc:
                if not _retriable(exc):
                    waits.close()
                    from kafka.errors import KafkaError

                    if isinstance(exc, KafkaError):
                        raise _GroupMovedOn(repr(exc)) from exc
                    raise
                if self.stop.is_set():
                    waits.close()
                    raise _GroupMovedOn(f"stop requested while the broker is away ({exc!r})") from exc
                waits.send(exc)

    def _finish(self, records: Batch, result: BatchResult, epoch: int) -> None:
        """Files are in place: publish rejects, then commit the batch's offsets."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        if epoch != self.epoch:
            self.stats.uncommitted_batches += 1
            log.info("batch %d finished after a rebalance: files kept, offsets not committed", result.batch)
            return
        try:
            if result.rejects:
                self._publish_dlq(records, result)
            self.fault.before_commit(result.batch)
            self._commit(
                {
                    TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                    for (topic, partition), offset in records.commit_offsets().items()
                }
            )
        except _GroupMovedOn as why:
            # Like a revocation: files kept, offsets not committed, later batches of this epoch
            # not committed either, and what was read is read again from the committed offsets.
            self.stats.uncommitted_batches += 1
            log.warning(
                "batch %d: offsets not committed (%s); re-reading from the committed offsets",
                result.batch,
                why,
            )
            self.epoch += 1
            self.unseen += len(records) + len(self.pending) + sum(len(f[0]) for f in self.pipe.inflight)
            self.pending = BatchBuilder()
            self.resync = True
            return
        self.stats.add(result)
        log.info(
            "batch: %d msgs, %d ticks, %d slice rows, %d rejected (total %d ticks)",
            result.messages,
            result.ticks,
            result.slice_rows,
            len(result.rejects),
            self.stats.ticks,
        )

    def _watch_assignment(self) -> None:
        """Rejoin when the group left us without partitions for too long.

        kafka-python 3.0.12 can drop the result of a join that a poll timeout interrupts; the
        member then holds nothing and never asks again. A fresh subscription asks again. (In a
        group with more members than partitions the idle members rejoin now and then too; that
        costs a rebalance, never data.)
        """
        now = time.monotonic()
        if self.consumer.assignment():
            self._empty_since = None
            return
        if self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since >= REJOIN_AFTER_S:
            log.warning("no partitions for %.0f s: leaving and rejoining the group", now - self._empty_since)
            self._empty_since = None
            self.epoch += 1
            self.pending = BatchBuilder()
            self.consumer.unsubscribe()
            self._subscribe()

    def _rewind(self) -> None:
        """After a rebalance, continue every assigned partition from its committed offset.

        The client may keep a partition's fetch position across a rebalance that hands the
        same partition back; the records dropped on revocation would then be skipped, and a
        later commit would step over them. Seeking to the committed offset re-reads them.
        """
        for tp in self.consumer.assignment():
            try:
                committed = self.consumer.committed(tp)
            except Exception as exc:
                if not _retriable(exc):
                    raise
                # The broker is away: stay in resync (records polled meanwhile are dropped) and
                # try again on the next loop, which polls and so keeps the membership alive.
                log.debug("rewind: committed offsets unavailable (%r); retrying", exc)
                self.stop.wait(RETRY_BACKOFF_S[0])
                return
            if committed is None:
                committed = self.start_offsets.get(tp.partition)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self.resync = False
        log.info("rewound %d partitions to their committed offsets", len(self.consumer.assignment()))

    def _submit_pending(self) -> None:
        if self.pending:
            records = self.pending.build()
            self.pending = BatchBuilder()
            self.pipe.submit(records, self.epoch)

    def flush(self) -> None:
        """Submit what is pending and finish every batch in flight."""
        self._submit_pending()
        self.pipe.drain()

    def run(
        self,
        idle_exit_s: float | None = None,
        max_messages: int | None = None,
        max_seconds: float | None = None,
    ) -> IngestStats:
        """Consume until stopped, idle for idle_exit_s, max_messages read or max_seconds passed.

        Whatever ends the loop, the batches already read are finished (files, DLQ, commit).
        """
        lake_cfg = self.cfg.lake
        last_data = 0.0
        seen = 0
        deadline = time.monotonic() + max_seconds if max_seconds is not None else None
        try:
            while not self.stop.is_set():
                room = max(1, lake_cfg.batch_max_messages - len(self.pending))
                polled = self.consumer.poll(timeout_ms=500, max_records=room)
                self._beat()
                self._watch_assignment()
                if self.resync:
                    self._rewind()
                    polled = {}  # read from positions that the rewind just moved
                    seen, self.unseen = max(0, seen - self.unseen), 0
                now = time.monotonic()
                for tp, tp_records in polled.items():
                    if tp_records and not self.pending:
                        self.pending_since = now
                    self.pending.add_records(tp.topic, tp.partition, tp_records)
                    seen += len(tp_records)
                if polled:
                    last_data = now
                    if self.first_data_at is None:
                        self.first_data_at = now
                if self.pending and (
                    len(self.pending) >= lake_cfg.batch_max_messages
                    or self.pending.nbytes >= lake_cfg.batch_max_bytes
                    or now - self.pending_since >= lake_cfg.batch_max_seconds
                    or not polled
                    or (max_messages is not None and seen >= max_messages)
                ):
                    self._submit_pending()
                self.pipe.reap(block=False)
                if max_messages is not None and seen >= max_messages:
                    break
                if deadline is not None and now >= deadline:
                    log.warning(
                        "ingest: stopping after max_seconds=%s with %d messages read", max_seconds, seen
                    )
                    break
                idle_since = max(last_data, self.assigned_at or now)
                if (
                    idle_exit_s is not None
                    and now - idle_since >= idle_exit_s
                    and not self.pending
                    and not self.pipe.inflight
                ):
                    break
            self.flush()
            self.finished_at = time.monotonic()
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            try:
                self.producer.close(timeout=10)
            finally:
                self.worker_peaks_mb = self.pipe.close()
                self.worker_cpu_s = self.pipe.worker_cpu_s


def run_ingest(cfg: Config, idle_exit_s: float | None = None) -> IngestStats:
    """`gpuledger ingest`: run one group member until SIGTERM/SIGINT, then finish and leave cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The lake first: a bucket that does not exist or refused credentials stop here, in one line.
    lake = Lake(cfg.lake.path, cfg.lake.zstd_level)
    lake.check()
    # Samples, DLQ and control topics with the configured partitions and replication, before
    # the first subscribe (which would otherwise auto-create the samples topic with defaults).
    ensure_topics_or_warn(cfg.kafka)
    ing = KafkaIngester(cfg, lake=lake, stop=stop)
    log.info("ingest: topic %s group %s -> lake %s", cfg.kafka.topic, cfg.kafka.group_id, cfg.lake.path)
    stats = ing.run(idle_exit_s=idle_exit_s)
    log.info(
        "ingest stopped: %d ticks, %d slice rows, %d rejected", stats.ticks, stats.slice_rows, stats.rejected
    )
    return stats


class MemoryIngester:
    """The same pipeline over the in-process bus (demo, unit tests)."""

    def __init__(
        self, bus: Any, lake: Lake, cfg: Config, group: str = "gpuledger-ingest", workers: int | None = None
    ) -> None:
        self.bus, self.cfg, self.group = bus, cfg, group
        self.topic = cfg.kafka.topic
        self.stats = IngestStats()
        self._next = 0
        self.pipe = _Pipeline(
            cfg, lake, self._finish, cfg.lake.decode_workers if workers is None else workers
        )

    def _finish(self, records: Batch, result: BatchResult, _tag: int) -> None:
        self.bus.commit(self.topic, self.group, records.offsets[-1] + 1)
        self.stats.add(result)

    def poll(self) -> int:
        """Submit what is on the bus beyond what was already submitted; finish what is done."""
        n = 0
        while True:
            chunk = self.bus.read_from(self.topic, self._next, self.cfg.lake.batch_max_messages)
            if not chunk:
                break
            self._next = chunk[-1][0] + 1
            b = BatchBuilder()
            for off, k, v in chunk:
                b.add(self.topic, 0, off, k, v)
            self.pipe.submit(b.build())
            n += len(chunk)
        self.pipe.reap(block=False)
        return n

    def drain(self) -> IngestStats:
        """Ingest everything on the bus and wait until it is in the lake."""
        self.poll()
        self.pipe.drain()
        return self.stats

    def close(self) -> None:
        self.worker_peaks_mb = self.pipe.close()
