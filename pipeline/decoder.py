"""Decode-and-write of ingest batches, inline or in a worker process.

Why a worker process: the Kafka client, the decoder and the Parquet writer each want a core,
and they all hold the GIL. In a worker, decoding of batch k+1 runs while a writer thread
(Parquet and zstd release the GIL) writes batch k, and the consumer keeps fetching in the
parent. Results come back in submission order, so offsets are committed in order.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import resource
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from gpuledger.batch_decode import decode_batch_fast
from gpuledger.decode import DecodedBatch
from warehouse.lake import Lake

log = logging.getLogger("gpuledger.decoder")


@dataclass(frozen=True)
class Record:
    """One consumed message, transport-neutral (Kafka or the in-process bus)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class BatchResult:
    batch: int
    messages: int
    ticks: int
    gpu_rows: int
    slice_rows: int
    process_rows: int
    rejects: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class Batch:
    """A batch of records as columns: cheap to send to a worker (one bytes blob, a few lists)."""

    topics: list[str]
    partitions: list[int]
    offsets: list[int]
    keys: list[bytes | None]
    values: Sequence[bytes | memoryview]

    @classmethod
    def of(cls, records: Sequence[Record]) -> Batch:
        return cls(
            [r.topic for r in records],
            [r.partition for r in records],
            [r.offset for r in records],
            [r.key for r in records],
            [r.value for r in records],
        )

    def pack(self) -> tuple[Any, ...]:
        ends, pos = [], 0
        for v in self.values:
            pos += len(v)
            ends.append(pos)
        return (self.topics, self.partitions, self.offsets, self.keys, b"".join(self.values), ends)

    @classmethod
    def unpack(cls, packed: tuple[Any, ...]) -> Batch:
        topics, partitions, offsets, keys, blob, ends = packed
        view = memoryview(blob)
        starts = [0, *ends[:-1]]
        return cls(topics, partitions, offsets, keys, [view[a:b] for a, b in zip(starts, ends, strict=True)])


def decode_and_write(lake: Lake, batch_records: Batch, batch: int, max_message_bytes: int) -> BatchResult:
    """Decode one batch and put its files (and its rejects' dlq/ file) durably in the lake."""
    decoded = decode_records(batch_records, batch, max_message_bytes)
    return write_decoded(lake, batch_records, decoded, batch)


def decode_records(b: Batch, batch: int, max_message_bytes: int) -> DecodedBatch:
    return decode_batch_fast(
        b.values, batch=batch, max_message_bytes=max_message_bytes, partitions=b.partitions, offsets=b.offsets
    )


def write_decoded(lake: Lake, b: Batch, decoded: DecodedBatch, batch: int) -> BatchResult:
    lake.write_batch(decoded, batch)
    if decoded.rejects:
        now = datetime.now(UTC)
        lake.write_dlq(
            (
                {
                    "received_at": now,
                    "topic": b.topics[r.index],
                    "partition": b.partitions[r.index],
                    "offset": b.offsets[r.index],
                    "key": b.keys[r.index],
                    "reason": r.reason,
                    "size": len(b.values[r.index]),
                    "payload": bytes(b.values[r.index]),
                }
                for r in decoded.rejects
            ),
            batch,
        )
    t = decoded.tables
    pa.default_memory_pool().release_unused()  # keep the worker's footprint flat between batches
    return BatchResult(
        batch=batch,
        messages=len(b.values),
        ticks=decoded.ticks,
        gpu_rows=t["gpu"].num_rows,
        slice_rows=t["slice"].num_rows,
        process_rows=t["process"].num_rows,
        rejects=[(r.index, r.reason) for r in decoded.rejects],
        duplicates=decoded.duplicates,
    )


