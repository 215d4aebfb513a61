"""An in-process stand-in for Kafka topics, for `gpuledger demo` and unit tests.

It keeps Kafka's shape (append-only log with offsets, consumer offsets committed after
processing) so the ingest code that runs over it is the same code that runs over the broker.
Records below every group's committed offset can be trimmed, so a long demo stays small.
"""

from __future__ import annotations

import threading


class MemoryBus:
    """Append-only, single-partition topics with committed offsets per consumer group."""

    def __init__(self) -> None:
        self._logs: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self._base: dict[str, int] = {}
        self._committed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def append(self, topic: str, key: bytes | None, value: bytes) -> int:
        with self._lock:
            log = self._logs.setdefault(topic, [])
            log.append((key, value))
            return self._base.get(topic, 0) + len(log) - 1

    def read_from(self, topic: str, offset: int, max_records: int) -> list[tuple[int, bytes | None, bytes]]:
        """Records from an explicit offset (a consumer that tracks its own position)."""
        with self._lock:
            base = self._base.get(topic, 0)
            if offset < base:
                raise ValueError(f"offset {offset} of {topic} was trimmed (first kept: {base})")
            start = offset - base
            chunk = self._logs.get(topic, [])[start : start + max_records]
            return [(offset + i, k, v) for i, (k, v) in enumerate(chunk)]

    def commit(self, topic: str, group: str, next_offset: int) -> None:
        with self._lock:
            self._committed[(topic, group)] = next_offset

    def committed(self, topic: str, group: str) -> int:
        with self._lock:
            return self._committed.get((topic, group), 0)

    def end(self, topic: str) -> int:
        """The offset the next appended record will get."""
        with self._lock:
            return self._base.get(topic, 0) + len(self._logs.get(topic, ()))

    def trim(self, topic: str) -> int:
        """Drop records every group has committed; returns how many were dropped."""
        with self._lock:
            marks = [off for (t, _), off in self._committed.items() if t == topic]
            if not marks:
                return 0
            base = self._base.get(topic, 0)
            drop = min(marks) - base
            if drop <= 0:
                return 0
            del self._logs[topic][:drop]
            self._base[topic] = base + drop
            return drop
