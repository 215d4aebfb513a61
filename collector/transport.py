"""Where a node agent's ticks go: the in-process bus or a Kafka topic (key = node)."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from gpuledger.bus import MemoryBus


class Transport(Protocol):
    def send(self, key: str, value: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MemoryTransport:
    """Appends to a MemoryBus topic; for the demo and unit tests."""

    def __init__(self, bus: MemoryBus, topic: str = "gpu.samples.v1") -> None:
        self.bus, self.topic = bus, topic

    def send(self, key: str, value: bytes) -> None:
        self.bus.append(self.topic, key.encode(), value)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class KafkaTransport:
    """kafka-python producer (idempotent, acks=all), keyed by node for per-node order.

    `send` returns the delivery future: the spool must know which ticks Kafka acknowledged. The
    timeouts are bounded so that a dead broker surfaces within seconds (kafka-python's defaults
    wait up to 30 s to bootstrap, 60 s to block in send and 120 s to expire a batch).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "gpu.samples.v1",
        client_id: str = "gpuledger-agent",
        *,
        linger_ms: int = 20,
        request_timeout_ms: int = 10_000,
        delivery_timeout_ms: int = 30_000,
        max_block_ms: int = 5_000,
        bootstrap_timeout_ms: int = 5_000,
        flush_timeout_s: float = 30.0,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            linger_ms=linger_ms,
            max_request_size=2 * 1024 * 1024,
            batch_size=256 * 1024,
            request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=delivery_timeout_ms,
            max_block_ms=max_block_ms,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            reconnect_backoff_max_ms=1000,
        )

    def send(self, key: str, value: bytes) -> Any:
        return self.producer.send(self.topic, key=key.encode(), value=value)

    def flush(self) -> None:
        self.producer.flush(timeout=self.flush_timeout_s)

    def close(self, timeout: float | None = None) -> None:
        """Close; what is still unacknowledged after ``timeout`` is aborted (the spool holds it)."""
        from kafka.errors import KafkaTimeoutError

        try:
            self.producer.close(timeout=self.flush_timeout_s if timeout is None else timeout)
        except KafkaTimeoutError:
            # kafka-python's close() flushes first and gives up on a timeout without closing,
            # leaving its I/O thread retrying forever. Force the sender down (it fails the
            # buffered batches), then close for good.
            sender = getattr(self.producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(5.0)
            with contextlib.suppress(Exception):
                self.producer.close(timeout=0)
