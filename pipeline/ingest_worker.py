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
from itertools import accumulate
from typing import Any

import pyarrow as pa

from gpuledger.batch_decode import decode_batch_fast
from gpuledger.decode import DecodedBatch, TsWindow
from gpuledger.memory import peak_rss_mb
from warehouse.lake import Lake

log = logging.getLogger("gpuledger.decoder")


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
    # The rejected messages' bytes, parallel to `rejects`: the consumer stops holding a batch's
    # payload once it is handed over, so the DLQ topic gets its copies from here.
    reject_values: list[bytes] = field(default_factory=list)


class BatchBuilder:
    """Messages gathered for the next batch, as columns: no Python object per message."""

    __slots__ = ("keys", "nbytes", "offsets", "partitions", "topics", "values")

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.keys: list[bytes | None] = []
        self.values: list[bytes] = []
        self.nbytes = 0

    def add(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        self.topics.append(topic)
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.keys.append(key)
        self.values.append(value)
        self.nbytes += len(value)

    def add_records(self, topic: str, partition: int, records: Sequence[Any]) -> None:
        """One partition's polled records (kafka-python `ConsumerRecord`s), column by column."""
        values = [b"" if r.value is None else r.value for r in records]
        self.topics.extend([topic] * len(values))
        self.partitions.extend([partition] * len(values))
        self.offsets.extend([r.offset for r in records])
        self.keys.extend([r.key for r in records])
        self.values.extend(values)
        self.nbytes += sum(map(len, values))

    def __len__(self) -> int:
        return len(self.values)

    def build(self) -> Batch:
        return Batch.of(self.topics, self.partitions, self.offsets, self.keys, self.values)


@dataclass
class Batch:
    """One batch: per-message columns plus every payload joined by single newlines.

    The joined form is what crosses to a worker (one `send_bytes`, no pickling of payloads)
    and what the native batch reader parses there, so a payload is copied once on its way from the
    Kafka client to the decoder. `values` are views into it.
    """

    topics: list[str]
    partitions: list[int]
    offsets: list[int]
    keys: list[bytes | None]
    blob: bytes
    ends: list[int]  # end of each payload in blob; the next one starts one byte later

    @classmethod
    def of(
        cls,
        topics: list[str],
        partitions: list[int],
        offsets: list[int],
        keys: list[bytes | None],
        values: Sequence[bytes | memoryview],
    ) -> Batch:
        ends = [end - 1 for end in accumulate(len(v) + 1 for v in values)]
        return cls(topics, partitions, offsets, keys, b"\n".join(values), ends)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def values(self) -> list[memoryview]:
        view = memoryview(self.blob)
        return [view[a:b] for a, b in zip([0, *(e + 1 for e in self.ends[:-1])], self.ends, strict=True)]

    def header(self) -> tuple[Any, ...]:
        return (self.topics, self.partitions, self.offsets, self.keys, self.ends)

    @classmethod
    def from_parts(cls, header: tuple[Any, ...], blob: bytes) -> Batch:
        topics, partitions, offsets, keys, ends = header
        return cls(topics, partitions, offsets, keys, blob, ends)

    def commit_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the offset to commit once this batch is in the lake."""
        out: dict[tuple[str, int], int] = {}
        for t, p, o in zip(self.topics, self.partitions, self.offsets, strict=True):
            if out.get((t, p), -1) <= o:
                out[(t, p)] = o + 1
        return out

    def drop_payload(self) -> None:
        """Forget the payloads (the worker has them): what stays is enough to commit."""
        self.blob, self.ends = b"", []


def decode_and_write(
    lake: Lake, b: Batch, batch: int, max_message_bytes: int, ts_window: TsWindow | None = None
) -> BatchResult:
    """Decode one batch and put its files (and its rejects' dlq/ file) durably in the lake."""
    return write_decoded(lake, b, decode_records(b, batch, max_message_bytes, ts_window), batch)


def decode_records(
    b: Batch, batch: int, max_message_bytes: int, ts_window: TsWindow | None = None
) -> DecodedBatch:
    """Decode with receive time = now: a tick outside `ts_window` around it is rejected."""
    return decode_batch_fast(
        b.values,
        batch=batch,
        max_message_bytes=max_message_bytes,
        partitions=b.partitions,
        offsets=b.offsets,
        joined=b.blob,
        ts_window=ts_window,
    )


def write_decoded(lake: Lake, b: Batch, decoded: DecodedBatch, batch: int) -> BatchResult:
    lake.write_batch(decoded, batch)
    values = b.values if decoded.rejects else []
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
                    "size": len(values[r.index]),
                    "payload": bytes(values[r.index]),
                }
                for r in decoded.rejects
            ),
            batch,
        )
    t = decoded.tables
    pa.default_memory_pool().release_unused()  # keep the worker's footprint flat between batches
    return BatchResult(
        batch=batch,
        messages=len(b),
        ticks=decoded.ticks,
        gpu_rows=t["gpu"].num_rows,
        slice_rows=t["slice"].num_rows,
        process_rows=t["process"].num_rows,
        rejects=[(r.index, r.reason) for r in decoded.rejects],
        duplicates=decoded.duplicates,
        reject_values=[bytes(values[r.index]) for r in decoded.rejects],
    )


