"""The node agent's loop: take a tick from a backend, encode it, hand it to a transport.

A backend returns the typed ticks of one interval (one per node it speaks for: a real
node agent has one, the simulated fleet has many). The loop is the same for every backend
and transport, so the demo, `gpuledger collect` and the tests all run this code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from collector.tick import encode
from collector.transport import Transport


class Backend(Protocol):
    def sample(self) -> list[Any]: ...  # one interval's typed ticks (collector.tick)


@dataclass
class CollectStats:
    ticks: int = 0  # intervals sampled
    messages: int = 0  # messages sent (one per node per interval)
    bytes: int = 0


def collect_once(backend: Backend, transport: Transport, stats: CollectStats) -> None:
    """Sample one interval and send each node's message, keyed by node (per-node order)."""
    for tick in backend.sample():
        raw = encode(tick)
        transport.send(tick.node, raw)
        stats.messages += 1
        stats.bytes += len(raw)
    stats.ticks += 1


def run_collector(
    backend: Backend,
    transport: Transport,
    interval_s: float,
    *,
    ticks: int | None = None,
    realtime: bool = True,
    stop: threading.Event | None = None,
    after_tick: Callable[[CollectStats], None] | None = None,
) -> CollectStats:
    """Collect `ticks` intervals (or until `stop`), paced by the wall clock unless realtime is off.

    Pacing uses a fixed schedule (start + k * interval), so a slow tick does not shift every
    later one.
    """
    stop = stop or threading.Event()
    stats = CollectStats()
    next_t = time.monotonic()
    while not stop.is_set() and (ticks is None or stats.ticks < ticks):
        if realtime:
            next_t += interval_s
            if stop.wait(max(0.0, next_t - time.monotonic())):
                break
        collect_once(backend, transport, stats)
        if after_tick is not None:
            after_tick(stats)
    transport.flush()
    return stats
