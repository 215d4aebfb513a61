"""Store-and-forward spool against a fake Kafka that fails and recovers on command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from collector.spool import MAGIC, SpoolError, SpoolingTransport


class FakeFuture:
    """The parts of kafka-python's FutureRecordMetadata the spool uses."""

    def __init__(self) -> None:
        self.is_done = False
        self._failed = False
        self.exception: BaseException | None = None

    def resolve(self, error: BaseException | None = None) -> None:
        self.is_done, self._failed, self.exception = True, error is not None, error

    def failed(self) -> bool:
        return self._failed

    def get(self, timeout: float | None = None) -> bool:
        if not self.is_done:
            raise TimeoutError("still pending")
        if self.exception is not None:
            raise self.exception
        return True


class FakeKafka:
    """A broker: `up` or not; acknowledges at once unless `hold`; `log` is what it acknowledged."""

    def __init__(self) -> None:
        self.up = True
        self.hold = False  # keep futures pending (a broker that stopped answering)
        self.accept: int | None = None  # go down after this many more records
        self.log: list[tuple[str, bytes]] = []
        self.held: list[tuple[FakeFuture, tuple[str, bytes]]] = []
        self.builds = 0

    def factory(self) -> FakeProducer:
        self.builds += 1
        if not self.up:
            raise ConnectionError("NoBrokersAvailable (fake)")
        return FakeProducer(self)

    def go_down(self) -> None:
        """Broker dies: what it holds fails (as kafka-python's delivery timeout would)."""
        self.up = False
        for fut, _ in self.held:
            fut.resolve(ConnectionError("delivery timed out (fake)"))
        self.held.clear()

    def release(self) -> None:
        for fut, rec in self.held:
            self.log.append(rec)
            fut.resolve()
        self.held.clear()


class FakeProducer:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka
        self.closed = False

    def send(self, key: str, value: bytes) -> FakeFuture:
        assert not self.closed
        k = self.kafka
        if k.accept is not None:
            if k.accept == 0:
                k.go_down()
            k.accept -= 1
        fut = FakeFuture()
        if not k.up:
            fut.resolve(ConnectionError("broker down (fake)"))
        elif k.hold:
            k.held.append((fut, (key, value)))
        else:
            k.log.append((key, value))
            fut.resolve()
        return fut

    def flush(self) -> None:
        if not self.kafka.up:
            raise ConnectionError("flush: broker down (fake)")

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tick(node: str, seq: int, pad: int = 0) -> tuple[str, bytes]:
    return node, f"{node}:{seq:04d}".encode() + b"x" * pad


def seqs(log: list[tuple[str, bytes]], node: str = "n1") -> list[int]:
    return [int(v.split(b":")[1][:4]) for k, v in log if k == node]


def first_seen(values: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def make(kafka: FakeKafka, path: Path, **kw: Any) -> SpoolingTransport:
    kw.setdefault("retry_s", 0.0)
    return SpoolingTransport(kafka.factory, path, kw.pop("max_bytes", 1 << 20), **kw)


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_kafka_up_sends_straight_through_and_spools_nothing(tmp_path: Path) -> None:
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    for i in range(20):
        sp.send(*tick("n1", i))
    sp.close()
    assert seqs(kafka.log) == list(range(20))
    st = sp.stats()
    assert (st.sent_direct, st.spooled, st.replayed, st.dropped, st.pending_records) == (20, 0, 0, 0, 0)
    assert segment_files(tmp_path) == []


def test_outage_spools_then_replays_in_order_and_deletes_segments(tmp_path: Path) -> None:
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    for i in range(5):
        sp.send(*tick("n1", i))
    kafka.go_down()
    for i in range(5, 15):
        sp.send(*tick("n1", i))
        sp.send(*tick("n2", i))
    st = sp.stats()
    assert st.spooled == 20 and st.pending_records == 20 and not st.kafka_up
    assert len(segment_files(tmp_path)) == 1
    kafka.up = True
    for i in range(15, 18):
        sp.send(*tick("n1", i))
    sp.close()
    assert seqs(kafka.log, "n1") == list(range(18))
    assert seqs(kafka.log, "n2") == list(range(5, 15))
    st = sp.stats()
    assert (st.spooled, st.replayed, st.sent_direct, st.pending_records) == (20, 20, 8, 0)
    assert segment_files(tmp_path) == []


def test_unacknowledged_ticks_move_to_the_spool_when_the_broker_dies(tmp_path: Path) -> None:
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    sp.send(*tick("n1", 0))
    kafka.hold = True  # sent, never acknowledged ...
    for i in range(1, 4):
        sp.send(*tick("n1", i))
    assert sp.stats().inflight == 3
    kafka.go_down()  # ... and then failed by the producer
    sp.send(*tick("n1", 4))
    st = sp.stats()
    assert (st.inflight, st.spooled, st.pending_records) == (0, 4, 4)
    kafka.up, kafka.hold = True, False
    sp.send(*tick("n1", 5))
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2, 3, 4, 5]