class InlineDecoder:
    """Decode and write in the calling thread (tests, small tools)."""

    def __init__(self, lake: Lake, max_message_bytes: int) -> None:
        self.lake, self.max_message_bytes = lake, max_message_bytes
        self._done: list[BatchResult] = []

    def submit(self, records: Sequence[Record], batch: int) -> None:
        self._done.append(decode_and_write(self.lake, Batch.of(records), batch, self.max_message_bytes))

    def ready(self) -> bool:
        return bool(self._done)

    @property
    def inflight(self) -> int:
        return len(self._done)

    def result(self) -> BatchResult:
        return self._done.pop(0)

    def close(self) -> None:
        pass

    peak_rss_mb: float | None = None


def _worker(conn: Any, root: str, zstd_level: int, max_message_bytes: int) -> None:
    """Worker main: decode here, write in a thread, answer in order.

    If the parent dies the worker exits at once: whatever it had not acknowledged was never
    committed to Kafka and will be delivered again.
    """
    # The system allocator gives freed batch memory back; Arrow's default (mimalloc) kept ~35 MB
    # more per worker resident, which took ingest past its 500 MB budget.
    pa.set_memory_pool(pa.system_memory_pool())
    lake = Lake(root, zstd_level)
    todo: queue.Queue[Any] = queue.Queue(maxsize=1)

    def answer(msg: Any) -> None:
        try:
            conn.send(msg)
        except OSError:
            os._exit(0)  # parent gone

    def writer() -> None:
        while True:
            item = todo.get()
            if item is None:
                return
            if item[0] == "error":
                answer(item)  # in order, behind the batches decoded before it
                continue
            _, records, decoded, batch = item
            try:
                result = write_decoded(lake, records, decoded, batch)
            except Exception:
                answer(("error", traceback.format_exc()))
                continue
            answer(("ok", result))

    thread = threading.Thread(target=writer, name="lake-writer", daemon=True)
    thread.start()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # parent gone
        if job is None:
            break
        packed, batch = job
        records = Batch.unpack(packed)
        try:
            decoded = decode_records(records, batch, max_message_bytes)
        except Exception:
            todo.put(("error", traceback.format_exc()))
            continue
        todo.put(("write", records, decoded, batch))
    todo.put(None)
    thread.join()
    use = resource.getrusage(resource.RUSAGE_SELF)
    answer(("bye", (use.ru_maxrss / 1024, use.ru_utime + use.ru_stime)))


class ProcessDecoder:
    """One worker process; results arrive in submission order."""

    def __init__(self, lake: Lake, max_message_bytes: int) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_worker,
            args=(child, str(lake.root), lake.zstd_level, max_message_bytes),
            name="gpuledger-decoder",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self.inflight = 0
        self.peak_rss_mb: float | None = None
        self.cpu_s: float | None = None

    def submit(self, records: Sequence[Record], batch: int) -> None:
        self._conn.send((Batch.of(records).pack(), batch))
        self.inflight += 1

    def ready(self) -> bool:
        return self.inflight > 0 and self._conn.poll()

    def result(self) -> BatchResult:
        try:
            status, payload = self._conn.recv()
        except EOFError as exc:
            raise RuntimeError(f"decoder worker died (exit code {self._proc.exitcode})") from exc
        self.inflight -= 1
        if status != "ok":
            raise RuntimeError(f"decoder worker failed:\n{payload}")
        return payload

    def close(self) -> None:
        """Stop the worker after its queued work; keeps its peak memory (MiB) in peak_rss_mb."""
        try:
            self._conn.send(None)
            while self._conn.poll(30):
                status, payload = self._conn.recv()
                if status == "bye":
                    self.peak_rss_mb, self.cpu_s = payload
                    break
        except (BrokenPipeError, EOFError, OSError):
            pass
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
        self._conn.close()


def make_decoder(lake: Lake, max_message_bytes: int, workers: int) -> InlineDecoder | ProcessDecoder:
    return ProcessDecoder(lake, max_message_bytes) if workers > 0 else InlineDecoder(lake, max_message_bytes)
