"""The collector loop over the in-process transport."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import orjson

from collector.agent import run_collector
from collector.fleet import SimulatedFleet
from collector.transport import MemoryTransport
from gpuledger.bus import MemoryBus

START = datetime(2026, 11, 1, tzinfo=UTC)


def test_every_node_every_tick_in_order_per_node() -> None:
    fleet = SimulatedFleet(seed=1, start=START, interval_s=10.0)
    bus = MemoryBus()
    seen_ticks: list[int] = []
    stats = run_collector(
        fleet,
        MemoryTransport(bus, "t"),
        10.0,
        ticks=6,
        realtime=False,
        after_tick=lambda s: seen_ticks.append(s.ticks),
    )
    assert seen_ticks == [1, 2, 3, 4, 5, 6]
    assert stats.ticks == 6 and stats.messages == 6 * len(fleet.nodes) == bus.end("t")
    records = bus.read_from("t", 0, 10_000)
    assert stats.bytes == sum(len(v) for _, _, v in records)
    by_node: dict[str, list[int]] = {}
    for _, key, value in records:
        msg = orjson.loads(value)
        assert key == msg["node"].encode()  # keyed by node: per-node order on a real topic
        by_node.setdefault(msg["node"], []).append(msg["seq"])
    assert set(by_node) == set(fleet.nodes)
    assert all(seqs == list(range(6)) for seqs in by_node.values())


def test_stop_ends_a_realtime_loop_without_another_tick() -> None:
    fleet = SimulatedFleet(seed=1, start=START, interval_s=3600.0)
    bus = MemoryBus()
    stop = threading.Event()
    stop.set()
    stats = run_collector(fleet, MemoryTransport(bus, "t"), 3600.0, stop=stop)
    assert stats.ticks == 0 and bus.end("t") == 0


def test_bus_trim_keeps_uncommitted_records() -> None:
    bus = MemoryBus()
    for i in range(10):
        bus.append("t", b"k", str(i).encode())
    bus.commit("t", "g", 7)
    assert bus.trim("t") == 7
    assert [v for _, _, v in bus.read_from("t", 7, 100)] == [b"7", b"8", b"9"]
    assert bus.end("t") == 10