def test_a_broker_that_stops_answering_is_detected_by_the_ack_timeout(tmp_path: Path) -> None:
    kafka, clock = FakeKafka(), Clock()
    sp = make(kafka, tmp_path, ack_timeout_s=5.0, clock=clock)
    kafka.hold = True
    sp.send(*tick("n1", 0))
    clock.t += 4.0
    sp.send(*tick("n1", 1))
    assert sp.stats().inflight == 2  # not yet overdue
    clock.t += 2.0
    sp.send(*tick("n1", 2))
    assert (sp.stats().inflight, sp.stats().pending_records) == (0, 3)
    # the held records get acknowledged late after all: duplicates, never losses
    kafka.release()
    kafka.hold = False
    sp.send(*tick("n1", 3))
    sp.close()
    assert first_seen(seqs(kafka.log)) == [0, 1, 2, 3]
    assert seqs(kafka.log).count(2) == 1 and seqs(kafka.log)[-1] == 3


def test_flush_spools_what_the_producer_could_not_deliver(tmp_path: Path) -> None:
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    kafka.hold = True
    sp.send(*tick("n1", 0))
    sp.send(*tick("n1", 1))
    kafka.up = False  # flush raises, the held futures never resolve
    sp.flush()
    assert (sp.stats().inflight, sp.stats().pending_records) == (0, 2)
    sp.close()
    assert [p.name for p in segment_files(tmp_path)] == ["0000000000000000.seg"]


def test_new_ticks_never_overtake_spooled_ones(tmp_path: Path) -> None:
    kafka, clock = FakeKafka(), Clock()
    sp = make(kafka, tmp_path, retry_s=10.0, clock=clock)
    kafka.go_down()
    for i in range(6):
        sp.send(*tick("n1", i))
    kafka.up = True  # back, but the next attempt is not due yet: ticks still queue behind the spool
    clock.t += 5.0
    sp.send(*tick("n1", 6))
    assert kafka.log == [] and sp.stats().pending_records == 7
    clock.t += 6.0
    sp.send(*tick("n1", 7))
    assert seqs(kafka.log) == list(range(8))
    assert sp.stats().pending_records == 0 and sp.stats().kafka_up
    # a broker that fails again in the middle of a replay: the rest waits, order still holds
    kafka.go_down()
    for i in range(8, 20):
        clock.t += 11.0
        sp.send(*tick("n1", i))
    kafka.up, kafka.accept = True, 5
    clock.t += 11.0
    sp.send(*tick("n1", 20))
    assert sp.stats().pending_records == 13 - 5
    kafka.up, kafka.accept = True, None
    clock.t += 11.0
    sp.send(*tick("n1", 21))
    sp.close()
    assert first_seen(seqs(kafka.log)) == list(range(22))
    assert sorted(set(seqs(kafka.log))) == list(range(22))


