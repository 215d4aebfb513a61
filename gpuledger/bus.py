"""An in-process stand-in for one Kafka topic, for `gpuledger demo` and unit tests.

It keeps Kafka's shape (append-only log, consumer offsets committed after processing) so
the ingest code that runs over it is the same code that runs over the real broker.
"""

from __future__ import annotations

import threading


class MemoryBus:
    """Append-only, single-partition topics with committed offsets per consumer group."""

    def __init__(self) -> None:
        self._logs: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self._committed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def append(self, topic: str, key: bytes | None, value: bytes) -> int:
        with self._cond:
            log = self._logs.setdefault(topic, [])
            log.append((key, value))
            self._cond.notify_all()
            return len(log) - 1

    def read(self, topic: str, group: str, max_records: int, timeout_s: float = 0.0
             ) -> list[tuple[int, bytes | None, bytes]]:
        """Records after the group's committed offset (not advancing it: call commit)."""
        with self._cond:
            start = self._committed.get((topic, group), 0)
            if timeout_s and len(self._logs.get(topic, ())) <= start:
                self._cond.wait(timeout_s)
            log = self._logs.get(topic, [])
            chunk = log[start:start + max_records]
            return [(start + i, k, v) for i, (k, v) in enumerate(chunk)]

    def commit(self, topic: str, group: str, next_offset: int) -> None:
        with self._lock:
            self._committed[(topic, group)] = next_offset

    def lag(self, topic: str, group: str) -> int:
        with self._lock:
            return len(self._logs.get(topic, ())) - self._committed.get((topic, group), 0)

    def size(self, topic: str) -> int:
        with self._lock:
            return len(self._logs.get(topic, ()))
