"""Store-and-forward between the node agent and Kafka: no tick is lost while Kafka is away.

Why: a node agent that drops ticks while the broker is down leaves holes that the warehouse must
report as unobserved (never billed) GPU time. The spool turns a Kafka outage into a delay instead.

Guarantee: every tick handed to ``send()`` is either acknowledged by Kafka or in the spool. While
Kafka answers, ticks go straight to the producer and are kept in memory until acknowledged; when a
send fails, an acknowledgement times out or the producer cannot be built, every tick not yet
acknowledged moves to the spool, in send order, and so does every later tick until the spool has
been replayed. New ticks never overtake spooled ones, so per-node order holds. A replayed segment
is deleted only after Kafka acknowledged all of its records. Duplicates are possible (a record
acknowledged just as the failure was seen is sent again); ingest drops them by (node, boot_id,
seq). Write-ahead (the default): in direct mode each tick is appended to a segment and fsync'd
before it is handed to the producer, and leaves the spool once Kafka acknowledged it, so a hard
crash (SIGKILL, power loss) loses at most the one tick being written, also during an outage when
~30 s of ticks sit in the producer's memory; the next agent replays what was not acknowledged
(some of it possibly twice). Cost: one write + fsync per tick (bench/spool_bench.py).

On disk: numbered segment files ``<spool_dir>/<16 digits>.seg``, each an 8-byte magic followed by
records ``u32 length | u32 crc32(payload) | payload``, payload ``u16 key length | key | value``,
all little-endian, written with ``fsync``. A torn last record (crash mid-write) fails its length or
CRC check at start-up; it is cut off with one log line and everything before it is kept. The spool
is bounded by ``max_bytes``: when full the oldest segment goes first, and ``dropped`` counts its
ticks. A lock file keeps two agents off one spool; the next agent replays what the last one left.

Replay runs inside ``send()``/``flush()``/``poll()``, at most every ``retry_s`` and for at most
``replay_budget_s`` per call, so a dead broker costs one bounded reconnection attempt per retry
period and never blocks every tick.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("gpuledger.collector.spool")

MAGIC = b"GLSPOOL1"
_REC = struct.Struct("<II")  # payload length, crc32(payload)
_KEYLEN = struct.Struct("<H")
_MAX_PAYLOAD = 64 * 1024 * 1024  # a longer length field can only be garbage
_SUFFIX = ".seg"


class SpoolError(RuntimeError):
    """The spool directory cannot be used (locked by another agent, not writable)."""


class InnerTransport(Protocol):
    """What the spool forwards to. ``send`` returns a kafka-python style future (``is_done``,
    ``failed()``, ``exception``) or None for a transport that delivers synchronously and raises on
    failure. ``flush`` pushes buffered records out and may raise."""

    def send(self, key: str, value: bytes) -> Any: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SpoolStats:
    """A consistent snapshot for the exporter (counters are per agent process)."""

    spooled: int  # ticks written to the spool
    replayed: int  # spooled ticks later acknowledged by Kafka
    dropped: int  # ticks lost unsent: spool full, a corrupt record skipped at start-up, a failed write
    torn: int  # torn or corrupt record tails cut off at start-up
    sent_direct: int  # ticks acknowledged without going through the spool
    pending_records: int  # ticks in the spool now
    pending_bytes: int  # spool size on disk now
    segments: int
    inflight: int  # ticks sent directly, not yet acknowledged
    kafka_up: bool  # direct mode (spool empty and the last send worked)
    unreadable: int = 0  # segments of an earlier run that could not be read (skipped, left in place)


@dataclass
class _Segment:
    path: Path
    size: int  # bytes on disk, header included
    records: int
    acked: int = 0  # records at the front already acknowledged during replay (this process)
    acked_offset: int = len(MAGIC)


def _encode(key: str, value: bytes) -> bytes:
    kb = key.encode()
    if len(kb) > 0xFFFF:
        raise ValueError(f"spool: key of {len(kb)} bytes is longer than 65535")
    payload = _KEYLEN.pack(len(kb)) + kb + value
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


def _record_at(data: bytes, pos: int) -> tuple[int, str | None]:
    """(end of the record at `pos`, None) when it is whole and its CRC matches, else (end, why)."""
    n = len(data)
    if n - pos < _REC.size:
        return pos, f"{n - pos} bytes of a record header"
    length, crc = _REC.unpack_from(data, pos)
    if length < _KEYLEN.size or length > _MAX_PAYLOAD:
        return pos, f"impossible record length {length}"
    end = pos + _REC.size + length
    if end > n:
        return pos, f"record of {length} bytes cut off after {n - pos - _REC.size}"
    payload = data[pos + _REC.size : end]
    if zlib.crc32(payload) != crc:
        return end, "CRC mismatch"
    (klen,) = _KEYLEN.unpack_from(payload)
    if _KEYLEN.size + klen > length:
        return end, f"key length {klen} beyond the record"
    return end, None


def _scan(data: bytes) -> tuple[list[tuple[int, str, bytes]], int, str | None, list[tuple[int, str]]]:
    """Parse records after the magic: (records as (end_offset, key, value), good_end,
    why_the_rest_is_bad, skipped).

    A record whose header is intact but whose payload is corrupt (CRC mismatch: a bad sector, a
    flipped bit) is skipped alone when the record after it reads cleanly (or it is the last):
    its length field then was right, so everything after it is still good. `skipped` lists
    such records as (offset, why). Anything else that fails (a torn or impossible header, or a
    corrupt record followed by garbage) ends the good part at `good_end`.
    """
    out: list[tuple[int, str, bytes]] = []
    skipped: list[tuple[int, str]] = []
    pos = len(MAGIC)
    n = len(data)
    while pos < n:
        end, why = _record_at(data, pos)
        if why is not None:
            if end == pos:  # the header itself is torn or impossible
                return out, pos, why, skipped
            if end < n and _record_at(data, end)[1] is not None:
                return out, pos, why, skipped  # the length led nowhere readable: cut here
            if end == n:  # a bad last record is a torn tail: cut, not skipped
                return out, pos, why, skipped
            skipped.append((pos, why))
            pos = end
            continue
        payload = data[pos + _REC.size : end]
        (klen,) = _KEYLEN.unpack_from(payload)
        key = payload[_KEYLEN.size : _KEYLEN.size + klen].decode("utf-8", "replace")
        out.append((end, key, payload[_KEYLEN.size + klen :]))
        pos = end
    return out, pos, None, skipped


def _read_segment(path: Path) -> bytes:
    """A segment's bytes, refusing anything that is not a regular file (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _future_state(fut: Any) -> str:
    """'ok', 'failed' or 'pending' for a kafka-python future (None: delivered synchronously)."""
    if fut is None:
        return "ok"
    if not fut.is_done:
        return "pending"
    return "failed" if fut.failed() else "ok"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolingTransport:
    """A Transport that forwards to ``inner_factory()`` and spools to disk while that fails."""

    def __init__(
        self,
        inner_factory: Callable[[], InnerTransport],
        spool_dir: str | Path,
        max_bytes: int,
        *,
        segment_bytes: int = 4 * 1024 * 1024,
        retry_s: float = 10.0,
        ack_timeout_s: float = 30.0,
        replay_budget_s: float = 5.0,
        max_inflight: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        write_ahead: bool = True,
    ) -> None:
        if max_bytes <= len(MAGIC) + _REC.size:
            raise ValueError(f"spool: max_bytes = {max_bytes}: expected more than {len(MAGIC) + _REC.size}")
        if segment_bytes <= 0 or retry_s < 0 or ack_timeout_s <= 0 or replay_budget_s <= 0:
            raise ValueError(
                f"spool: segment_bytes={segment_bytes}, retry_s={retry_s}, ack_timeout_s={ack_timeout_s}, "
                f"replay_budget_s={replay_budget_s}: expected positive sizes and times"
            )
        self._factory = inner_factory
        self.dir = Path(spool_dir)
        self.max_bytes = max_bytes
        # Space is given back a whole segment at a time: keep segments small against the bound.
        self.segment_bytes = min(segment_bytes, max(max_bytes // 8, len(MAGIC) + _REC.size + 64))
        self.retry_s, self.ack_timeout_s, self.replay_budget_s = retry_s, ack_timeout_s, replay_budget_s
        self.max_inflight = max_inflight
        self._clock = clock
        self._lock = threading.RLock()
        self._inner: InnerTransport | None = None
        # (key, value, future, sent at, (WAL segment, record end) or None)
        self._inflight: deque[tuple[str, bytes, Any, float, tuple[_Segment, int] | None]] = deque()
        # Write-ahead: in direct mode each tick is appended (fsync'd) to a WAL segment before it
        # is handed to the producer, and forgotten once Kafka acknowledged it, so a SIGKILL loses
        # at most the tick being written. On a failure the WAL segments become the spool's.
        self.write_ahead = write_ahead
        self._wal: list[_Segment] = []
        self._wal_fd: int | None = None
        self._wal_warned = False
        self._segments: list[_Segment] = []
        self._active_fd: int | None = None  # fd of _segments[-1] while it takes appends
        self._next_no = 0
        self._bytes = 0
        self._last_attempt: float | None = None
        self._closed = False
        self.spooled = self.replayed = self.dropped = self.torn = self.sent_direct = 0
        self.unreadable = 0  # segments left by an earlier run that could not be read (skipped)
        self._lock_fd = self._take_dir_lock()
        self._recover()
        if self._segments:
            log.info(
                "spool: %d ticks (%d bytes) left in %s by an earlier run; replaying when Kafka answers",
                self._pending_records(),
                self._bytes,
                self.dir,
            )

    # -- Transport -------------------------------------------------------------------------------

    def send(self, key: str, value: bytes) -> None:
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool: send on a closed SpoolingTransport ({self.dir})")
            self._reap()
            if self._segments:
                self._replay()
            if self._segments:
                self._append([(key, value)])
                return
            self._send_direct(key, value)

    def flush(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._segments:
                self._replay()
            if self._inflight:
                self._drain(self.ack_timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                self._drop_inner()
                self._close_wal()
                self._close_active()
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)

    # -- public extras ---------------------------------------------------------------------------

    def poll(self) -> None:
        """Reap acknowledgements and replay if due; for callers with idle time between ticks."""
        with self._lock:
            if self._closed:
                return
            self._reap()
            if self._segments:
                self._replay()

    def stats(self) -> SpoolStats:
        """Without the lock, so a scrape never waits behind a reconnection attempt; the numbers
        may be one record apart from each other, never torn."""
        segments = list(self._segments)
        return SpoolStats(
            spooled=self.spooled,
            replayed=self.replayed,
            dropped=self.dropped,
            torn=self.torn,
            sent_direct=self.sent_direct,
            pending_records=sum(sg.records - sg.acked for sg in segments),
            pending_bytes=self._bytes,
            segments=len(segments),
            inflight=len(self._inflight),
            kafka_up=not segments and self._inner is not None,
            unreadable=self.unreadable,
        )

    # -- direct path -----------------------------------------------------------------------------

    def _ensure_inner(self) -> InnerTransport | None:
        if self._inner is not None:
            return self._inner
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self.retry_s:
            return None
        try:
            self._inner = self._factory()
        except Exception as exc:
            # Counted from the end of the attempt: a slow failure (bootstrap timeout) must not
            # make every following tick wait for another one.
            self._last_attempt = self._clock()
            log.debug("spool: Kafka producer could not be built: %r", exc)
            return None
        self._last_attempt = now
        return self._inner

    def _send_direct(self, key: str, value: bytes) -> None:
        inner = self._ensure_inner()
        if inner is None:
            self._append([(key, value)])
            return
        at = self._wal_append(key, value) if self.write_ahead else None
        try:
            fut = inner.send(key, value)
        except Exception as exc:
            self._fail(f"send raised {exc!r}", extra=[(key, value)] if at is None else None)
            return
        self._inflight.append((key, value, fut, self._clock(), at))
        self._reap()
        if len(self._inflight) > self.max_inflight and self._inflight:
            self._wait_head(self.ack_timeout_s)

    def _reap(self) -> None:
        """Retire acknowledged ticks from the front; a failure or a stale head spools the rest."""
        now = self._clock()
        while self._inflight:
            _, _, fut, t0, at = self._inflight[0]
            state = _future_state(fut)
            if state == "ok":
                self._inflight.popleft()
                self.sent_direct += 1
                if at is not None:
                    self._wal_acked(*at)
            elif state == "failed":
                self._fail(f"send failed: {fut.exception!r}")
                return
            else:
                if now - t0 > self.ack_timeout_s:
                    self._fail(f"no acknowledgement within {self.ack_timeout_s:g} s")
                return

    def _wait_head(self, timeout: float) -> None:
        fut = self._inflight[0][2]
        with contextlib.suppress(Exception):
            fut.get(timeout=timeout)
        self._reap()

    def _drain(self, timeout: float) -> None:
        """Wait (bounded) until every in-flight tick is acknowledged or spooled."""
        assert self._inner is not None or not self._inflight
        try:
            if self._inner is not None:
                self._inner.flush()
        except Exception as exc:
            self._fail(f"flush raised {exc!r}")
            return
        deadline = self._clock() + timeout
        while self._inflight:
            fut = self._inflight[0][2]
            if _future_state(fut) == "pending":
                with contextlib.suppress(Exception):
                    fut.get(timeout=max(0.0, deadline - self._clock()))
                if _future_state(fut) == "pending":  # get() waited out the deadline
                    self._fail(f"no acknowledgement within {timeout:g} s of a flush")
                    return
            self._reap()

    def _fail(self, reason: str, extra: list[tuple[str, bytes]] | None = None) -> None:
        """Kafka failed: everything not yet acknowledged goes to the spool, in send order."""
        # Ticks written ahead are on disk already: their WAL segments become the spool's.
        records = [(k, v) for k, v, _, _, at in self._inflight if at is None] + (extra or [])
        self._inflight.clear()
        self._adopt_wal()
        self._drop_inner()
        self._last_attempt = self._clock()
        log.warning("spool: Kafka unreachable (%s); spooling ticks to %s", reason, self.dir)
        if records:
            self._append(records)

    def _drop_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        try:
            close = inner.close
            try:
                close(timeout=0)  # type: ignore[call-arg]  # kafka-python: abort what is buffered
            except TypeError:
                close()
        except Exception as exc:
            log.debug("spool: closing the failed producer raised %r", exc)

    # -- replay ----------------------------------------------------------------------------------

    def _replay(self) -> None:
        """Send the spool, oldest first, deleting a segment once Kafka acknowledged all of it."""
        if self._inflight:
            return  # a direct-mode tail is still unconfirmed; it is older than nothing spooled
        inner = self._ensure_inner()
        if inner is None:
            return
        deadline = self._clock() + self.replay_budget_s
        before = self.replayed
        while self._segments and self._clock() < deadline:
            seg = self._segments[0]
            if self._active_fd is not None and seg is self._segments[-1]:
                self._close_active()  # seal it: later ticks go to a new segment
            try:
                data = _read_segment(seg.path)
            except OSError as exc:
                log.error("spool: cannot read %s (%s); dropping its %d ticks", seg.path, exc, seg.records)
                self._drop_segment(seg)
                continue
            records, _, _, _ = _scan(data)
            todo = [r for r in records if r[0] > seg.acked_offset]
            futs: list[tuple[int, Any]] = []
            try:
                for end, key, value in todo:
                    futs.append((end, inner.send(key, value)))
                inner.flush()
            except Exception as exc:
                self._credit(seg, futs, wait=False)
                self._fail(f"replay raised {exc!r}")
                return
            ok = self._credit(seg, futs, wait=True)
            if not ok:
                self._fail("replay not acknowledged")
                return
            self._delete_segment(seg)
        if self.replayed > before:
            left = self._pending_records()
            log.info("spool: replayed %d ticks; %d left in the spool", self.replayed - before, left)

    def _credit(self, seg: _Segment, futs: list[tuple[int, Any]], *, wait: bool) -> bool:
        """Advance the segment's acknowledged prefix; True when every future succeeded."""
        deadline = self._clock() + self.ack_timeout_s
        for end, fut in futs:
            state = _future_state(fut)
            if state == "pending" and wait:
                with contextlib.suppress(Exception):
                    fut.get(timeout=max(0.0, deadline - self._clock()))
                state = _future_state(fut)
            if state != "ok":
                return False
            seg.acked += 1
            seg.acked_offset = end
            self.replayed += 1
        return True

    # -- segments --------------------------------------------------------------------------------

    def _pending_records(self) -> int:
        return sum(s.records - s.acked for s in self._segments)

    def _append(self, records: list[tuple[str, bytes]]) -> None:
        """Append and fsync; make room first by dropping the oldest segments."""
        wrote = False
        for key, value in records:
            blob = _encode(key, value)
            if len(blob) + len(MAGIC) > self.max_bytes:
                self.dropped += 1
                log.error(
                    "spool: a tick of %d bytes for %r is larger than the whole spool (%d bytes); dropped",
                    len(blob),
                    key,
                    self.max_bytes,
                )
                continue
            active = self._segments[-1] if self._active_fd is not None else None
            if active is not None and active.records and active.size + len(blob) > self.segment_bytes:
                self._close_active()
                active = None
            need = len(blob) + (len(MAGIC) if active is None else 0)
            while self._bytes + need > self.max_bytes and self._segments:
                head = self._segments[0]
                if head is active:  # the only segment left is the one we write: start afresh
                    self._close_active()
                    active = None
                    need = len(blob) + len(MAGIC)
                self._drop_segment(head)
            try:
                if active is None:
                    active = self._open_segment()
                _write_all(self._active_fd, blob)  # type: ignore[arg-type]
            except OSError as exc:
                self._write_failed(active, exc)
                continue
            active.size += len(blob)
            active.records += 1
            self._bytes += len(blob)
            self.spooled += 1
            wrote = True
        if wrote and self._active_fd is not None:
            try:
                os.fsync(self._active_fd)
            except OSError as exc:
                log.error("spool: fsync of %s failed (%s)", self._segments[-1].path, exc)

    def _write_failed(self, active: _Segment | None, exc: OSError) -> None:
        """Disk full or failing: this tick is lost (counted); the segment stays readable."""
        self.dropped += 1
        log.error("spool: cannot write to %s (%s); tick dropped", self.dir, exc.strerror or exc)
        if active is not None and self._active_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._active_fd, active.size)  # no half record for replay to stop at
            self._close_active()

    # -- write-ahead -------------------------------------------------------------------------

    def _wal_append(self, key: str, value: bytes) -> tuple[_Segment, int] | None:
        """Append one tick to the WAL and fsync; (segment, record end), or None if the disk failed.

        A failed write does not stop the tick: it goes to Kafka unguarded (as without a WAL),
        with one log line per agent run.
        """
        blob = _encode(key, value)
        seg = self._wal[-1] if self._wal_fd is not None else None
        try:
            if seg is not None and seg.records and seg.size + len(blob) > self.segment_bytes:
                self._seal_wal()
                seg = None
            if seg is None:
                seg, self._wal_fd = self._create_segment()
                self._wal.append(seg)
            _write_all(self._wal_fd, blob)  # type: ignore[arg-type]
            os.fsync(self._wal_fd)  # type: ignore[arg-type]
        except OSError as exc:
            if not self._wal_warned:
                self._wal_warned = True
                log.error("spool: write-ahead to %s failed (%s); ticks go to Kafka unguarded", self.dir, exc)
            if seg is not None and self._wal_fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._wal_fd, seg.size)
            return None
        seg.size += len(blob)
        seg.records += 1
        self._bytes += len(blob)
        return seg, seg.size

    def _wal_acked(self, seg: _Segment, end: int) -> None:
        """Kafka has the WAL record ending at `end`: forget fully acknowledged segments."""
        seg.acked += 1
        seg.acked_offset = end
        if seg.acked < seg.records:
            return
        if self._wal and seg is self._wal[-1] and self._wal_fd is not None:
            # The segment being written: empty it in place (no new file per tick), so a restart
            # does not send again what Kafka already has. Not fsync'd: at worst a restart
            # replays acknowledged ticks, which ingest drops as duplicates.
            with contextlib.suppress(OSError):
                os.ftruncate(self._wal_fd, len(MAGIC))
                self._bytes -= seg.size - len(MAGIC)
                seg.size, seg.records, seg.acked, seg.acked_offset = len(MAGIC), 0, 0, len(MAGIC)
            return
        self._wal.remove(seg)
        self._bytes -= seg.size
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    def _seal_wal(self) -> None:
        if self._wal_fd is not None:
            fd, self._wal_fd = self._wal_fd, None
            os.close(fd)

    def _adopt_wal(self) -> None:
        """Kafka failed: unacknowledged WAL records are the oldest spooled ticks, in send order."""
        if not self._wal:
            return
        active = self._wal[-1] if self._wal_fd is not None else None
        for seg in self._wal:
            if seg.acked >= seg.records and seg is not active:
                self._bytes -= seg.size
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
                continue
            self._segments.append(seg)
            self.spooled += seg.records - seg.acked
        self._wal = []
        if active is not None:
            self._close_active()
            self._active_fd, self._wal_fd = self._wal_fd, None  # later ticks append behind them

    def _close_wal(self) -> None:
        """At close: fully acknowledged WAL segments go; anything else stays for the next agent."""
        self._seal_wal()
        for seg in self._wal:
            if seg.acked >= seg.records:
                self._bytes -= seg.size
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
        self._wal = []

    def _create_segment(self) -> tuple[_Segment, int]:
        """A new, empty segment (magic written and fsync'd, its folder too) and its open fd."""
        path = self.dir / f"{self._next_no:016d}{_SUFFIX}"
        self._next_no += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _write_all(fd, MAGIC)
            os.fsync(fd)
            _fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._bytes += len(MAGIC)
        return _Segment(path, len(MAGIC), 0), fd

    def _open_segment(self) -> _Segment:
        """A new segment that becomes the one appended to."""
        seg, self._active_fd = self._create_segment()
        self._segments.append(seg)
        return seg

    def _close_active(self) -> None:
        if self._active_fd is not None:
            fd, self._active_fd = self._active_fd, None
            os.close(fd)

    def _delete_segment(self, seg: _Segment) -> None:
        self._segments.remove(seg)
        self._bytes -= seg.size
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        _fsync_dir(self.dir)

    def _drop_segment(self, seg: _Segment) -> None:
        lost = seg.records - seg.acked
        self.dropped += lost
        log.warning(
            "spool: full (%d bytes max); dropped the oldest %d ticks (%s); %d dropped so far",
            self.max_bytes,
            lost,
            seg.path.name,
            self.dropped,
        )
        self._delete_segment(seg)

    def _take_dir_lock(self) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool: cannot use directory {self.dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(
                f"spool: directory {self.dir} is in use by another agent (lock file {self.dir / '.lock'})"
            ) from exc
        return fd

    def _recover(self) -> None:
        """Load segments left by an earlier run; cut torn tails; set aside foreign files."""
        numbered: list[tuple[int, Path]] = []
        for path in self.dir.glob(f"*{_SUFFIX}"):
            stem = path.name[: -len(_SUFFIX)]
            if stem.isdigit():
                numbered.append((int(stem), path))
        numbered.sort()
        for no, path in numbered:
            self._next_no = max(self._next_no, no + 1)
            try:
                data = _read_segment(path)
            except OSError as exc:
                # Skipped, left where it is, never deleted: an operator may still recover it.
                # The agent starts regardless; a spool it cannot read must not stop new ticks.
                self.unreadable += 1
                log.error(
                    "spool: cannot read segment %s (%s); skipped, left in place",
                    path,
                    exc.strerror or exc,
                )
                continue
            if not data.startswith(MAGIC):
                if len(data) < len(MAGIC) and MAGIC.startswith(data):
                    log.warning("spool: %s is an empty segment torn at creation; removed", path)
                    path.unlink()
                    continue
                bad = path.with_name(path.name + ".corrupt")
                log.error("spool: %s is not a spool segment (bad magic); moved aside to %s", path, bad.name)
                path.rename(bad)
                continue
            records, good, why, skipped = _scan(data)
            if skipped:
                self.dropped += len(skipped)
                log.warning(
                    "spool: %s: %d corrupt record(s) skipped (first at offset %d: %s); %d ticks kept",
                    path,
                    len(skipped),
                    skipped[0][0],
                    skipped[0][1],
                    len(records),
                )
            if why is not None:
                self.torn += 1
                log.warning(
                    "spool: %s: torn record at offset %d (%s); cut %d bytes, kept %d ticks before it",
                    path,
                    good,
                    why,
                    len(data) - good,
                    len(records),
                )
                os.truncate(path, good)
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
            if not records:
                path.unlink()
                continue
            self._segments.append(_Segment(path, good, len(records)))
            self._bytes += good
        if numbered:
            _fsync_dir(self.dir)