def test_ticks_queue_behind_a_replay_that_takes_several_calls(tmp_path: Path) -> None:
    kafka, clock = FakeKafka(), Clock()

    class Slow(FakeProducer):
        def send(self, key: str, value: bytes) -> FakeFuture:
            clock.t += 1.0  # every record takes a second: the replay budget runs out
            return super().send(key, value)

    blob = 8 + 2 + 2 + 7
    sp = SpoolingTransport(
        lambda: Slow(kafka) if kafka.up else kafka.factory(),
        tmp_path,
        1 << 20,
        segment_bytes=len(MAGIC) + 5 * blob,
        replay_budget_s=4.5,
        retry_s=0.0,
        clock=clock,
    )
    kafka.up = False
    for i in range(30):
        sp.send(*tick("n1", i))
    assert sp.stats().segments == 6
    kafka.up = True
    sp.send(*tick("n1", 30))  # replays one segment (5 ticks), then queues behind the other five
    assert seqs(kafka.log) == [0, 1, 2, 3, 4]
    assert sp.stats().pending_records == 26 and sp.stats().kafka_up is False
    for i in range(31, 40):
        sp.send(*tick("n1", i))
    sp.close()
    assert seqs(kafka.log) == list(range(40))


def test_a_full_spool_drops_the_oldest_ticks_and_counts_them(tmp_path: Path) -> None:
    kafka = FakeKafka()
    kafka.up = False
    blob = 8 + 2 + 2 + 100  # record header + key length + key "n1" + value
    seg = len(MAGIC) + 5 * blob  # five ticks per segment
    sp = make(kafka, tmp_path, max_bytes=8 * seg, segment_bytes=seg)
    for i in range(57):
        sp.send(*tick("n1", i, pad=100 - 7))
    st = sp.stats()
    # 57 ticks need 12 segments; 8 fit, so the 4 oldest (20 ticks) went
    assert (st.spooled, st.dropped, st.pending_records, st.segments) == (57, 20, 37, 8)
    assert st.pending_bytes == 7 * seg + len(MAGIC) + 2 * blob <= 8 * seg
    assert sum(p.stat().st_size for p in segment_files(tmp_path)) == st.pending_bytes
    kafka.up = True
    sp.close()
    assert seqs(kafka.log) == list(range(20, 57))
    assert sp.stats().replayed == 37


def test_a_tick_larger_than_the_spool_is_dropped_alone(tmp_path: Path) -> None:
    kafka = FakeKafka()
    kafka.up = False
    sp = make(kafka, tmp_path, max_bytes=4096)
    sp.send(*tick("n1", 0))
    sp.send(*tick("n1", 1, pad=5000))
    sp.send(*tick("n1", 2))
    assert (sp.stats().dropped, sp.stats().pending_records) == (1, 2)
    kafka.up = True
    sp.close()
    assert seqs(kafka.log) == [0, 2]


def _spool_while_down(path: Path, n: int) -> None:
    kafka = FakeKafka()
    kafka.up = False
    sp = make(kafka, path)
    for i in range(n):
        sp.send(*tick("n1", i))
    sp.close()


def test_a_torn_last_record_is_cut_with_one_log_line_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _spool_while_down(tmp_path, 10)
    (path,) = segment_files(tmp_path)
    size = path.stat().st_size
    os.truncate(path, size - 3)  # crash in the middle of writing tick 9
    kafka = FakeKafka()
    with caplog.at_level(logging.WARNING, logger="gpuledger.collector.spool"):
        sp = make(kafka, tmp_path)
    torn = [r for r in caplog.records if "torn record" in r.getMessage()]
    assert len(torn) == 1 and path.name in torn[0].getMessage()
    assert (sp.stats().torn, sp.stats().pending_records) == (1, 9)
    sp.send(*tick("n1", 10))
    sp.close()
    assert seqs(kafka.log) == [*range(9), 10]


def test_a_corrupt_last_record_fails_its_crc_and_is_cut(tmp_path: Path) -> None:
    _spool_while_down(tmp_path, 4)
    (path,) = segment_files(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # last byte of tick 3's value
    path.write_bytes(bytes(data))
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    assert (sp.stats().torn, sp.stats().pending_records) == (1, 3)
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2]


def test_a_foreign_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "0000000000000007.seg").write_bytes(b"not a spool segment at all")
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    sp.send(*tick("n1", 0))
    sp.close()
    assert (tmp_path / "0000000000000007.seg.corrupt").exists()
    assert seqs(kafka.log) == [0]