class InlineDecoder:
    """Decode and write in the calling thread (tests, small tools)."""

    def __init__(self, lake: Lake, max_message_bytes: int, ts_window: TsWindow | None = None) -> None:
        self.lake, self.max_message_bytes, self.ts_window = lake, max_message_bytes, ts_window
        self._done: list[BatchResult] = []

    def submit(self, records: Batch, batch: int) -> None:
        self._done.append(decode_and_write(self.lake, records, batch, self.max_message_bytes, self.ts_window))

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


def use_returning_memory_pool() -> None:
    """Arrow's jemalloc pool with immediate decay, else the system allocator.

    Both give a freed batch's memory back to the system (mimalloc, Arrow's default here, kept
    ~35 MB more resident per worker); jemalloc also decodes ~15 % faster than the system
    allocator (bench/RESULTS.md).
    """
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)


def _worker(
    conn: Any, root: str, zstd_level: int, max_message_bytes: int, ts_window: TsWindow | None = None
) -> None:
    """Worker main: decode here, write in a thread, answer in order.

    If the parent dies the worker exits at once: whatever it had not acknowledged was never
    committed to Kafka and will be delivered again.
    """
    use_returning_memory_pool()
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
        header, batch = job
        try:
            blob = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)
        records = Batch.from_parts(header, blob)
        try:
            decoded = decode_records(records, batch, max_message_bytes, ts_window)
        except Exception:
            todo.put(("error", traceback.format_exc()))
            continue
        todo.put(("write", records, decoded, batch))
    todo.put(None)
    thread.join()
    use = resource.getrusage(resource.RUSAGE_SELF)
    answer(("bye", (peak_rss_mb(), use.ru_utime + use.ru_stime)))


class ProcessDecoder:
    """One worker process; results arrive in submission order."""

    def __init__(self, lake: Lake, max_message_bytes: int, ts_window: TsWindow | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_worker,
            args=(child, lake.location, lake.zstd_level, max_message_bytes, ts_window),
            name="gpuledger-decoder",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self.inflight = 0
        self.peak_rss_mb: float | None = None
        self.cpu_s: float | None = None

    def submit(self, records: Batch, batch: int) -> None:
        self._conn.send((records.header(), batch))
        self._conn.send_bytes(records.blob)
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


def make_decoder(
    lake: Lake, max_message_bytes: int, workers: int, ts_window: TsWindow | None = None
) -> InlineDecoder | ProcessDecoder:
    if workers > 0:
        return ProcessDecoder(lake, max_message_bytes, ts_window)
    return InlineDecoder(lake, max_message_bytes, ts_window)