def test_the_next_agent_replays_what_the_last_one_spooled_before_its_own_ticks(tmp_path: Path) -> None:
    _spool_while_down(tmp_path, 6)  # agent 1 stops during the outage
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)  # agent 2 starts after Kafka is back
    assert sp.stats().pending_records == 6
    sp.send(*tick("n1", 100))
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2, 3, 4, 5, 100]
    assert (sp.stats().replayed, sp.stats().sent_direct) == (6, 1)
    assert segment_files(tmp_path) == []


def test_close_with_unacknowledged_ticks_keeps_them_on_disk(tmp_path: Path) -> None:
    kafka = FakeKafka()
    sp = make(kafka, tmp_path, ack_timeout_s=0.01)
    kafka.hold = True
    for i in range(3):
        sp.send(*tick("n1", i))
    sp.close()  # no acknowledgement within the flush timeout: spooled, not lost
    assert sp.stats().pending_records == 3
    kafka2 = FakeKafka()
    sp2 = make(kafka2, tmp_path)
    sp2.flush()
    sp2.close()
    assert seqs(kafka2.log) == [0, 1, 2]


def test_one_spool_directory_serves_one_agent(tmp_path: Path) -> None:
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    with pytest.raises(SpoolError, match="in use by another agent"):
        make(kafka, tmp_path)
    sp.close()
    make(kafka, tmp_path).close()  # free again after close


def test_send_raising_is_a_failure_too(tmp_path: Path) -> None:
    kafka = FakeKafka()

    class Exploding(FakeProducer):
        def send(self, key: str, value: bytes) -> FakeFuture:
            if value.endswith(b"0002"):
                raise TimeoutError("KafkaTimeoutError: metadata not available (fake)")
            return super().send(key, value)

    calls = {"n": 0}

    def factory() -> FakeProducer:
        calls["n"] += 1
        return Exploding(kafka) if calls["n"] == 1 else FakeProducer(kafka)

    sp = SpoolingTransport(factory, tmp_path, 1 << 20, retry_s=0.0)
    for i in range(5):
        sp.send(*tick("n1", i))
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2, 3, 4]
    assert (sp.stats().spooled, sp.stats().replayed) == (1, 1)


def test_a_failed_disk_write_drops_that_tick_only_and_keeps_the_segment_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector.spool as spool_mod

    real = spool_mod._write_all
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # magic, tick 0, tick 1, then tick 2: half written, disk full
            os.write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(spool_mod, "_write_all", flaky)
    kafka = FakeKafka()
    kafka.up = False
    sp = make(kafka, tmp_path)
    for i in range(5):
        sp.send(*tick("n1", i))
    assert (sp.stats().dropped, sp.stats().pending_records) == (1, 4)
    sp.close()
    sp2 = make(kafka, tmp_path)  # a restart: no torn record was left behind
    assert (sp2.stats().torn, sp2.stats().pending_records) == (0, 4)
    kafka.up = True
    sp2.close()
    assert seqs(kafka.log) == [0, 1, 3, 4]


def test_a_corrupt_record_in_the_middle_is_skipped_alone_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One flipped byte inside tick 3 of 10: only tick 3 is lost (counted), 4-9 are replayed."""
    _spool_while_down(tmp_path, 10)
    (path,) = segment_files(tmp_path)
    data = bytearray(path.read_bytes())
    rec = len(data[len(MAGIC) :]) // 10  # every tick here encodes to the same size
    data[len(MAGIC) + 3 * rec + rec // 2] ^= 0xFF  # inside tick 3's payload; its length is intact
    path.write_bytes(bytes(data))
    kafka = FakeKafka()
    with caplog.at_level(logging.WARNING, logger="gpuledger.collector.spool"):
        sp = make(kafka, tmp_path)
    st = sp.stats()
    assert (st.pending_records, st.dropped, st.torn) == (9, 1, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert (
        len(lines) == 1 and f"1 corrupt record(s) skipped (first at offset {len(MAGIC) + 3 * rec}" in lines[0]
    )
    sp.send(*tick("n1", 10))
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert segment_files(tmp_path) == []


def test_a_corrupt_length_field_cuts_the_rest_as_before(tmp_path: Path) -> None:
    """A corrupt length leads nowhere readable: the segment is cut there (torn), never misread."""
    _spool_while_down(tmp_path, 10)
    (path,) = segment_files(tmp_path)
    data = bytearray(path.read_bytes())
    rec = len(data[len(MAGIC) :]) // 10
    data[len(MAGIC) + 3 * rec] ^= 0x01  # tick 3's length field, one too short or long
    path.write_bytes(bytes(data))
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    assert (sp.stats().pending_records, sp.stats().torn, sp.stats().dropped) == (3, 1, 0)
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2]


def test_unreadable_segments_are_skipped_with_one_line_and_the_agent_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory or a FIFO named like a segment (or one without read permission) never stops the agent."""
    import threading

    _spool_while_down(tmp_path, 4)
    (tmp_path / "0000000000000050.seg").mkdir()
    os.mkfifo(tmp_path / "0000000000000051.seg")  # a plain read would block forever
    kafka = FakeKafka()
    made: list[SpoolingTransport] = []
    with caplog.at_level(logging.WARNING, logger="gpuledger.collector.spool"):
        t = threading.Thread(target=lambda: made.append(make(kafka, tmp_path)), daemon=True)
        t.start()
        t.join(10)
    assert not t.is_alive(), "spool recovery blocked on a FIFO"
    (sp,) = made
    lines = [r.getMessage() for r in caplog.records if "cannot read segment" in r.getMessage()]
    assert len(lines) == 2 and "0000000000000050.seg" in lines[0] and "0000000000000051.seg" in lines[1]
    assert (sp.stats().unreadable, sp.stats().pending_records) == (2, 4)
    sp.send(*tick("n1", 4))
    sp.close()
    assert seqs(kafka.log) == [0, 1, 2, 3, 4]
    assert (tmp_path / "0000000000000050.seg").is_dir()  # left in place for an operator


_KILLED_AGENT = """
import sys
from collector.spool import SpoolingTransport

class Pending:  # a broker that takes records and never acknowledges (an outage, seen from the producer)
    is_done = False
    def failed(self): return False
    def get(self, timeout=None): raise TimeoutError("pending")

class Hanging:
    def send(self, key, value): return Pending()
    def flush(self): pass
    def close(self, timeout=None): pass

sp = SpoolingTransport(Hanging, sys.argv[1], 1 << 24, retry_s=0.0, ack_timeout_s=3600.0,
                       write_ahead=sys.argv[2] == "1")
for i in range(100000):
    sp.send("n1", b"n1:%04d" % i)
    print(i, flush=True)  # the tick was handed over: the agent's caller moved on
"""


@pytest.mark.parametrize("write_ahead", [True, False])
def test_an_agent_sigkilled_while_kafka_holds_its_ticks_loses_at_most_one(
    tmp_path: Path, write_ahead: bool
) -> None:
    """Ticks sit unacknowledged in the producer (broker away); SIGKILL; the next agent replays them."""
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_AGENT, str(tmp_path), "1" if write_ahead else "0"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo)},
        text=True,
    )
    assert child.stdout is not None
    handed = -1
    for line in child.stdout:  # bounded: the child stops printing only when killed
        handed = int(line)
        if handed >= 40:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert handed == 40, "the agent did not run"
    # The agent went on handing ticks over while this test read line 40 and sent the signal: the
    # last it handed over is the last line it printed (a short print is one atomic pipe write).
    handed = max([handed, *(int(x) for x in child.stdout.read().split())])
    kafka = FakeKafka()
    sp = make(kafka, tmp_path)
    sp.flush()
    sp.close()
    got = seqs(kafka.log)
    if write_ahead:
        assert got == list(range(len(got))) and len(got) >= handed + 1  # all handed over, in order
        assert len(got) <= handed + 2  # plus at most the one being written at the kill
    else:
        assert got == []  # without write-ahead every tick in the producer's memory is lost
